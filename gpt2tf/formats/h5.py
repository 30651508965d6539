"""The ancestor's `.h5` weights files: what `finetune.py --output_name` writes and `inference.py --custom_model` reads.

The file is an HDF5 file in Keras' legacy `.h5` weights layout, the one tf.keras' `save_weights("x.h5")` wrote: a
root attribute `layer_names`, one group per layer whose attribute `weight_names` lists its tensors, and the model's
own weights (`wte`, `wpe`) in a group `top_level_model_weights`. Each tensor is named and shaped as in OpenAI's
checkpoint (`model/h0/attn/c_attn/w`, `[1, n_in, n_out]`), so the file does not depend on how `gpt2tf.model` holds
its weights. Reading goes by name, checks every name and shape against the model before assigning anything, and
names the first tensor that differs.
"""

import os
from pathlib import Path

import h5py
import keras
import numpy as np

from gpt2tf.errors import GPT2TFError
from gpt2tf.files import atomic_path
from gpt2tf.formats.tensors import checkpoint_key, checkpoint_shape, checkpoint_variables, fill_weights, model_tensors

TOP_LEVEL_GROUP = "top_level_model_weights"  # Keras' name for the weights a model holds itself


def _layer_keys(model):
    """[(group name, [checkpoint keys of its weights])] in Keras' legacy order, the model's own weights last."""
    groups, seen = [], set()
    for layer in model.layers:
        keys = [checkpoint_key(v) for v in layer.trainable_weights + layer.non_trainable_weights]
        if keys:
            groups.append((layer.name, keys))
            seen.update(keys)
    groups.append((TOP_LEVEL_GROUP, [checkpoint_key(v) for v in model.weights if checkpoint_key(v) not in seen]))
    return groups


def write_h5_weights(path, model, tensors=None):
    """Write `tensors` ({checkpoint key: tensor in the checkpoint's layout}; default: the model's weights) to
    `path` in the legacy `.h5` weights layout. Written under a temporary name and renamed into place."""
    tensors = model_tensors(model) if tensors is None else tensors
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        groups = _layer_keys(model)
        with atomic_path(path) as temp:
            with h5py.File(temp, "w") as f:
                f.attrs["layer_names"] = [name.encode("utf8") for name, _ in groups if name != TOP_LEVEL_GROUP]
                f.attrs["backend"] = keras.backend.backend().encode("utf8")
                f.attrs["keras_version"] = keras.__version__.encode("utf8")
                for name, keys in groups:
                    group = f.create_group(name)
                    group.attrs["weight_names"] = [key.encode("utf8") for key in keys]
                    for key in keys:
                        group.create_dataset(key, data=np.asarray(tensors[key], np.float32))
            with open(temp, "rb+") as f:  # on disk before the name says the file is complete
                os.fsync(f.fileno())
    except OSError as err:
        raise GPT2TFError(
            f"cannot write {path} ({err.strerror or err}); choose a writable place with enough free space"
        ) from None


def load_h5_weights(model, path):
    """Assign the weights in the `.h5` file at `path` to `model`, after checking every name and shape."""
    path = Path(path)
    if not path.is_file():
        raise GPT2TFError(f"{path} does not exist: give the .h5 file that finetune.py --output_name wrote")
    try:
        with h5py.File(path, "r") as f:
            found = _read_tensors(f, path)
    except (OSError, KeyError, ValueError) as err:
        raise GPT2TFError(
            f"cannot read {path} as an HDF5 weights file ({str(err).splitlines()[0]}); give the .h5 "
            f"file that finetune.py --output_name wrote"
        ) from None
    variables = checkpoint_variables(model)
    for key, variable in variables.items():
        if key not in found:
            raise GPT2TFError(
                f"{path} has no tensor {key}, which the model needs: it was not written for a GPT-2 "
                f"of this shape; give the --model_dir it was fine-tuned from"
            )
        want = tuple(checkpoint_shape(variable))
        if not np.isfinite(found[key]).all():
            raise GPT2TFError(f"{path}: tensor {key} holds NaN or infinite values: these weights are broken")
        if found[key].shape != want:
            raise GPT2TFError(
                f"{path} does not fit the model: {key} is {list(found[key].shape)} in the file but "
                f"{list(want)} in hparams.json ({_shape_text(model.hparams)}); give the --model_dir "
                f"it was fine-tuned from"
            )
    extra = sorted(set(found) - set(variables))
    if extra:
        raise GPT2TFError(
            f"{path} has tensors the model does not have, e.g. {extra[0]}: it was written for a larger "
            f"GPT-2; give the --model_dir it was fine-tuned from"
        )
    sizes = {key: value.size for key, value in found.items()}
    fill_weights(
        model,
        lambda key: np.asarray(found.pop(key), np.float32),
        sizes,
        source=str(path),
        hint="give the .h5 file that finetune.py --output_name wrote",
    )


def _read_tensors(f, path):
    """{checkpoint key: array} from an open file in the legacy layout (any model name as the keys' root)."""
    names = [_text(n) for n in f.attrs.get("layer_names", [])]
    if not names:
        raise GPT2TFError(
            f"{path} is not a Keras .h5 weights file (it has no layer_names attribute); give the .h5 "
            f"file that finetune.py --output_name wrote"
        )
    tensors = {}
    for name in names + ([TOP_LEVEL_GROUP] if TOP_LEVEL_GROUP in f else []):
        group = f[name]
        for weight in (_text(w) for w in group.attrs.get("weight_names", [])):
            key = "model/" + weight.removesuffix(":0").split("/", 1)[-1]
            tensors[key] = np.asarray(group[weight])
    return tensors


def _text(value):
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _shape_text(hparams):
    return ", ".join(f"{k} {v}" for k, v in vars(hparams).items())

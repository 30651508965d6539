"""gpt2tf's saved quantized dirs: int8 or bfloat16 weights (`gpt2tf.formats.quantization`) kept for decoding.

A quantized model can be saved (`save_quantized`, `inference.py --save_quantized DIR`) so that loading it reads 1/4
(or 1/2) of the bytes and never touches the float32 checkpoint. The layout of such a dir:

    quantized.json                        {"format": "gpt2tf-quantized", "version": 1, "weights": "int8"}
    hparams.json, encoder.json, vocab.bpe as in OpenAI's model dirs
    weights.index, weights.data-00000-of-00001
                                          a TF bundle (tf.train.load_checkpoint reads it) holding every weight as
                                          the model holds it: model/h0/attn/c_attn/w int8 [1, n_out, n_in] (the
                                          transpose of OpenAI's), model/h0/attn/c_attn/w_scale float32 [1, n_out],
                                          model/wte int8 [n_vocab, n_embd], model/wte_scale [n_vocab], and the
                                          float32 biases, gains and wpe under OpenAI's names
"""

import json
from pathlib import Path

import numpy as np
import tensorflow as tf

from gpt2tf.errors import GPT2TFError
from gpt2tf.files import check_output_dir, write_text_atomic, writing_dir
from gpt2tf.formats.bundle import read_index, read_tensor, write_bundle
from gpt2tf.formats.openai import load_hparams, write_model_files
from gpt2tf.formats.tensors import all_finite, check_tensor_names_and_shapes, checkpoint_key
from gpt2tf.layout import HPARAMS_FILE, QUANTIZED_FILE, QUANTIZED_PREFIX
from gpt2tf.model import GPT2
from gpt2tf.weight_formats import QUANTIZED_FORMATS

LAYOUT_NAME = "gpt2tf-quantized"
LAYOUT_VERSION = 1
SAVE_AGAIN = "save the quantized model again"


def quantized_format(path):
    """The weight format of a dir saved by `save_quantized`, or None if `path` is not one."""
    marker = Path(path) / QUANTIZED_FILE
    if not marker.is_file():
        return None
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
        weights, version = info["weights"], info.get("version", LAYOUT_VERSION)
        ok = (
            info.get("format") == LAYOUT_NAME
            and weights in QUANTIZED_FORMATS
            and isinstance(version, int)
            and not isinstance(version, bool)
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        raise GPT2TFError(
            f'{marker} is damaged (it should read {{"format": "{LAYOUT_NAME}", "version": '
            f'{LAYOUT_VERSION}, "weights": "int8" or "bf16"}}): save the quantized model again'
        )
    if version > LAYOUT_VERSION:
        raise GPT2TFError(f"{path} was saved by a newer gpt2tf (layout version {version}): upgrade gpt2tf")
    return weights


def save_quantized(model, out_dir):
    """Write a model loaded with int8 or bf16 weights as a dir that `load_model` loads without the float32 file."""
    if model.weight_format == "float32":
        raise GPT2TFError(
            "this model holds float32 weights: load it with weights='int8' or 'bf16' to save it "
            "quantized (or save it with save_openai_checkpoint)"
        )
    out_dir = Path(out_dir)
    check_output_dir(out_dir, marker=QUANTIZED_FILE, what="quantized model")
    with writing_dir(out_dir, errors=(OSError, tf.errors.OpError)) as (work, _):
        write_bundle(work / QUANTIZED_PREFIX, {checkpoint_key(v): v.value for v in model.weights})
        write_model_files(work, model.hparams)
        write_text_atomic(
            work / QUANTIZED_FILE,
            json.dumps({"format": LAYOUT_NAME, "version": LAYOUT_VERSION, "weights": model.weight_format}) + "\n",
        )
    return out_dir


def load_quantized(model_dir, *, weights=None, dtype=None):
    """The model saved by `save_quantized` in `model_dir`; `weights`, if given, must be the format it holds (and
    `dtype`, if given, a float32 policy: quantized weights compute in float32)."""
    stored = quantized_format(model_dir)
    if weights not in (None, stored):
        raise GPT2TFError(
            f"{model_dir} holds {stored} weights, saved for decoding: load it with weights={stored!r} "
            f"(or --weights {stored}), or load the float32 checkpoint it was made from"
        )
    if not (Path(model_dir) / HPARAMS_FILE).is_file():
        raise GPT2TFError(f"{model_dir} has no {HPARAMS_FILE}: the quantized model dir is incomplete; save it again")
    prefix = str(Path(model_dir) / QUANTIZED_PREFIX)
    hparams = load_hparams(model_dir)
    model = GPT2(hparams, initializer="empty", weight_format=stored, dtype=dtype)
    variables = {checkpoint_key(v): v for v in model.weights}
    found_shapes, found_dtypes = read_index(prefix, hint=SAVE_AGAIN)
    check_tensor_names_and_shapes(found_shapes, {k: tuple(v.shape) for k, v in variables.items()}, prefix)
    for key, variable in variables.items():
        if found_dtypes[key] != tf.as_dtype(variable.dtype):
            raise GPT2TFError(
                f"{prefix}: tensor {key} is {found_dtypes[key].name}, not {variable.dtype}: the "
                f"quantized model dir is damaged; save it again"
            )
    for key in sorted(variables, key=lambda k: -int(np.prod(found_shapes[k]))):
        value = read_tensor(prefix, key, found_dtypes[key], hint=SAVE_AGAIN)
        if value.dtype.is_floating and not all_finite(tf.cast(value, tf.float32)):
            raise GPT2TFError(f"tensor {key} in {prefix} holds NaN or infinite values: save the quantized model again")
        variables[key].assign(value)
    return model

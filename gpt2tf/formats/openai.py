"""OpenAI's checkpoint layout: the one module that knows its files' contents and its tensor names.

A GPT-2 model dir, as OpenAI ships it, holds `checkpoint` (a text file naming the prefix), `hparams.json`,
`model.ckpt.index` + `model.ckpt.data-00000-of-00001` (a TF1 name-based bundle of float32 tensors named
`model/wte`, `model/h0/attn/c_attn/w`, ...), `encoder.json` and `vocab.bpe` (and `model.ckpt.meta`, a TF1 graph we
neither need nor write). Restoring checks names, shapes and the data file's size against the model *before*
assigning anything, then reads tensor by tensor into weights that were allocated but never initialised. The model
holds the projections' weights transposed (`gpt2tf.model.Conv1D`): reading and writing transpose them.
"""

import re
from pathlib import Path

import numpy as np
import tensorflow as tf

from gpt2tf.errors import GPT2TFError
from gpt2tf.files import copy_atomic, write_text_atomic, writing_dir
from gpt2tf.formats.bundle import check_data_size, read_index, read_tensor, write_bundle
from gpt2tf.formats.tensors import (
    check_tensor_names_and_shapes,
    checkpoint_shape,
    checkpoint_variables,
    fill_weights,
    model_tensors,
)
from gpt2tf.hparams import HParams
from gpt2tf.layout import (
    HPARAMS_FILE,
    PREFIX_NAME,
    QUANTIZED_FILE,
    QUANTIZED_PREFIX,
    STATE_FILE,
    VOCAB_DIR,
    VOCAB_FILES,
)
from gpt2tf.model import GPT2


def openai_tensor_shapes(hparams):
    """Every tensor in an OpenAI GPT-2 checkpoint with its shape, written out from OpenAI's layout."""
    d = hparams.n_embd
    shapes = {"model/wte": (hparams.n_vocab, d), "model/wpe": (hparams.n_ctx, d)}
    for i in range(hparams.n_layer):
        h = f"model/h{i}"
        shapes.update(
            {
                f"{h}/ln_1/g": (d,),
                f"{h}/ln_1/b": (d,),
                f"{h}/attn/c_attn/w": (1, d, 3 * d),
                f"{h}/attn/c_attn/b": (3 * d,),
                f"{h}/attn/c_proj/w": (1, d, d),
                f"{h}/attn/c_proj/b": (d,),
                f"{h}/ln_2/g": (d,),
                f"{h}/ln_2/b": (d,),
                f"{h}/mlp/c_fc/w": (1, d, 4 * d),
                f"{h}/mlp/c_fc/b": (4 * d,),
                f"{h}/mlp/c_proj/w": (1, 4 * d, d),
                f"{h}/mlp/c_proj/b": (d,),
            }
        )
    shapes.update({"model/ln_f/g": (d,), "model/ln_f/b": (d,)})
    return shapes


def load_hparams(model_dir):
    return HParams.from_json(Path(model_dir) / HPARAMS_FILE)


# ---------------------------------------------------------------------------------------------------------------
# Finding things in a model dir


def _not_a_model_dir(path):
    """Why `path` holds no checkpoint, in the words that lead to the fix."""
    names = {p.name for p in path.iterdir()} if path.is_dir() else set()
    if f"{QUANTIZED_PREFIX}.index" in names:
        return (
            f"{path} holds {QUANTIZED_PREFIX}.index like a dir of quantized weights (inference.py --save_quantized) "
            f"but no {QUANTIZED_FILE}, which says their format: save the quantized dir again"
        )
    if names <= set(VOCAB_FILES) | {HPARAMS_FILE} or all(
        n.endswith((".partial", ".tmp")) or n.startswith(".") for n in names
    ):
        from gpt2tf.hparams import PRETRAINED

        size = path.name if path.name in PRETRAINED else "124M"
        return (
            f"{path} holds no checkpoint{' (it is empty)' if not names else ''}: a download into it did not finish? "
            f"`python download_model.py {size} --models_dir {path.parent}` resumes it"
        )
    return (
        f"{path} is not a GPT-2 model dir: expected OpenAI's layout ({STATE_FILE}, {HPARAMS_FILE}, "
        f"{PREFIX_NAME}.index, {PREFIX_NAME}.data-00000-of-00001) or Hugging Face's (config.json "
        f"and model.safetensors or model.safetensors.index.json)"
    )


def resolve_checkpoint(path):
    """`(model_dir, prefix)` for a model dir (via its `checkpoint` file) or a checkpoint prefix."""
    path = Path(path)
    if Path(f"{path}.index").is_file():
        return path.parent, str(path)
    if not path.exists():
        raise GPT2TFError(
            f"{path} does not exist: give a GPT-2 model dir (download one with "
            f"`python download_model.py 124M`) or a checkpoint prefix such as {path}/model.ckpt"
        )
    if not path.is_dir():
        raise GPT2TFError(f"{path} is not a model dir or a checkpoint prefix (no {path}.index)")
    if (path / QUANTIZED_FILE).is_file():
        raise GPT2TFError(
            f"{path} holds quantized weights saved for decoding (its {QUANTIZED_FILE}): generation and "
            f"serving load it; for this, give the float32 model dir it was made from"
        )
    state = path / STATE_FILE
    if state.is_file():
        prefix = _prefix_from_state(state)
    elif (path / f"{PREFIX_NAME}.index").is_file():
        prefix = path / PREFIX_NAME
    else:
        raise GPT2TFError(_not_a_model_dir(path))
    if not prefix.is_absolute():
        prefix = path / prefix
    if not Path(f"{prefix}.index").is_file() and Path(f"{path / prefix.name}.index").is_file():
        prefix = path / prefix.name  # the dir was moved since the state file was written with an absolute path
    if not Path(f"{prefix}.index").is_file():
        raise GPT2TFError(
            f"{state} names checkpoint {prefix}, but {prefix}.index is missing: "
            f"the dir is incomplete; {repair_hint(prefix)}"
        )
    return path, str(prefix)


def _prefix_from_state(state):
    latest, _ = read_state_file(state.parent)
    return Path(latest)


def read_state_file(model_dir):
    """`(latest, all)`: the prefixes the `checkpoint` state file names (as written, usually relative)."""
    state = Path(model_dir) / STATE_FILE
    text = state.read_text(encoding="utf-8", errors="replace")
    unquote = lambda m: m.encode("utf-8").decode("unicode_escape")  # noqa: E731
    latest = re.search(r'^model_checkpoint_path:\s*"((?:[^"\\]|\\.)*)"', text, re.MULTILINE)
    if not latest:
        raise GPT2TFError(
            f'{state} has no model_checkpoint_path line; it should read model_checkpoint_path: "{PREFIX_NAME}"'
        )
    every = re.findall(r'^all_model_checkpoint_paths:\s*"((?:[^"\\]|\\.)*)"', text, re.MULTILINE)
    return unquote(latest.group(1)), [unquote(p) for p in every]


def write_state_file(model_dir, prefixes):
    """Name `prefixes[-1]` as the latest checkpoint and all of them as kept; atomic, so write it last."""
    lines = [f'model_checkpoint_path: "{prefixes[-1]}"'] + [f'all_model_checkpoint_paths: "{p}"' for p in prefixes]
    write_text_atomic(Path(model_dir) / STATE_FILE, "\n".join(lines) + "\n")


def repair_hint(prefix):
    """What to do about a damaged checkpoint: use the run's previous checkpoint if it has one, else download."""
    directory = Path(prefix).parent
    try:
        _, kept = read_state_file(directory)
    except (OSError, GPT2TFError):
        kept = []
    earlier = [p for p in kept if Path(p).name != Path(prefix).name]
    if earlier:
        return (
            f"use the run's previous checkpoint, {directory / Path(earlier[-1]).name} (give it as --model_dir "
            f"or --restore_from)"
        )
    return "download the model again"


# ---------------------------------------------------------------------------------------------------------------
# Restore


def load_openai_model(path, *, dtype=None, weight_format="float32"):
    """A GPT2 built from a model dir (or checkpoint prefix) in OpenAI's layout, with its weights restored."""
    model_dir, prefix = resolve_checkpoint(path)
    hparams = load_hparams(model_dir)
    # Checked against hparams.json before the model is allocated: a wrong (say, huge) shape is an error, not an
    # attempt to allocate it.
    check_tensor_names_and_shapes(
        read_index(prefix, hint=repair_hint(prefix))[0], openai_tensor_shapes(hparams), prefix
    )
    model = GPT2(hparams, initializer="empty", dtype=dtype, weight_format=weight_format)
    restore_weights(model, prefix)
    return model


def restore_weights(model, prefix):
    """Read every tensor of the checkpoint at `prefix` into `model`, after checking names, shapes and sizes.

    Each tensor is checked for NaN and infinite values as it is read; on any error nothing is left half-done in a
    way that could pass for a good model (the model's weights are then unspecified, and the error says so).
    """
    hint = repair_hint(prefix)
    found_shapes, found_dtypes = read_index(prefix, hint=hint)
    variables = checkpoint_variables(model)
    check_tensor_names_and_shapes(found_shapes, {key: checkpoint_shape(v) for key, v in variables.items()}, prefix)
    check_data_size(prefix, found_shapes, found_dtypes, hint=hint)
    sizes = {k: int(np.prod(found_shapes[k])) for k in variables}
    read = lambda key: read_tensor(prefix, key, found_dtypes[key], hint=hint)  # noqa: E731
    fill_weights(model, read, sizes, source=prefix, hint=hint)


# ---------------------------------------------------------------------------------------------------------------
# Write


def save_openai_checkpoint(model, model_dir):
    """Write `model` as a model dir in OpenAI's layout, readable by any GPT-2 tool; the round trip is bit-exact."""
    write_model_dir(model_dir, model.hparams, model_tensors(model))


def write_synthetic_checkpoint(model_dir, hparams, *, seed=0):
    """A model dir in OpenAI's exact layout with random values in every tensor (gains and biases included).

    For tests and benchmarks: the values have GPT-2's scales (weights ~0.02, gains ~1) so activations stay sane.
    """
    tensors = {}
    for index, (name, shape) in enumerate(openai_tensor_shapes(hparams).items()):
        noise = tf.random.stateless_normal(shape, seed=[seed, index], dtype=tf.float32)
        leaf = name.rsplit("/", 1)[1]
        if leaf == "g":
            tensors[name] = 1.0 + 0.1 * noise
        elif leaf == "b":
            tensors[name] = 0.02 * noise
        elif leaf == "wpe":
            tensors[name] = 0.01 * noise
        else:
            tensors[name] = 0.02 * noise
    write_model_dir(model_dir, hparams, tensors)


def write_model_dir(model_dir, hparams, tensors):
    """Write hparams, vocab and a single-shard bundle of `tensors` ({key: tensor}) in OpenAI's layout.

    A new dir is written beside its final name and renamed into place. In an existing dir every file is written
    under a temporary name and renamed, and the `checkpoint` state file goes last, so an interruption never leaves
    a dir that looks complete but mixes old and new tensors undetected (sizes and checksums are verified on load).
    """
    with writing_dir(model_dir, what="model dir ", errors=(OSError, tf.errors.OpError)) as (work_dir, _):
        write_bundle(work_dir / PREFIX_NAME, tensors)
        write_model_files(work_dir, hparams)
        write_state_file(work_dir, [PREFIX_NAME])


def write_model_files(model_dir, hparams):
    """hparams.json and the vocab files: what makes a dir a model dir besides its weights."""
    hparams.to_json(Path(model_dir) / HPARAMS_FILE)
    for name in VOCAB_FILES:
        copy_atomic(VOCAB_DIR / name, Path(model_dir) / name)

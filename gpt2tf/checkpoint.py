"""OpenAI's checkpoint layout: the one module that knows its file names and tensor names.

A GPT-2 model dir, as OpenAI ships it, holds `checkpoint` (a text file naming the prefix), `hparams.json`,
`model.ckpt.index` + `model.ckpt.data-00000-of-00001` (a TF1 name-based bundle of float32 tensors named
`model/wte`, `model/h0/attn/c_attn/w`, ...), `encoder.json` and `vocab.bpe` (and `model.ckpt.meta`, a TF1 graph we
neither need nor write). Restoring checks names, shapes and the data file's size against the model *before*
assigning anything, then reads tensor by tensor into weights that were allocated but never initialised. The model
holds the projections' weights transposed (`model.Conv1D`): reading and writing transpose them.
"""

import contextlib
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tensorflow as tf

from gpt2tf.errors import GPT2TFError
from gpt2tf.files import write_text_atomic
from gpt2tf.hparams import HParams
from gpt2tf.layout import QUANTIZED_FILE, QUANTIZED_PREFIX
from gpt2tf.model import GPT2

STATE_FILE = "checkpoint"
HPARAMS_FILE = "hparams.json"
PREFIX_NAME = "model.ckpt"
VOCAB_DIR = Path(__file__).parent / "vocab"
VOCAB_FILES = ("encoder.json", "vocab.bpe")


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


def checkpoint_key(variable):
    """A model variable's checkpoint key: its path, rooted at `model/` whatever the Keras model is named."""
    return "model/" + variable.path.split("/", 1)[1]


def _is_projection(key):
    return key.endswith("/w")  # c_attn, c_proj, c_fc: the model holds these transposed (see model.Conv1D)


def checkpoint_shape(variable):
    """The shape of a model variable's tensor in the checkpoint: `[1, n_in, n_out]` for a projection's weight."""
    shape = tuple(variable.shape)
    return (shape[0], shape[2], shape[1]) if _is_projection(checkpoint_key(variable)) else shape


def to_checkpoint_layout(key, tensor):
    """A model variable's value as the checkpoint stores it (and back again: the transposition is its own inverse)."""
    return tf.transpose(tensor, [0, 2, 1]) if _is_projection(key) else tensor  # [1, a, b] -> [1, b, a]


def checkpoint_variables(model):
    """{checkpoint key: variable} for the weights a float32 checkpoint holds: every weight of a float32 model; of
    an int8 one, all but the scales (`<key>_scale`, which quantizing makes from the weight beside them)."""
    variables = {checkpoint_key(v): v for v in model.weights}
    return {k: v for k, v in variables.items() if not (k.endswith("_scale") and k[: -len("_scale")] in variables)}


def require_float_weights(model):
    """Refuse to write a quantized model (`gpt2tf.quantize`) where float32 weights belong."""
    if model.weight_format != "float32":
        raise GPT2TFError(
            f"this model holds {model.weight_format} weights for decoding, not the float32 ones a "
            f"checkpoint holds: save it with gpt2tf.save_quantized (or --save_quantized), or load the "
            f"float32 model to save it in OpenAI's or Hugging Face's layout"
        )


def model_tensors(model):
    """{checkpoint key: tensor in the checkpoint's layout} for every weight of `model`."""
    require_float_weights(model)
    return {
        checkpoint_key(v): to_checkpoint_layout(checkpoint_key(v), tf.convert_to_tensor(v.value)) for v in model.weights
    }


# ---------------------------------------------------------------------------------------------------------------
# Finding things in a model dir


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
        raise GPT2TFError(
            f"{path} is not a GPT-2 model dir: expected OpenAI's layout ({STATE_FILE}, {HPARAMS_FILE}, "
            f"{PREFIX_NAME}.index, {PREFIX_NAME}.data-00000-of-00001) or Hugging Face's (config.json "
            f"and model.safetensors or model.safetensors.index.json)"
        )
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


def load_hparams(model_dir):
    return HParams.from_json(Path(model_dir) / HPARAMS_FILE)


def _is_openai_dir(path):
    path = Path(path)
    return Path(f"{path}.index").is_file() or (path / STATE_FILE).is_file() or (path / f"{PREFIX_NAME}.index").is_file()


def model_hparams(path):
    """The HParams of a model in either layout (OpenAI's hparams.json, or a HF dir's config.json)."""
    from gpt2tf.hf import hparams_from_config, is_hf_dir

    if is_hf_dir(path) and not _is_openai_dir(path):
        return hparams_from_config(path)
    return load_hparams(resolve_checkpoint(path)[0])


def restore_into(model, path):
    """Read the weights of a model in either layout (a dir or an OpenAI checkpoint prefix) into `model`."""
    from gpt2tf.hf import is_hf_dir, restore_hf_weights

    if is_hf_dir(path) and not _is_openai_dir(path):
        return restore_hf_weights(model, path)
    restore_weights(model, resolve_checkpoint(path)[1])


# ---------------------------------------------------------------------------------------------------------------
# Restore


def load_model(model_dir, *, dtype=None, weights=None):
    """Build a GPT2 from a model dir (or checkpoint prefix) as OpenAI ships it, with its weights restored.

    `dtype` is a Keras dtype policy such as "mixed_float16"; weights stay float32 either way. `weights` "int8" or
    "bf16" quantizes the projections and the token embedding as they load, for decoding (see `gpt2tf.quantize`; no
    float32 copy of them is kept); a dir saved by `save_quantized` loads as what it holds.
    """
    from gpt2tf.hf import is_hf_dir, load_hf_model
    from gpt2tf.quantize import load_quantized, quantized_format

    if Path(model_dir).is_dir() and quantized_format(model_dir):
        return load_quantized(model_dir, weights=weights, dtype=dtype)
    if Path(model_dir).name == QUANTIZED_PREFIX and quantized_format(Path(model_dir).parent):  # its bundle's prefix
        return load_quantized(Path(model_dir).parent, weights=weights, dtype=dtype)
    weight_format = weights or "float32"  # GPT2 refuses a format it does not know
    if is_hf_dir(model_dir) and not _is_openai_dir(model_dir):
        return load_hf_model(model_dir, dtype=dtype, weights=weight_format)
    model_dir, prefix = resolve_checkpoint(model_dir)
    hparams = load_hparams(model_dir)
    # Checked against hparams.json before the model is allocated: a wrong (say, huge) shape is an error, not an
    # attempt to allocate it.
    check_tensor_names_and_shapes(_read_index(prefix)[0], openai_tensor_shapes(hparams), prefix)
    model = GPT2(hparams, initializer="empty", dtype=dtype, weight_format=weight_format)
    restore_weights(model, prefix)
    return model


def _read_index(prefix):
    """({name: shape}, {name: dtype}) from a checkpoint's index; a damaged index is a one-line error."""
    try:
        reader = tf.train.load_checkpoint(prefix)
        return reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
    except (tf.errors.OpError, ValueError) as err:
        raise GPT2TFError(
            f"cannot read checkpoint index {prefix}.index ({first_line(err)}): "
            f"the file is corrupt; {repair_hint(prefix)}"
        ) from None


def restore_weights(model, prefix):
    """Read every tensor of the checkpoint at `prefix` into `model`, after checking names, shapes and sizes.

    Each tensor is checked for NaN and infinite values as it is read; on any error nothing is left half-done in a
    way that could pass for a good model (the model's weights are then unspecified, and the error says so).
    """
    found_shapes, found_dtypes = _read_index(prefix)
    variables = checkpoint_variables(model)
    check_tensor_names_and_shapes(found_shapes, {key: checkpoint_shape(v) for key, v in variables.items()}, prefix)
    _check_data_size(prefix, found_shapes, found_dtypes)

    def read(key):
        try:
            (value,) = tf.raw_ops.RestoreV2(
                prefix=prefix, tensor_names=[key], shape_and_slices=[""], dtypes=[found_dtypes[key]]
            )
        except tf.errors.OpError as err:  # TF checksums every tensor as it reads it
            raise GPT2TFError(
                f"cannot read tensor {key} from {prefix} ({first_line(err)}): the data file is "
                f"corrupt; {repair_hint(prefix)}"
            ) from None
        return value

    fill_weights(
        model, read, {k: int(np.prod(found_shapes[k])) for k in variables}, source=prefix, hint=repair_hint(prefix)
    )


def fill_weights(model, read, sizes, *, source, hint):
    """Assign every weight of `model` from `read(key)` (its value in OpenAI's layout, any float type), checking
    each for NaN and infinite values as it arrives; `sizes` ({key: elements}) orders the reads, big first.

    Reading is bound by page faults on the freshly allocated tensors, which run in parallel across cores; the
    weights' own buffers were never touched (EmptyInitializer), and `assign` adopts each read (or transposed)
    tensor's buffer, so the peak is one copy of the weights plus a tensor per thread. The reads release the GIL.
    A model with int8 or bf16 weights (`gpt2tf.quantize`) gets each stored weight quantized in the reading thread,
    so only the quantized tensors stay: the peak is the quantized model plus a float32 tensor per thread.
    On any error the model's weights are unspecified, and the error says so.
    """
    from gpt2tf.quantize import encode, encode_projection

    variables = checkpoint_variables(model)
    everything = {checkpoint_key(v): v for v in model.weights}
    quantized = model.weight_format != "float32"

    def load(key):
        value = tf.convert_to_tensor(read(key))  # once: a NumPy value would be converted by each op below
        if not quantized or not (_is_projection(key) or key == "model/wte"):  # what quantized models store so
            finite = bool(tf.reduce_all(tf.math.is_finite(value)))  # at memory speed (check_numerics is 8x slower)
            return (to_checkpoint_layout(key, value), None), finite  # the transposition takes it to the model's layout
        stored = (encode_projection if _is_projection(key) else encode)(value, model.weight_format)
        if stored[1] is not None:  # int8: a NaN or infinite weight makes its row's scale so
            return stored, bool(np.isfinite(stored[1]).all())
        return stored, bool(tf.reduce_all(tf.math.is_finite(value)))

    keys = sorted(variables, key=lambda k: -sizes[k])  # big first: balances the threads
    # Quantizing, each thread holds a float32 tensor it has read beside the small stored one: two threads keep that
    # below a quarter of the quantized model (1558M's wte alone is 321 MB).
    threads = min(2 if quantized else 4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        futures = [(key, pool.submit(load, key)) for key in keys]
        try:
            for index, (key, future) in enumerate(futures):
                (value, scale), finite = future.result()
                futures[index] = (key, None)  # the future would keep the tensor alive beside the weight's copy
                if not finite:
                    raise GPT2TFError(
                        f"tensor {key} in {source} holds NaN or infinite values: these weights are broken; {hint}"
                    )
                variables[key].assign(tf.cast(value, variables[key].dtype))
                if scale is not None:
                    scale_variable = everything[f"{key}_scale"]
                    scale_variable.assign(tf.reshape(scale, scale_variable.shape))
                del value, scale
        finally:
            for _, future in futures:
                if future is not None:
                    future.cancel()


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


def check_tensor_names_and_shapes(found, expected, prefix, *, described_by=HPARAMS_FILE):
    """Raise a one-line GPT2TFError naming missing, unexpected and mis-shaped tensors."""
    found = {k: tuple(v) for k, v in found.items()}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    misshaped = sorted(k for k in set(found) & set(expected) if found[k] != tuple(expected[k]))
    if not (missing or unexpected or misshaped):
        return
    problems = []
    if missing:
        problems.append(f"missing {_some(missing)}")
    if unexpected:
        problems.append(f"unexpected {_some(unexpected)}")
    if misshaped:
        problems.append(
            "mis-shaped "
            + _some([f"{k} {list(found[k])} ({described_by} says {list(expected[k])})" for k in misshaped])
        )
    raise GPT2TFError(
        f"checkpoint {prefix} does not match its {described_by}: {'; '.join(problems)}; "
        f"check that {described_by} belongs to this checkpoint"
    )


def _check_data_size(prefix, shapes, dtypes):
    """A truncated or padded data file is caught here, before any weight is touched."""
    data_files = sorted(Path(prefix).parent.glob(f"{Path(prefix).name}.data-*-of-*"))
    if not data_files:
        raise GPT2TFError(f"{prefix}.data-00000-of-00001 is missing: the dir is incomplete; {repair_hint(prefix)}")
    if len(data_files) != 1:
        return  # sharded bundles (not OpenAI's layout) are left to the per-tensor checksums
    expected = sum(int(np.prod(shape)) * dtypes[name].size for name, shape in shapes.items())
    actual = data_files[0].stat().st_size
    if actual != expected:
        raise GPT2TFError(
            f"{data_files[0]} has {actual:,} bytes but its index describes {expected:,}: "
            f"the file is truncated or corrupt; {repair_hint(prefix)}"
        )


def _some(items, limit=5):
    shown = ", ".join(items[:limit])
    return f"[{shown}{f', ... ({len(items)} in all)' if len(items) > limit else ''}]"


def first_line(err):
    """An error's first line, without the `{{function_node ...}}` prefix TensorFlow puts on op errors."""
    text = re.sub(r"\{\{[^}]*\}\}\s*", "", getattr(err, "message", None) or str(err)).strip()
    return text.splitlines()[0] if text else type(err).__name__


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
    model_dir = Path(model_dir)
    try:
        with writing_dir(model_dir, what="model dir ") as (work_dir, _):
            write_bundle(work_dir / PREFIX_NAME, tensors)
            write_model_files(work_dir, hparams)
            write_state_file(work_dir, [PREFIX_NAME])
    finally:
        for leftover in model_dir.glob(f"*.tmp-{os.getpid()}*") if model_dir.exists() else ():
            leftover.unlink(missing_ok=True)


@contextlib.contextmanager
def writing_dir(out_dir, *, what=""):
    """`with writing_dir(out_dir) as (work, fresh):` write a dir of files so that an interruption never leaves one
    that looks complete. A new `out_dir` is written as `work`, a dir beside it, renamed into place when the block
    ends (and removed if it fails); an existing one is `work` itself (`fresh` False), whose writer must write each
    file under a temporary name and rename it. An OS or TensorFlow error is one line naming `out_dir`."""
    out_dir = Path(out_dir)
    fresh = not out_dir.exists()
    work = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}") if fresh else out_dir
    try:
        work.mkdir(parents=True, exist_ok=True)
        yield work, fresh
        if fresh:
            os.replace(work, out_dir)
    except (OSError, tf.errors.OpError) as err:
        raise GPT2TFError(
            f"cannot write {what}{out_dir} ({getattr(err, 'strerror', None) or first_line(err)}); "
            f"choose a writable location with enough free space"
        ) from None
    finally:
        if fresh and work.exists():
            shutil.rmtree(work, ignore_errors=True)


def write_model_files(model_dir, hparams):
    """hparams.json and the vocab files: what makes a dir a model dir besides its weights."""
    hparams.to_json(Path(model_dir) / HPARAMS_FILE)
    for name in VOCAB_FILES:
        temp = Path(model_dir) / f"{name}.tmp-{os.getpid()}"
        shutil.copyfile(VOCAB_DIR / name, temp)
        os.replace(temp, Path(model_dir) / name)


def write_bundle(prefix, tensors):
    """Write {key: tensor} as a single-shard TF bundle at `prefix` (under a temporary name, then renamed)."""
    temp = f"{prefix}.tmp-{os.getpid()}"
    names = sorted(tensors)
    tf.raw_ops.SaveV2(
        prefix=temp, tensor_names=names, shape_and_slices=[""] * len(names), tensors=[tensors[n] for n in names]
    )
    replace_bundle(temp, str(prefix))


def replace_bundle(temp_prefix, prefix):
    """Rename a TF bundle (`.index` + `.data-*`) written under `temp_prefix` to `prefix`; the index goes last."""
    temp = Path(temp_prefix)
    for data in sorted(temp.parent.glob(temp.name + ".data-*")):
        os.replace(data, prefix + data.name[len(temp.name) :])
    os.replace(f"{temp_prefix}.index", f"{prefix}.index")

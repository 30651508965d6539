"""Hugging Face's GPT-2 layout: the one module that knows its file names, tensor names and config keys.

A HF GPT-2 dir holds `config.json` (`model_type: "gpt2"`, `n_layer`, `n_embd`, `n_head`, `n_positions`,
`vocab_size`, ...) and `model.safetensors` — or shards `model-0000i-of-0000n.safetensors` listed by
`model.safetensors.index.json` — plus the tokenizer's `vocab.json` and `merges.txt` (OpenAI's `encoder.json` and
`vocab.bpe` under other names). Tensor names are `transformer.h.3.attn.c_attn.weight` (the prefix may be absent),
projections stored `[in, out]` as OpenAI's (without its leading 1), the output layer tied to `wte` (an explicit
`lm_head.weight` must equal it). HF's `attn.bias`/`attn.masked_bias` buffers are ignored.

Safetensors files are read and written here directly from the format's documentation: 8 bytes (little-endian
header length), a JSON header `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}`, then the
data. Reading maps each file and copies each tensor once, from the page cache into its TensorFlow buffer, in
parallel, dropping the mapped pages as it goes (no second copy of the weights in memory); writing goes one tensor
at a time.
"""

import contextlib
import json
import mmap
import shutil
import struct
import threading
from pathlib import Path

import numpy as np
import tensorflow as tf

from gpt2tf.errors import GPT2TFError
from gpt2tf.files import atomic_paths, write_text_atomic, writing_dir
from gpt2tf.formats.openai import openai_tensor_shapes
from gpt2tf.formats.tensors import (
    check_tensor_names_and_shapes,
    checkpoint_key,
    checkpoint_shape,
    fill_weights,
    is_projection,
    require_float_weights,
    to_checkpoint_layout,
)
from gpt2tf.hparams import HParams
from gpt2tf.layout import ENDOFTEXT, EOT_ID, HF_CONFIG_FILE, HF_INDEX_FILE, HF_WEIGHTS_FILE, VOCAB_DIR
from gpt2tf.model import GPT2
from gpt2tf.weight_formats import FORMATS

CONFIG_FILE, WEIGHTS_FILE, INDEX_FILE = HF_CONFIG_FILE, HF_WEIGHTS_FILE, HF_INDEX_FILE
SHARD_NAME = "model-{:05d}-of-{:05d}.safetensors"
MAX_SHARD_BYTES = 5_000_000_000  # transformers' default max_shard_size, "5GB"
DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}
BUFFERS = (".attn.bias", ".attn.masked_bias")  # HF's causal-mask buffers, saved by older versions
LAYER_NORM_EPSILON = 1e-5


# ---------------------------------------------------------------------------------------------------------------
# Names and config


def hf_name(key):
    """OpenAI's checkpoint key -> HF's tensor name (without `transformer.`):
    model/h3/attn/c_attn/w -> h.3.attn.c_attn.weight"""
    parts = key.split("/")[1:]
    if parts[0].startswith("h") and parts[0][1:].isdigit():
        parts = ["h", parts[0][1:]] + parts[1:]
    leaf = {"g": "weight", "w": "weight", "b": "bias"}.get(parts[-1])
    return ".".join(parts[:-1] + [leaf]) if leaf else f"{parts[0]}.weight"  # wte, wpe


def hparams_from_config(model_dir):
    """HParams from `config.json`; a setting GPT-2's model cannot represent is a one-line error naming its key."""
    path = Path(model_dir) / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise GPT2TFError(f"cannot read {path} ({err}): it is not a JSON config") from None
    if not isinstance(config, dict):
        raise GPT2TFError(f"{path} is not a JSON object")
    if config.get("model_type") != "gpt2":
        raise GPT2TFError(
            f"{path} has model_type {config.get('model_type')!r}, not 'gpt2': gpt2tf loads GPT-2 checkpoints only"
        )
    for key in ("layer_norm_epsilon", "n_embd"):
        if key in config and not isinstance(config[key], (int, float)):
            raise GPT2TFError(f"{path}: {key} = {config[key]!r} is not a number")
    unsupported = {
        "activation_function": (
            config.get("activation_function", "gelu_new") in ("gelu_new", "gelu_pytorch_tanh"),
            "GPT-2's tanh GELU (gelu_new)",
        ),
        "layer_norm_epsilon": (
            abs(float(config.get("layer_norm_epsilon", LAYER_NORM_EPSILON)) - LAYER_NORM_EPSILON) < 1e-12,
            "1e-05",
        ),
        "scale_attn_weights": (config.get("scale_attn_weights", True) is True, "true"),
        "scale_attn_by_inverse_layer_idx": (not config.get("scale_attn_by_inverse_layer_idx", False), "false"),
        "add_cross_attention": (not config.get("add_cross_attention", False), "false"),
        "n_inner": (config.get("n_inner") in (None, 4 * config.get("n_embd", 768)), "null (4 × n_embd)"),
    }
    for key, (ok, wanted) in unsupported.items():
        if not ok:
            raise GPT2TFError(
                f"{path}: {key} = {config.get(key)!r} is not something gpt2tf's GPT-2 computes "
                f"(it needs {wanted}); this checkpoint cannot be loaded exactly"
            )
    names = {
        "n_vocab": "vocab_size",
        "n_ctx": "n_positions",
        "n_embd": "n_embd",
        "n_head": "n_head",
        "n_layer": "n_layer",
    }
    values = {}
    for field, key in names.items():
        value = config.get(key, config.get("n_ctx") if key == "n_positions" else None)
        if value is None:
            value = getattr(HParams(), field)  # transformers' GPT2Config defaults are GPT-2 124M's
        values[field] = value
    try:
        return HParams(**values)
    except (TypeError, ValueError, GPT2TFError) as err:
        raise GPT2TFError(f"{path}: {err}") from None


# ---------------------------------------------------------------------------------------------------------------
# Reading


def _read_header(path):
    """(entries {name: (dtype, shape, begin, end)} with absolute byte offsets, metadata) of one safetensors file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise GPT2TFError(f"{path} is cut short ({size} bytes): not a safetensors file; download it again")
            (length,) = struct.unpack("<Q", head)
            if length > min(size - 8, 100_000_000):
                raise GPT2TFError(
                    f"{path} is not a safetensors file, or it is cut short (its header says "
                    f"{length:,} bytes); download it again"
                )
            header = json.loads(f.read(length))
    except OSError as err:
        raise GPT2TFError(f"cannot read {path} ({err.strerror})") from None
    except ValueError:
        raise GPT2TFError(f"{path} has a damaged header (not JSON): download it again") from None
    if not isinstance(header, dict):
        raise GPT2TFError(f"{path} has a damaged header (not a JSON object): download it again")
    metadata = header.pop("__metadata__", None)
    entries = {}
    for name, entry in header.items():
        try:
            dtype, shape, (begin, end) = entry["dtype"], [int(n) for n in entry["shape"]], entry["data_offsets"]
            begin, end = int(begin), int(end)
        except (TypeError, KeyError, ValueError):
            raise GPT2TFError(f"{path}: tensor {name} has a damaged header entry; download the file again") from None
        if dtype not in DTYPES:
            raise GPT2TFError(f"{path}: tensor {name} has dtype {dtype}; gpt2tf reads {', '.join(DTYPES)}")
        if end - begin != int(np.prod(shape)) * np.dtype(DTYPES[dtype]).itemsize or begin < 0:
            raise GPT2TFError(
                f"{path}: tensor {name}'s byte range does not match its shape {shape}: the file is "
                f"damaged; download it again"
            )
        if 8 + length + end > size:
            raise GPT2TFError(
                f"{path} is cut short: it has {size:,} bytes but tensor {name} ends at byte "
                f"{8 + length + end:,}; download it again"
            )
        entries[name] = (dtype, tuple(shape), 8 + length + begin, 8 + length + end)
    return entries, metadata


def tensor_index(model_dir):
    """{name without `transformer.`: (file, dtype, shape, begin, end)} of every tensor of a HF dir."""
    model_dir = Path(model_dir)
    if (model_dir / WEIGHTS_FILE).is_file():
        files = [model_dir / WEIGHTS_FILE]
    else:
        try:
            weight_map = json.loads((model_dir / INDEX_FILE).read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise GPT2TFError(f"cannot read {model_dir / INDEX_FILE} ({err}): it should hold a weight_map") from None
        files = [model_dir / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise GPT2TFError(
                f"{model_dir} is missing shard {missing[0]}{more} named by {INDEX_FILE}: download the checkpoint again"
            )
    index = {}
    for path in files:
        entries, _ = _read_header(path)
        for name, (dtype, shape, begin, end) in entries.items():
            short = name[len("transformer.") :] if name.startswith("transformer.") else name
            if short.endswith(BUFFERS):
                continue
            index[short] = (path, dtype, shape, begin, end)
    return index


_maps = {}  # path -> (mtime, size, mmap): the files being read, mapped once


_maps_lock = threading.Lock()


def _mapped(path):
    stat = path.stat()
    key = str(path)
    with _maps_lock:  # the readers' threads share one map per file
        if key not in _maps or _maps[key][:2] != (stat.st_mtime_ns, stat.st_size):
            with open(path, "rb") as f:
                _maps[key] = (stat.st_mtime_ns, stat.st_size, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
        return _maps[key][2]


def read_tensor(entry):
    """A tensor's values as float32 NumPy: for F32, a read-only view of the mapped file (the header check made sure
    the file holds its bytes), so converting it to a TensorFlow tensor is the one copy; other types converted."""
    path, dtype, shape, begin, _ = entry
    try:
        raw = np.frombuffer(_mapped(path), DTYPES[dtype], int(np.prod(shape)), begin).reshape(shape)
    except (OSError, ValueError) as err:
        raise GPT2TFError(f"cannot read {path} ({getattr(err, 'strerror', None) or err}); download it again") from None
    if dtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw if dtype == "F32" else raw.astype(np.float32)


def _forget(entry):
    """Drop a read tensor's pages from this process's map of its file (they stay in the page cache): mapped pages
    count in the process's resident memory, which would otherwise hold a second copy of the weights at the end."""
    path, _, _, begin, end = entry
    page = mmap.PAGESIZE
    first, last = -(-begin // page) * page, end // page * page
    if last > first and hasattr(mmap, "MADV_DONTNEED"):
        _mapped(path).madvise(mmap.MADV_DONTNEED, first, last - first)


def _release_maps():
    with _maps_lock:
        for _, _, mapped in _maps.values():
            with contextlib.suppress(BufferError):  # a view of it is still alive somewhere: the map goes with that
                mapped.close()
        _maps.clear()


def load_hf_model(model_dir, *, dtype=None, weights=None):
    """Build a GPT2 from a HF dir, checking names and shapes against config.json before allocating anything
    (`weights`: as `gpt2tf.load_model`'s)."""
    hparams = hparams_from_config(model_dir)
    index = _checked_index(model_dir, hparams)
    model = GPT2(hparams, initializer="empty", dtype=dtype, weight_format=weights or "float32")
    _fill(model, model_dir, index)
    return model


def restore_hf_weights(model, model_dir):
    """Read a HF dir's weights into `model` (of the same shape)."""
    if hparams_from_config(model_dir) != model.hparams:
        raise GPT2TFError(
            f"{model_dir} holds a model of another shape ({hparams_from_config(model_dir)}) than "
            f"this one ({model.hparams})"
        )
    _fill(model, model_dir, _checked_index(model_dir, model.hparams))


def hf_shape(key, shape):
    """A tensor's shape in HF's layout from its shape in OpenAI's: projections lose their leading 1."""
    return tuple(shape[1:]) if is_projection(key) else tuple(shape)


def _checked_index(model_dir, hparams):
    index = tensor_index(model_dir)
    expected = {hf_name(k): hf_shape(k, s) for k, s in openai_tensor_shapes(hparams).items()}
    found = {k: v[2] for k, v in index.items() if k != "lm_head.weight"}
    check_tensor_names_and_shapes(found, expected, Path(model_dir), described_by=CONFIG_FILE)
    if "lm_head.weight" in index:
        head, wte = read_tensor(index["lm_head.weight"]), read_tensor(index["wte.weight"])
        equal = head.shape == wte.shape and np.array_equal(head, wte)
        del head, wte
        _release_maps()
        if not equal:
            raise GPT2TFError(
                f"{model_dir} has an lm_head.weight that differs from wte.weight: GPT-2's output layer "
                f"is tied to its embedding, so this untied checkpoint cannot be loaded exactly"
            )
    return index


def _fill(model, model_dir, index):
    def read(key):
        entry = index[hf_name(key)]
        value = tf.convert_to_tensor(read_tensor(entry))  # the one copy, out of the mapped file
        _forget(entry)
        return value[None] if is_projection(key) else value  # OpenAI's [1, in, out]

    sizes = {k: int(np.prod(s)) for k, s in openai_tensor_shapes(model.hparams).items()}
    try:
        fill_weights(model, read, sizes, source=str(model_dir), hint="download the checkpoint again")
    finally:
        _release_maps()


# ---------------------------------------------------------------------------------------------------------------
# Writing


def hf_config(hparams):
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": hparams.n_vocab,
        "n_positions": hparams.n_ctx,
        "n_ctx": hparams.n_ctx,
        "n_embd": hparams.n_embd,
        "n_layer": hparams.n_layer,
        "n_head": hparams.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "resid_pdrop": 0.1,
        "embd_pdrop": 0.1,
        "attn_pdrop": 0.1,
        "layer_norm_epsilon": LAYER_NORM_EPSILON,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "use_cache": True,
        "bos_token_id": EOT_ID,
        "eos_token_id": EOT_ID,
        "tie_word_embeddings": True,
        "dtype": "float32",
    }


TOKENIZER_CONFIG = {
    "tokenizer_class": "GPT2Tokenizer",
    "model_max_length": 1024,
    "add_prefix_space": False,
    "bos_token": ENDOFTEXT,
    "eos_token": ENDOFTEXT,
    "unk_token": ENDOFTEXT,
    "clean_up_tokenization_spaces": False,
    "errors": "replace",
}


def save_hf_checkpoint(model, out_dir, *, tensors=None, max_shard_bytes=MAX_SHARD_BYTES):
    """Write `model` (or `tensors`, {OpenAI key: tensor in OpenAI's layout} of its shape, e.g. LoRA-merged weights)
    as a HF GPT-2 dir that `transformers`' from_pretrained (model and tokenizer) loads. Tensors are converted and
    written one at a time.

    A new dir is written beside its final name and renamed into place; into an existing dir, the weights and
    tokenizer files are written under temporary names and renamed together once all are written, config.json last.
    """
    if tensors is None:
        require_float_weights(model)
    out_dir = Path(out_dir)
    shards = _plan_shards(_entries(model), max_shard_bytes)
    value = _hf_values(model, tensors)
    files = _support_files(model.hparams, shards)
    with writing_dir(out_dir, errors=(OSError, tf.errors.OpError)) as (work, fresh):
        copied = {name: VOCAB_DIR / source for source, name in TOKENIZER_FILES}
        with atomic_paths([work / name for name in (*shards, *copied)]) as temps:
            for temp, shard in zip(temps, shards.values()):
                _write_safetensors(temp, shard, value)
            for temp, source in zip(temps[len(shards) :], copied.values()):
                shutil.copyfile(source, temp)
        for name, content in files.items():
            write_text_atomic(work / name, json.dumps(content, indent=2) + "\n")
        if not fresh:
            _remove_stale_shards(out_dir, keep=set(shards) | set(files))
        write_text_atomic(work / CONFIG_FILE, json.dumps(hf_config(model.hparams), indent=2) + "\n")
    return out_dir


TOKENIZER_FILES = (("encoder.json", "vocab.json"), ("vocab.bpe", "merges.txt"))  # OpenAI's names -> HF's


def _entries(model):
    """[(HF name, OpenAI key, HF shape)] of every weight, in the model's order."""
    entries = []
    for variable in model.weights:
        key = checkpoint_key(variable)
        entries.append(("transformer." + hf_name(key), key, list(hf_shape(key, checkpoint_shape(variable)))))
    return entries


def _hf_values(model, tensors):
    """`value(key)`: a weight as float32 NumPy in HF's layout, from `tensors` or else from the model."""
    variables = {checkpoint_key(v): v for v in model.weights}

    def value(key):
        if tensors is not None:
            array = np.asarray(tensors[key], np.float32)
        else:
            array = to_checkpoint_layout(key, tf.convert_to_tensor(variables[key].value)).numpy()
        return np.ascontiguousarray(array[0] if is_projection(key) else array, np.float32)

    return value


def _plan_shards(entries, max_shard_bytes):
    """{file name: [entries]}: consecutive entries in files of at most `max_shard_bytes` (one file if all fit)."""
    shards, current, size = [], [], 0
    for entry in entries:
        nbytes = _f32_bytes(entry[2])
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(entry)
        size += nbytes
    shards.append(current)
    if len(shards) == 1:
        return {WEIGHTS_FILE: shards[0]}
    return {SHARD_NAME.format(i + 1, len(shards)): shard for i, shard in enumerate(shards)}


def _f32_bytes(shape):
    """The bytes of a float32 tensor of `shape`: what gpt2tf writes (F32, the format checkpoints hold)."""
    return int(np.prod(shape)) * FORMATS["float32"].bytes_per_weight


def _write_safetensors(path, shard, value):
    """One safetensors file of float32 tensors: the header's length, the JSON header (padded to 8 bytes), the data."""
    header, offset = {}, 0
    for name, _, shape in shard:
        nbytes = _f32_bytes(shape)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for _, key, _ in shard:
            f.write(value(key).data)


def _support_files(hparams, shards):
    """{file name: JSON content} beside the weights: generation and tokenizer configs, the shards' index."""
    files = {
        "generation_config.json": {"_from_model_config": True, "bos_token_id": EOT_ID, "eos_token_id": EOT_ID},
        "tokenizer_config.json": {**TOKENIZER_CONFIG, "model_max_length": hparams.n_ctx},
        "special_tokens_map.json": {"bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT, "unk_token": ENDOFTEXT},
    }
    if len(shards) > 1:
        total = sum(_f32_bytes(shape) for shard in shards.values() for _, _, shape in shard)
        weight_map = {name: file_name for file_name, shard in shards.items() for name, _, _ in shard}
        files[INDEX_FILE] = {"metadata": {"total_size": total}, "weight_map": weight_map}
    return files


def _remove_stale_shards(out_dir, *, keep):
    """Weights of an earlier, differently sharded save in `out_dir` would confuse a reader: remove them."""
    for old in [*out_dir.glob("model-*-of-*.safetensors"), out_dir / WEIGHTS_FILE, out_dir / INDEX_FILE]:
        if old.name not in keep and old.exists():
            old.unlink()

"""Weight-only int8 and bfloat16 for decoding: the formats, quantizing float32 weights as they load, and the
saved layout.

Decoding reads every weight once per token, so on a CPU its speed is the bytes of the weights over the memory's read
rate. Stored as int8 a weight is 1 byte, as bfloat16 2, against float32's 4; the native kernels (`native`) read
them as stored and compute in float32.

- `int8`: each row of a stored matrix (a projection's output, a token's embedding row) is `q * scale`:
  `scale = max|row| / 127` (float32; 0 for a row of zeros) and `q = round_half_even(row / scale)` in [-127, 127].
  Products are computed as `(x . q) * scale`, each output scaled once.
- `bf16`: each weight rounded to the nearest bfloat16 (ties to even), computed in float32.

Only the projections' `w` and the token embedding `wte` (used for the lookup and the tied logits) are stored so;
they are over 99% of the bytes. Biases, gains and the position embedding stay float32.

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

import ml_dtypes  # NumPy's bfloat16 (a TensorFlow dependency)
import numpy as np
import tensorflow as tf

from gpt2tf.errors import GPT2TFError
from gpt2tf.files import check_output_dir
from gpt2tf.layout import HPARAMS_FILE, QUANTIZED_FILE, QUANTIZED_PREFIX
from gpt2tf.model import STORED_DTYPES

LAYOUT_NAME = "gpt2tf-quantized"
LAYOUT_VERSION = 1
INT8_MAX = 127  # symmetric: -128 is never used, so q and -q are both representable
QUANTIZE_BLOCK_FLOATS = 1 << 18  # 1 MB of float32 per block: the passes over it stay in cache


def quantize_int8(value):
    """(q int8, scale float32) of a float32 tensor, each row (over the last axis) quantized on its own: NumPy arrays.

    Done in NumPy a block of rows at a time (~1 MB, in cache), so the only big buffers are the input and the int8
    result, and the temporaries go back to the system when freed (TensorFlow's allocator keeps what it frees for
    reuse, which would leave the float32 temporaries of a big model's load in the process for good).
    """
    value = _as_numpy(value)
    rows = value.reshape(-1, value.shape[-1])  # [rows, width]
    q = np.empty(rows.shape, np.int8)
    scale = np.empty(rows.shape[0], np.float32)
    block = max(1, QUANTIZE_BLOCK_FLOATS // max(rows.shape[1], 1))
    work = np.empty((min(block, rows.shape[0]), rows.shape[1]), np.float32)
    for i in range(0, rows.shape[0], block):
        part, temp = rows[i : i + block], work[: len(rows[i : i + block])]
        np.abs(part, out=temp)
        scale[i : i + block] = temp.max(axis=1) / np.float32(INT8_MAX)
        _quantize_into(part, scale[i : i + block, None], temp, q[i : i + block])
    return q.reshape(value.shape), scale.reshape(value.shape[:-1])


def quantize_int8_columns(value):
    """(q int8 [n, m], scale float32 [m]) of a float32 [n, m], each column quantized on its own: `quantize_int8` of
    the transpose, transposed (bit for bit), without making a float32 transposed copy."""
    value = _as_numpy(value)
    n, m = value.shape
    block = max(1, QUANTIZE_BLOCK_FLOATS // max(m, 1))
    work = np.empty((min(block, n), m), np.float32)
    top = np.zeros(m, np.float32)
    for i in range(0, n, block):
        part, temp = value[i : i + block], work[: len(value[i : i + block])]
        np.abs(part, out=temp)
        np.maximum(top, temp.max(axis=0), out=top)  # NaN propagates: a NaN weight makes its scale NaN
    scale = top / np.float32(INT8_MAX)
    q = np.empty((n, m), np.int8)
    for i in range(0, n, block):
        part = value[i : i + block]
        _quantize_into(part, scale[None, :], work[: len(part)], q[i : i + block])
    return q, scale


def _quantize_into(part, scale, temp, out):
    """out = clip(round_half_even(part / scale), -127, 127) as int8; a zero scale (a zero row) divides by 1."""
    np.divide(part, np.where(scale > 0, scale, np.float32(1)), out=temp)
    np.rint(temp, out=temp)  # half to even
    np.clip(temp, -INT8_MAX, INT8_MAX, out=temp)
    with np.errstate(invalid="ignore"):  # a NaN weight (refused by the caller, through its NaN scale)
        out[...] = temp  # whole numbers in range: exact


def _as_numpy(value):
    value = value.numpy() if hasattr(value, "numpy") else np.asarray(value)  # a CPU tensor's buffer, not a copy
    return value if value.dtype == np.float32 else value.astype(np.float32)


def to_bfloat16(value):
    """A float32 tensor rounded to the nearest bfloat16 (ties to even), as a NumPy array."""
    return _as_numpy(value).astype(ml_dtypes.bfloat16)


def encode(value, weight_format):
    """A float32 weight in the model's layout as `weight_format` stores it: (stored, scale or None)."""
    if weight_format == "int8":
        return quantize_int8(value)
    if weight_format == "bf16":
        return to_bfloat16(value), None
    return tf.convert_to_tensor(value, tf.float32), None


def encode_projection(value, weight_format):
    """A projection's weight as OpenAI's checkpoint holds it (`[1, n_in, n_out]`) stored as the model holds it
    (`[1, n_out, n_in]`): quantized per output (column) first, then transposed, so no float32 transposed copy is
    made, only a stored (1- or 2-byte) one. Equal to `encode` of the transposed value, bit for bit."""
    value = _as_numpy(value)
    if weight_format == "bf16":
        return np.ascontiguousarray(to_bfloat16(value)[0].T)[None], None
    q, scale = quantize_int8_columns(value[0])
    return np.ascontiguousarray(q.T)[None], scale[None]  # [1, n_out, n_in], [1, n_out]


def dequantize(stored, scale=None):
    """The float32 values a stored weight stands for."""
    value = tf.cast(stored, tf.float32)
    return value if scale is None else value * tf.cast(scale, tf.float32)[..., None]


# ---------------------------------------------------------------------------------------------------------------
# The saved layout


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
            and weights in STORED_DTYPES
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
    from gpt2tf.checkpoint import checkpoint_key, write_bundle, write_model_files, writing_dir
    from gpt2tf.files import write_text_atomic

    if model.weight_format == "float32":
        raise GPT2TFError(
            "this model holds float32 weights: load it with weights='int8' or 'bf16' to save it "
            "quantized (or save it with save_openai_checkpoint)"
        )
    out_dir = Path(out_dir)
    check_output_dir(out_dir, marker=QUANTIZED_FILE, what="quantized model")
    with writing_dir(out_dir) as (work, _):
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
    from gpt2tf.checkpoint import _read_index, check_tensor_names_and_shapes, checkpoint_key, first_line, load_hparams
    from gpt2tf.model import GPT2

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
    found_shapes, found_dtypes = _read_index(prefix)
    check_tensor_names_and_shapes(found_shapes, {k: tuple(v.shape) for k, v in variables.items()}, prefix)
    for key, variable in variables.items():
        if found_dtypes[key] != tf.as_dtype(variable.dtype):
            raise GPT2TFError(
                f"{prefix}: tensor {key} is {found_dtypes[key].name}, not {variable.dtype}: the "
                f"quantized model dir is damaged; save it again"
            )
    for key in sorted(variables, key=lambda k: -int(np.prod(found_shapes[k]))):
        try:
            (value,) = tf.raw_ops.RestoreV2(
                prefix=prefix, tensor_names=[key], shape_and_slices=[""], dtypes=[found_dtypes[key]]
            )
        except tf.errors.OpError as err:
            raise GPT2TFError(
                f"cannot read tensor {key} from {prefix} ({first_line(err)}): the file is corrupt; "
                f"save the quantized model again"
            ) from None
        if value.dtype.is_floating and not bool(tf.reduce_all(tf.math.is_finite(tf.cast(value, tf.float32)))):
            raise GPT2TFError(f"tensor {key} in {prefix} holds NaN or infinite values: save the quantized model again")
        variables[key].assign(value)
    return model

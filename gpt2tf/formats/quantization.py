"""Weight-only int8 and bfloat16: how a float32 weight becomes the stored one (and back), with no file format.

- `int8`: each row of a stored matrix (a projection's output, a token's embedding row) is `q * scale`:
  `scale = max|row| / 127` (float32; 0 for a row of zeros) and `q = round_half_even(row / scale)` in [-127, 127].
  Products are computed as `(x . q) * scale`, each output scaled once.
- `bf16`: each weight rounded to the nearest bfloat16 (ties to even), computed in float32.

Only the projections' `w` and the token embedding `wte` are stored so (`gpt2tf.formats.tensors.is_stored_quantized`);
they are over 99% of the bytes. Biases, gains and the position embedding stay float32. The saved dir of a quantized
model is `gpt2tf.formats.quantized`'s.
"""

import ml_dtypes  # NumPy's bfloat16 (a TensorFlow dependency)
import numpy as np
import tensorflow as tf

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

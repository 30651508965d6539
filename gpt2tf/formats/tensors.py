"""What every weight format shares: a model's weights named by OpenAI's checkpoint keys, which of them are
projections, the completeness check, and filling a model's weights from any reader.

A model variable's checkpoint key is its Keras path rooted at `model/` (`model/h0/attn/c_attn/w`): the layers are
named as OpenAI's checkpoint (`gpt2tf.model`), so every format maps its own names onto these keys and nothing else.
The projections' weights (`.../w`) are held transposed by the model (`[1, n_out, n_in]`, `gpt2tf.model.Conv1D`) and
stored `[1, n_in, n_out]` in OpenAI's layout; they and the token embedding are what a quantized model stores in
fewer bytes.
"""

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tensorflow as tf

from gpt2tf.errors import GPT2TFError
from gpt2tf.formats.quantization import encode, encode_projection
from gpt2tf.layout import HPARAMS_FILE

EMBEDDING_KEY = "model/wte"
FINITE_CHECK_ELEMENTS = 1 << 22  # elements per is-finite check: its bool temporary stays 4 MB


def checkpoint_key(variable):
    """A model variable's checkpoint key: its path, rooted at `model/` whatever the Keras model is named."""
    return "model/" + variable.path.split("/", 1)[1]


def is_projection(key):
    """Whether `key` is a projection's weight (c_attn, c_proj, c_fc): held transposed by the model."""
    return key.endswith("/w")


def is_stored_quantized(key):
    """Whether a quantized model stores the weight `key` in its format (the rest stay float32)."""
    return is_projection(key) or key == EMBEDDING_KEY


def checkpoint_shape(variable):
    """The shape of a model variable's tensor in the checkpoint: `[1, n_in, n_out]` for a projection's weight."""
    shape = tuple(variable.shape)
    return (shape[0], shape[2], shape[1]) if is_projection(checkpoint_key(variable)) else shape


def to_checkpoint_layout(key, tensor):
    """A model variable's value as the checkpoint stores it (and back again: the transposition is its own inverse)."""
    return tf.transpose(tensor, [0, 2, 1]) if is_projection(key) else tensor  # [1, a, b] -> [1, b, a]


def checkpoint_variables(model):
    """{checkpoint key: variable} for the weights a float32 checkpoint holds: every weight of a float32 model; of
    a quantized one, all but the scales (`<key>_scale`, which quantizing makes from the weight beside them)."""
    variables = {checkpoint_key(v): v for v in model.weights}
    return {k: v for k, v in variables.items() if not (k.endswith("_scale") and k[: -len("_scale")] in variables)}


def require_float_weights(model):
    """Refuse to write a quantized model where float32 weights belong."""
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


def _some(items, limit=5):
    shown = ", ".join(items[:limit])
    return f"[{shown}{f', ... ({len(items)} in all)' if len(items) > limit else ''}]"


def all_finite(value):
    """Whether a float tensor holds no NaN or infinite value: checked a slice at a time, so the check's temporary
    stays small beside a big tensor (1558M's wte is 321 MB), at memory speed (check_numerics is much slower: see
    docs/performance.md)."""
    flat = tf.reshape(value, [-1])
    size = int(flat.shape[0])
    return all(
        bool(tf.reduce_all(tf.math.is_finite(flat[i : i + FINITE_CHECK_ELEMENTS])))
        for i in range(0, size, FINITE_CHECK_ELEMENTS)
    )


def fill_weights(model, read, sizes, *, source, hint):
    """Assign every weight of `model` from `read(key)` (its value in OpenAI's layout, any float type), checking
    each for NaN and infinite values as it arrives; `sizes` ({key: elements}) orders the reads, big first.

    Reading is bound by page faults on the freshly allocated tensors, which run in parallel across cores; the
    weights' own buffers were never touched (EmptyInitializer), and `assign` adopts each read (or transposed)
    tensor's buffer, so the peak is one copy of the weights plus a tensor per thread. The reads release the GIL.
    A model with int8 or bf16 weights gets each stored weight quantized in the reading thread, so only the
    quantized tensors stay: the peak is the quantized model plus a float32 tensor per thread.
    On any error the model's weights are unspecified, and the error says so.
    """
    variables = checkpoint_variables(model)
    everything = {checkpoint_key(v): v for v in model.weights}
    quantized = model.weight_format != "float32"

    def load(key):
        value = tf.convert_to_tensor(read(key))  # once: a NumPy value would be converted by each op below
        if not quantized or not is_stored_quantized(key):
            return (to_checkpoint_layout(key, value), None), all_finite(value)  # the transposition is its own inverse
        stored = (encode_projection if is_projection(key) else encode)(value, model.weight_format)
        if stored[1] is not None:  # int8: a NaN or infinite weight makes its row's scale so
            return stored, bool(np.isfinite(stored[1]).all())
        return stored, all_finite(value)

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

"""The GPT-2 network: Keras 3 layers (TensorFlow backend) that compute exactly what OpenAI's `model.py` computes.

Layer and weight names are OpenAI's (`wte`, `wpe`, `h{i}/ln_1`, `attn/c_attn`, `mlp/c_fc`, `w`, `b`, `g`), so every
variable's `path` equals its checkpoint key (`model/h0/attn/c_attn/w`) and restoring is a loop; the projections'
weights `w` are held transposed (see `Conv1D`). Under a mixed-precision policy the matmuls run in the compute dtype
while LayerNorm, softmax and logits stay in float32.

The key/value cache for decoding is a tuple with one `(keys, values)` pair per layer, each `[batch, n_head,
max_length, head_size]`, preallocated by `init_cache` and written in place at `cache_index` with a
dynamic-update-slice, so a decode loop under `tf.function(jit_compile=True)` keeps fixed shapes and never retraces.
Keys and values are separate tensors so attention reads them where they are: slicing one stacked tensor would make
XLA copy the whole cache every step.

Two seams, both explicit. `kernels=` (on `call`, `head` and every layer's call) is a kernel backend such as
`gpt2tf.kernels.native.NativeKernels`, which the decode runner passes inside its XLA-compiled functions: where
`kernels.matmul_applies(...)` (or `attention_applies`) says so, the product (or the one-token attention) is its;
elsewhere, and with `kernels=None`, the model's own TensorFlow ops compute it. `Conv1D.adapter` is a hook that adds
`adapter(x)` to a projection's output (LoRA's low-rank update, `gpt2tf.train.lora`); None by default.
"""

import math
import os

import keras
import tensorflow as tf
from tensorflow.compiler.tf2xla.python import xla

from gpt2tf.errors import GPT2TFError
from gpt2tf.hparams import HParams
from gpt2tf.layout import MASKED_VALUE
from gpt2tf.weight_formats import FORMATS, WEIGHT_FORMATS

LAYER_NORM_EPSILON = 1e-5  # OpenAI's value
MASKED_SCORE = MASKED_VALUE  # OpenAI's `mask_attn_weights` value for masked positions (softmax makes it exactly 0)
GPT2_124M = HParams()  # the default shape


def _check_fits_in_memory(hparams, weight_format="float32"):
    """Refuse a shape whose weights alone exceed this machine's memory (a typo in hparams.json, say)."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return  # not knowable here: let the allocation decide
    need = FORMATS[weight_format].bytes_per_weight * hparams.num_parameters
    if need > memory:
        raise GPT2TFError(
            f"a GPT-2 of n_vocab {hparams.n_vocab}, n_ctx {hparams.n_ctx}, n_embd {hparams.n_embd}, "
            f"n_layer {hparams.n_layer} has {hparams.num_parameters:,} parameters ({need / 2**30:.1f} "
            f"GiB as {weight_format}), more than this machine's {memory / 2**30:.1f} GiB of memory; "
            f"check the hparams"
        )


class EmptyInitializer(keras.initializers.Initializer):
    """Allocates without filling: for weights a checkpoint restore overwrites at once (saves a pass over memory).

    Weights of one shape and dtype share one empty buffer until they are assigned (TensorFlow gives a variable a
    buffer of its own when it is assigned, never writing into a shared one): each allocation costs resident memory
    even unwritten (about 0.5 MB under oneDNN's allocator; docs/performance.md), and a model has ~150 weights of a
    dozen shapes. `release()` drops the shared buffers once the model is built.
    """

    def __init__(self):
        self._empty = {}

    def __call__(self, shape, dtype=None):
        key = (tuple(shape), tf.as_dtype(dtype or "float32"))
        if key not in self._empty:
            self._empty[key] = tf.raw_ops.Empty(shape=key[0], dtype=key[1], init=False)
        return self._empty[key]

    def release(self):
        self._empty.clear()


def _initializers(kind, n_layer):
    """OpenAI's initialisation (normal 0.02, wpe 0.01, zero biases, unit gains), or none at all for restoring."""
    if kind == "empty":
        empty = EmptyInitializer()
        return dict(w=empty, proj_w=empty, b=empty, g=empty, wte=empty, wpe=empty)
    if kind != "random":
        raise ValueError(f"initializer must be 'random' or 'empty', got {kind!r}")
    return dict(
        w=keras.initializers.RandomNormal(stddev=0.02),
        # GPT-2 paper: residual projections scaled by 1/sqrt(number of residual layers).
        proj_w=keras.initializers.RandomNormal(stddev=0.02 / math.sqrt(2 * n_layer)),
        b=keras.initializers.Zeros(),
        g=keras.initializers.Ones(),
        wte=keras.initializers.RandomNormal(stddev=0.02),
        wpe=keras.initializers.RandomNormal(stddev=0.01),
    )


class LayerNorm(keras.layers.Layer):
    """Normalise the last axis (biased variance, epsilon 1e-5), then scale by `g` and shift by `b`; in float32."""

    def __init__(self, *, init, **kwargs):
        super().__init__(dtype="float32", **kwargs)
        self.init = init

    def build(self, input_shape):
        n_state = input_shape[-1]
        self.g = self.add_weight(name="g", shape=(n_state,), initializer=self.init["g"])
        self.b = self.add_weight(name="b", shape=(n_state,), initializer=self.init["b"])

    def call(self, x):
        x = tf.cast(x, tf.float32)
        mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
        return (x - mean) * tf.math.rsqrt(variance + LAYER_NORM_EPSILON) * self.g + self.b


def _add_stored_weight(layer, name, shape, init, weight_format, *, autocast=True):
    """A weight as `weight_format` stores it (`gpt2tf.weight_formats`): float32, or int8 / bfloat16 for decoding
    (`gpt2tf.formats.quantized`), with a scaled format's per-row scale as `<name>_scale` (shape[:-1]; each row is
    quantized over the last axis). Returns (weight, scale or None)."""
    if weight_format == "float32":
        return layer.add_weight(name=name, shape=shape, initializer=init, autocast=autocast), None
    if not isinstance(init, EmptyInitializer):
        raise GPT2TFError(
            f"a model with {weight_format} weights is only made by quantizing a checkpoint: load one "
            f"with gpt2tf.load_model(..., weights={weight_format!r})"
        )
    stored = FORMATS[weight_format]
    weight = layer.add_weight(
        name=name, shape=shape, initializer=init, dtype=stored.stored_dtype, trainable=False, autocast=False
    )
    scale = None
    if stored.scaled:
        scale = layer.add_weight(
            name=f"{name}_scale", shape=shape[:-1], initializer=init, trainable=False, autocast=False
        )
    return weight, scale


def project(x, w, scale=None, *, kernels=None):
    """`x @ transpose(w)` for x [m, k] and w [n, k]: the kernel backend's product where it applies, else TensorFlow's.

    w may be a stored weight (`gpt2tf.weight_formats`): int8 with `scale` [n] (the result is `(x @ w^T) * scale`,
    each output scaled once) or bfloat16. A kernel reads it as stored; TensorFlow (or XLA) converts it whole to x's
    dtype for the product.
    """
    w = tf.convert_to_tensor(w)  # a Keras variable's dtype is a string
    if kernels is not None and kernels.matmul_applies(x, w):
        return kernels.matmul_transposed(x, w, scale)
    y = tf.matmul(x, tf.cast(w, x.dtype), transpose_b=True)
    return y if scale is None else y * tf.cast(scale, y.dtype)


class Conv1D(keras.layers.Layer):
    """OpenAI's `conv1d`, a dense layer `x w + b`, with its weight held transposed: `w [1, n_out, n_in]`.

    OpenAI's checkpoint stores `w` as `[1, n_in, n_out]`; `gpt2tf.formats` transposes it on the way in and out.
    Held this way, the weights of each output are contiguous, so decoding one token reads every weight in one
    sequential stream (see `gpt2tf.kernels`), which a CPU's memory serves faster than several interleaved rows.
    With int8 weights `w_scale [1, n_out]` holds each output's scale.

    `adapter`, if set, is called on the layer's input as `[rows, n_in]` and its `[rows, n_out]` result added to the
    output (LoRA); it is not a Keras layer, so its variables are not the model's weights.
    """

    def __init__(self, n_in, n_out, *, init, w_init="w", weight_format="float32", **kwargs):
        super().__init__(**kwargs)
        self.n_in, self.n_out, self.init, self.w_init = n_in, n_out, init, w_init
        self.weight_format = weight_format
        self.adapter = None

    def build(self, input_shape=None):
        self.w, self.w_scale = _add_stored_weight(
            self, "w", (1, self.n_out, self.n_in), self.init[self.w_init], self.weight_format
        )
        self.b = self.add_weight(name="b", shape=(self.n_out,), initializer=self.init["b"])

    def call(self, x, kernels=None):
        dtype = self.compute_dtype
        x2d = tf.reshape(x, [-1, self.n_in])  # [batch*seq, n_in]: one plain matmul beats a batched one on CPU
        if self.weight_format == "float32":
            w, scale = tf.reshape(tf.cast(self.w, dtype), [self.n_out, self.n_in]), None  # [n_out, n_in]
        else:  # stored as it is, for the kernel to read: [n_out, n_in] int8 / bfloat16, scale [n_out]
            w = tf.reshape(self.w, [self.n_out, self.n_in])
            scale = None if self.w_scale is None else tf.reshape(self.w_scale, [self.n_out])
        y = tf.nn.bias_add(project(x2d, w, scale, kernels=kernels), tf.cast(self.b, dtype))  # [batch*seq, n_out]
        if self.adapter is not None:
            y = y + self.adapter(x2d)
        if x.shape.is_fully_defined():  # static shapes (the compiled decode step): fewer ops to trace and compile
            return tf.reshape(y, x.shape[:-1] + [self.n_out])
        return tf.reshape(y, tf.concat([tf.shape(x)[:-1], [self.n_out]], 0))  # [..., n_out]


class Attention(keras.layers.Layer):
    """Multi-head causal self-attention with an optional in-place key/value cache."""

    def __init__(self, hparams, *, init, weight_format="float32", **kwargs):
        super().__init__(**kwargs)
        d = hparams.n_embd
        self.n_head, self.head_size = hparams.n_head, hparams.head_size
        stored = dict(init=init, weight_format=weight_format, dtype=self.dtype_policy)
        self.c_attn = Conv1D(d, 3 * d, name="c_attn", **stored)
        self.c_proj = Conv1D(d, d, w_init="proj_w", name="c_proj", **stored)

    def build(self, input_shape=None):
        self.c_attn.build()
        self.c_proj.build()

    def call(self, x, mask, cache=None, cache_index=None, kernels=None, window=None):
        """`window` (an int): attend over the cache's first `window` slots only (they must hold every slot before
        `cache_index`), still writing into the whole cache; for fixed-shape runtimes (the LiteRT export), where
        reading fewer slots is the only way a short sequence costs less."""
        batch, seq = tf.shape(x)[0], tf.shape(x)[1]
        qkv = self.c_attn(x, kernels=kernels)  # [batch, seq, 3 * n_embd]: q, k, v concatenated in that order
        qkv = tf.reshape(qkv, [batch, seq, 3, self.n_head, self.head_size])
        q, k, v = tf.unstack(tf.transpose(qkv, [2, 0, 3, 1, 4]))  # each [batch, n_head, seq, head_size]
        # Scale q rather than the scores (fewer multiplies, no fp16 overflow); same value as OpenAI's w * rsqrt(hs).
        q = q * tf.cast(1.0 / math.sqrt(self.head_size), q.dtype)
        if cache is None:
            scores = tf.cast(tf.matmul(q, k, transpose_b=True), tf.float32)  # [batch, n_head, seq, seq]
            probs = tf.cast(tf.nn.softmax(tf.where(mask, scores, MASKED_SCORE), axis=-1), x.dtype)
            out = tf.matmul(probs, v)  # [batch, n_head, seq, head_size]
        else:
            # Attend over the cache as it was (slots before cache_index) and over this call's own keys, one softmax
            # across both; then write this call's keys and values at cache_index. Reading the cache only before
            # the write lets XLA update it in place: attending over the updated cache would make it copy the cache.
            cached_mask, own_mask = mask
            old_k, old_v = (tf.cast(c, x.dtype) for c in cache)  # each [batch, n_head, max_length, head_size]
            if window is not None:
                old_k, old_v, cached_mask = old_k[:, :, :window], old_v[:, :, :window], cached_mask[..., :window]
            if kernels is not None and kernels.attention_applies(q, cache):  # one new token: the kernel's attention
                out = kernels.attend(q, old_k, old_v, k, v, cached_mask, own_mask)
            else:  # a cache may have more rows than x (the engine steps its first rows): x's rows are its first
                rows = x.shape[0] if x.shape[0] is not None and x.shape[0] < old_k.shape[0] else None
                out = self._attend_cache(q, k, v, old_k[:rows], old_v[:rows], cached_mask, own_mask)
            # `after` (0 for finite values) makes the write depend on the reads above, so XLA can see the old cache
            # is no longer needed when it is written and updates it in place; otherwise it copies it every step.
            after = tf.cast(out[:, :1, :1, :1], tf.float32) * 0.0  # per row: a NaN stays in its own row
            new = [tf.cast(tf.cast(t, tf.float32) + after, c.dtype) for c, t in zip(cache, (k, v))]
            if cache_index.shape.rank == 0:  # every row writes at the same slot
                at = tf.stack([0, 0, cache_index, 0])
                cache = tuple(xla.dynamic_update_slice(c, t, at) for c, t in zip(cache, new))
            elif x.shape[0] is None:  # a batch of unknown size (the export), one token per row: one select
                slot = tf.one_hot(cache_index, tf.shape(cache[0])[2], on_value=True, off_value=False, dtype=tf.bool)[
                    :, None, :, None
                ]  # [batch, 1, max_length, 1]
                cache = tuple(tf.where(slot, t, c) for c, t in zip(cache, new))
            else:  # row r writes at its own slot cache_index[r] (a static batch: one in-place update per row)
                cache = list(cache)
                for r in range(x.shape[0]):
                    at = tf.stack([r, 0, cache_index[r], 0])
                    cache = [xla.dynamic_update_slice(c, t[r : r + 1], at) for c, t in zip(cache, new)]
                cache = tuple(cache)
        out = tf.reshape(tf.transpose(out, [0, 2, 1, 3]), [batch, seq, self.n_head * self.head_size])
        return self.c_proj(out, kernels=kernels), cache

    @staticmethod
    def _attend_cache(q, k, v, old_k, old_v, cached_mask, own_mask):
        """Attention over the cache as it was (masked slots excluded) and over this call's own keys, one softmax."""
        old_scores = tf.where(
            cached_mask, tf.cast(tf.matmul(q, old_k, transpose_b=True), tf.float32), MASKED_SCORE
        )  # [batch, n_head, seq, max_length]
        own_scores = tf.where(
            own_mask, tf.cast(tf.matmul(q, k, transpose_b=True), tf.float32), MASKED_SCORE
        )  # [batch, n_head, seq, seq]
        top = tf.maximum(tf.reduce_max(old_scores, -1, keepdims=True), tf.reduce_max(own_scores, -1, keepdims=True))
        old_exp, own_exp = tf.exp(old_scores - top), tf.exp(own_scores - top)
        total = tf.reduce_sum(old_exp, -1, keepdims=True) + tf.reduce_sum(own_exp, -1, keepdims=True)
        return tf.matmul(tf.cast(old_exp / total, q.dtype), old_v) + tf.matmul(
            tf.cast(own_exp / total, q.dtype), v
        )  # [batch, n_head, seq, head_size]


class MLP(keras.layers.Layer):
    """Position-wise feed-forward: c_fc (4x wider), tanh-approximate GELU, c_proj."""

    def __init__(self, hparams, *, init, weight_format="float32", **kwargs):
        super().__init__(**kwargs)
        d = hparams.n_embd
        stored = dict(init=init, weight_format=weight_format, dtype=self.dtype_policy)
        self.c_fc = Conv1D(d, 4 * d, name="c_fc", **stored)
        self.c_proj = Conv1D(4 * d, d, w_init="proj_w", name="c_proj", **stored)

    def build(self, input_shape=None):
        self.c_fc.build()
        self.c_proj.build()

    def call(self, x, kernels=None):
        # tf.nn.gelu(approximate=True) is OpenAI's 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
        return self.c_proj(tf.nn.gelu(self.c_fc(x, kernels=kernels), approximate=True), kernels=kernels)


class Block(keras.layers.Layer):
    """One pre-LayerNorm transformer block: two residual lines."""

    def __init__(self, hparams, *, init, weight_format="float32", **kwargs):
        super().__init__(**kwargs)
        self.ln_1 = LayerNorm(init=init, name="ln_1")
        self.attn = Attention(hparams, init=init, weight_format=weight_format, name="attn", dtype=self.dtype_policy)
        self.ln_2 = LayerNorm(init=init, name="ln_2")
        self.mlp = MLP(hparams, init=init, weight_format=weight_format, name="mlp", dtype=self.dtype_policy)
        self.n_embd = hparams.n_embd
        self.recompute = False  # set through GPT2.recompute

    def build(self, input_shape=None):
        for layer in (self.ln_1, self.attn, self.ln_2, self.mlp):
            layer.build((None, None, self.n_embd))

    def call(self, x, mask, cache=None, cache_index=None, kernels=None, window=None):
        if self.recompute and cache is None:
            # Keep only the block's input for the backward pass and recompute the rest there (tf.recompute_grad
            # finds the variables by watching them; the mask is a constant of the closure).
            return tf.recompute_grad(lambda h: self._forward(h, mask, None, None, None)[0])(x), None
        return self._forward(x, mask, cache, cache_index, kernels, window)

    def _forward(self, x, mask, cache, cache_index, kernels, window=None):
        a, cache = self.attn(self.ln_1(x), mask, cache, cache_index, kernels=kernels, window=window)
        x = x + a
        x = x + self.mlp(self.ln_2(x), kernels=kernels)
        return x, cache


class GPT2(keras.Model):
    """GPT-2. `model(token_ids)` gives float32 logits `[batch, seq, n_vocab]`.

    With `cache=` (from `init_cache`) and `cache_index=` (where the given tokens start: a scalar for every row, or
    `[batch]`, each row's own slot, as the decode engine gives one token per row) it returns `(logits, cache)`, the
    cache holding these tokens' keys and values too. `padding_mask` (`[batch, seq]`, or
    `[batch, max_length]` with a cache; true for real tokens) lets rows of unequal length share a batch:
    padded positions are never attended to and position ids count real tokens only.

    `weight_format` "int8" or "bf16" holds the projections' weights and the token embedding as
    `gpt2tf.formats.quantized` stores them, for decoding (float32 compute; see `gpt2tf.load_model(..., weights=)`);
    "float32" otherwise.
    """

    def __init__(
        self, hparams=GPT2_124M, *, initializer="random", dtype=None, weight_format="float32", name="model", **kwargs
    ):
        if weight_format not in WEIGHT_FORMATS:
            raise GPT2TFError(f"weights must be one of {', '.join(WEIGHT_FORMATS)}, got {weight_format!r}")
        _check_fits_in_memory(hparams, weight_format)
        super().__init__(name=name, dtype=dtype, **kwargs)
        if weight_format != "float32" and self.dtype_policy.compute_dtype != "float32":
            raise GPT2TFError(
                f"{weight_format} weights compute in float32: drop the mixed precision "
                f"({self.dtype_policy.name}), which is for float32 weights on a GPU"
            )
        self.hparams = hparams
        self.weight_format = weight_format
        self._init = _initializers(initializer, hparams.n_layer)
        self.h = [
            Block(hparams, init=self._init, weight_format=weight_format, name=f"h{i}", dtype=self.dtype_policy)
            for i in range(hparams.n_layer)
        ]
        self.ln_f = LayerNorm(init=self._init, name="ln_f")
        self.build()
        for init in set(self._init.values()):  # the weights hold the empty buffers they need
            if isinstance(init, EmptyInitializer):
                init.release()

    def build(self, input_shape=None):
        hp = self.hparams
        # autocast=False: the model casts these itself, so the tied logits see the float32 embedding.
        self.wte, self.wte_scale = _add_stored_weight(
            self, "wte", (hp.n_vocab, hp.n_embd), self._init["wte"], self.weight_format, autocast=False
        )
        self.wpe = self.add_weight(
            name="wpe", shape=(hp.n_ctx, hp.n_embd), initializer=self._init["wpe"], autocast=False
        )
        for block in self.h:
            block.build()
        self.ln_f.build((None, None, hp.n_embd))
        self.built = True

    @property
    def recompute(self):
        """Whether the blocks recompute their activations in the backward pass (less memory, ~1/3 more compute)."""
        return self.h[0].recompute if self.h else False

    @recompute.setter
    def recompute(self, on):
        for block in self.h:
            block.recompute = bool(on)

    def init_cache(self, batch_size, max_length):
        """A zero key/value cache: a `(keys, values)` pair per layer, each `[batch, n_head, max_length, head_size]`."""
        hp = self.hparams
        shape = [batch_size, hp.n_head, max_length, hp.head_size]
        return tuple(
            (tf.zeros(shape, self.compute_dtype), tf.zeros(shape, self.compute_dtype)) for _ in range(hp.n_layer)
        )

    def embed(self, token_ids, cache_index=None, padding_mask=None, max_length=None, lookup=None):
        """The blocks' input `[batch, seq, n_embd]` and attention mask for these tokens (see `call`). `lookup`, if
        given, maps token ids to their float32 embeddings instead of the model's own rows of `wte` (the LiteRT
        int8 export reads them from the head's int8 copy of the embedding, `gpt2tf.export.litert`)."""
        token_ids = tf.convert_to_tensor(token_ids)
        seq = tf.shape(token_ids)[1]
        start = tf.zeros([], tf.int32) if cache_index is None else tf.cast(cache_index, tf.int32)
        per_row = start.shape.rank == 1  # each row's own start: [batch]
        query_pos = (start[:, None] if per_row else start) + tf.range(seq)  # [batch, seq] or [seq]: slots
        mask = (tf.range(seq)[None, :] <= tf.range(seq)[:, None])[None, None]  # [1, 1, seq, seq] causal
        if padding_mask is None:
            positions = query_pos if per_row else query_pos[None]  # [batch or 1, seq]
        else:
            padding_mask = tf.cast(padding_mask, tf.bool)  # [batch, seq], or [batch, max_length] with a cache
            real_before = tf.cumsum(tf.cast(padding_mask, tf.int32), axis=1)  # [batch, keys]
            gather = lambda t: tf.gather(t, query_pos, axis=1, batch_dims=1 if per_row else 0)  # noqa: E731
            positions = tf.maximum(gather(real_before) - 1, 0)  # [batch, seq]
            mask = mask & gather(padding_mask)[:, None, None, :]  # [batch, 1, seq, seq]
        if max_length is not None:
            # With a cache, tokens see the cached slots before `start` (real ones only) and, causally, each other.
            cached = tf.range(max_length) < (start[:, None] if per_row else start)  # [batch, max_length] / [max_length]
            if padding_mask is not None:
                cached = cached & padding_mask  # [batch, max_length]
            cached = cached[:, None, None, :] if cached.shape.rank == 2 else cached[None, None, None, :]
            mask = (cached, mask)
        rows = (lookup or self._token_embeddings)(token_ids)
        x = tf.cast(rows + tf.gather(self.wpe, positions), self.compute_dtype)
        return x, mask

    def _token_embeddings(self, token_ids):
        """float32 `[batch, seq, n_embd]`: rows of wte (int8 rows times their scale)."""
        rows = tf.cast(tf.gather(self.wte, token_ids), tf.float32)
        return rows if self.wte_scale is None else rows * tf.gather(self.wte_scale, token_ids)[..., None]

    def head(self, x, kernels=None):
        """Float32 logits `[batch, seq, n_vocab]` from the last block's output."""
        x = self.ln_f(x)  # float32
        d = self.hparams.n_embd
        wte = self.wte if self.weight_format != "float32" else tf.cast(self.wte, tf.float32)  # as stored, for kernels
        logits = project(tf.reshape(x, [-1, d]), wte, self.wte_scale, kernels=kernels)  # the tied embedding
        if x.shape.is_fully_defined():
            return tf.reshape(logits, x.shape[:-1] + [self.hparams.n_vocab])
        return tf.reshape(logits, tf.concat([tf.shape(x)[:-1], [self.hparams.n_vocab]], 0))  # [batch, seq, n_vocab]

    def call(self, token_ids, cache=None, cache_index=None, padding_mask=None, kernels=None):
        x, mask = self.embed(token_ids, cache_index, padding_mask, None if cache is None else tf.shape(cache[0][0])[2])
        start = tf.zeros([], tf.int32) if cache_index is None else tf.cast(cache_index, tf.int32)
        new_cache = []
        for i, block in enumerate(self.h):
            x, layer_cache = block(x, mask, None if cache is None else cache[i], start, kernels=kernels)
            new_cache.append(layer_cache)
        logits = self.head(x, kernels=kernels)
        if cache is None:
            return logits
        return logits, tuple(new_cache)

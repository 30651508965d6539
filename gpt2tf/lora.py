"""LoRA: low-rank adapters patched into a built model's projections, and the merged weights they make."""

import math

import keras
import numpy as np
import tensorflow as tf

from gpt2tf.checkpoint import checkpoint_key, model_tensors
from gpt2tf.model import Conv1D


class LoRA:
    """Low-rank adapters on every attention and MLP projection: `y = x W + b + (x A) B * alpha / rank`.

    B starts at zero, so the adapted model starts equal to the base; only A and B train. `merged_tensors` gives the
    checkpoint tensors with `W + A B * alpha / rank` folded in: a plain GPT-2 that needs no adapters to load.
    """

    def __init__(self, model, *, rank, alpha, seed=0):
        self.scale = alpha / rank
        self.adapters = {}  # checkpoint key of w -> (A [n_in, rank], B [rank, n_out])
        rng = np.random.default_rng(seed)
        for block in model.h:
            for layer in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj):
                key = checkpoint_key(layer.w)
                bound = 1 / math.sqrt(layer.n_in)  # A ~ U(-1/sqrt(n_in), 1/sqrt(n_in)), as in the LoRA reference code
                a = keras.Variable(
                    rng.uniform(-bound, bound, (layer.n_in, rank)).astype(np.float32),
                    name=key.replace("/", "_") + "_lora_a",
                )
                b = keras.Variable(np.zeros((rank, layer.n_out), np.float32), name=key.replace("/", "_") + "_lora_b")
                self.adapters[key] = (a, b)
                self._patch(layer, a, b)

    def _patch(self, layer, a, b):
        def call(x):
            y = Conv1D.call(layer, x)
            dtype = layer.compute_dtype
            x2d = tf.reshape(x, [-1, layer.n_in])  # [batch*seq, n_in]
            delta = tf.matmul(tf.matmul(x2d, tf.cast(a, dtype)), tf.cast(b * self.scale, dtype))
            return y + tf.reshape(delta, tf.shape(y))  # [..., n_out]

        layer.call = call

    @property
    def variables(self):
        return [v for pair in self.adapters.values() for v in pair]

    def merged_tensors(self, model):
        tensors = model_tensors(model)
        for key, (a, b) in self.adapters.items():
            tensors[key] = tensors[key] + tf.matmul(a.value, b.value * self.scale)[None]  # [1, n_in, n_out]
        return tensors

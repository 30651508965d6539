"""LoRA: low-rank adapters on a built model's projections (through `Conv1D.adapter`), and the merged weights."""

import math

import keras
import numpy as np
import tensorflow as tf

from gpt2tf.formats.tensors import checkpoint_key, model_tensors


class Adapter:
    """One projection's low-rank update, `(x A) B * scale`, called by `Conv1D` on its input `[rows, n_in]`.

    Not a Keras layer: its variables are the adapter's, not the model's weights (a checkpoint of the model holds
    none of them)."""

    def __init__(self, a, b, scale):
        self.a, self.b, self.scale = a, b, scale

    def __call__(self, x2d):
        dtype = x2d.dtype
        return tf.matmul(tf.matmul(x2d, tf.cast(self.a, dtype)), tf.cast(self.b * self.scale, dtype))  # [rows, n_out]


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
                name = key.replace("/", "_")
                bound = 1 / math.sqrt(layer.n_in)  # A ~ U(-1/sqrt(n_in), 1/sqrt(n_in)), as in the LoRA reference code
                a = keras.Variable(
                    rng.uniform(-bound, bound, (layer.n_in, rank)).astype(np.float32), name=name + "_lora_a"
                )
                b = keras.Variable(np.zeros((rank, layer.n_out), np.float32), name=name + "_lora_b")
                self.adapters[key] = (a, b)
                layer.adapter = Adapter(a, b, self.scale)

    @property
    def variables(self):
        return [v for pair in self.adapters.values() for v in pair]

    def merged_tensors(self, model):
        tensors = model_tensors(model)
        for key, (a, b) in self.adapters.items():
            tensors[key] = tensors[key] + tf.matmul(a.value, b.value * self.scale)[None]  # [1, n_in, n_out]
        return tensors

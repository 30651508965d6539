"""Precision and optimizers for fine-tuning: the dtype policy, Adafactor in factored memory, the optimizer a config
names (clipping, loss scaling), and the learning-rate schedule."""

import keras
import tensorflow as tf

from gpt2tf.errors import GPT2TFError
from gpt2tf.train.config import OPTIMIZERS, parse_epochs
from gpt2tf.train.schedules import LearningRate


def resolve_precision(precision):
    """(Keras dtype policy, whether the loss needs scaling). auto: float32 on CPU; bf16 or scaled fp16 on GPU."""
    if precision == "auto":
        gpus = tf.config.list_physical_devices("GPU")
        if not gpus:
            return "float32", False
        capability = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability", (0, 0))
        precision = "mixed_bfloat16" if tuple(capability) >= (8, 0) else "mixed_float16"
    return precision, precision == "mixed_float16"  # fp16's narrow exponent needs loss scaling; bf16's doesn't


class Adafactor(keras.optimizers.Optimizer):
    """Adafactor (Shazeer & Stern, 2018) without momentum or parameter scaling, in O(rows + cols) memory per matrix.

    Keras' own Adafactor also keeps a full-size second-moment tensor per weight, as much memory as Adam's; here the
    second moments of a matrix live only as their row and column means, and the step is lr times the normalised,
    RMS-clipped gradient, so `base_lr` means what it means for Adam.
    """

    def __init__(self, learning_rate, *, decay_rate=0.8, epsilon=1e-30, clip_threshold=1.0, name="adafactor", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.decay_rate, self.epsilon, self.clip_threshold = decay_rate, epsilon, clip_threshold

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._rows, self._cols, self._full = [], [], []
        for var in var_list:
            factored = len(var.shape) >= 2
            # Unused slots are scalars, so that each list has one entry per variable.
            self._rows.append(self.add_variable(var.shape[:-1] if factored else (), name="rows"))
            self._cols.append(self.add_variable(var.shape[:-2] + var.shape[-1:] if factored else (), name="cols"))
            self._full.append(self.add_variable(() if factored else var.shape, name="second_moment"))

    def update_step(self, gradient, variable, learning_rate):
        i = self._get_variable_index(variable)
        gradient = tf.cast(gradient, variable.dtype)
        step = tf.cast(self.iterations + 1, variable.dtype)
        beta = 1.0 - step**-self.decay_rate  # the second-moment decay grows towards 1
        squared = tf.square(gradient) + self.epsilon
        if len(variable.shape) >= 2:
            rows, cols = self._rows[i], self._cols[i]
            self.assign(rows, beta * rows + (1 - beta) * tf.reduce_mean(squared, axis=-1))
            self.assign(cols, beta * cols + (1 - beta) * tf.reduce_mean(squared, axis=-2))
            # The second moments' rank-1 fit is rows x cols / mean(rows).
            row_factor = tf.math.rsqrt(rows / tf.reduce_mean(rows, axis=-1, keepdims=True))[..., :, None]
            update = gradient * row_factor * tf.math.rsqrt(cols)[..., None, :]
        else:
            full = self._full[i]
            self.assign(full, beta * full + (1 - beta) * squared)
            update = gradient * tf.math.rsqrt(full)
        rms = tf.sqrt(tf.reduce_mean(tf.square(update)))
        update /= tf.maximum(1.0, rms / self.clip_threshold)
        self.assign_sub(variable, tf.cast(learning_rate, variable.dtype) * update)

    def get_config(self):
        return {
            **super().get_config(),
            "decay_rate": self.decay_rate,
            "epsilon": self.epsilon,
            "clip_threshold": self.clip_threshold,
        }


def make_schedule(config):
    return LearningRate(
        config.base_lr,
        steps_per_epoch=config.steps_per_epoch,
        decay_epochs=parse_epochs(config.decay_epochs),
        decay_lr=config.decay_lr,
        warmup_steps=config.warmup_steps,
        kind=config.lr_schedule,
        total_steps=config.total_steps,
    )


def make_optimizer(config, variables, *, loss_scaling):
    """The optimizer for `variables`, clipping the unscaled global gradient norm; built, so its state exists."""
    common = dict(learning_rate=make_schedule(config), global_clipnorm=config.clip_norm or None)
    if config.optimizer == "adam":
        optimizer = keras.optimizers.Adam(**common)
    elif config.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(weight_decay=config.weight_decay, **common)
        optimizer.exclude_from_weight_decay(var_list=[v for v in variables if len(v.shape) == 1])  # biases, gains
    elif config.optimizer == "adafactor":
        optimizer = Adafactor(**common)
    elif config.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(**common)
    else:
        raise GPT2TFError(f"unknown optimizer {config.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    if loss_scaling:
        # Scales the loss up and the gradients back down (so clipping sees true norms) and skips steps whose
        # gradients overflowed, lowering the scale.
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    optimizer.build(variables)
    return optimizer

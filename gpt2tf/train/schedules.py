"""The learning-rate schedule: the one place its formula is written.

Step decay as the ancestor gpt-tf2 project defined it: an epoch is `steps_per_epoch` optimizer steps, and at 0-based
epoch e the rate is `base_lr * decay_lr ** n`, n being how many of `decay_epochs` are <= e. So 5 epochs with
`decay_epochs=(4, 5)` train four epochs at `base_lr` and the fifth at `base_lr * decay_lr` (5 is never reached).
The cosine variant falls smoothly from `base_lr` to `base_lr * decay_lr` over the run instead. Either can start
with a linear warmup.
"""

import math

import keras
import tensorflow as tf

from gpt2tf.train.config import SCHEDULES


@keras.saving.register_keras_serializable(package="gpt2tf")
class LearningRate(keras.optimizers.schedules.LearningRateSchedule):
    """lr(step) for 0-based optimizer steps; serializable, so an optimizer's config round-trips."""

    def __init__(
        self, base_lr, *, steps_per_epoch, decay_epochs=(), decay_lr=0.1, warmup_steps=0, kind="step", total_steps=None
    ):
        if kind not in SCHEDULES:
            raise ValueError(f"kind must be one of {SCHEDULES}, got {kind!r}")
        if kind == "cosine" and not total_steps:
            raise ValueError("a cosine schedule needs total_steps")
        self.base_lr, self.steps_per_epoch = float(base_lr), int(steps_per_epoch)
        self.decay_epochs, self.decay_lr = tuple(int(e) for e in decay_epochs), float(decay_lr)
        self.warmup_steps, self.kind, self.total_steps = int(warmup_steps), kind, total_steps

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        if self.kind == "step":
            epoch = tf.floor(step / self.steps_per_epoch)
            decays = tf.add_n([tf.cast(epoch >= e, tf.float32) for e in self.decay_epochs] + [0.0])
            factor = self.decay_lr**decays
        else:  # cosine from 1 down to decay_lr, over the steps after warmup
            span = max(self.total_steps - self.warmup_steps, 1)
            progress = tf.clip_by_value((step - self.warmup_steps) / span, 0.0, 1.0)
            factor = self.decay_lr + (1 - self.decay_lr) * 0.5 * (1 + tf.cos(math.pi * progress))
        if self.warmup_steps:
            factor *= tf.minimum(1.0, (step + 1) / self.warmup_steps)  # step 0 already takes a small step
        return self.base_lr * factor

    def get_config(self):
        return dict(
            base_lr=self.base_lr,
            steps_per_epoch=self.steps_per_epoch,
            decay_epochs=list(self.decay_epochs),
            decay_lr=self.decay_lr,
            warmup_steps=self.warmup_steps,
            kind=self.kind,
            total_steps=self.total_steps,
        )

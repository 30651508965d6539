"""Several devices: the tf.distribute strategy a fine-tuning run uses, as one object the loop threads through.

`make_distribution(strategy, cpu_replicas)` picks it — `none` (the default strategy: one device), `mirrored` (every
GPU of this machine, or `cpu_replicas` logical CPU devices), `auto` (mirrored with more than one GPU, else none) —
and `Distribution` gives the loop what it needs of it: a scope to build the model and optimizer in, each
replica's part of a global batch (the batch axis cut into equal consecutive parts), and the sum of a per-replica
value. The step itself (`gpt2tf.trainer`) runs the same code on one device and on many: each replica's loss is
divided by the weight of the *global* batch and the gradients are summed across replicas before clipping, so N
replicas compute what one device computes on the whole batch.
"""

import os

import numpy as np
import tensorflow as tf

from gpt2tf.errors import GPT2TFError

STRATEGIES = ("auto", "none", "mirrored")


class Distribution:
    """A tf.distribute strategy and what the training loop asks of it."""

    def __init__(self, strategy, name):
        self.strategy, self.name = strategy, name
        self.replicas = strategy.num_replicas_in_sync

    def scope(self):
        return self.strategy.scope()

    def check_batch(self, batch_size):
        if batch_size % self.replicas:
            raise GPT2TFError(f"--batch_size {batch_size} does not split evenly over {self.replicas} replicas "
                              f"({self.name}): give a multiple of {self.replicas}")

    def split(self, array, dtype):
        """`array` [micro, batch, ...] (the global batch) -> each replica's consecutive part of the batch axis."""
        if self.replicas == 1:
            return tf.constant(array, dtype)
        part = array.shape[1] // self.replicas

        def value(context):
            r = context.replica_id_in_sync_group
            return tf.constant(np.ascontiguousarray(array[:, r * part:(r + 1) * part]), dtype)

        return self.strategy.experimental_distribute_values_from_function(value)

    def run(self, fn, args):
        return self.strategy.run(fn, args=args)

    def first(self, value):
        """One replica's copy of a value every replica holds the same of (a summed loss)."""
        local = self.strategy.experimental_local_results(value)
        return local[0]


def make_distribution(strategy="auto", cpu_replicas=0):
    """The Distribution for `--strategy`; call it before TensorFlow runs anything (logical devices need that)."""
    if strategy not in STRATEGIES:
        raise GPT2TFError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if cpu_replicas and strategy not in ("mirrored", "auto"):
        raise GPT2TFError("--cpu_replicas splits this machine's CPU into replicas for --strategy mirrored")
    gpus = tf.config.list_physical_devices("GPU")
    if strategy == "auto":
        strategy = "mirrored" if len(gpus) > 1 or cpu_replicas > 1 else "none"
    if strategy == "none":
        return Distribution(tf.distribute.get_strategy(), "one device")
    if cpu_replicas > 1 or not gpus:
        count = max(cpu_replicas, 1)
        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
        except RuntimeError:  # TensorFlow has run already: the devices are fixed
            if len(tf.config.list_logical_devices("CPU")) != count:
                raise GPT2TFError(f"cannot make {count} CPU replicas in this process: TensorFlow has started; "
                                  f"use a fresh process") from None
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        return Distribution(tf.distribute.MirroredStrategy(devices), f"mirrored over {count} CPU replicas")
    return Distribution(tf.distribute.MirroredStrategy(), f"mirrored over {len(gpus)} GPUs")


def replica_threads():
    """Set before TensorFlow starts: replicas on one CPU share its cores."""
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

"""Several devices: the tf.distribute strategy a fine-tuning run uses, as one object the loop threads through.

`make_distribution(strategy, cpu_replicas, peer_timeout)` picks it — `none` (the default strategy: one device),
`mirrored` (every GPU of this machine, or `cpu_replicas` logical CPU devices), `multi_worker` (the machines
`TF_CONFIG` names, each with its GPUs or its CPU), `auto` (multi_worker when TF_CONFIG names several tasks,
mirrored with more than one GPU, else none) — and `Distribution` gives the loop what it needs of it: a scope to
build the model and optimizer in, each replica's part of a global batch (the batch axis cut into equal consecutive
parts; every worker computes the same global batch, a pure function of seed and step, and takes its replicas'
parts), which process is the chief (the only one that writes the run dir), and `sync_from_chief`, which gives every
worker the chief's weights and training state after it restored them. The step itself (`gpt2tf.train.trainer`) runs
the same code on one device and on many: each replica's loss is divided by the weight of the *global* batch and the
gradients are summed across replicas before clipping, so N replicas compute what one device computes on the whole
batch.
"""

import contextlib
import socket
import time

import numpy as np
import tensorflow as tf

from gpt2tf.errors import GPT2TFError
from gpt2tf.train.config import cluster_from_env

STRATEGIES = ("auto", "none", "mirrored", "multi_worker")


class Distribution:
    """A tf.distribute strategy and what the training loop asks of it."""

    def __init__(self, strategy, name, *, is_chief=True, workers=1):
        self.strategy, self.name = strategy, name
        self.replicas = strategy.num_replicas_in_sync
        self.is_chief, self.workers = is_chief, workers

    def sync_from_chief(self, variables):
        """Give every worker the chief's values of `variables` (weights, optimizer slots, step...): an all-reduce in
        which only the first replica contributes, so the sum is its value, exactly."""
        if self.workers == 1:
            return
        variables = list(variables)

        def replica():
            context = tf.distribute.get_replica_context()
            first = context.replica_id_in_sync_group == 0
            values = [tf.convert_to_tensor(v) for v in variables]
            values = [tf.cast(x, tf.float64) if x.dtype.is_integer else x for x in values]  # step counters
            values = [tf.where(first, x, tf.zeros_like(x)) for x in values]
            out = list(values)
            for dtype in {x.dtype for x in values}:  # one all-reduce per dtype (they are packed together)
                indices = [i for i, x in enumerate(values) if x.dtype == dtype]
                for i, x in zip(indices, context.all_reduce(tf.distribute.ReduceOp.SUM, [values[i] for i in indices])):
                    out[i] = x
            return out

        summed = tf.function(lambda: self.strategy.run(replica), autograph=False)()
        for variable, value in zip(variables, summed):
            variable.assign(tf.cast(self.strategy.experimental_local_results(value)[0], variable.dtype))
        # (keras.Variable.dtype is a string; tf.cast takes either)

    def scope(self):
        return self.strategy.scope()

    def check_batch(self, batch_size):
        if batch_size % self.replicas:
            raise GPT2TFError(
                f"--batch_size {batch_size} does not split evenly over {self.replicas} replicas "
                f"({self.name}): give a multiple of {self.replicas}"
            )

    def split(self, array, dtype):
        """`array` [micro, batch, ...] (the global batch) -> each replica's consecutive part of the batch axis."""
        if self.replicas == 1:
            return tf.constant(array, dtype)
        part = array.shape[1] // self.replicas

        def value(context):
            r = context.replica_id_in_sync_group
            return tf.constant(np.ascontiguousarray(array[:, r * part : (r + 1) * part]), dtype)

        return self.strategy.experimental_distribute_values_from_function(value)

    def run(self, fn, args):
        return self.strategy.run(fn, args=args)

    def first(self, value):
        """One replica's copy of a value every replica holds the same of (a summed loss)."""
        local = self.strategy.experimental_local_results(value)
        return local[0]


def make_distribution(strategy="auto", cpu_replicas=0, peer_timeout=300):
    """The Distribution for `--strategy`; call it before TensorFlow runs anything (logical devices and collective
    ops must be set up before that)."""
    if strategy not in STRATEGIES:
        raise GPT2TFError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if cpu_replicas and strategy not in ("mirrored", "auto"):
        raise GPT2TFError("--cpu_replicas splits this machine's CPU into replicas for --strategy mirrored")
    cluster = cluster_from_env()
    gpus = tf.config.list_physical_devices("GPU")
    if strategy == "auto":
        tasks = sum(len(v) for k, v in cluster[0].items() if k in ("chief", "worker")) if cluster else 0
        strategy = "multi_worker" if tasks > 1 else "mirrored" if len(gpus) > 1 or cpu_replicas > 1 else "none"
    if strategy == "multi_worker":
        return _multi_worker(cluster, peer_timeout)
    if strategy == "none":
        return Distribution(tf.distribute.get_strategy(), "one device")
    if cpu_replicas > 1 or not gpus:
        count = max(cpu_replicas, 1)
        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
        except RuntimeError:  # TensorFlow has run already: the devices are fixed
            if len(tf.config.list_logical_devices("CPU")) != count:
                raise GPT2TFError(
                    f"cannot make {count} CPU replicas in this process: TensorFlow has started; use a fresh process"
                ) from None
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        return Distribution(tf.distribute.MirroredStrategy(devices), f"mirrored over {count} CPU replicas")
    return Distribution(tf.distribute.MirroredStrategy(), f"mirrored over {len(gpus)} GPUs")


def _multi_worker(cluster, peer_timeout):
    if cluster is None:
        raise GPT2TFError(
            "--strategy multi_worker needs TF_CONFIG naming the cluster and this task, e.g. "
            'TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": '
            '"worker", "index": 0}}\' (set by Kubernetes, Vertex AI, SLURM or Ray launchers)'
        )
    spec, task = cluster
    own = spec[task["type"]][int(task["index"])]
    chief = task["type"] == "chief" or ("chief" not in spec and int(task["index"]) == 0)
    peers = [a for kind in ("chief", "worker") for a in spec.get(kind, []) if a != own]
    _wait_for(peers, peer_timeout, own)  # the strategy's start-up would wait for a missing worker forever
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=peer_timeout)
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    except (RuntimeError, ValueError, tf.errors.OpError) as err:
        raise GPT2TFError(
            f"cannot start this worker ({own}) of TF_CONFIG's cluster: "
            f"{str(getattr(err, 'message', err)).splitlines()[0]}"
        ) from None
    workers = len(peers) + 1
    return Distribution(
        strategy,
        f"multi-worker over {workers} workers, {strategy.num_replicas_in_sync} replicas"
        f" ({'chief' if chief else 'worker'} {own})",
        is_chief=chief,
        workers=workers,
    )


def _split(address):
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _wait_for(addresses, timeout, own):
    """Return once every address accepts a connection; after `timeout` seconds, a one-line error naming one.

    Meanwhile this worker answers on its own address, so that workers waiting for each other find each other; it
    stops answering once it has found all of them, and TensorFlow's server takes the port over (a peer that
    knocks in between retries).
    """
    listener = None
    # All interfaces, as TensorFlow's server listens: the address peers use may not be this host's own (a
    # Kubernetes service, a NAT'd or mapped port). If the port is taken, peers retry until TensorFlow's server answers.
    with contextlib.suppress(OSError):
        listener = socket.create_server(("", _split(own)[1]), reuse_port=hasattr(socket, "SO_REUSEPORT"))
    deadline = time.monotonic() + timeout
    try:
        for address in addresses:
            while True:
                try:
                    with socket.create_connection(_split(address), timeout=2):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise GPT2TFError(
                            f"worker {address} of TF_CONFIG did not answer within {timeout:g} s; "
                            f"start the same command there (or raise --peer_timeout)"
                        ) from None
                    time.sleep(0.5)
    finally:
        if listener is not None:
            listener.close()

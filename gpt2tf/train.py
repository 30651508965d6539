"""Fine-tuning (and training from scratch): the training loop, the run dir, and what a run needs beside the model.

The settings are `gpt2tf.train_config.TrainConfig` (re-exported here), the one owner of the fine-tuning defaults.
`finetune(config)` trains and returns the run dir, which is a GPT-2 model dir in OpenAI's layout
(`gpt2tf.load_model(run_dir)` and `inference.py --model_dir run_dir` work on it) plus what resuming needs:

    checkpoint                       names the latest weights, like TF's state file; rewritten atomically, last
    hparams.json encoder.json vocab.bpe
    model.ckpt-<step>.index/.data-00000-of-00001   weights (LoRA adapters merged in), the last keep_checkpoints
    train_state/ckpt-<step>.*        optimizer slots, step, data position (and LoRA adapters) for that step
    train_config.json                the config, so `--output_dir X` alone resumes the run
    metrics.jsonl  tensorboard/      loss, learning rate, tokens/s, validation loss per step

Every file is written under a temporary name and renamed; the state file goes last, so a kill at any moment leaves
the previous checkpoint complete and named. Batches are a pure function of (seed, batch index) (see `gpt2tf.data`)
and the step runs no random ops, so a resumed run computes exactly what an uninterrupted one would.
"""

import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2
from tqdm import tqdm

try:
    import fcntl  # the run dir's lock (POSIX)
except ImportError:  # Windows: no lock
    fcntl = None

from gpt2tf.checkpoint import (checkpoint_key, first_line, load_hparams, load_model, model_hparams, model_tensors,
                               read_state_file, restore_into,
                               replace_bundle, resolve_checkpoint, restore_weights, write_bundle, write_model_files,
                               write_state_file)
from gpt2tf.data import load_dataset
from gpt2tf.encoder import get_encoder
from gpt2tf.errors import GPT2TFError
from gpt2tf.files import write_text_atomic
from gpt2tf.hparams import HParams
from gpt2tf.model import GPT2, Conv1D
from gpt2tf.layout import CONFIG_FILE, STATE_FILE
from gpt2tf.schedules import LearningRate
from gpt2tf.train_config import H5_DIR, HPARAM_FIELDS, OPTIMIZERS, parse_epochs
from gpt2tf.train_config import TrainConfig, configure, default_output_dir  # noqa: F401  (gpt2tf.train's API)

# TensorBoard's scalar plugin reads summaries tagged with this metadata.
_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))
METRICS_FILE = "metrics.jsonl"
STATE_DIR = "train_state"
LOCK_FILE = ".lock"  # held by the process training in the run dir
# The training state's layout, saved with it. 2: optimizer slots shaped like the model's variables, whose projection
# weights are held transposed (gpt2tf.model.Conv1D); states saved before that carry no layout.
STATE_LAYOUT = 2
WEIGHTS_PREFIX = "model.ckpt-{step}"
# ---------------------------------------------------------------------------------------------------------------
# Precision and optimizers

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

    def __init__(self, learning_rate, *, decay_rate=0.8, epsilon=1e-30, clip_threshold=1.0, name="adafactor",
                 **kwargs):
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
        beta = 1.0 - step ** -self.decay_rate  # the second-moment decay grows towards 1
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
        return {**super().get_config(), "decay_rate": self.decay_rate, "epsilon": self.epsilon,
                "clip_threshold": self.clip_threshold}


def make_schedule(config):
    return LearningRate(config.base_lr, steps_per_epoch=config.steps_per_epoch,
                        decay_epochs=parse_epochs(config.decay_epochs), decay_lr=config.decay_lr,
                        warmup_steps=config.warmup_steps, kind=config.lr_schedule, total_steps=config.total_steps)


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


# ---------------------------------------------------------------------------------------------------------------
# Changes to a built model: recomputed blocks and LoRA adapters

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
                a = keras.Variable(rng.uniform(-bound, bound, (layer.n_in, rank)).astype(np.float32),
                                   name=key.replace("/", "_") + "_lora_a")
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


# ---------------------------------------------------------------------------------------------------------------
# The compiled steps

class Trainer:
    """A model, the variables it trains, their optimizer, and the train and eval steps compiled once."""

    def __init__(self, model, config, *, loss_scaling=False):
        self.model, self.config = model, config
        self.lora = LoRA(model, rank=config.lora_rank, alpha=config.lora_alpha, seed=config.seed) \
            if config.lora_rank else None
        model.recompute = config.recompute
        if self.lora:
            self.variables = self.lora.variables
        elif config.only_train_transformer_layers:
            self.variables = [v for v in model.trainable_variables if checkpoint_key(v).startswith("model/h")]
        else:
            self.variables = list(model.trainable_variables)
        self.loss_scaling = loss_scaling
        self.optimizer = make_optimizer(config, self.variables, loss_scaling=loss_scaling)
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")  # steps tried (fp16 may skip)
        self.data_index = tf.Variable(0, dtype=tf.int64, trainable=False, name="data_index")  # batches consumed
        self.state = tf.train.Checkpoint(optimizer=list(self.optimizer.variables), step=self.step,
                                         data_index=self.data_index,
                                         adapters=self.lora.variables if self.lora else [],
                                         layout=tf.Variable(STATE_LAYOUT, dtype=tf.int64, trainable=False))
        # XLA compiles the forward and backward pass; the optimizer's update runs outside it, because XLA on CPU
        # writes updated variables to new buffers: a second copy of the weights (1558M would not fit in 24 GB).
        # No autograph: the steps are plain TF code, and converting Keras' internals only slows tracing.
        self._grads = tf.function(self._loss_and_grads, jit_compile=config.xla, autograph=False)
        self._train = tf.function(self._train_step, autograph=False)

    def _loss_and_grads(self, tokens, weights, total_weight):
        with tf.GradientTape() as tape:
            logits = self.model(tokens[:, :-1])  # [batch, length, n_vocab] float32
            losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tokens[:, 1:], logits=logits)
            loss = tf.reduce_sum(losses * weights) / total_weight
            scaled = self.optimizer.scale_loss(loss) if self.loss_scaling else loss
        grads = tape.gradient(scaled, self.variables)
        return loss, [tf.convert_to_tensor(g) for g in grads]  # embedding gathers give IndexedSlices

    def _train_step(self, tokens, weights):
        """One optimizer step on `tokens [micro, batch, length + 1]` and loss `weights [micro, batch, length]`."""
        # Each micro-batch's loss is divided by the weight of all of them, so the summed gradients are exactly
        # those of one micro * batch batch (and padding counts nowhere).
        total_weight = tf.maximum(tf.reduce_sum(weights), 1.0)
        loss, grads = self._grads(tokens[0], weights[0], total_weight)
        if self.config.accumulate_gradients > 1:  # a while loop: one micro-batch's activations live at a time
            def body(i, loss, grads):
                micro_loss, micro_grads = self._grads(tokens[i], weights[i], total_weight)
                return i + 1, loss + micro_loss, [g + m for g, m in zip(grads, micro_grads)]

            _, loss, grads = tf.while_loop(lambda i, *_: i < tf.shape(tokens)[0], body, (1, loss, grads))
        if self.loss_scaling:  # the loss scaler skips non-finite steps itself
            self.optimizer.apply(grads, self.variables)
        else:  # a NaN step must not touch the weights
            tf.cond(tf.math.is_finite(loss), lambda: self.optimizer.apply(grads, self.variables) or tf.no_op(),
                    tf.no_op)
        self.step.assign_add(1)
        self.data_index.assign_add(tf.cast(tf.shape(tokens)[0], tf.int64))
        return loss

    def train_step(self, tokens, weights):
        """Run one step; returns its loss (a float)."""
        return float(self._train(tf.constant(tokens, tf.int32), tf.constant(weights, tf.float32)))

    @property
    def learning_rate(self):
        return float(self.optimizer.learning_rate)

    def weights_to_save(self):
        """{checkpoint key: tensor}: the model as plain GPT-2 weights (LoRA merged)."""
        if self.lora:
            return self.lora.merged_tensors(self.model)
        return model_tensors(self.model)

    def weights_are_finite(self):
        return all(bool(tf.reduce_all(tf.math.is_finite(v.value))) for v in self.variables)


# ---------------------------------------------------------------------------------------------------------------
# The run dir

class RunDir:
    """Checkpoints in a run dir: step-numbered OpenAI-layout weights plus training state, named by `checkpoint`.

    One process at a time: `lock()` takes a lock on the dir (released by `close`), then removes what an
    interrupted save left behind (temporary files and TF's `*_temp` dirs), which no checkpoint names.
    """

    def __init__(self, path):
        self.path = Path(path)
        self._lock = None
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".write-test-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as err:
            raise GPT2TFError(f"cannot write to --output_dir {self.path} ({err.strerror}); choose a writable "
                              f"directory") from None

    def lock(self):
        """Make this process the run dir's only writer, and clean up after an interrupted one."""
        self._lock = open(self.path / LOCK_FILE, "a")
        if fcntl is not None:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self._lock.close()
                self._lock = None
                raise GPT2TFError(f"{self.path} is in use by another training process; wait for it to end, or "
                                  f"choose another --output_dir") from None
        self._remove_leftovers()
        return self

    def close(self, *, remove_lock=False):
        """Release the lock (and, for a run dir that is being removed, its file)."""
        if self._lock is not None:
            if remove_lock:
                (self.path / LOCK_FILE).unlink(missing_ok=True)
            self._lock.close()
            self._lock = None

    def _remove_leftovers(self):
        for directory in (self.path, self.path / STATE_DIR):
            for leftover in directory.glob("*.tmp-*") if directory.is_dir() else ():
                _remove(leftover)

    def checkpoints(self):
        """The steps of the checkpoints the state file lists, oldest first (empty for a new run)."""
        if not (self.path / STATE_FILE).is_file():
            return []
        latest, every = read_state_file(self.path)
        if _step_of(latest) is None:
            raise GPT2TFError(f"{self.path / STATE_FILE} does not name a step checkpoint (model.ckpt-<step>): "
                              f"{self.path} is a model dir, not a run dir; pass it as --model_dir and choose "
                              f"another --output_dir")
        steps = [_step_of(p) for p in every if _step_of(p) is not None]
        return [s for s in steps if s != _step_of(latest)] + [_step_of(latest)]

    def weights_prefix(self, step):
        return str(self.path / WEIGHTS_PREFIX.format(step=step))

    def state_prefix(self, step):
        return str(self.path / STATE_DIR / f"ckpt-{step}")

    def write_model_files(self, hparams, config):
        with self._writing("the run's settings"):
            write_model_files(self.path, hparams)
            config.to_json(self.path / CONFIG_FILE)

    def save(self, step, tensors, state, keep):
        """Write checkpoint `step`: weights, training state, then the state file naming it; keep the last `keep`.

        A failure (a full disk, say) removes this save's partial files and raises a one-line error; the checkpoint
        the state file named before is untouched.
        """
        with self._writing(f"checkpoint {step}"):
            write_bundle(self.weights_prefix(step), tensors)
            (self.path / STATE_DIR).mkdir(exist_ok=True)
            replace_bundle(state.write(self.state_prefix(step) + f".tmp-{os.getpid()}"), self.state_prefix(step))
            kept = [s for s in self.checkpoints() if s != step][-(keep - 1):] if keep > 1 else []
            kept.append(step)
            write_state_file(self.path, [WEIGHTS_PREFIX.format(step=s) for s in kept])  # last: the checkpoint exists
        self._prune(kept)

    @contextlib.contextmanager
    def _writing(self, what):
        try:
            yield
        except (OSError, tf.errors.OpError) as err:
            self._remove_leftovers()
            reason = getattr(err, "strerror", None) or first_line(err)
            latest = self.checkpoints()
            last = f"step {latest[-1]}, is complete" if latest else "none"
            raise GPT2TFError(f"cannot write {what} in {self.path} ({reason}); the last checkpoint, {last}; free "
                              f"some space and continue with: python finetune.py --output_dir {self.path}") from None

    def _prune(self, kept):
        keep = {WEIGHTS_PREFIX.format(step=s) for s in kept} | {f"ckpt-{s}" for s in kept}
        for directory in (self.path, self.path / STATE_DIR):
            for f in directory.glob("*ckpt-*"):
                if f.name.split(".index")[0].split(".data-")[0] not in keep:
                    _remove(f)

    def log(self, record):
        """Append a metrics record (and write it to TensorBoard)."""
        with self._writing("the metrics"):
            with open(self.path / METRICS_FILE, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            for name, value in record.items():
                if name != "step":  # what tf.summary.scalar writes, without needing the tensorboard package
                    tf.summary.write(name, tf.constant(value, tf.float32), step=record["step"],
                                     metadata=_SCALAR_METADATA)

    def truncate_metrics(self, step):
        """Drop metrics logged after `step` (a resumed run logs those steps again) and a line a kill cut short."""
        path = self.path / METRICS_FILE
        if path.is_file():
            kept = []
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and isinstance(record.get("step", 0), int) and record.get("step", 0) <= step:
                    kept.append(line)
            with self._writing("the metrics"):
                write_text_atomic(path, "".join(line + "\n" for line in kept))


def _remove(path):
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _step_of(prefix):
    match = re.search(r"model\.ckpt-(\d+)$", str(prefix))
    return int(match.group(1)) if match else None


# ---------------------------------------------------------------------------------------------------------------
# The loop

class _StopRequest:
    """Ctrl-C (or SIGTERM) asks the loop to checkpoint and stop after the current step; a second press kills."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # the next press acts at once
        print("\nstopping after this step (press Ctrl-C again to abort without saving)", file=sys.stderr)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def finetune(config):
    """Train as `config` says; returns the run dir (a model dir). Ctrl-C checkpoints, then raises KeyboardInterrupt."""
    created = [p for p in (Path(config.output_dir), *Path(config.output_dir).parents) if not p.exists()]
    run = RunDir(config.output_dir)
    try:
        run.lock()
        return _finetune(config, run, created)
    finally:
        run.close()


def _finetune(config, run, created):
    try:
        start_from = _start_point(config, run)
        print(f"run dir: {run.path} ({_describe_start(run, start_from)})", file=sys.stderr)
        h5_path = _h5_path(config)
        hparams = _hparams(config, start_from)
        length = config.length or hparams.n_ctx
        if length > hparams.n_ctx:
            raise GPT2TFError(f"--length {length} is longer than the model's context (n_ctx {hparams.n_ctx})")
        tokenizer = get_encoder()
        if len(tokenizer) > hparams.n_vocab:
            raise GPT2TFError(f"the model's n_vocab ({hparams.n_vocab}) is smaller than the tokenizer's "
                              f"{len(tokenizer)} ids; use --n_vocab {len(tokenizer)}")
        if config.sample_every and len(tokenizer.encode(config.sample_prompt) or [0]) + config.sample_length > \
                hparams.n_ctx:
            raise GPT2TFError(f"--sample_prompt and --sample_length {config.sample_length} do not fit the model's "
                              f"context of {hparams.n_ctx} tokens; give a shorter --sample_length")
        train_data, val_data = _load_data(config, tokenizer, length)
    except (GPT2TFError, KeyboardInterrupt):
        run.close(remove_lock=run.path in created)  # a lock file may go only with a dir this run made
        for path in created:  # a run that never started leaves no empty dir behind
            with contextlib.suppress(OSError):  # not empty: left alone
                path.rmdir()
        raise

    policy, loss_scaling = resolve_precision(config.precision)
    keras.utils.set_random_seed(config.seed)
    model = _build_model(config, hparams, policy, start_from)
    trainer = Trainer(model, config, loss_scaling=loss_scaling)
    if start_from.state:
        _restore_state(trainer, start_from.state)
    run.write_model_files(hparams, config)
    start = int(trainer.step.numpy())
    run.truncate_metrics(start)

    end = min(config.total_steps, config.max_steps or config.total_steps)
    batch_shape = dict(batch_size=config.batch_size, length=length, seed=config.seed)
    validation = Validation(val_data, length=length, limit=config.val_batches * config.batch_size,
                            encoder=tokenizer) if val_data else None
    saved_step = start_from.step if start_from.model_dir == run.path else None
    writer = tf.summary.create_file_writer(str(run.path / "tensorboard"))
    tokens_per_step = config.accumulate_gradients * config.batch_size * length
    trained = sum(int(np.prod(v.shape)) for v in trainer.variables)
    print(f"training {trained / 1e6:.2f}M of {hparams.num_parameters / 1e6:.2f}M parameters on {train_data.name}: "
          f"steps {start}..{end} of {config.total_steps}, {tokens_per_step:,} tokens per step, {policy}, "
          f"{config.optimizer}", file=sys.stderr)

    def save(step):
        nonlocal saved_step
        if step == saved_step:
            return
        if not trainer.weights_are_finite():
            raise GPT2TFError(f"the weights are no longer finite at step {step}; not saved. The last good "
                              f"checkpoint is {_describe(run, saved_step)}; lower --base_lr or set --clip_norm")
        run.save(step, trainer.weights_to_save(), trainer.state, config.keep_checkpoints)
        saved_step = step

    losses, window_seconds, window_tokens = [], 0.0, 0  # tokens/s counts training time only
    step, loss = start, float("nan")
    progress = tqdm(total=end, initial=start, desc="training", unit="step", file=sys.stderr, disable=None,
                    dynamic_ncols=True)
    with _StopRequest() as stop, writer.as_default(), progress:
        while step < end and not stop.requested:
            index = int(trainer.data_index.numpy())
            micro = [train_data.batch(index + i, **batch_shape) for i in range(config.accumulate_gradients)]
            lr = trainer.learning_rate
            started = time.perf_counter()
            loss = trainer.train_step(np.stack([b.tokens for b in micro]), np.stack([b.weights for b in micro]))
            window_seconds += time.perf_counter() - started
            step = int(trainer.step.numpy())
            if not math.isfinite(loss):
                if loss_scaling:
                    tqdm.write(f"step {step}: loss {loss}; step skipped and loss scale lowered", file=sys.stderr)
                    continue
                raise GPT2TFError(f"the loss became {loss} at step {step} (learning rate {lr:.3g}); stopped. The last "
                                  f"good checkpoint is {_describe(run, saved_step)}; lower --base_lr, keep "
                                  f"--clip_norm on, or use --precision float32")
            losses.append(loss)
            window_tokens += tokens_per_step
            progress.update(1)
            if step % config.log_every == 0 or step == end:
                record = {"step": step, "loss": round(float(np.mean(losses)), 5), "lr": float(f"{lr:.6g}"),
                          "tokens_per_s": round(window_tokens / max(window_seconds, 1e-9), 1)}
                run.log(record)
                progress.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{lr:.2e}",
                                     tok_s=f"{record['tokens_per_s']:.0f}")
                if progress.disable:  # not a terminal: a plain line instead of the bar
                    print(json.dumps(record), file=sys.stderr, flush=True)
                losses, window_seconds, window_tokens = [], 0.0, 0
            if validation and ((config.val_every and step % config.val_every == 0)
                               or (not config.val_every and step % config.steps_per_epoch == 0) or step == end):
                report = validation.run(model, jit_compile=config.xla)
                run.log({"step": step, **{f"val_{k}": round(v, 6) for k, v in report.items()}})
                tqdm.write(f"step {step}: validation loss {report['mean_nll']:.4f}, perplexity "
                           f"{report['perplexity']:.2f} ({report['scored_tokens']:,} tokens)", file=sys.stderr)
            if config.sample_every and step % config.sample_every == 0:
                tqdm.write(f"--- sample at step {step} ---\n{_sample(model, tokenizer, config, step)}\n---",
                           file=sys.stderr)
            if config.save_every and step % config.save_every == 0:
                save(step)
        save(step)
    if h5_path and not stop.requested:
        from gpt2tf.h5weights import write_h5_weights

        write_h5_weights(h5_path, model, trainer.weights_to_save())
        print(f"\nwrote the weights to {h5_path} as well: python inference.py --model_dir {run.path} "
              f"--custom_model {h5_path} --starter \"...\"", file=sys.stderr)
    if config.save_hf and not stop.requested:
        from gpt2tf.hf import save_hf_checkpoint

        save_hf_checkpoint(model, run.path / "hf", tensors=trainer.weights_to_save())
        print(f"\nwrote a Hugging Face copy to {run.path / 'hf'}", file=sys.stderr)
    _print_usage(run, config, step, loss, interrupted=stop.requested)
    if stop.requested:
        raise KeyboardInterrupt
    return run.path


def _describe_start(run, start_from):
    if start_from.state and start_from.model_dir == run.path:
        return f"continuing at step {start_from.step}"
    if start_from.weights:
        return f"new run, starting from {start_from.weights}"
    return "new run"


def _h5_path(config):
    """Where --output_name's file goes (output/NAME.h5 unless it names a folder), checked to be writable."""
    if not config.output_name:
        return None
    path = Path(config.output_name) if os.path.dirname(config.output_name) else Path(H5_DIR) / config.output_name
    existing = next(p for p in (path.parent, *path.parent.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise GPT2TFError(f"cannot write --output_name {path}: {existing} is not a writable directory; choose "
                          f"another --output_name")
    return path


class Validation:
    """The validation set scored whole (or its first `limit` sequences), through the evaluation's scoring path:
    a token stream in disjoint windows of `length` tokens as `evaluate.perplexity` scores a text, examples one
    sequence each (their completion only when training counts only that). The report is the perplexity task's:
    scored_tokens, mean_nll, perplexity, bits_per_byte, word_perplexity."""

    def __init__(self, data, *, length, limit, encoder):
        from gpt2tf.data import TokenStream
        from gpt2tf.evaluate import text_units
        from gpt2tf.score import windows

        if isinstance(data, TokenStream):
            tokens = [int(t) for t in data.tokens]
            self.items = [(tokens[b:e], first) for b, e, first in windows(len(tokens), context=length, stride=length)]
        else:
            self.items = []
            for i in range(len(data)):
                ids, prompt = data.example(i, length)
                self.items.append(([int(t) for t in ids], prompt if data.loss_on == "completion" else 0))
        if limit:
            self.items = self.items[:limit]
        scored_text = [encoder.decode([t for t in ids[max(start, 1):] if t != encoder.eot_id])
                       for ids, start in self.items]
        self.n_bytes = sum(text_units(t)[0] for t in scored_text)
        self.n_words = sum(text_units(t)[1] for t in scored_text)

    def run(self, model, *, jit_compile=True):
        from gpt2tf.score import score

        scored = score(model, self.items, jit_compile=jit_compile)
        total = sum(-float(log_p.sum()) for log_p, _ in scored)
        count = sum(len(log_p) for log_p, _ in scored)
        return {"scored_tokens": count, "mean_nll": total / count, "perplexity": math.exp(min(total / count, 50)),
                "bits_per_byte": total / max(self.n_bytes, 1) / math.log(2),
                "word_perplexity": math.exp(min(total / max(self.n_words, 1), 50))}


def _load_data(config, tokenizer, length):
    """(training data, validation data or None), each checked to hold at least one window."""
    def load(path, split):
        dataset = load_dataset(config.data_loader, path, tokenizer=tokenizer, split=split,
                               feature=config.text_feature, cache_dir=config.cache_dir)
        dataset.check_fits(length)
        if config.summary_only:  # cnndm's Examples
            dataset.loss_on = "completion"
        return dataset

    val_data = load(config.val_dataset_path, config.val_split) if config.val_dataset_path else None
    return load(config.dataset_path, config.split), val_data


def _restore_state(trainer, prefix):
    run_dir = Path(prefix).parent.parent
    try:
        kept = read_state_file(run_dir)[1]
    except (OSError, GPT2TFError):
        kept = []
    earlier = [_step_of(p) for p in kept if _step_of(p) is not None and f"ckpt-{_step_of(p)}" != Path(prefix).name]
    restart = (f"continue from the previous checkpoint: python finetune.py --output_dir {run_dir} --restore_from "
               f"{run_dir / WEIGHTS_PREFIX.format(step=earlier[-1])}" if earlier else
               f"start a new run from its weights: python finetune.py --model_dir {run_dir} --output_dir NEW_DIR ...")
    corrupt = f"cannot read the training state {prefix} ({{}}): the file is damaged; {restart}"
    try:
        saved = {name.split("/")[0] for name, _ in tf.train.list_variables(prefix)}
    except (ValueError, IndexError, tf.errors.OpError) as err:
        raise GPT2TFError(corrupt.format(first_line(err))) from None
    if "layout" not in saved:  # slots of a projection would be [1, n_in, n_out] (a square one: silently transposed)
        raise GPT2TFError(f"the training state {prefix} was saved by an older gpt2tf whose optimizer state has another "
                          f"weight layout, so the run cannot be resumed; {restart}")
    try:
        trainer.state.read(prefix).assert_existing_objects_matched()
    except (IndexError, tf.errors.DataLossError, tf.errors.OutOfRangeError) as err:  # short or failing checksums
        raise GPT2TFError(corrupt.format(first_line(err))) from None
    except (AssertionError, ValueError, tf.errors.OpError) as err:
        raise GPT2TFError(f"cannot restore the training state {prefix} ({first_line(err)}): it was saved "
                          f"with another --optimizer, --precision, --lora_rank or --only_train_transformer_layers; "
                          f"use the run's own settings") from None
    if int(trainer.state.layout.numpy()) != STATE_LAYOUT:
        raise GPT2TFError(f"the training state {prefix} has layout {int(trainer.state.layout.numpy())}, this gpt2tf "
                          f"reads layout {STATE_LAYOUT}: resume it with the gpt2tf that wrote it")


def _print_usage(run, config, step, loss, *, interrupted):
    """Where the model is and what to do with it."""
    if interrupted or step < config.total_steps:
        print(f"\n{'interrupted' if interrupted else 'stopped'} at step {step} of {config.total_steps}; saved in "
              f"{run.path}. Continue with: python finetune.py --output_dir {run.path}", file=sys.stderr)
        return
    print(f"\ndone: step {step}, loss {loss:.4f}. The model is {run.path} (a GPT-2 model dir):\n"
          f"  python inference.py --model_dir {run.path} --starter \"...\"\n"
          f"  python -c \"import gpt2tf; model = gpt2tf.load_model('{run.path}')\"\n"
          f"  python finetune.py --output_dir {run.path} --num_epoch {config.num_epoch + 1}   # train longer",
          file=sys.stderr)


@dataclasses.dataclass(frozen=True)
class _StartPoint:
    """What a run starts from; all None for a new run (weights from --model_dir or a random init)."""

    model_dir: Path = None  # holds the hparams.json
    weights: str = None  # checkpoint prefix
    state: str = None  # training-state prefix (optimizer, step, data position), when there is one
    step: int = None


def _start_point(config, run):
    checkpoints = run.checkpoints()
    if config.restore_from == "latest" and checkpoints:
        step = checkpoints[-1]
        return _StartPoint(run.path, run.weights_prefix(step), run.state_prefix(step), step)
    if config.restore_from in ("latest", "fresh"):
        return _StartPoint()
    source_dir, prefix = resolve_checkpoint(config.restore_from)
    step = _step_of(prefix)
    state = RunDir(source_dir).state_prefix(step) if step is not None else None
    return _StartPoint(Path(source_dir), prefix, state if Path(f"{state}.index").is_file() else None, step)


def _hparams(config, start_from):
    if start_from.model_dir is not None:
        return load_hparams(start_from.model_dir)
    if config.init == "random":
        given = {n: getattr(config, n) for n in HPARAM_FIELDS if getattr(config, n) is not None}
        base = model_hparams(config.model_dir) if config.model_dir else HParams()
        return base.replace(**given)
    return model_hparams(config.model_dir)


def _build_model(config, hparams, policy, start_from):
    """The model with its starting weights: a checkpoint to resume, the pretrained model, or a random init."""
    weights = start_from.weights
    if config.lora_rank and start_from.state:
        weights = config.model_dir  # the saved weights have the adapters merged in
    if weights:
        model = GPT2(hparams, initializer="empty", dtype=policy)
        restore_into(model, weights)
        return model
    if config.init == "random":
        return GPT2(hparams, initializer="random", dtype=policy)
    return load_model(config.model_dir, dtype=policy)


def _describe(run, step):
    return f"step {step} in {run.path}" if step is not None else "none (nothing was saved)"


def _sample(model, tokenizer, config, step):
    from gpt2tf.sample import generate

    prompt = tokenizer.encode(config.sample_prompt) if config.sample_prompt else []
    (ids,) = generate(model, [prompt], length=config.sample_length, top_k=40, seed=config.seed + step)
    return config.sample_prompt + tokenizer.decode(ids)

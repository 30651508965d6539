"""Fine-tuning (and training from scratch): the training loop and where a run starts from.

The pieces live beside it in `gpt2tf.train`, one concern each: `optimizers` (precision, optimizers), `schedules`
(the learning rate), `lora` (adapters), `trainer` (the compiled step and validation), `rundir` (the run dir),
`distribute` (several devices or machines).

The settings are `gpt2tf.train.config.TrainConfig`, the one owner of the fine-tuning defaults.
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
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from gpt2tf.data import load_dataset
from gpt2tf.decode.generate import generate
from gpt2tf.decode.prompts import prompt_ids
from gpt2tf.encoder import get_encoder
from gpt2tf.errors import GPT2TFError, first_line
from gpt2tf.formats.h5 import write_h5_weights
from gpt2tf.formats.hf import save_hf_checkpoint
from gpt2tf.formats.load import load_model, model_hparams, restore_into
from gpt2tf.formats.openai import load_hparams, read_state_file, resolve_checkpoint
from gpt2tf.hparams import HParams
from gpt2tf.model import GPT2
from gpt2tf.train.config import H5_DIR, HPARAM_FIELDS
from gpt2tf.train.distribute import make_distribution
from gpt2tf.train.optimizers import resolve_precision
from gpt2tf.train.rundir import WEIGHTS_PREFIX, RunDir, step_of
from gpt2tf.train.trainer import STATE_LAYOUT, Trainer, Validation

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


def finetune(config, distribution=None):
    """Train as `config` says; returns the run dir (a model dir). Ctrl-C checkpoints, then raises KeyboardInterrupt.

    `distribution` (`gpt2tf.train.distribute`; made from the config's --strategy if not given) says where the step runs.
    Of several workers only the chief writes the run dir; the others run the same loop (saves included, so every
    collective operation happens on all of them) in a scratch dir they remove, and start from the chief's weights
    and training state, which it sends them once it has restored them.
    """
    distribution = distribution or make_distribution(config.strategy, config.cpu_replicas, config.peer_timeout)
    distribution.check_batch(config.batch_size)
    if distribution.workers > 1 and config.init == "pretrained" and not config.model_dir:
        # (every worker stops here alike: none is left waiting for the others)
        raise GPT2TFError(
            "with several workers give every worker the whole command, --model_dir included: the "
            "other workers need the model's shape and do not read the chief's run dir"
        )
    if not distribution.is_chief:
        scratch = tempfile.mkdtemp(prefix="gpt2tf-worker-")
        try:
            worker_config = dataclasses.replace(
                config, output_dir=scratch, restore_from="latest", output_name=None, save_hf=False
            )
            run = RunDir(scratch)
            _finetune(worker_config, run, [], distribution)
            return None
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    created = [p for p in (Path(config.output_dir), *Path(config.output_dir).parents) if not p.exists()]
    run = RunDir(config.output_dir)
    try:
        run.lock()
        return _finetune(config, run, created, distribution)
    finally:
        run.close()


def _finetune(config, run, created, distribution):
    plan = _plan(config, run, created, distribution)
    policy, loss_scaling = resolve_precision(config.precision)
    keras.utils.set_random_seed(config.seed)
    with distribution.scope():  # the model's variables mirrored on every replica
        model = _build_model(config, plan.hparams, policy, plan.start_from)
    trainer = Trainer(model, config, loss_scaling=loss_scaling, distribution=distribution)
    if plan.start_from.state:
        _restore_state(trainer, plan.start_from.state)
    # Every worker takes the chief's weights and state (the others started from --model_dir, or nothing).
    lora = trainer.lora.variables if trainer.lora else []
    distribution.sync_from_chief(
        [*model.weights, *trainer.optimizer.variables, *lora, trainer.step, trainer.data_index]
    )
    run.write_model_files(plan.hparams, config)
    loop = _Loop(config, run, plan, model, trainer, distribution, policy=policy, loss_scaling=loss_scaling)
    step, loss, interrupted = loop.run()
    if not interrupted:
        _write_copies(config, run, model, trainer)
    if distribution.is_chief:
        _print_usage(run, config, step, loss, interrupted=interrupted)
    else:
        print(f"\nthis worker stopped at step {step}; the chief wrote the run dir", file=sys.stderr)
    if interrupted:
        raise KeyboardInterrupt
    return run.path


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What a run is, settled (and checked) before anything is built."""

    start_from: "_StartPoint"
    hparams: HParams
    length: int  # tokens per training window
    tokenizer: object
    train_data: object
    val_data: object  # or None


def _plan(config, run, created, distribution):
    """The run's start point, shape and data; on a mistake, a run that never started leaves nothing behind."""
    try:
        start_from = _start_point(config, run)
        if distribution.is_chief:
            print(f"run dir: {run.path} ({_describe_start(run, start_from)})", file=sys.stderr)
        else:
            print(
                f"{distribution.name}: the chief writes the run dir; this worker starts from the chief's state "
                f"(scratch dir {run.path})",
                file=sys.stderr,
            )
        _h5_path(config)  # checked now, written at the end
        hparams = _hparams(config, start_from)
        length = config.length or hparams.n_ctx
        if length > hparams.n_ctx:
            raise GPT2TFError(f"--length {length} is longer than the model's context (n_ctx {hparams.n_ctx})")
        tokenizer = get_encoder()
        if len(tokenizer) > hparams.n_vocab:
            raise GPT2TFError(
                f"the model's n_vocab ({hparams.n_vocab}) is smaller than the tokenizer's "
                f"{len(tokenizer)} ids; use --n_vocab {len(tokenizer)}"
            )
        if config.sample_every and len(prompt_ids(tokenizer.encode(config.sample_prompt))) + config.sample_length > (
            hparams.n_ctx
        ):
            raise GPT2TFError(
                f"--sample_prompt and --sample_length {config.sample_length} do not fit the model's "
                f"context of {hparams.n_ctx} tokens; give a shorter --sample_length"
            )
        train_data, val_data = _load_data(config, tokenizer, length)
    except (GPT2TFError, KeyboardInterrupt):
        run.close(remove_lock=run.path in created)  # a lock file may go only with a dir this run made
        for path in created:  # a run that never started leaves no empty dir behind
            with contextlib.suppress(OSError):  # not empty: left alone
                path.rmdir()
        raise
    return _Plan(start_from, hparams, length, tokenizer, train_data, val_data)


class _Loop:
    """The training loop: steps, with metrics, validation, samples and checkpoints as the config says."""

    def __init__(self, config, run, plan, model, trainer, distribution, *, policy, loss_scaling):
        self.config, self.run_dir, self.plan = config, run, plan
        self.model, self.trainer, self.distribution = model, trainer, distribution
        self.policy, self.loss_scaling = policy, loss_scaling
        self.start = int(trainer.step.numpy())
        self.end = min(config.total_steps, config.max_steps or config.total_steps)
        self.saved_step = plan.start_from.step if plan.start_from.model_dir == run.path else None
        self.tokens_per_step = config.accumulate_gradients * config.batch_size * plan.length
        self.validation = None
        if plan.val_data:
            limit = config.val_batches * config.batch_size
            self.validation = Validation(plan.val_data, length=plan.length, limit=limit, encoder=plan.tokenizer)
        self.losses, self.window_seconds, self.window_tokens = [], 0.0, 0  # tokens/s counts training time only

    def run(self):
        """Train from the current step to the end (or Ctrl-C); returns (step, last loss, interrupted)."""
        config, trainer = self.config, self.trainer
        self.run_dir.truncate_metrics(self.start)
        self._announce()
        writer = tf.summary.create_file_writer(str(self.run_dir.path / "tensorboard"))
        step, loss = self.start, float("nan")
        progress = tqdm(
            total=self.end,
            initial=self.start,
            desc="training",
            unit="step",
            file=sys.stderr,
            disable=None,
            dynamic_ncols=True,
        )
        with _StopRequest() as stop, writer.as_default(), progress:
            while step < self.end and not stop.requested:
                lr = trainer.learning_rate
                loss = self._train_step(step)
                step = int(trainer.step.numpy())
                if not self._loss_is_usable(step, loss, lr):
                    continue
                progress.update(1)
                if step % config.log_every == 0 or step == self.end:
                    self._log(step, lr, progress)
                if self.validation and self._validates_at(step):
                    self._validate(step)
                if config.sample_every and step % config.sample_every == 0:
                    tqdm.write(f"--- sample at step {step} ---\n{self._sample(step)}\n---", file=sys.stderr)
                if config.save_every and step % config.save_every == 0:
                    self._save(step)
            self._save(step)
        return step, loss, stop.requested

    def _announce(self):
        trained = sum(int(np.prod(v.shape)) for v in self.trainer.variables)
        print(
            f"training {trained / 1e6:.2f}M of {self.plan.hparams.num_parameters / 1e6:.2f}M parameters on "
            f"{self.plan.train_data.name}: steps {self.start}..{self.end} of {self.config.total_steps}, "
            f"{self.tokens_per_step:,} tokens per step, {self.policy}, {self.config.optimizer}, "
            f"{self.distribution.name}",
            file=sys.stderr,
        )

    def _train_step(self, step):
        """One optimizer step on the next batches; its loss. Losing another worker saves what is done and stops."""
        config, trainer = self.config, self.trainer
        index = int(trainer.data_index.numpy())
        batch_shape = dict(batch_size=config.batch_size, length=self.plan.length, seed=config.seed)
        micro = [self.plan.train_data.batch(index + i, **batch_shape) for i in range(config.accumulate_gradients)]
        started = time.perf_counter()
        try:
            loss = trainer.train_step(np.stack([b.tokens for b in micro]), np.stack([b.weights for b in micro]))
        except tf.errors.OpError as err:
            if self.distribution.workers == 1:
                raise
            # Another worker stopped or died: the exchange of gradients failed before anything was applied,
            # so the weights are those after the last step; keep them.
            self._save(step)
            saved = (
                f"step {step} is saved in {self.run_dir.path}"
                if self.distribution.is_chief
                else ("the chief saved the last step")
            )
            raise GPT2TFError(
                f"the workers lost each other in step {step + 1} ({first_line(err)}); {saved}; "
                f"run the same command on every worker again to continue"
            ) from None
        self.window_seconds += time.perf_counter() - started
        return loss

    def _loss_is_usable(self, step, loss, lr):
        """Whether the step's loss counts: a non-finite one is skipped under loss scaling, else it stops the run."""
        if math.isfinite(loss):
            self.losses.append(loss)
            self.window_tokens += self.tokens_per_step
            return True
        if self.loss_scaling:
            tqdm.write(f"step {step}: loss {loss}; step skipped and loss scale lowered", file=sys.stderr)
            return False
        raise GPT2TFError(
            f"the loss became {loss} at step {step} (learning rate {lr:.3g}); stopped. The last "
            f"good checkpoint is {_describe(self.run_dir, self.saved_step)}; lower --base_lr, keep "
            f"--clip_norm on, or use --precision float32"
        )

    def _log(self, step, lr, progress):
        record = {
            "step": step,
            "loss": round(float(np.mean(self.losses)), 5),
            "lr": float(f"{lr:.6g}"),
            "tokens_per_s": round(self.window_tokens / max(self.window_seconds, 1e-9), 1),
        }
        self.run_dir.log(record)
        progress.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{lr:.2e}", tok_s=f"{record['tokens_per_s']:.0f}")
        if progress.disable:  # not a terminal: a plain line instead of the bar
            print(json.dumps(record), file=sys.stderr, flush=True)
        self.losses, self.window_seconds, self.window_tokens = [], 0.0, 0

    def _validates_at(self, step):
        config = self.config
        if config.val_every:
            return step % config.val_every == 0 or step == self.end
        return step % config.steps_per_epoch == 0 or step == self.end

    def _validate(self, step):
        report = self.validation.run(self.model, jit_compile=self.config.xla)
        self.run_dir.log({"step": step, **{f"val_{k}": round(v, 6) for k, v in report.items()}})
        tqdm.write(
            f"step {step}: validation loss {report['mean_nll']:.4f}, perplexity "
            f"{report['perplexity']:.2f} ({report['scored_tokens']:,} tokens)",
            file=sys.stderr,
        )

    def _sample(self, step):
        config, tokenizer = self.config, self.plan.tokenizer
        prompt = tokenizer.encode(config.sample_prompt) if config.sample_prompt else []
        (ids,) = generate(self.model, [prompt], length=config.sample_length, top_k=40, seed=config.seed + step)
        return config.sample_prompt + tokenizer.decode(ids)

    def _save(self, step):
        if step == self.saved_step or not self.distribution.is_chief:  # the chief alone writes (no collective op)
            return
        if not self.trainer.weights_are_finite():
            raise GPT2TFError(
                f"the weights are no longer finite at step {step}; not saved. The last good "
                f"checkpoint is {_describe(self.run_dir, self.saved_step)}; lower --base_lr or set --clip_norm"
            )
        self.run_dir.save(step, self.trainer.weights_to_save(), self.trainer.state, self.config.keep_checkpoints)
        self.saved_step = step


def _write_copies(config, run, model, trainer):
    """The finished weights in the other files the config asks for: the ancestor's .h5, a Hugging Face dir."""
    h5_path = _h5_path(config)
    if h5_path:
        write_h5_weights(h5_path, model, trainer.weights_to_save())
        print(
            f"\nwrote the weights to {h5_path} as well: python inference.py --model_dir {run.path} "
            f'--custom_model {h5_path} --starter "..."',
            file=sys.stderr,
        )
    if config.save_hf:
        save_hf_checkpoint(model, run.path / "hf", tensors=trainer.weights_to_save())
        print(f"\nwrote a Hugging Face copy to {run.path / 'hf'}", file=sys.stderr)


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
        raise GPT2TFError(
            f"cannot write --output_name {path}: {existing} is not a writable directory; choose another --output_name"
        )
    return path


def _load_data(config, tokenizer, length):
    """(training data, validation data or None), each checked to hold at least one window."""

    def load(path, split):
        dataset = load_dataset(
            config.data_loader,
            path,
            tokenizer=tokenizer,
            split=split,
            feature=config.text_feature,
            cache_dir=config.cache_dir,
        )
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
    earlier = [step_of(p) for p in kept if step_of(p) is not None and f"ckpt-{step_of(p)}" != Path(prefix).name]
    restart = (
        f"continue from the previous checkpoint: python finetune.py --output_dir {run_dir} --restore_from "
        f"{run_dir / WEIGHTS_PREFIX.format(step=earlier[-1])}"
        if earlier
        else f"start a new run from its weights: python finetune.py --model_dir {run_dir} --output_dir NEW_DIR ..."
    )
    corrupt = f"cannot read the training state {prefix} ({{}}): the file is damaged; {restart}"
    try:
        saved = {name.split("/")[0] for name, _ in tf.train.list_variables(prefix)}
    except (ValueError, IndexError, tf.errors.OpError) as err:
        raise GPT2TFError(corrupt.format(first_line(err))) from None
    if "layout" not in saved:  # slots of a projection would be [1, n_in, n_out] (a square one: silently transposed)
        raise GPT2TFError(
            f"the training state {prefix} was saved by an older gpt2tf whose optimizer state has another "
            f"weight layout, so the run cannot be resumed; {restart}"
        )
    try:
        trainer.state.read(prefix).assert_existing_objects_matched()
    except (IndexError, tf.errors.DataLossError, tf.errors.OutOfRangeError) as err:  # short or failing checksums
        raise GPT2TFError(corrupt.format(first_line(err))) from None
    except (AssertionError, ValueError, tf.errors.OpError) as err:
        raise GPT2TFError(
            f"cannot restore the training state {prefix} ({first_line(err)}): it was saved "
            f"with another --optimizer, --precision, --lora_rank or --only_train_transformer_layers; "
            f"use the run's own settings"
        ) from None
    if int(trainer.state.layout.numpy()) != STATE_LAYOUT:
        raise GPT2TFError(
            f"the training state {prefix} has layout {int(trainer.state.layout.numpy())}, this gpt2tf "
            f"reads layout {STATE_LAYOUT}: resume it with the gpt2tf that wrote it"
        )


def _print_usage(run, config, step, loss, *, interrupted):
    """Where the model is and what to do with it."""
    if interrupted or step < config.total_steps:
        print(
            f"\n{'interrupted' if interrupted else 'stopped'} at step {step} of {config.total_steps}; saved in "
            f"{run.path}. Continue with: python finetune.py --output_dir {run.path}",
            file=sys.stderr,
        )
        return
    print(
        f"\ndone: step {step}, loss {loss:.4f}. The model is {run.path} (a GPT-2 model dir):\n"
        f'  python inference.py --model_dir {run.path} --starter "..."\n'
        f"  python -c \"import gpt2tf; model = gpt2tf.load_model('{run.path}')\"\n"
        f"  python finetune.py --output_dir {run.path} --num_epoch {config.num_epoch + 1}   # train longer",
        file=sys.stderr,
    )


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
    step = step_of(prefix)
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

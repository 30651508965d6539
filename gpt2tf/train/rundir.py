"""The run dir: step-numbered checkpoints (OpenAI-layout weights plus training state), its lock, metrics and
TensorBoard scalars; every file written under a temporary name and renamed, the state file last."""

import contextlib
import json
import os
import re
import shutil
from pathlib import Path

import tensorflow as tf
from tensorflow.core.framework import summary_pb2

try:
    import fcntl  # the run dir's lock (POSIX)
except ImportError:  # Windows: no lock
    fcntl = None

from gpt2tf.errors import GPT2TFError, first_line
from gpt2tf.files import TEMP_MARK, temp_name, write_text_atomic
from gpt2tf.formats.bundle import replace_bundle, write_bundle
from gpt2tf.formats.openai import read_state_file, write_model_files, write_state_file
from gpt2tf.layout import CONFIG_FILE, STATE_FILE

# TensorBoard's scalar plugin reads summaries tagged with this metadata.
_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
)
METRICS_FILE = "metrics.jsonl"
STATE_DIR = "train_state"
LOCK_FILE = ".lock"  # held by the process training in the run dir
WEIGHTS_PREFIX = "model.ckpt-{step}"


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
            raise GPT2TFError(
                f"cannot write to --output_dir {self.path} ({err.strerror}); choose a writable directory"
            ) from None

    def lock(self):
        """Make this process the run dir's only writer, and clean up after an interrupted one."""
        self._lock = open(self.path / LOCK_FILE, "a")  # noqa: SIM115 -- held open until close(): the lock
        if fcntl is not None:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self._lock.close()
                self._lock = None
                raise GPT2TFError(
                    f"{self.path} is in use by another training process; wait for it to end, or "
                    f"choose another --output_dir"
                ) from None
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
            for leftover in directory.glob(f"*{TEMP_MARK}*") if directory.is_dir() else ():
                _remove(leftover)

    def checkpoints(self):
        """The steps of the checkpoints the state file lists, oldest first (empty for a new run)."""
        if not (self.path / STATE_FILE).is_file():
            return []
        latest, every = read_state_file(self.path)
        if step_of(latest) is None:
            raise GPT2TFError(
                f"{self.path / STATE_FILE} does not name a step checkpoint (model.ckpt-<step>): "
                f"{self.path} is a model dir, not a run dir; pass it as --model_dir and choose "
                f"another --output_dir"
            )
        steps = [step_of(p) for p in every if step_of(p) is not None]
        return [s for s in steps if s != step_of(latest)] + [step_of(latest)]

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
            replace_bundle(state.write(temp_name(self.state_prefix(step))), self.state_prefix(step))
            kept = [s for s in self.checkpoints() if s != step][-(keep - 1) :] if keep > 1 else []
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
            raise GPT2TFError(
                f"cannot write {what} in {self.path} ({reason}); the last checkpoint, {last}; free "
                f"some space and continue with: python finetune.py --output_dir {self.path}"
            ) from None

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
                    tf.summary.write(
                        name, tf.constant(value, tf.float32), step=record["step"], metadata=_SCALAR_METADATA
                    )

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
                if (
                    isinstance(record, dict)
                    and isinstance(record.get("step", 0), int)
                    and record.get("step", 0) <= step
                ):
                    kept.append(line)
            with self._writing("the metrics"):
                write_text_atomic(path, "".join(line + "\n" for line in kept))


def _remove(path):
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def step_of(prefix):
    match = re.search(r"model\.ckpt-(\d+)$", str(prefix))
    return int(match.group(1)) if match else None

"""Fault injection: the promise is that a kill at any moment leaves the previous checkpoint complete and named, a
full disk loses nothing, and a damaged file is a one-line error (or is not needed) -- never a traceback, never a
silently different model.

- kill -9 of a training process before each file operation of a save, and at random moments;
- a full disk during a save: a real small tmpfs when this machine can mount one, and an injected ENOSPC at each
  write either way;
- every file of a model dir and of a run dir damaged in turn (cut short, zeroed, a bit flipped, JSON of the wrong
  types).

A hostile download server (stalls, endless bodies, HTML, wrong sizes) is in test_download.py.
"""

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import gpt2tf
from gpt2tf import files, train
from gpt2tf.errors import GPT2TFError
from gpt2tf.formats.tensors import checkpoint_key
from gpt2tf.hparams import HParams

ROOT = Path(__file__).resolve().parents[1]
TINY = HParams(n_vocab=50257, n_ctx=32, n_embd=8, n_head=2, n_layer=1)  # GPT-2's vocabulary, a tiny network
STEPS = 4


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    gpt2tf.write_synthetic_checkpoint(root / "model", TINY, seed=5)
    (root / "corpus.txt").write_text(" ".join(f"word{i % 37} and more text" for i in range(400)))
    return root


def flags(base, run_dir, **changes):
    values = dict(
        model_dir=str(base / "model"),
        dataset_path=str(base / "corpus.txt"),
        output_dir=str(run_dir),
        num_epoch=1,
        steps_per_epoch=STEPS,
        save_every=1,
        keep_checkpoints=2,
        length=16,
        log_every=1,
        optimizer="adam",
        base_lr=1e-2,
        cache_dir=str(base / "cache"),
        xla=False,
    )
    values.update(changes)
    return values


def cli_args(values):
    return [
        a
        for k, v in values.items()
        for a in ((f"--{k}",) if v is True else (f"--no_{k}",) if v is False else (f"--{k}", str(v)))
    ]


def weights_of(run_dir):
    return {checkpoint_key(v): v.numpy() for v in gpt2tf.load_model(run_dir).weights}


@pytest.fixture(scope="module")
def reference(base):
    """The final weights of an uninterrupted run."""
    return weights_of(train.finetune(train.configure(flags(base, base / "reference"))))


def assert_same_weights(run_dir, reference):
    got = weights_of(run_dir)
    assert sorted(got) == sorted(reference)
    for key, value in reference.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)


def assert_no_leftovers(run_dir):
    leftovers = [p for p in Path(run_dir).rglob("*") if ".tmp-" in p.name or p.name.endswith("_temp")]
    assert not leftovers, leftovers


def resume_to_the_end(base, run_dir):
    """What a user does after any failure: run the same command again."""
    train.finetune(train.configure(flags(base, run_dir)))


# ---- kill -9 ---------------------------------------------------------------------------------------------------

# Runs finetune in this process, counting calls to the operations a save is made of; at event `kill_at` (0: never)
# the process kills itself with SIGKILL, just before that operation. It prints the events it saw.
KILLER = r"""
import os, shutil, signal, sys
import tensorflow as tf
from gpt2tf import cli

kill_at, events = int(sys.argv[1]), []

def wrap(owner, name):
    original = getattr(owner, name)
    def wrapped(*args, **kwargs):
        events.append(name)
        if len(events) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)
    setattr(owner, name, wrapped)

for owner, name in [(os, "replace"), (os, "fsync"), (os, "unlink"), (shutil, "copyfile"), (shutil, "rmtree"),
                    (tf.raw_ops, "SaveV2"), (tf.train.Checkpoint, "write")]:
    wrap(owner, name)
try:
    cli.finetune_main(sys.argv[2:])
finally:
    print("EVENTS " + " ".join(events), flush=True)
"""


def run_killer(kill_at, values, timeout=300):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        [sys.executable, "-c", KILLER, str(kill_at), *cli_args(values)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=ROOT,
    )


def test_kill_9_before_each_file_operation_of_a_save(base, reference, tmp_path):
    dry = run_killer(0, flags(base, tmp_path / "dry"))
    assert dry.returncode == 0, dry.stderr
    events = dry.stdout.split("EVENTS ", 1)[1].split()
    saves = [i + 1 for i, name in enumerate(events) if name == "SaveV2"]  # 1-based event numbers
    assert len(saves) == STEPS  # --save_every 1; the final save of the last step is the same checkpoint
    # Every operation of the second save and the first operations of the third: a previous checkpoint exists.
    kill_points = list(range(saves[1], saves[2] + 2))
    assert len(kill_points) >= 10
    for kill_at in kill_points:
        run_dir = tmp_path / f"kill{kill_at}"
        killed = run_killer(kill_at, flags(base, run_dir))
        assert killed.returncode == -signal.SIGKILL, (kill_at, killed.stderr)
        steps = train.RunDir(run_dir).checkpoints()
        assert steps and steps[-1] in (1, 2), (kill_at, steps)  # the previous checkpoint, or the new one, complete
        gpt2tf.load_model(run_dir)  # the named checkpoint loads
        resume_to_the_end(base, run_dir)
        assert_same_weights(run_dir, reference)
        assert_no_leftovers(run_dir)


def test_kill_9_at_random_moments(base, reference, tmp_path):
    rng = random.Random(0)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    for attempt in range(3):
        run_dir = tmp_path / f"random{attempt}"
        process = subprocess.Popen(
            [sys.executable, "-c", KILLER, "0", *cli_args(flags(base, run_dir))],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd=ROOT,
        )
        # Wait until training has started (the first checkpoint is named), then kill at a random moment after.
        deadline = time.monotonic() + 120
        while not (run_dir / "checkpoint").is_file() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        gpt2tf.load_model(run_dir)
        resume_to_the_end(base, run_dir)
        assert_same_weights(run_dir, reference)
        assert_no_leftovers(run_dir)


# ---- a full disk ---------------------------------------------------------------------------------------------------

WRITES = [(os, "replace"), (os, "fsync"), (shutil, "copyfile"), (tf.raw_ops, "SaveV2"), (tf.train.Checkpoint, "write")]


def test_no_space_at_each_write_of_a_save_loses_nothing(base, reference, tmp_path, monkeypatch):
    """An injected ENOSPC (the error a full disk gives) before each write of the third save, in turn."""
    run_dir = tmp_path / "run"
    train.finetune(train.configure(flags(base, run_dir, max_steps=2)))
    template = tmp_path / "template"
    shutil.copytree(run_dir, template)
    count, fail_at = [0], [0]
    originals = {(owner, name): getattr(owner, name) for owner, name in WRITES}

    def failing(owner, name):
        def wrapped(*args, **kwargs):
            count[0] += 1
            if count[0] == fail_at[0]:
                if owner is tf.raw_ops or owner is tf.train.Checkpoint:
                    raise tf.errors.ResourceExhaustedError(None, None, "write failed: No space left on device")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return originals[(owner, name)](*args, **kwargs)

        return wrapped

    for owner, name in WRITES:
        monkeypatch.setattr(owner, name, failing(owner, name))
    fail_at[0] = 10**9
    count[0] = 0
    train.finetune(train.configure(flags(base, run_dir, max_steps=3)))  # counts the writes of one save
    writes_per_save = count[0]
    assert writes_per_save >= 6
    for k in range(1, writes_per_save + 1):
        shutil.rmtree(run_dir)
        shutil.copytree(template, run_dir)
        count[0], fail_at[0] = 0, k
        with pytest.raises(GPT2TFError) as err:
            train.finetune(train.configure(flags(base, run_dir, max_steps=3)))
        message = str(err.value)
        assert "\n" not in message and "No space left on device" in message, message
        assert "the last checkpoint, step 2, is complete" in message
        assert train.RunDir(run_dir).checkpoints()[-1] == 2
        assert_no_leftovers(run_dir)
        fail_at[0] = 10**9  # space is back
        resume_to_the_end(base, run_dir)
        assert_same_weights(run_dir, reference)


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs mounted at a dir of its own (root only); skipped where this machine cannot mount one."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip("cannot mount a tmpfs here; the injected ENOSPC test covers a full disk")
    yield mount
    subprocess.run(["umount", "--lazy", str(mount)], capture_output=True)  # TF may still hold a file open


def test_a_really_full_disk_during_a_save(base, reference, small_disk):
    run_dir = small_disk / "run"
    train.finetune(train.configure(flags(base, run_dir, max_steps=2, keep_checkpoints=1)))
    used = sum(p.stat().st_size for p in run_dir.rglob("*") if p.is_file())
    # Room for less than another checkpoint: the next save fills the disk.
    size_kb = (used + 2 * 1024 * 1024) // 1024
    subprocess.run(["mount", "-o", f"remount,size={size_kb}k", str(small_disk)], check=True)
    with pytest.raises(GPT2TFError) as err:
        train.finetune(train.configure(flags(base, run_dir, keep_checkpoints=1)))
    assert "\n" not in str(err.value) and "No space left on device" in str(err.value), str(err.value)
    assert train.RunDir(run_dir).checkpoints() == [2]
    assert_no_leftovers(run_dir)
    gpt2tf.load_model(run_dir)
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    train.finetune(train.configure(flags(base, run_dir, keep_checkpoints=1)))
    assert_same_weights(run_dir, reference)


# ---- damaged files -------------------------------------------------------------------------------------------------


def cut_short(path):
    path.write_bytes(path.read_bytes()[: max(path.stat().st_size // 2, 1) - 1])


def zeroed(path):
    path.write_bytes(bytes(path.stat().st_size))


def bit_flipped(path):
    data = bytearray(path.read_bytes())
    if data:
        data[len(data) * 2 // 3] ^= 0x10
    path.write_bytes(bytes(data))


DAMAGES = {"cut short": cut_short, "zeroed": zeroed, "a bit flipped": bit_flipped}


def outcome(action):
    """'ok' or the one-line error; anything else fails the test."""
    try:
        action()
        return "ok"
    except GPT2TFError as err:
        assert "\n" not in str(err) and str(err).strip(), repr(str(err))
        return str(err)


@pytest.mark.parametrize("damage", DAMAGES)
def test_each_file_of_a_model_dir_damaged(base, tmp_path, damage):
    want = {checkpoint_key(v): v.numpy() for v in gpt2tf.load_model(base / "model").weights}
    for name in sorted(os.listdir(base / "model")):
        model_dir = tmp_path / name
        shutil.copytree(base / "model", model_dir)
        DAMAGES[damage](model_dir / name)
        loaded = []
        result = outcome(lambda: loaded.append(gpt2tf.load_model(model_dir)))
        if name in ("encoder.json", "vocab.bpe"):
            assert result == "ok", (name, result)  # not read: the tokenizer is bundled
        elif name in ("model.ckpt.index", "model.ckpt.data-00000-of-00001"):
            assert result != "ok", (name, result)  # the weights themselves: never silently different
        if result == "ok":  # then it is exactly the model
            got = {checkpoint_key(v): v.numpy() for v in loaded[0].weights}
            for key in want:
                np.testing.assert_array_equal(got[key], want[key], err_msg=f"{name} {damage}: {key}")
        shutil.rmtree(model_dir)


def test_hparams_json_of_wrong_types_and_shapes(base, tmp_path):
    for content in (
        '{"n_vocab": "50257", "n_ctx": 32, "n_embd": 8, "n_head": 2, "n_layer": 1}',
        "[1, 2]",
        "null",
        '{"n_vocab": 50257, "n_ctx": 1000000000, "n_embd": 8, "n_head": 2, "n_layer": 1}',
        '{"n_vocab": 50257, "n_ctx": 32, "n_embd": 8, "n_head": 2, "n_layer": 2}',
    ):
        model_dir = tmp_path / "m"
        shutil.copytree(base / "model", model_dir)
        (model_dir / "hparams.json").write_text(content)
        assert outcome(lambda: gpt2tf.load_model(model_dir)) != "ok", content
        shutil.rmtree(model_dir)


@pytest.fixture(scope="module")
def finished_run(base, reference):
    return base / "reference"


RUN_FILES = [
    "checkpoint",
    "hparams.json",
    "train_config.json",
    "metrics.jsonl",
    "model.ckpt-4.index",
    "model.ckpt-4.data-00000-of-00001",
    "train_state/ckpt-4.index",
    "train_state/ckpt-4.data-00000-of-00001",
    "model.ckpt-3.index",
]


@pytest.mark.parametrize("damage", DAMAGES)
def test_each_file_of_a_run_dir_damaged(base, finished_run, reference, tmp_path, damage):
    for name in RUN_FILES:
        run_dir = tmp_path / "run"
        shutil.copytree(finished_run, run_dir)
        DAMAGES[damage](run_dir / name)
        # Continuing the run (one more epoch) and loading it as a model: each works, or is one line.
        resumed = outcome(lambda: train.finetune(train.configure(flags(base, run_dir, num_epoch=2))))
        loaded = outcome(lambda: gpt2tf.load_model(run_dir))
        if name == "metrics.jsonl":
            assert resumed == "ok" and loaded == "ok", (name, resumed, loaded)  # a damaged line is dropped
        if name.startswith(("model.ckpt-4", "train_state/ckpt-4")) and damage != "a bit flipped":
            assert resumed != "ok", name
        if "model.ckpt-4" in name and resumed != "ok":
            assert "model.ckpt-3" in resumed or "model.ckpt-3" in loaded, (resumed, loaded)  # the earlier one
        shutil.rmtree(run_dir)


def test_train_config_json_of_wrong_types(base, finished_run, tmp_path):
    for change in ({"num_epoch": "4"}, {"base_lr": None}, {"xla": "yes"}, {"decay_lr": -1}, {"model_dir": 7}):
        run_dir = tmp_path / "run"
        shutil.copytree(finished_run, run_dir)
        saved = json.loads((run_dir / "train_config.json").read_text())
        (run_dir / "train_config.json").write_text(json.dumps({**saved, **change}))
        with pytest.raises(GPT2TFError) as err:
            train.finetune(train.configure({"output_dir": str(run_dir)}))
        assert "\n" not in str(err.value)
        shutil.rmtree(run_dir)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "train_config.json").write_text("[]")
    with pytest.raises(GPT2TFError, match="not a JSON object"):
        train.configure({"output_dir": str(tmp_path / "x")})


def test_a_leftover_temp_dir_from_an_interrupted_save_is_cleaned_up(base, reference, tmp_path):
    run_dir = tmp_path / "run"
    train.finetune(train.configure(flags(base, run_dir, max_steps=2)))
    (run_dir / "train_state" / "ckpt-5.tmp-1_temp").mkdir()  # what TF's sharded save leaves when killed
    (run_dir / "train_state" / "ckpt-5.tmp-1_temp" / "part-0.data").write_bytes(b"x" * 10)
    (run_dir / "model.ckpt-3.tmp-1.index").write_bytes(b"half")
    (run_dir / "hparams.json.tmp-1").write_text("{")
    resume_to_the_end(base, run_dir)
    assert_same_weights(run_dir, reference)
    assert_no_leftovers(run_dir)


def test_one_run_dir_one_process(base, tmp_path):
    run_dir = tmp_path / "run"
    holder = train.RunDir(run_dir).lock()
    try:
        with pytest.raises(GPT2TFError, match="in use by another training process"):
            train.finetune(train.configure(flags(base, run_dir)))
    finally:
        holder.close()
    train.finetune(train.configure(flags(base, run_dir, max_steps=1)))


def test_writes_are_atomic(tmp_path, monkeypatch):
    """The atomic writer leaves the old file whole when the write fails part way."""
    path = tmp_path / "f.json"
    files.write_text_atomic(path, "old")

    def broken_fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        files.write_text_atomic(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_a_failed_save_into_an_existing_model_dir_leaves_no_temporary_files(tmp_path, monkeypatch):
    """The bundle's temporaries go when writing it fails (a full disk mid-save), and the dir holds what it held."""
    model_dir = tmp_path / "model"
    gpt2tf.write_synthetic_checkpoint(model_dir, HParams(n_vocab=101, n_ctx=16, n_embd=8, n_head=2, n_layer=1))
    before = {p.name: p.read_bytes() for p in model_dir.iterdir()}
    real_save = tf.raw_ops.SaveV2

    def full_disk(prefix, **kwargs):
        real_save(prefix=prefix, **kwargs)  # the files are written, then the disk fills
        raise tf.errors.ResourceExhaustedError(None, None, "No space left on device")

    monkeypatch.setattr(tf.raw_ops, "SaveV2", full_disk)
    with pytest.raises(GPT2TFError, match=r"cannot write model dir .*No space left on device"):
        gpt2tf.save_openai_checkpoint(gpt2tf.load_model(model_dir), model_dir)
    assert {p.name: p.read_bytes() for p in model_dir.iterdir()} == before


def test_replacing_a_dir_keeps_the_old_one_until_the_new_one_is_complete(tmp_path):
    target = tmp_path / "export" / "1"
    target.mkdir(parents=True)
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), files.writing_dir(target, replace=True) as (work, _):
        (work / "new.txt").write_text("half")
        raise RuntimeError("killed while writing")
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    with files.writing_dir(target, replace=True) as (work, _):
        (work / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["1"]  # nothing left beside it
    assert files.temp_name(target) != files.temp_name(target)  # two writers never share a temporary


def test_the_next_write_removes_a_killed_writers_work_dir_and_keeps_a_live_ones(tmp_path):
    """A kill -9 during an export leaves `.1.tmp-PID-xxxx/` (as big as the export): the next export of that dir
    removes it once process PID is gone; a running writer's dir stays."""
    target = tmp_path / "export" / "1"
    target.parent.mkdir()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # a process id that is gone now
    dead = target.parent / f".1{files.TEMP_MARK}{child.pid}-0badf00d"
    live = target.parent / f".1{files.TEMP_MARK}{os.getpid()}-0badf00d"
    other = target.parent / f".10{files.TEMP_MARK}{child.pid}-0badf00d"  # another dir's
    for path in (dead, live, other):
        path.mkdir()
        (path / "saved_model.pb").write_bytes(b"x" * 1000)
    with files.writing_dir(target, replace=True) as (work, _):
        (work / "new.txt").write_text("new")
    assert sorted(p.name for p in target.parent.iterdir()) == sorted(["1", live.name, other.name])

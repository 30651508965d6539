"""Fine-tuning on several replicas: two logical CPU devices under MirroredStrategy (a fresh process each, as
logical devices must be set before TensorFlow starts) against the one-device run in this process, and the
refusals."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from gpt2tf import train

from helpers import free_port

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(f"Line {i}: the quick brown fox jumps over the lazy dog." for i in range(80)))
    return path


def finetune_cli(*args):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run(
        [sys.executable, str(ROOT / "finetune.py"), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def weights(prefix):
    reader = tf.train.load_checkpoint(str(prefix))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


@pytest.mark.parametrize(
    "settings",
    [
        # SGD shows a wrongly scaled loss that Adam's normalisation would hide; with accumulation and without XLA.
        dict(optimizer="sgd", base_lr=0.5, accumulate_gradients=2, xla=False),
        # Adam on LoRA adapters with recomputed blocks, compiled by XLA; a tight clip so that clipping acts.
        dict(optimizer="adam", base_lr=0.01, lora_rank=2, recompute=True, clip_norm=0.05, xla=True),
    ],
    ids=["sgd-accumulate", "adam-lora-recompute-clip"],
)
def test_two_replicas_train_the_weights_of_one_device(tmp_path, small_model_dir, corpus, settings):
    common = dict(
        model_dir=str(small_model_dir),
        dataset_path=str(corpus),
        length=16,
        batch_size=4,
        max_steps=3,
        save_every=0,
        log_every=1,
        cache_dir=str(tmp_path / "cache"),
        **settings,
    )
    train.finetune(train.configure({**common, "output_dir": str(tmp_path / "one"), "strategy": "none"}))
    flags = []
    for name, value in {**common, "output_dir": tmp_path / "two"}.items():
        if value is True:
            flags.append(f"--{name}")
        elif value is False:
            flags.append(f"--no_{name}")
        else:
            flags += [f"--{name}", value]
    result = finetune_cli(*flags, "--strategy", "mirrored", "--cpu_replicas", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mirrored over 2 CPU replicas" in result.stderr
    one, two = weights(tmp_path / "one" / "model.ckpt-3"), weights(tmp_path / "two" / "model.ckpt-3")
    start = weights(small_model_dir / "model.ckpt")
    assert max(float(np.abs(one[k] - start[k]).max()) for k in one) > 1e-3  # the weights moved
    for key in one:
        np.testing.assert_allclose(two[key], one[key], atol=1e-5, rtol=0, err_msg=key)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--cpu_replicas", "3", "--batch_size", "4"], "--batch_size 4 does not split evenly over --cpu_replicas 3"),
        (["--cpu_replicas", "2", "--strategy", "none"], "--cpu_replicas makes replicas for --strategy mirrored"),
        (["--strategy", "ring"], "invalid choice: 'ring'"),
    ],
)
def test_refusals_are_one_line(tmp_path, small_model_dir, corpus, args, message):
    result = finetune_cli(
        "--model_dir", small_model_dir, "--dataset_path", corpus, "--output_dir", tmp_path / "r", *args
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert not (tmp_path / "r").exists()


def two_workers(tmp_path, *args):
    """The same finetune.py command as two workers on localhost ports; their results."""
    ports = [free_port(), free_port()]
    procs = []
    for index in range(2):
        tf_config = {
            "cluster": {"worker": [f"localhost:{p}" for p in ports]},
            "task": {"type": "worker", "index": index},
        }
        (tmp_path / f"tmp{index}").mkdir(exist_ok=True)
        env = {
            **{k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"},
            "TF_CONFIG": json.dumps(tf_config),
            "TMPDIR": str(tmp_path / f"tmp{index}"),
            "TF_NUM_INTEROP_THREADS": "1",
            "TF_NUM_INTRAOP_THREADS": "1",
        }  # the two share 2 cores
        procs.append(
            subprocess.Popen(
                [sys.executable, str(ROOT / "finetune.py"), *map(str, args)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
    return [err for _, err in results]


def test_two_workers_train_the_weights_of_one_device_and_resume_bitwise(tmp_path, small_model_dir, corpus):
    common = dict(
        model_dir=str(small_model_dir),
        dataset_path=str(corpus),
        length=16,
        batch_size=4,
        save_every=0,
        log_every=1,
        cache_dir=str(tmp_path / "cache"),
        optimizer="sgd",
        base_lr=0.5,
        accumulate_gradients=2,
        xla=False,
    )
    train.finetune(train.configure({**common, "output_dir": str(tmp_path / "one"), "max_steps": 3, "strategy": "none"}))
    flags = [
        "--model_dir",
        small_model_dir,
        "--dataset_path",
        corpus,
        "--length",
        16,
        "--batch_size",
        4,
        "--cache_dir",
        tmp_path / "cache",
        "--optimizer",
        "sgd",
        "--base_lr",
        0.5,
        "--accumulate_gradients",
        2,
        "--no_xla",
        "--log_every",
        1,
        "--strategy",
        "multi_worker",
    ]
    logs = two_workers(tmp_path, *flags, "--output_dir", tmp_path / "straight", "--max_steps", 3)
    assert "multi-worker over 2 workers" in logs[0] and "the chief writes the run dir" in logs[1]
    one, straight = weights(tmp_path / "one" / "model.ckpt-3"), weights(tmp_path / "straight" / "model.ckpt-3")
    for key in one:
        np.testing.assert_allclose(straight[key], one[key], atol=1e-5, rtol=0, err_msg=key)
    # Stopped after 2 steps and run again: the same weights, bit for bit, as the run never stopped.
    two_workers(tmp_path, *flags, "--output_dir", tmp_path / "resumed", "--max_steps", 2)
    two_workers(tmp_path, *flags, "--output_dir", tmp_path / "resumed", "--max_steps", 3)
    resumed = weights(tmp_path / "resumed" / "model.ckpt-3")
    assert all(np.array_equal(resumed[k], straight[k]) for k in straight)
    # A run of two workers continues on one device (the checkpoint does not depend on the replicas).
    for run in ("straight", "one"):
        train.finetune(
            train.configure({**common, "output_dir": str(tmp_path / run), "max_steps": 4, "strategy": "none"})
        )
    one, straight = weights(tmp_path / "one" / "model.ckpt-4"), weights(tmp_path / "straight" / "model.ckpt-4")
    for key in one:
        np.testing.assert_allclose(straight[key], one[key], atol=1e-5, rtol=0, err_msg=key)
    # Only the chief wrote: the other worker's scratch dirs are gone and nothing else was made.
    assert not list((tmp_path / "tmp1").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "one", "resumed", "straight", "tmp0", "tmp1"]


def test_multi_worker_refusals_are_one_line_and_never_hang(tmp_path, small_model_dir, corpus):
    base = ["--model_dir", small_model_dir, "--dataset_path", corpus, "--output_dir", tmp_path / "r"]
    result = finetune_cli(*base, "--strategy", "multi_worker")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "needs TF_CONFIG" in result.stderr
    env = {
        **{k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"},
        "TF_CONFIG": json.dumps(
            {"cluster": {"worker": [f"localhost:{free_port()}", "localhost:1"]}, "task": {"type": "worker", "index": 0}}
        ),
    }
    result = subprocess.run(
        [sys.executable, str(ROOT / "finetune.py"), *map(str, base), "--peer_timeout", "1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    notice, error = result.stderr.splitlines()  # what it waits for, then the one-line error
    assert result.returncode == 2 and notice.startswith("waiting for the workers TF_CONFIG names"), result.stderr
    assert "worker localhost:1 of TF_CONFIG did not answer within 1 s" in error
    assert not (tmp_path / "r").exists()
    malformed = subprocess.run(
        [sys.executable, str(ROOT / "finetune.py"), *map(str, base)],
        capture_output=True,
        text=True,
        env={**env, "TF_CONFIG": "{not json"},
        timeout=120,
    )  # the error alone, before any "waiting for the workers" and before TensorFlow starts
    assert malformed.returncode == 2 and malformed.stderr.count("\n") == 1, malformed.stderr
    assert "TF_CONFIG is not a cluster spec" in malformed.stderr


def test_mixed_float16_loss_scaling_works_on_two_replicas(tmp_path, small_model_dir, corpus):
    """ln_f's gain x50 makes the scaled fp16 gradients overflow at first: the loss scaler skips steps, halving its
    scale, until they fit. Two replicas skip steps too and end within one halving of one device: each replica sums
    only its half of the batch in float16, so a step at the edge can overflow on one device and not on two (the
    replicas' sum is float32) — the same steps are skipped only away from that edge."""
    import gpt2tf

    model = gpt2tf.load_model(small_model_dir)
    model.ln_f.g.assign(model.ln_f.g.numpy() * 50)
    gpt2tf.save_openai_checkpoint(model, tmp_path / "hot")
    common = dict(
        model_dir=str(tmp_path / "hot"),
        dataset_path=str(corpus),
        length=16,
        batch_size=4,
        max_steps=8,
        save_every=0,
        log_every=1,
        cache_dir=str(tmp_path / "cache"),
        precision="mixed_float16",
        base_lr=0.001,
        xla=False,
    )
    train.finetune(train.configure({**common, "output_dir": str(tmp_path / "one"), "strategy": "none"}))
    flags = [
        "--model_dir",
        tmp_path / "hot",
        "--dataset_path",
        corpus,
        "--length",
        16,
        "--batch_size",
        4,
        "--max_steps",
        8,
        "--cache_dir",
        tmp_path / "cache",
        "--precision",
        "mixed_float16",
        "--base_lr",
        0.001,
        "--no_xla",
        "--output_dir",
        tmp_path / "two",
        "--strategy",
        "mirrored",
        "--cpu_replicas",
        2,
    ]
    result = finetune_cli(*flags)
    assert result.returncode == 0, result.stderr[-3000:]

    def scale_and_applied(run):  # the loss scaler's scale, and the inner optimizer's applied steps
        reader = tf.train.load_checkpoint(str(tmp_path / run / "train_state" / "ckpt-8"))
        values = [
            reader.get_tensor(n).item()
            for n, s in sorted(reader.get_variable_to_shape_map().items())
            if s == [] and n.startswith("optimizer")
        ]
        return max(v for v in values if isinstance(v, float)), max(v for v in values if isinstance(v, int))

    (scale_one, applied_one), (scale_two, applied_two) = scale_and_applied("one"), scale_and_applied("two")
    assert scale_one < 32768 and scale_two < 32768 and applied_one < 8 and applied_two < 8  # steps were skipped
    assert scale_two / scale_one in (0.5, 1.0, 2.0) and abs(applied_two - applied_one) <= 1

"""Fine-tuning on several replicas: two logical CPU devices under MirroredStrategy (a fresh process each, as
logical devices must be set before TensorFlow starts) against the one-device run in this process, and the
refusals."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from gpt2tf import train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(f"Line {i}: the quick brown fox jumps over the lazy dog." for i in range(80)))
    return path


def finetune_cli(*args):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, str(ROOT / "finetune.py"), *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=600)


def weights(prefix):
    reader = tf.train.load_checkpoint(str(prefix))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


@pytest.mark.parametrize("settings", [
    # SGD shows a wrongly scaled loss that Adam's normalisation would hide; with accumulation and without XLA.
    dict(optimizer="sgd", base_lr=0.5, accumulate_gradients=2, xla=False),
    # Adam on LoRA adapters with recomputed blocks, compiled by XLA; a tight clip so that clipping acts.
    dict(optimizer="adam", base_lr=0.01, lora_rank=2, recompute=True, clip_norm=0.05, xla=True),
], ids=["sgd-accumulate", "adam-lora-recompute-clip"])
def test_two_replicas_train_the_weights_of_one_device(tmp_path, small_model_dir, corpus, settings):
    common = dict(model_dir=str(small_model_dir), dataset_path=str(corpus), length=16, batch_size=4, max_steps=3,
                  save_every=0, log_every=1, cache_dir=str(tmp_path / "cache"), **settings)
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


@pytest.mark.parametrize("args, message", [
    (["--cpu_replicas", "3", "--batch_size", "4"], "--batch_size 4 does not split evenly over --cpu_replicas 3"),
    (["--cpu_replicas", "2", "--strategy", "none"], "--cpu_replicas makes replicas for --strategy mirrored"),
    (["--strategy", "ring"], "invalid choice: 'ring'"),
])
def test_refusals_are_one_line(tmp_path, small_model_dir, corpus, args, message):
    result = finetune_cli("--model_dir", small_model_dir, "--dataset_path", corpus, "--output_dir", tmp_path / "r",
                          *args)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert not (tmp_path / "r").exists()

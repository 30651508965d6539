"""The project's own commands, run exactly as the README writes them, in a fresh working dir.

The working dir holds small synthetic `models/124M` and `models/355M` (GPT-2's vocabulary, a tiny network) and the
three scripts; only `--max_steps` and `--seed`/`--output jsonl` (to compare tokens) are ever added to a command.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import gpt2tf
import gpt2tf.formats.load
import gpt2tf.formats.openai
from gpt2tf import data
from gpt2tf.decode import generate as sample
from gpt2tf.hparams import pretrained

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("download_model.py", "finetune.py", "inference.py")
TINY_124M = gpt2tf.HParams(n_vocab=50257, n_ctx=256, n_embd=16, n_head=2, n_layer=2)
TINY_355M = TINY_124M.replace(n_embd=32, n_layer=3)  # another shape, so a mix-up cannot go unnoticed


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    path = tmp_path_factory.mktemp("models")
    gpt2tf.write_synthetic_checkpoint(path / "124M", TINY_124M, seed=3)
    gpt2tf.write_synthetic_checkpoint(path / "355M", TINY_355M, seed=4)
    return path


@pytest.fixture
def workdir(tmp_path, models):
    """A user's working dir: the scripts, models/124M and models/355M."""
    for script in SCRIPTS:
        shutil.copy(ROOT / script, tmp_path / script)
    shutil.copytree(models, tmp_path / "models")
    return tmp_path


def user_env(**env):
    """The environment a user has: no TF_CPP_MIN_LOG_LEVEL (the commands quiet TensorFlow themselves)."""
    return {**{k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}, "NO_PROXY": "127.0.0.1", **env}


def sh(workdir, command, **env):
    """Run `command` (a shell command line, exactly as a user types it) in `workdir`."""
    return subprocess.run(
        command, shell=True, cwd=workdir, env=user_env(**env), capture_output=True, text=True, timeout=600
    )


def one_line_error(result):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and result.stderr.strip().endswith(errors[0]), result.stderr
    return errors[0]


def test_download_model_124M_as_written(tmp_path, store):
    """A 124M-sized synthetic checkpoint (the known sizes hold) served on 127.0.0.1 through $GPT2TF_BASE_URL."""
    source = tmp_path / "served"
    gpt2tf.write_synthetic_checkpoint(source, pretrained("124M"), seed=0)
    files = {p.name: p.read_bytes() for p in source.iterdir()}
    files["model.ckpt.meta"] = b"a TF1 graph we never read"
    store.serve_model("124M", files)
    (tmp_path / "user").mkdir()
    shutil.copy(ROOT / "download_model.py", tmp_path / "user")
    result = sh(tmp_path / "user", "python download_model.py 124M", GPT2TF_BASE_URL=store.base_url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["models/124M: ready"]
    for name, content in files.items():
        assert (tmp_path / "user" / "models" / "124M" / name).read_bytes() == content


def test_inference_as_written_uses_models_124M(workdir):
    result = sh(workdir, 'python inference.py --nucleus --top_p 0.9 --starter "..."')
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith("=" * 30 + " SAMPLE 1 " + "=" * 30 + "\n")
    # The same command with a fixed seed gives what the library gives with models/124M.
    result = sh(workdir, 'python inference.py --nucleus --top_p 0.9 --starter "..." --seed 7 --output jsonl')
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout)
    enc = gpt2tf.get_encoder()
    want = sample.generate(
        gpt2tf.load_model(workdir / "models" / "124M"), [enc.encode("...")], length=100, top_k=0, top_p=0.9, seed=7
    )
    assert row["tokens"] == want[0]


def test_inference_without_models_124M_says_how_to_get_it(tmp_path):
    shutil.copy(ROOT / "inference.py", tmp_path)
    error = one_line_error(sh(tmp_path, 'python inference.py --nucleus --top_p 0.9 --starter "..."'))
    assert "models/124M does not exist" in error
    assert "python download_model.py 124M" in error and "--model_dir" in error


def test_finetune_cnndm_as_written_offline_is_one_line_and_leaves_no_run_dir(workdir):
    if data._unreachable(data.DOWNLOAD_HOSTS["cnn_dailymail"][0]) is None:
        pytest.skip("this machine reaches tfds' cnn_dailymail hosts: the offline error cannot happen here")
    result = sh(
        workdir, "python finetune.py --model_dir models/355M --data_loader cnndm", TFDS_DATA_DIR=str(workdir / "tfds")
    )
    error = one_line_error(result)
    assert f"tensorflow-datasets cnn_dailymail is not prepared in {workdir / 'tfds'}" in error
    assert "give --dataset_path" in error and "story layout" in error and "JSONL" in error
    assert result.stderr.startswith("run dir: runs/355M-cnndm (new run)\n")
    assert not (workdir / "runs").exists()


def test_the_ancestors_commands_round_trip_through_the_h5_file(workdir):
    (workdir / "dataset").mkdir()
    words = [
        "she",
        "picked",
        "up",
        "the",
        "sword",
        "and",
        "walked",
        "into",
        "the",
        "house",
        "of",
        "blue",
        "leaves",
        "where",
        "the",
        "bride",
        "waited",
    ]
    rng = np.random.default_rng(0)
    (workdir / "dataset" / "killbill.txt").write_text(
        "\n".join(" ".join(rng.choice(words, 12)) for _ in range(200)), encoding="utf-8"
    )
    result = sh(
        workdir,
        "python finetune.py --model_dir=models/124M/ --output_name=killbill_124M_5x2000.h5 "
        "--dataset_path=dataset/killbill.txt --data_loader=text --num_epoch=5 "
        '--decay_epochs="4,5" --steps_per_epoch=2000 --max_steps 2',
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("run dir: runs/124M-killbill (new run)\n")
    h5 = workdir / "output" / "killbill_124M_5x2000.h5"
    assert "wrote the weights to output/killbill_124M_5x2000.h5" in result.stderr

    # The file holds the run's weights, named and shaped as in OpenAI's checkpoint (read by TF's own reader).
    reader = tf.train.load_checkpoint(str(workdir / "runs" / "124M-killbill" / "model.ckpt-2"))
    import h5py

    with h5py.File(h5, "r") as f:
        assert [n.decode() if isinstance(n, bytes) else n for n in f.attrs["layer_names"]] == ["h0", "h1", "ln_f"]
        stored = {}
        f.visititems(
            lambda name, obj: stored.update({name.split("/", 1)[1]: obj[()]}) if isinstance(obj, h5py.Dataset) else None
        )
    assert sorted(stored) == sorted(reader.get_variable_to_shape_map())
    for key, value in stored.items():
        np.testing.assert_array_equal(value, reader.get_tensor(key))
    assert not np.array_equal(
        stored["model/h0/mlp/c_fc/w"],
        tf.train.load_checkpoint(str(workdir / "models" / "124M" / "model.ckpt")).get_tensor("model/h0/mlp/c_fc/w"),
    )  # it did train

    sampling = "--nucleus --top_p=1.0 --temperature=1.0 --output_length=200 --starter='She picked up the sword'"
    ancestor = sh(
        workdir,
        f"python inference.py --model_dir=models/124M/ --custom_model=output/killbill_124M_5x2000.h5 "
        f"{sampling} --seed 5 --output jsonl",
    )
    run_dir = sh(workdir, f"python inference.py --model_dir=runs/124M-killbill/ {sampling} --seed 5 --output jsonl")
    assert ancestor.returncode == 0 and run_dir.returncode == 0, ancestor.stderr + run_dir.stderr
    assert json.loads(ancestor.stdout)["tokens"] == json.loads(run_dir.stdout)["tokens"]
    assert len(json.loads(ancestor.stdout)["tokens"]) > 0

    # The weights of a 124M run do not fit the 355M model: one line naming the first tensor that differs.
    error = one_line_error(
        sh(workdir, "python inference.py --model_dir models/355M --custom_model output/killbill_124M_5x2000.h5")
    )
    assert "model/wte is [50257, 16] in the file but [50257, 32] in hparams.json" in error


def test_a_second_identical_command_continues_the_run(workdir):
    (workdir / "notes.txt").write_text("A line of text to learn from. " * 400, encoding="utf-8")
    command = (
        "python finetune.py --model_dir models/124M --dataset_path notes.txt --num_epoch 1 "
        "--steps_per_epoch 2 --length 32"
    )
    first = sh(workdir, command)
    assert first.returncode == 0, first.stderr
    assert first.stderr.startswith("run dir: runs/124M-notes (new run)\n")
    again = sh(workdir, command.replace("--num_epoch 1", "--num_epoch 2"))
    assert again.returncode == 0, again.stderr
    assert again.stderr.startswith("run dir: runs/124M-notes (continuing at step 2)\n")
    assert gpt2tf.formats.openai.read_state_file(workdir / "runs" / "124M-notes")[0] == "model.ckpt-4"
    other_model = sh(workdir, command.replace("models/124M", "models/355M").replace("--num_epoch 1", "--max_steps 1"))
    assert other_model.stderr.startswith("run dir: runs/355M-notes (new run)\n"), other_model.stderr


def test_the_gpt2tf_command_runs_every_subcommand(tmp_path):
    command = Path(sys.executable).with_name("gpt2tf")
    assert command.is_file(), "pip install -e . installs the gpt2tf console command"
    run = lambda *args: subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, env=user_env())  # noqa
    listing = run(str(command), "--help")
    assert listing.returncode == 0 and len(listing.stdout.splitlines()) <= 24  # one screen
    for name, script in (
        ("download", "download_model.py"),
        ("generate", "inference.py"),
        ("finetune", "finetune.py"),
        ("serve", "serve.py"),
        ("evaluate", "evaluate.py"),
        ("export", "export.py"),
    ):
        assert f"  {name} " in listing.stdout and f"python {script}" in listing.stdout
        sub, alone = run(str(command), name, "--help"), run(sys.executable, str(ROOT / script), "--help")
        assert sub.returncode == 0 and alone.returncode == 0, sub.stderr + alone.stderr
        # Exactly the script's flags: after the usage lines (wrapped to the program's name) the texts are equal.
        assert sub.stdout.split("\n\n", 1)[1] == alone.stdout.split("\n\n", 1)[1]
        assert sub.stdout.startswith(f"usage: gpt2tf {name} ") and alone.stdout.startswith(f"usage: python {script} ")
    as_module = run(sys.executable, "-m", "gpt2tf", "generate", "--top_p", "2", "--model_dir", "x")
    assert as_module.returncode == 2 and as_module.stderr == "error: top_p must be in (0, 1] (1 = off), got 2.0\n"
    unknown = run(str(command), "train")
    assert unknown.returncode == 2 and "unknown command 'train'" in unknown.stderr

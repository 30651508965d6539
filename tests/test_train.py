"""Training on tiny models: accumulation, recompute, LoRA, resume equivalence, checkpoints, NaN, the CLI."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import gpt2tf
import gpt2tf.formats.load
import gpt2tf.formats.openai
from gpt2tf import data, train
from gpt2tf.cli import run
from gpt2tf.errors import GPT2TFError
from gpt2tf.formats.tensors import checkpoint_key
from gpt2tf.hparams import HParams
from gpt2tf.model import GPT2

from helpers import SMALL

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(f"Line {i}: the quick brown fox jumps over the lazy dog." for i in range(60)))
    return path


def config(tmp_path, small_model_dir, corpus, **changes):
    values = dict(
        model_dir=str(small_model_dir),
        dataset_path=str(corpus),
        output_dir=str(tmp_path / "run"),
        length=16,
        batch_size=2,
        num_epoch=2,
        steps_per_epoch=3,
        save_every=0,
        log_every=1,
        cache_dir=str(tmp_path / "cache"),
        xla=False,
    )  # XLA's compile costs ~6 s; one test below uses it
    values.update(changes)
    return train.configure(values)


def weights_of(model):
    return {checkpoint_key(v): v.numpy() for v in model.weights}


def random_batch(seed, shape, n_vocab=101):
    tokens = np.random.default_rng(seed).integers(0, n_vocab, shape + (9,)).astype(np.int32)
    return tokens, np.ones(shape + (8,), np.float32)


def trainer_on(tiny_model_dir, **changes):
    values = dict(
        output_dir="unused", model_dir=str(tiny_model_dir), optimizer="sgd", base_lr=0.1, clip_norm=0.0, xla=False
    )
    values.update(changes)
    return train.Trainer(gpt2tf.load_model(tiny_model_dir), train.TrainConfig(**values))


# ---- the step ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer, xla, atol", [("sgd", True, 2e-6), ("adam", False, 1e-5)])
def test_accumulating_n_micro_batches_equals_an_n_times_larger_batch(tiny_model_dir, optimizer, xla, atol):
    tokens, weights = random_batch(0, (1, 4))
    weights[0, 1, 5:] = 0.0  # unequal weights per micro-batch: the normalisation must be over all of them
    big = trainer_on(tiny_model_dir, optimizer=optimizer, batch_size=4, xla=xla)
    big_loss = big.train_step(tokens, weights)
    small = trainer_on(tiny_model_dir, optimizer=optimizer, batch_size=2, accumulate_gradients=2, xla=xla)
    small_loss = small.train_step(tokens.reshape(2, 2, 9), weights.reshape(2, 2, 8))
    assert small_loss == pytest.approx(big_loss, rel=1e-6)
    # Adam's first step is about lr * sign(gradient), which magnifies rounding where a gradient is near 0.
    for key, value in weights_of(big.model).items():
        np.testing.assert_allclose(weights_of(small.model)[key], value, atol=atol, err_msg=key)
    assert int(small.data_index.numpy()) == 2 and int(small.step.numpy()) == 1


def test_recompute_gives_the_same_gradients(tiny_model_dir):
    tokens, weights = random_batch(1, (2,))
    plain = trainer_on(tiny_model_dir)
    remat = trainer_on(tiny_model_dir, recompute=True)
    total = tf.constant(weights.sum())
    for jit in (False, True):
        grads = [tf.function(t._loss_and_grads, jit_compile=jit)(tokens, weights, total)[1] for t in (plain, remat)]
        for a, b in zip(*grads):
            np.testing.assert_allclose(b.numpy(), a.numpy(), atol=1e-6)
    # Decoding with a cache still goes through the original blocks.
    cache = remat.model.init_cache(1, 8)
    logits, _ = remat.model(tokens[:1, :4], cache=cache, cache_index=0)
    np.testing.assert_allclose(logits.numpy(), plain.model(tokens[:1, :4]).numpy(), atol=1e-5)


def test_lora_starts_as_the_base_model_and_merges_into_plain_weights(tiny_model_dir, tmp_path):
    base = gpt2tf.load_model(tiny_model_dir)
    tokens, weights = random_batch(2, (1, 2))
    lora = trainer_on(tiny_model_dir, lora_rank=2, lora_alpha=4.0, optimizer="adam", base_lr=0.01)
    np.testing.assert_allclose(lora.model(tokens[0, :, :-1]).numpy(), base(tokens[0, :, :-1]).numpy(), atol=1e-6)
    for _ in range(3):
        lora.train_step(tokens, weights)
    assert len(lora.variables) == 2 * 4 * 2  # A and B on 4 projections in 2 blocks: nothing else trains
    for key, value in weights_of(lora.model).items():
        np.testing.assert_array_equal(value, weights_of(base)[key])  # the base weights never move
    adapted = lora.model(tokens[0, :, :-1]).numpy()
    assert np.abs(adapted - base(tokens[0, :, :-1]).numpy()).max() > 1e-4  # the adapters learned something
    prefix = tmp_path / "merged" / "model.ckpt"
    prefix.parent.mkdir()
    tensors = lora.weights_to_save()
    tf.raw_ops.SaveV2(
        prefix=str(prefix),
        tensor_names=sorted(tensors),
        shape_and_slices=[""] * len(tensors),
        tensors=[tensors[k] for k in sorted(tensors)],
    )
    merged = GPT2(lora.model.hparams, initializer="empty")
    gpt2tf.formats.openai.restore_weights(merged, str(prefix))
    np.testing.assert_allclose(merged(tokens[0, :, :-1]).numpy(), adapted, atol=1e-5)


def test_only_train_transformer_layers(tiny_model_dir):
    trainer = trainer_on(tiny_model_dir, only_train_transformer_layers=True)
    keys = {checkpoint_key(v) for v in trainer.variables}
    assert keys and all(k.startswith("model/h") for k in keys) and "model/wte" not in keys


@pytest.mark.parametrize("name", ["adam", "adamw", "adafactor", "sgd"])
def test_every_optimizer_lowers_the_loss(tiny_model_dir, name):
    tokens, weights = random_batch(3, (1, 2))
    trainer = trainer_on(tiny_model_dir, optimizer=name, base_lr=0.01 if name != "sgd" else 0.5, clip_norm=1.0)
    losses = [trainer.train_step(tokens, weights) for _ in range(5)]
    assert losses[-1] < losses[0]


def test_adafactor_state_is_factored(tiny_model_dir):
    trainer = trainer_on(tiny_model_dir, optimizer="adafactor")
    params = sum(int(np.prod(v.shape)) for v in trainer.variables)
    state = sum(int(np.prod(v.shape)) for v in trainer.optimizer.variables)
    assert state < params / 3  # Adam keeps 2 x params


def test_mixed_precision_steps_run_on_cpu(tiny_model_dir):
    assert train.resolve_precision("auto") == ("float32", False)  # no GPU here
    tokens, weights = random_batch(4, (1, 2))
    for precision in ("mixed_float16", "mixed_bfloat16"):
        policy, scaling = train.resolve_precision(precision)
        model = gpt2tf.load_model(tiny_model_dir, dtype=policy)
        trainer = train.Trainer(
            model, train.TrainConfig(output_dir="x", optimizer="adam", xla=False), loss_scaling=scaling
        )
        assert np.isfinite(trainer.train_step(tokens, weights))
        assert isinstance(trainer.optimizer, tf.keras.optimizers.LossScaleOptimizer) == scaling or not scaling


# ---- whole runs --------------------------------------------------------------------------------------------------


def final_state(run_dir):
    model = gpt2tf.load_model(run_dir)
    metrics = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return weights_of(model), [m for m in metrics if "loss" in m]


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(tmp_path, small_model_dir, corpus, monkeypatch):
    common = dict(accumulate_gradients=2, optimizer="adam", base_lr=3e-3, decay_epochs="1")
    whole = train.finetune(config(tmp_path / "a", small_model_dir, corpus, **common))
    assert train.RunDir(whole).checkpoints() == [6]

    # Stop at step 2 with max_steps, then "Ctrl-C" during step 4: each stop checkpoints, and each resume continues.
    parts = config(tmp_path / "b", small_model_dir, corpus, max_steps=2, **common)
    train.finetune(parts)
    assert train.RunDir(parts.output_dir).checkpoints() == [2]
    batch = data.TokenStream.batch

    def interrupting(self, index, **kwargs):
        if index == 6:  # the first micro-batch of step 4 (0-based 3): Ctrl-C arrives while it runs
            signal.raise_signal(signal.SIGINT)
        return batch(self, index, **kwargs)

    monkeypatch.setattr(data.TokenStream, "batch", interrupting)
    with pytest.raises(KeyboardInterrupt):
        train.finetune(train.configure({"output_dir": parts.output_dir}))  # the saved config, minus max_steps
    assert train.RunDir(parts.output_dir).checkpoints()[-1] == 4
    monkeypatch.setattr(data.TokenStream, "batch", batch)
    train.finetune(train.configure({"output_dir": parts.output_dir}))

    (weights_a, metrics_a), (weights_b, metrics_b) = final_state(whole), final_state(parts.output_dir)
    for key in weights_a:
        np.testing.assert_array_equal(weights_b[key], weights_a[key], err_msg=key)
    assert [m["step"] for m in metrics_b] == list(range(1, 7))  # metrics of the replayed steps are not doubled
    assert [m["loss"] for m in metrics_b] == [m["loss"] for m in metrics_a]
    assert [m["lr"] for m in metrics_a] == pytest.approx([3e-3] * 3 + [3e-4] * 3)  # decay at epoch 1 = step 3


def test_run_dir_is_a_model_dir_with_the_last_k_checkpoints(tmp_path, small_model_dir, corpus):
    run_dir = train.finetune(
        config(
            tmp_path,
            small_model_dir,
            corpus,
            save_every=1,
            keep_checkpoints=2,
            val_dataset_path=str(corpus),
            val_batches=2,
        )
    )
    assert train.RunDir(run_dir).checkpoints() == [5, 6]
    assert sorted(p.name for p in run_dir.glob("model.ckpt-*")) == [
        "model.ckpt-5.data-00000-of-00001",
        "model.ckpt-5.index",
        "model.ckpt-6.data-00000-of-00001",
        "model.ckpt-6.index",
    ]
    assert sorted(p.name for p in (run_dir / "train_state").iterdir()) == [
        "ckpt-5.data-00000-of-00001",
        "ckpt-5.index",
        "ckpt-6.data-00000-of-00001",
        "ckpt-6.index",
    ]
    assert {"hparams.json", "encoder.json", "vocab.bpe", "checkpoint"} <= {p.name for p in run_dir.iterdir()}
    model = gpt2tf.load_model(run_dir)
    assert model.hparams == SMALL
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {"step", "loss", "lr", "tokens_per_s"} <= set(metrics[0])
    assert [m["step"] for m in metrics if "val_mean_nll" in m] == [3, 6]  # each epoch's end
    # Validation is the evaluation's perplexity over the first val_batches x batch_size windows of the set.
    val = [m for m in metrics if "val_mean_nll" in m][-1]
    assert set(val) == {
        "step",
        "val_scored_tokens",
        "val_mean_nll",
        "val_perplexity",
        "val_bits_per_byte",
        "val_word_perplexity",
    }
    tokens = data.load_dataset(
        "text", str(corpus), tokenizer=gpt2tf.get_encoder(), cache_dir=str(tmp_path / "cache")
    ).tokens
    from gpt2tf import evaluate

    report, _ = evaluate.perplexity(model, tokens[: 4 * 16], context=16, stride=16)
    assert val["val_scored_tokens"] == report["scored_tokens"]
    assert val["val_mean_nll"] == pytest.approx(report["mean_nll"], abs=2e-6)
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert not [p for p in run_dir.rglob("*") if ".tmp-" in p.name]


def test_a_failed_save_leaves_the_previous_checkpoint(tmp_path, small_model_dir, corpus, monkeypatch):
    cfg = config(tmp_path, small_model_dir, corpus, save_every=2, num_epoch=1)
    import gpt2tf.formats.openai as checkpoint_module

    original = checkpoint_module.write_text_atomic  # what writes the `checkpoint` state file

    def dying(path, text):  # the process dies just before the state file would name the new checkpoint
        if Path(path).name == "checkpoint" and "model.ckpt-3" in text:
            raise OSError("killed")
        return original(path, text)

    monkeypatch.setattr(checkpoint_module, "write_text_atomic", dying)
    with pytest.raises(
        GPT2TFError,
        match=r"cannot write checkpoint 3 in .* \(killed\); the last checkpoint, step 2, "
        r"is complete; free some space and continue with: python finetune.py",
    ):
        train.finetune(cfg)
    assert train.RunDir(cfg.output_dir).checkpoints() == [2]
    before = weights_of(gpt2tf.load_model(cfg.output_dir))
    monkeypatch.setattr(checkpoint_module, "write_text_atomic", original)
    train.finetune(train.configure({"output_dir": cfg.output_dir}))  # resumes from step 2
    assert train.RunDir(cfg.output_dir).checkpoints() == [2, 3]
    assert any(not np.array_equal(before[k], v) for k, v in weights_of(gpt2tf.load_model(cfg.output_dir)).items())


def test_nan_loss_stops_the_run_and_names_the_last_good_checkpoint(tmp_path, small_model_dir, corpus):
    cfg = config(tmp_path, small_model_dir, corpus, optimizer="sgd", base_lr=1e30, clip_norm=0.0, save_every=1)
    with pytest.raises(GPT2TFError, match=r"(loss became (nan|inf)|no longer finite).*last good checkpoint"):
        train.finetune(cfg)
    steps = train.RunDir(cfg.output_dir).checkpoints()
    if steps:
        model = gpt2tf.load_model(cfg.output_dir)
        assert all(np.isfinite(v.numpy()).all() for v in model.weights)


def test_from_scratch_with_hparams_flags(tmp_path, corpus):
    cfg = train.configure(
        dict(
            init="random",
            n_layer=1,
            n_embd=8,
            n_head=2,
            n_ctx=16,
            dataset_path=str(corpus),
            output_dir=str(tmp_path / "run"),
            num_epoch=1,
            steps_per_epoch=2,
            batch_size=2,
            cache_dir=str(tmp_path / "cache"),
        )
    )
    run_dir = train.finetune(cfg)
    assert gpt2tf.load_model(run_dir).hparams == HParams(n_ctx=16, n_embd=8, n_head=2, n_layer=1)


def test_lora_run_saves_merged_weights_and_resumes(tmp_path, small_model_dir, corpus):
    cfg = config(tmp_path, small_model_dir, corpus, lora_rank=2, base_lr=1e-2, max_steps=2)
    train.finetune(cfg)
    at_2 = weights_of(gpt2tf.load_model(cfg.output_dir))
    assert any(not np.array_equal(at_2[k], v) for k, v in weights_of(gpt2tf.load_model(small_model_dir)).items())
    train.finetune(train.configure({"output_dir": cfg.output_dir}))
    assert train.RunDir(cfg.output_dir).checkpoints()[-1] == 6


def test_a_state_saved_before_the_transposed_layout_is_refused_clearly(tmp_path, small_model_dir, corpus, monkeypatch):
    """Optimizer slots saved with [1, n_in, n_out] projections must not load (a square one would, transposed)."""
    cfg = config(tmp_path, small_model_dir, corpus, optimizer="adam", max_steps=1)
    build = train.Trainer.__init__

    def without_layout(self, *args, **kwargs):  # the training state as gpt2tf wrote it before the layout marker
        build(self, *args, **kwargs)
        self.state = tf.train.Checkpoint(
            optimizer=list(self.optimizer.variables), step=self.step, data_index=self.data_index, adapters=[]
        )

    monkeypatch.setattr(train.Trainer, "__init__", without_layout)
    train.finetune(cfg)
    monkeypatch.undo()
    with pytest.raises(GPT2TFError, match=r"saved by an older gpt2tf .* --model_dir .* --output_dir NEW_DIR"):
        train.finetune(train.configure({"output_dir": cfg.output_dir}))


def test_a_corrupt_training_state_is_a_one_line_error(tmp_path, small_model_dir, corpus):
    cfg = config(tmp_path, small_model_dir, corpus, optimizer="adam", max_steps=1)
    train.finetune(cfg)
    (index,) = (Path(cfg.output_dir) / train.STATE_DIR).glob("*.index")
    index.write_bytes(b"not a checkpoint index")
    with pytest.raises(GPT2TFError, match=r"cannot read the training state .* damaged; start a new run"):
        train.finetune(train.configure({"output_dir": cfg.output_dir}))


# ---- configuration and the CLI -------------------------------------------------------------------------------------


def cli_error(capsys, argv):
    from gpt2tf.cli import finetune_main

    with pytest.raises(SystemExit) as info:
        run(finetune_main, argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the "run dir: ..." line, if it got that far
    assert err.startswith("error: "), err
    return err


def test_cli_bad_inputs_are_one_line_errors(tmp_path, small_model_dir, corpus, capsys):
    base = ["--model_dir", str(small_model_dir), "--dataset_path", str(corpus), "--output_dir", str(tmp_path / "r")]
    assert "invalid choice: 'coqa'" in cli_error(capsys, base + ["--data_loader", "coqa"])
    assert "does not exist" in cli_error(
        capsys,
        [
            "--model_dir",
            str(small_model_dir),
            "--dataset_path",
            str(tmp_path / "none.txt"),
            "--output_dir",
            str(tmp_path / "r"),
        ],
    )
    (tmp_path / "short.txt").write_text("Too short.")
    assert "too few for one training window" in cli_error(
        capsys, base[:2] + ["--dataset_path", str(tmp_path / "short.txt"), "--output_dir", str(tmp_path / "r")]
    )
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    assert "not UTF-8 text" in cli_error(
        capsys, base[:2] + ["--dataset_path", str(tmp_path / "image.png"), "--output_dir", str(tmp_path / "r")]
    )
    assert "not a GPT-2 model dir" in cli_error(capsys, ["--model_dir", str(tmp_path)] + base[2:])
    (tmp_path / "file").write_text("")
    assert "cannot write to --output_dir" in cli_error(capsys, base[:4] + ["--output_dir", str(tmp_path / "file/run")])
    assert "drop --only_train_transformer_layers" in cli_error(
        capsys, base + ["--lora_rank", "4", "--only_train_transformer_layers"]
    )
    assert "only apply with --init random" in cli_error(capsys, base + ["--n_layer", "2"])
    assert "must end in .h5" in cli_error(capsys, base + ["--output_name", "weights.ckpt"])
    assert "--batch_size must be at least 1" in cli_error(capsys, base + ["--batch_size", "0"])
    assert "--summary_only needs --data_loader cnndm" in cli_error(capsys, base + ["--summary_only"])
    assert "longer than the model's context" in cli_error(capsys, base + ["--length", str(SMALL.n_ctx + 1)])


def test_cli_defaults_come_from_the_config():
    from gpt2tf.config import config_parser

    parser = config_parser("finetune.py", "", train.TrainConfig)
    assert vars(parser.parse_args([])) == {}  # no flag restates a default: TrainConfig's (or the run's) apply
    assert vars(parser.parse_args(["--decay_lr=0.5", "--no_xla"])) == {"decay_lr": 0.5, "xla": False}
    assert train.TrainConfig().decay_lr == 0.1 and train.TrainConfig().xla


def test_finetune_script_smoke(tmp_path, small_model_dir, corpus):
    """One step through the real script in a fresh process; the run dir then loads as a model."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
    out = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "finetune.py"),
            "--model_dir",
            str(small_model_dir),
            "--dataset_path",
            str(corpus),
            "--output_dir",
            str(out),
            "--num_epoch",
            "1",
            "--steps_per_epoch",
            "1",
            "--length",
            "8",
            "--no_xla",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert f"python inference.py --model_dir {out}" in result.stderr
    assert gpt2tf.load_model(out).hparams == SMALL
    shutil.rmtree(out)


def test_a_run_that_never_starts_leaves_no_empty_output_dir(tmp_path, small_model_dir, corpus):
    cfg = config(tmp_path, small_model_dir, corpus, dataset_path=str(tmp_path / "missing.txt"))
    with pytest.raises(GPT2TFError, match="does not exist"):
        train.finetune(cfg)
    assert not (tmp_path / "run").exists()


def test_the_default_run_dir_is_named_after_the_model_and_the_data(tmp_path):
    runs = tmp_path / "runs"

    def name(**flags):
        return Path(train.default_output_dir(flags, runs_dir=runs)).name

    assert name(model_dir="models/355M", data_loader="cnndm") == "355M-cnndm"
    assert name(model_dir="models/124M/", dataset_path="dataset/killbill.txt") == "124M-killbill"
    assert name(model_dir="models/124M", dataset_path="data/books/*.txt") == "124M-books"
    assert name(model_dir="models/124M", dataset_path="datasets/shakespeare/train/") == "124M-train"
    assert name(model_dir="m/124M", data_loader="tfds", dataset_path="reddit_tifu/short") == "124M-reddit_tifu-short"
    assert name(init="random", dataset_path="corpus.txt") == "scratch-corpus"

    # A dir that holds this model's run on this data is continued; another model's or other data's is not.
    flags = dict(model_dir="models/124M", dataset_path="dataset/killbill.txt")
    (runs / "124M-killbill").mkdir(parents=True)
    train.TrainConfig(**flags, output_dir=str(runs / "124M-killbill")).to_json(
        runs / "124M-killbill" / "train_config.json"
    )
    assert name(**flags) == "124M-killbill"
    assert name(model_dir="models/124M/", dataset_path="./dataset/killbill.txt") == "124M-killbill"  # same paths
    assert name(model_dir="models/124M", dataset_path="other/killbill.txt") == "124M-killbill-2"
    assert name(**flags, data_loader="cnndm") == "124M-killbill-2"
    assert name(**flags, restore_from="fresh") == "124M-killbill-2"
    (runs / "124M-killbill-2").mkdir()
    train.TrainConfig(model_dir="models/124M", dataset_path="other/killbill.txt").to_json(
        runs / "124M-killbill-2" / "train_config.json"
    )
    assert name(model_dir="models/124M", dataset_path="other/killbill.txt") == "124M-killbill-2"
    assert name(**flags, restore_from="fresh") == "124M-killbill-3"


# ---- settings that would waste or destroy a run (issue 12) ---------------------------------------------------------


def test_restore_from_another_model_never_overwrites_a_run(tmp_path, small_model_dir, tiny_model_dir, corpus):
    cfg = config(tmp_path, small_model_dir, corpus, max_steps=1)
    train.finetune(cfg)
    before = sorted(p.name for p in Path(cfg.output_dir).iterdir())
    with pytest.raises(
        GPT2TFError,
        match=r"already holds a run, which starting from .* would overwrite; choose "
        r"another --output_dir",
    ):
        train.configure({"output_dir": cfg.output_dir, "restore_from": str(tiny_model_dir)})
    assert sorted(p.name for p in Path(cfg.output_dir).iterdir()) == before
    # Going back to one of the run's own checkpoints is allowed: it continues the same run.
    back = train.configure({"output_dir": cfg.output_dir, "restore_from": f"{cfg.output_dir}/model.ckpt-1"})
    assert back.model_dir == str(small_model_dir)


def test_a_resumed_run_keeps_the_weights_it_started_from(tmp_path, small_model_dir, corpus):
    cfg = config(tmp_path, small_model_dir, corpus, max_steps=1, lora_rank=2)
    train.finetune(cfg)
    other = tmp_path / "other"
    shutil.copytree(small_model_dir, other)
    with pytest.raises(
        GPT2TFError,
        match=r"holds a run started from --model_dir .*, not .*other; continue it "
        r"without --model_dir",
    ):
        train.configure({"output_dir": cfg.output_dir, "model_dir": str(other)})
    train.configure({"output_dir": cfg.output_dir, "model_dir": str(small_model_dir) + "/"})  # the same dir


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(decay_lr=-0.1), "--decay_lr must not be negative"),
        (dict(decay_lr=float("nan")), "decay_lr must be a finite number"),
        (dict(clip_norm=float("nan")), "clip_norm must be a finite number"),
        (dict(lora_alpha=float("nan")), "lora_alpha must be a finite number"),
        (dict(lora_alpha=0.0), "--lora_alpha must be a positive number"),
        (dict(sample_length=0), "--sample_length must be at least 1"),
        (dict(num_epoch="4"), "num_epoch must be a whole number, got '4'"),
    ],
)
def test_bad_settings_are_refused_before_the_run(tmp_path, small_model_dir, corpus, changes, message):
    with pytest.raises(GPT2TFError, match=re.escape(message)):
        config(tmp_path, small_model_dir, corpus, **changes)
    assert not (tmp_path / "run").exists()


def test_a_sample_that_cannot_fit_is_refused_before_training(tmp_path, small_model_dir, corpus):
    cfg = config(tmp_path, small_model_dir, corpus, sample_every=1, sample_length=SMALL.n_ctx)
    with pytest.raises(GPT2TFError, match="--sample_length 64 do not fit the model's context of 64"):
        train.finetune(cfg)
    assert not (tmp_path / "run").exists()


def test_a_shape_too_big_for_memory_is_refused(tmp_path, corpus):
    with pytest.raises(GPT2TFError, match="more than this machine's"):
        train.finetune(
            train.configure(
                dict(
                    init="random",
                    n_ctx=10**8,
                    n_embd=768,
                    dataset_path=str(corpus),
                    output_dir=str(tmp_path / "run"),
                    length=16,
                )
            )
        )


def test_finetune_flag_errors_are_reported_before_tensorflow_loads(tmp_path):
    code = (
        "import sys, atexit; atexit.register(lambda: print('TF' if 'tensorflow' in sys.modules else 'no TF', "
        "file=sys.stderr)); from gpt2tf.cli import run_script; sys.argv = ['finetune.py'] + sys.argv[1:]; "
        "run_script('finetune')"
    )
    for args, message in (
        (["--decay_lr", "nan"], "decay_lr must be a finite number"),
        (["--data_loader", "coqa"], "invalid choice: 'coqa'"),
        (
            ["--output_dir", str(tmp_path), "--restore_from", "fresh", "--batch_size", "0"],
            "--batch_size must be at least 1",
        ),
    ):
        result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=tmp_path)
        assert result.returncode == 2
        error, imported = result.stderr.strip().splitlines()
        assert error.startswith("error: ") and message in error and imported == "no TF", result.stderr

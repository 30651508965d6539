"""Hugging Face interop: random GPT2LMHeadModels saved by transformers, loaded by gpt2tf (logits compared); dirs
gpt2tf writes, loaded by transformers (model and tokenizer); bit-exact round trips; convert.py; the refusals.
transformers and torch are test extras only."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import torch
import transformers

import gpt2tf
from gpt2tf import save_hf_checkpoint
from gpt2tf.errors import GPT2TFError
from gpt2tf.hparams import pretrained

from helpers import SMALL

ROOT = Path(__file__).resolve().parents[1]
IDS = [[464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13]]


def random_hf_model(hparams, seed=0, **config):
    """A GPT2LMHeadModel with every tensor random (gains and biases included)."""
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(
        vocab_size=hparams.n_vocab,
        n_positions=hparams.n_ctx,
        n_embd=hparams.n_embd,
        n_head=hparams.n_head,
        n_layer=hparams.n_layer,
        **config,
    )
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(
                torch.randn_like(p) * (0.1 if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")) else 0.03)
                + (1.0 if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")) else 0.0)
            )
    return model


def hf_logits(model, ids=IDS):
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.numpy()


def cli(script, *args, cwd=None):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run(
        [sys.executable, str(ROOT / script), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )


@pytest.fixture(scope="module")
def hf_small(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf") / "small"
    model = random_hf_model(SMALL)
    model.save_pretrained(path)
    return model, path


@pytest.mark.parametrize("shape", ["small", pytest.param("124M", marks=pytest.mark.slow)])
def test_transformers_checkpoints_load_with_transformers_logits(tmp_path, shape, hf_small):
    if shape == "small":
        model, path = hf_small
    else:
        model, path = random_hf_model(pretrained("124M"), seed=1), tmp_path / "124M"
        model.save_pretrained(path)
    ours = gpt2tf.load_model(path)
    np.testing.assert_allclose(ours(tf.constant(IDS)).numpy(), hf_logits(model), atol=1e-4, rtol=0)


def test_sharded_untied_prefixless_and_old_buffers(tmp_path, hf_small):
    model, _ = hf_small
    want = hf_logits(model)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="300KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    np.testing.assert_allclose(gpt2tf.load_model(tmp_path / "sharded")(tf.constant(IDS)).numpy(), want, atol=1e-4)
    # GPT2Model's names (no `transformer.`), an explicit lm_head equal to wte, and old versions' mask buffers.
    from safetensors.torch import save_file

    state = {
        k[len("transformer.") :]: v.clone().contiguous()
        for k, v in model.state_dict().items()
        if k.startswith("transformer.")
    }
    state["lm_head.weight"] = state["wte.weight"].clone()
    state["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 8, 8))
    state["h.0.attn.masked_bias"] = torch.tensor(-1e4)
    (tmp_path / "plain").mkdir()
    save_file(state, tmp_path / "plain" / "model.safetensors", metadata={"format": "pt"})
    config = model.config.to_dict()
    (tmp_path / "plain" / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))
    np.testing.assert_allclose(gpt2tf.load_model(tmp_path / "plain")(tf.constant(IDS)).numpy(), want, atol=1e-4)
    # An untied head that differs from wte cannot be represented: an error, not silently dropped.
    state["lm_head.weight"] = state["wte.weight"] * 1.5
    save_file(state, tmp_path / "plain" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(GPT2TFError, match="lm_head.weight that differs from wte.weight"):
        gpt2tf.load_model(tmp_path / "plain")


def test_dirs_gpt2tf_writes_load_in_transformers(tmp_path, small_model_dir):
    ours = gpt2tf.load_model(small_model_dir)
    want = ours(tf.constant(IDS)).numpy()
    for name, shard in (("one", None), ("sharded", 400_000)):
        out = tmp_path / name
        save_hf_checkpoint(ours, out, **({"max_shard_bytes": shard} if shard else {}))
        assert (out / "model.safetensors.index.json").is_file() == bool(shard)
        theirs, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
        np.testing.assert_allclose(hf_logits(theirs.eval()), want, atol=1e-4)
    config = json.loads((tmp_path / "one" / "config.json").read_text())
    assert config["architectures"] == ["GPT2LMHeadModel"] and config["model_type"] == "gpt2"
    assert (tmp_path / "one" / "generation_config.json").is_file()


def test_the_written_tokenizer_gives_our_ids(tmp_path, small_model_dir):
    from helpers import adversarial_documents

    save_hf_checkpoint(gpt2tf.load_model(small_model_dir), tmp_path / "hf")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    encoder = gpt2tf.get_encoder()
    texts = ["Hello world, it's a test  \n\n ok", "héllo 😀 中文", "<|endoftext|> x"]
    texts += adversarial_documents(random.Random(7), 150)[:150]
    # <|endoftext|> in text is text to our encoder (as OpenAI's) unless allowed; HF's splits it only when told to.
    bad = [
        t[:40]
        for t in texts
        if tokenizer(t, add_special_tokens=False, split_special_tokens=True)["input_ids"] != encoder.encode(t)
    ]
    assert bad == []
    assert tokenizer("<|endoftext|> x")["input_ids"] == encoder.encode("<|endoftext|> x", allowed_special="all")
    assert tokenizer.decode(encoder.encode("Hello world")) == "Hello world"


def test_round_trips_are_bit_exact_and_convert_runs(tmp_path, small_model_dir):
    result = cli("convert.py", small_model_dir, tmp_path / "hf", "--to", "hf")
    assert result.returncode == 0, result.stderr
    result = cli("convert.py", tmp_path / "hf", tmp_path / "openai", "--to", "openai")
    assert result.returncode == 0, result.stderr
    first = tf.train.load_checkpoint(str(small_model_dir / "model.ckpt"))
    again = tf.train.load_checkpoint(str(tmp_path / "openai" / "model.ckpt"))
    names = first.get_variable_to_shape_map()
    assert names == again.get_variable_to_shape_map()
    for name in names:
        assert np.array_equal(first.get_tensor(name), again.get_tensor(name)), name
    # Every script takes either layout: the same greedy text from both.
    outs = [
        cli("inference.py", "--model_dir", d, "--greedy", "--output_length", "8", "--starter", "Hello", "--seed", "1")
        for d in (small_model_dir, tmp_path / "hf")
    ]
    assert all(o.returncode == 0 for o in outs), outs[1].stderr
    assert outs[0].stdout == outs[1].stdout


def test_finetune_starts_from_a_hf_dir_and_save_hf_writes_a_copy(tmp_path, hf_small):
    _, path = hf_small
    (tmp_path / "data.txt").write_text("The quick brown fox jumps over the lazy dog. " * 200)
    result = cli(
        "finetune.py",
        "--model_dir",
        path,
        "--dataset_path",
        tmp_path / "data.txt",
        "--output_dir",
        tmp_path / "run",
        "--max_steps",
        "1",
        "--batch_size",
        "2",
        "--length",
        "32",
        "--save_hf",
        "--no_xla",
    )
    assert result.returncode == 0, result.stderr
    run = gpt2tf.load_model(tmp_path / "run")
    copy = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "hf").eval()
    np.testing.assert_allclose(hf_logits(copy), run(tf.constant(IDS)).numpy(), atol=1e-4)


def _truncate(d):
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])


def _header_shape(d):
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, "n_embd": 32}))  # the tensors are 16 wide


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / "model-00002-of-00002.safetensors").unlink(), "missing shard model-00002-of-00002.safetensors"),
        (lambda d: _truncate(d), "is cut short"),
        (lambda d: _header_shape(d), "does not match its config.json"),
        (
            lambda d: (d / "config.json").write_text(json.dumps({"model_type": "llama"})),
            "model_type 'llama', not 'gpt2'",
        ),
        (
            lambda d: (d / "config.json").write_text(json.dumps({"model_type": "gpt2", "activation_function": "relu"})),
            "activation_function = 'relu'",
        ),
        (lambda d: (d / "config.json").unlink(), "Hugging Face's (config.json"),
    ],
)
def test_bad_checkpoints_are_one_line_and_exit_2(tmp_path, hf_small, damage, message):
    model, _ = hf_small
    sharded = "missing shard" in message
    model.save_pretrained(tmp_path / "m", max_shard_size="1MB" if sharded else "5GB")
    if sharded:
        assert (tmp_path / "m" / "model-00002-of-00002.safetensors").is_file()
    damage(tmp_path / "m")
    result = cli("convert.py", tmp_path / "m", tmp_path / "out", "--to", "openai")
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()

"""The Keras model against the independent NumPy reference, and its cache, padding, XLA and precision paths."""

import numpy as np
import pytest
import tensorflow as tf

import gpt2tf
from gpt2tf.formats.openai import openai_tensor_shapes
from gpt2tf.formats.tensors import checkpoint_key, checkpoint_shape
from gpt2tf.hparams import PRETRAINED, HParams
from gpt2tf.model import GPT2

from reference import read_openai_checkpoint, reference_logits


def _tokens(n, n_vocab, seed=0):
    return np.random.default_rng(seed).integers(0, n_vocab, size=n)


@pytest.mark.parametrize(
    "hparams",
    [
        HParams(n_vocab=101, n_ctx=32, n_embd=16, n_head=4, n_layer=2),
        HParams(n_vocab=50, n_ctx=20, n_embd=24, n_head=3, n_layer=3),
        HParams(n_vocab=7, n_ctx=9, n_embd=8, n_head=1, n_layer=1),
    ],
)
def test_variable_paths_are_the_checkpoint_keys(hparams):
    model = GPT2(hparams, initializer="empty")
    assert {v.path: checkpoint_shape(v) for v in model.weights} == openai_tensor_shapes(hparams)
    assert all(v.dtype == "float32" for v in model.weights)


@pytest.mark.parametrize("name", sorted(PRETRAINED))
def test_variable_paths_match_real_sizes(name):
    # Built with the empty initializer: address space is reserved but never touched, so this is cheap.
    model = GPT2(PRETRAINED[name], initializer="empty")
    shapes = {v.path: checkpoint_shape(v) for v in model.weights}
    assert shapes == openai_tensor_shapes(PRETRAINED[name])
    assert len(shapes) == {"124M": 148, "355M": 292, "774M": 436, "1558M": 580}[name]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_logits_match_reference_tiny(tmp_path, tiny_hparams, seed):
    gpt2tf.write_synthetic_checkpoint(tmp_path / "m", tiny_hparams, seed=seed)
    model = gpt2tf.load_model(tmp_path / "m")
    params = read_openai_checkpoint(str(tmp_path / "m" / "model.ckpt"))
    tokens = _tokens(tiny_hparams.n_ctx, tiny_hparams.n_vocab, seed)
    expected = reference_logits(params, tiny_hparams.n_head, tokens)
    logits = model(tf.constant([tokens]))
    assert logits.dtype == tf.float32 and logits.shape == (1, tiny_hparams.n_ctx, tiny_hparams.n_vocab)
    np.testing.assert_allclose(logits[0].numpy(), expected, atol=1e-5, rtol=0)


def test_logits_match_reference_124m_shape(tmp_path_factory):
    hparams = PRETRAINED["124M"]
    path = tmp_path_factory.mktemp("m124") / "124M"
    gpt2tf.write_synthetic_checkpoint(path, hparams, seed=3)
    model = gpt2tf.load_model(path)
    params = read_openai_checkpoint(str(path / "model.ckpt"))
    tokens = _tokens(24, hparams.n_vocab, seed=3)
    expected = reference_logits(params, hparams.n_head, tokens)
    logits = model(tf.constant([tokens]))[0].numpy()
    assert np.abs(logits - expected).max() <= 1e-4
    assert np.std(expected) > 0.1  # the comparison is not between two near-constant arrays


def test_batch_rows_are_independent(tiny_model, tiny_hparams):
    tokens = np.stack([_tokens(10, tiny_hparams.n_vocab, s) for s in range(3)])
    batched = tiny_model(tf.constant(tokens)).numpy()
    for row in range(3):
        alone = tiny_model(tf.constant(tokens[row : row + 1])).numpy()
        np.testing.assert_allclose(batched[row], alone[0], atol=1e-5)


def test_cached_steps_equal_full_forward(tiny_model, tiny_hparams):
    tokens = _tokens(20, tiny_hparams.n_vocab, 5)[None]
    full = tiny_model(tf.constant(tokens)).numpy()
    cache = tiny_model.init_cache(1, 24)
    assert len(cache) == tiny_hparams.n_layer
    assert [c.shape for c in cache[0]] == [(1, tiny_hparams.n_head, 24, tiny_hparams.head_size)] * 2  # keys, values
    logits, cache = tiny_model(tf.constant(tokens[:, :7]), cache=cache, cache_index=0)  # prefill in one pass
    steps = [logits.numpy()]
    for i in range(7, 20):
        logits, cache = tiny_model(tf.constant(tokens[:, i : i + 1]), cache=cache, cache_index=i)
        steps.append(logits.numpy())
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5)
    assert [c.shape for c in cache[0]] == [(1, tiny_hparams.n_head, 24, tiny_hparams.head_size)] * 2  # fixed


def test_left_padding_gives_the_same_logits(tiny_model, tiny_hparams):
    short = _tokens(6, tiny_hparams.n_vocab, 7)
    long = _tokens(9, tiny_hparams.n_vocab, 8)
    pad = 3
    tokens = np.stack([np.concatenate([np.zeros(pad, int), short]), long])
    mask = np.stack([np.arange(9) >= pad, np.ones(9, bool)])
    logits = tiny_model(tf.constant(tokens), padding_mask=tf.constant(mask)).numpy()
    np.testing.assert_allclose(logits[0, pad:], tiny_model(tf.constant([short]))[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(logits[1], tiny_model(tf.constant([long]))[0].numpy(), atol=1e-5)

    # The same through the cache: prefill the padded prompts, then one more token each.
    cache = tiny_model.init_cache(2, 12)
    cache_mask = np.concatenate([mask, np.ones((2, 3), bool)], axis=1)
    _, cache = tiny_model(tf.constant(tokens), cache=cache, cache_index=0, padding_mask=cache_mask)
    nxt = np.array([[5], [6]])
    step, _ = tiny_model(tf.constant(nxt), cache=cache, cache_index=9, padding_mask=cache_mask)
    want0 = tiny_model(tf.constant([np.append(short, 5)]))[0, -1].numpy()
    want1 = tiny_model(tf.constant([np.append(long, 6)]))[0, -1].numpy()
    np.testing.assert_allclose(step[:, 0].numpy(), np.stack([want0, want1]), atol=1e-5)


def test_xla_matches_eager(tiny_model, tiny_hparams):
    tokens = tf.constant(_tokens(12, tiny_hparams.n_vocab, 9)[None])
    compiled = tf.function(lambda t: tiny_model(t), jit_compile=True)
    np.testing.assert_allclose(compiled(tokens).numpy(), tiny_model(tokens).numpy(), atol=1e-5)

    @tf.function(jit_compile=True)
    def step(t, cache, index):
        return tiny_model(t, cache=cache, cache_index=index)

    cache = tiny_model.init_cache(1, 16)
    logits, cache = step(tokens[:, :1], cache, tf.constant(0))
    for i in range(1, 12):
        logits, cache = step(tokens[:, i : i + 1], cache, tf.constant(i))
    np.testing.assert_allclose(logits[0, 0].numpy(), tiny_model(tokens)[0, -1].numpy(), atol=1e-5)
    assert step.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("policy, atol", [("mixed_float16", 0.05), ("mixed_bfloat16", 0.3)])
def test_mixed_precision(tiny_model_dir, tiny_model, tiny_hparams, policy, atol):
    model = gpt2tf.load_model(tiny_model_dir, dtype=policy)
    assert all(v.dtype == "float32" for v in model.weights)
    assert model.compute_dtype == policy.split("_")[1]
    assert model.h[0].ln_1.compute_dtype == "float32" and model.ln_f.compute_dtype == "float32"
    tokens = tf.constant(_tokens(16, tiny_hparams.n_vocab, 4)[None])
    logits = model(tokens)
    assert logits.dtype == tf.float32
    full = tiny_model(tokens).numpy()
    assert np.abs(logits.numpy() - full).max() < atol
    cache = model.init_cache(1, 16)
    assert cache[0][0].dtype == model.compute_dtype
    compiled = tf.function(lambda t: model(t), jit_compile=True)
    assert np.abs(compiled(tokens).numpy() - full).max() < atol


def test_random_initialisation_follows_openai():
    model = GPT2(HParams(n_vocab=500, n_ctx=64, n_embd=32, n_head=4, n_layer=2))
    weights = {checkpoint_key(v): v.numpy() for v in model.weights}
    assert abs(weights["model/wte"].std() - 0.02) < 0.002
    assert abs(weights["model/wpe"].std() - 0.01) < 0.002
    assert np.all(weights["model/h0/ln_1/g"] == 1) and np.all(weights["model/h1/mlp/c_fc/b"] == 0)
    assert weights["model/h0/attn/c_proj/w"].std() < weights["model/h0/attn/c_attn/w"].std()

"""Samplers on fake logits against brute-force rules, and the cached XLA decode loop against the reference model."""

import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import gpt2tf
from gpt2tf.decode import engine, filters
from gpt2tf.decode import generate as sample
from gpt2tf.errors import GPT2TFError
from gpt2tf.layout import EOT_ID, MASKED_VALUE

from helpers import SMALL, default_runner
from reference import read_openai_checkpoint, reference_logits, top_p_kept


@pytest.fixture(scope="module")
def small_dir(small_model_dir):
    return small_model_dir


@pytest.fixture(scope="module")
def small_model(small_model_dir):
    return gpt2tf.load_model(small_model_dir)


# ---------------------------------------------------------------------------------------------------------------
# Filters on fake logits


def _kept(filtered):
    return set(np.flatnonzero(filtered > MASKED_VALUE / 2))


@pytest.mark.parametrize("k", [1, 2, 5, 40])
def test_top_k_never_leaves_the_top_k(k):
    logits = np.random.default_rng(k).normal(size=(3, 500)).astype(np.float32)
    filtered = filters.top_k_logits(tf.constant(logits), k).numpy()
    for row in range(3):
        assert _kept(filtered[row]) == set(np.argsort(-logits[row])[:k])
        kept = list(_kept(filtered[row]))
        np.testing.assert_array_equal(filtered[row][kept], logits[row][kept])  # kept logits untouched


def test_top_k_zero_is_off():
    logits = tf.constant([[1.0, 2.0, 3.0]])
    np.testing.assert_array_equal(filters.top_k_logits(logits, 0).numpy(), logits.numpy())


def test_top_p_includes_the_crossing_token():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]], np.float32))
    assert _kept(filters.top_p_logits(tf.constant(logits), 0.75).numpy()[0]) == {0, 1}  # 0.5 < .75, 0.8 crosses
    assert _kept(filters.top_p_logits(tf.constant(logits), 0.4).numpy()[0]) == {0}  # the top token always stays
    assert _kept(filters.top_p_logits(tf.constant(logits), 0.9).numpy()[0]) == {0, 1, 2}
    assert _kept(filters.top_p_logits(tf.constant(logits), 1.0).numpy()[0]) == {0, 1, 2, 3}


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.9, 0.99])
def test_top_p_keeps_exactly_the_documented_set(p):
    logits = (np.random.default_rng(int(p * 100)).normal(size=(4, 300)) * 3).astype(np.float32)
    filtered = filters.top_p_logits(tf.constant(logits), p).numpy()
    for row in range(4):
        assert _kept(filtered[row]) == top_p_kept(logits[row].astype(np.float64), p)


def test_filters_run_in_openai_order():
    logits = np.random.default_rng(3).normal(size=(2, 200)).astype(np.float32)
    seen = np.zeros((2, 200), bool)
    got = filters.filter_logits(tf.constant(logits), tf.constant(seen), 0.7, 20, 0.6, 1.0).numpy()
    want = filters.top_p_logits(filters.top_k_logits(tf.constant(logits / 0.7), 20), 0.6).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert _kept(got[0]) <= set(np.argsort(-logits[0])[:20])


@pytest.mark.parametrize("k, p", [(5, 0.5), (40, 0.9), (3, 0.999), (1, 0.3)])
def test_top_k_then_top_p_fast_path_keeps_the_same_set(k, p):
    rng = np.random.default_rng(k)
    logits = np.round(rng.normal(size=(4, 300)) * 2, 1).astype(np.float32)  # rounding makes ties likely
    got = filters.filter_logits(tf.constant(logits), tf.zeros((4, 300), tf.bool), 1.0, k, p, 1.0).numpy()
    for row in range(4):
        kth = np.sort(logits[row])[::-1][k - 1]
        after_k = np.where(logits[row] >= kth, logits[row], -1e10).astype(np.float64)
        assert _kept(got[row]) == top_p_kept(after_k, p) & set(np.flatnonzero(logits[row] >= kth))


def test_rows_with_their_own_settings_each_keep_their_own_set():
    """One call, six rows, six settings: greedy and free rows pass untouched; the rows top-k/top-p filter keep their
    brute-force sets, whether from their top values or from the whole vocabulary sorted (rows 3 and 4: nuclei wider
    than FAST_K), wherever they sit in the batch."""
    rng = np.random.default_rng(11)
    scale = np.array([[2.0], [1.0], [3.0], [0.2], [0.3], [1.5]])
    logits = (rng.normal(size=(6, 1000)) * scale).astype(np.float32)
    temperature, top_k, top_p = [0.0, 1.0, 1.0, 1.0, 0.7, 1.0], [0, 0, 40, 0, 0, 5], [1.0, 1.0, 0.9, 0.9, 0.95, 1.0]
    got = filters.filter_logits(
        tf.constant(logits),
        tf.zeros((6, 1000), tf.bool),
        tf.constant(temperature),
        tf.constant(top_k),
        tf.constant(top_p),
        1.0,
    ).numpy()
    np.testing.assert_array_equal(got[0], logits[0])  # greedy
    np.testing.assert_array_equal(got[1], logits[1])  # no filter
    kth = np.sort(logits[2])[::-1][39]
    assert _kept(got[2]) == top_p_kept(np.where(logits[2] >= kth, logits[2], -1e10).astype(np.float64), 0.9)
    for row in (3, 4):
        scaled = (logits[row] / np.float32(temperature[row])).astype(np.float64)
        assert _kept(got[row]) == top_p_kept(scaled, top_p[row]) and len(_kept(got[row])) > filters.FAST_K
    assert _kept(got[5]) == set(np.argsort(-logits[5])[:5])


def test_repetition_penalty_direction():
    logits = tf.constant([[2.0, -2.0, 2.0, -2.0]])
    seen = tf.constant([[True, True, False, False]])
    out = filters.apply_repetition_penalty(logits, seen, 2.0).numpy()
    np.testing.assert_allclose(out, [[1.0, -4.0, 2.0, -2.0]])  # seen: positive halved, negative doubled
    probs = tf.nn.softmax(out).numpy()[0]
    before = tf.nn.softmax(logits).numpy()[0]
    assert probs[0] < before[0] and probs[1] < before[1]


def test_gumbel_draws_follow_the_softmax():
    logits = np.log(np.array([0.6, 0.25, 0.1, 0.05], np.float32))[None]
    seeds = tf.constant([[7, r] for r in range(4000)], tf.int32)
    draws = filters.choose_tokens(
        tf.constant(np.repeat(logits, 4000, 0)),
        tf.zeros((4000, 4), tf.bool),
        seeds,
        tf.constant(0),
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        repetition_penalty=1.0,
    ).numpy()
    freq = np.bincount(draws, minlength=4) / 4000
    np.testing.assert_allclose(freq, [0.6, 0.25, 0.1, 0.05], atol=0.03)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(top_p=0.0), "top_p must be in \\(0, 1\\]"),
        (dict(top_p=1.5), "top_p must be in \\(0, 1\\]"),
        (dict(temperature=-1.0), "temperature must be a finite number >= 0"),
        (dict(top_k=-1), "top_k must be an integer >= 0"),
        (dict(repetition_penalty=0.0), "repetition_penalty must be a finite number > 0"),
    ],
)
def test_bad_sampler_settings(kwargs, message):
    with pytest.raises(GPT2TFError, match=message):
        sample.SamplerConfig(**kwargs)


# ---------------------------------------------------------------------------------------------------------------
# The decode loop


def test_greedy_equals_a_greedy_loop_over_the_reference(small_dir, small_model):
    params = read_openai_checkpoint(str(small_dir / "model.ckpt"))
    prompt = [464, 2068, 7586, 21831]
    tokens = list(prompt)
    for _ in range(30):
        tokens.append(int(np.argmax(reference_logits(params, SMALL.n_head, tokens)[-1])))
    (out,) = sample.generate(small_model, [prompt], length=30, temperature=0, stop_at_eos=False)
    assert out == tokens[len(prompt) :]


def test_without_xla_gives_the_same_tokens(small_model):
    """--no_xla runs the same embed/block/head pieces as plain graph functions."""
    for kwargs in (dict(temperature=0), dict(top_k=40, seed=3)):
        prompts = [[464, 2068, 7586], [10]]
        compiled = sample.generate(small_model, prompts, length=15, stop_at_eos=False, **kwargs)
        assert (
            sample.generate(small_model, prompts, length=15, stop_at_eos=False, jit_compile=False, **kwargs) == compiled
        )


def test_seeded_sampling_is_reproducible(small_model):
    kwargs = dict(length=20, top_k=40, seed=123, stop_at_eos=False)
    a = sample.generate(small_model, [[1, 2, 3]], **kwargs)
    b = sample.generate(small_model, [[1, 2, 3]], **kwargs)
    c = sample.generate(small_model, [[1, 2, 3]], **dict(kwargs, seed=124))
    assert a == b and a != c


def test_seed_is_reproducible_across_processes(small_dir, small_model):
    code = (
        "import gpt2tf, gpt2tf.decode.generate as s; m = gpt2tf.load_model(%r); "
        "print(s.generate(m, [[1, 2, 3]], length=12, top_p=0.9, seed=5, stop_at_eos=False))" % str(small_dir)
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(
        sample.generate(small_model, [[1, 2, 3]], length=12, top_p=0.9, seed=5, stop_at_eos=False)
    )


@pytest.mark.parametrize("settings", [dict(temperature=0), dict(top_k=10, seed=9), dict(top_p=0.8, seed=4)])
def test_unequal_prompts_in_a_batch_equal_one_by_one(small_model, settings):
    prompts = [[5], [10, 11, 12, 13, 14, 15, 16], [300, 301, 302]]
    batched = sample.generate(small_model, prompts, length=15, batch_size=3, stop_at_eos=False, **settings)
    alone = [sample.generate(small_model, [p], length=15, stop_at_eos=False, **settings)[0] for p in prompts]
    assert batched == alone


def test_nsamples_not_divisible_by_batch_size(small_model):
    kwargs = dict(length=8, top_k=50, seed=2, nsamples=3, stop_at_eos=False)
    by_two = sample.generate(small_model, [[1, 2], [3]], batch_size=2, **kwargs)
    by_one = sample.generate(small_model, [[1, 2], [3]], batch_size=1, **kwargs)
    assert len(by_two) == 6 and by_two == by_one
    assert len({tuple(o) for o in by_two[:3]}) > 1  # the samples of one prompt differ


def test_a_reused_slot_never_sees_what_an_earlier_request_left(small_model, monkeypatch):
    """Cache slots an earlier request left behind (here inf and NaN) do not leak into the next one in that slot."""
    monkeypatch.setenv("GPT2TF_NATIVE", "0")  # XLA's attention weighs every cache slot, masked ones by 0
    prompts, kwargs = [[464, 2068], [10, 11, 12]], dict(length=6, temperature=0, stop_at_eos=False)
    alone = [sample.generate(small_model, [p], **kwargs)[0] for p in prompts]
    eng = engine.Engine(small_model, max_batch=1, max_length=64)
    eng.add(engine.Request(prompt=prompts[0], max_new_tokens=6, temperature=0, stop_at_eos=False))
    while eng.active:
        eng.step()
    for variable in (v for layer in eng._cache for v in layer):
        variable.assign(tf.where(tf.range(64)[None, None, :, None] % 2 == 0, np.inf, np.nan) + variable * 0)
    out = []
    eng.add(engine.Request(prompt=prompts[1], max_new_tokens=6, temperature=0, stop_at_eos=False))
    while eng.active:
        out += [t for _, ids, _ in eng.step() for t in ids]
    assert out == alone[1]


def test_blocks_with_patched_layers_get_their_own_function(small_dir):
    """LoRA patches each layer's call with its own adapters: the decoder must not run block 0's code for all."""
    from gpt2tf.train import LoRA

    model = gpt2tf.load_model(small_dir)
    lora = LoRA(model, rank=2, alpha=4.0, seed=0)
    rng = np.random.default_rng(0)
    for _, b in lora.adapters.values():
        b.assign(rng.normal(0, 0.5, b.shape).astype(np.float32))  # adapters that change the output
    prompt = [464, 2068, 7586]
    tokens = list(prompt)
    for _ in range(12):  # greedy over the adapted model's full forward pass, no cache
        tokens.append(int(np.argmax(model(tf.constant([tokens]))[0, -1])))
    (out,) = sample.generate(model, [prompt], length=12, temperature=0, stop_at_eos=False)
    compiled = default_runner(model)
    assert not compiled._shared and compiled.block.experimental_get_tracing_count() == SMALL.n_layer
    assert compiled.prefill_block.experimental_get_tracing_count() == SMALL.n_layer
    assert out == tokens[len(prompt) :]


@pytest.fixture(scope="module")
def eos_model(small_dir):
    """A model whose greedy choice is always <|endoftext|>: constant final hidden state aligned with its embedding."""
    model = gpt2tf.load_model(small_dir)
    model.ln_f.g.assign(tf.zeros_like(model.ln_f.g))
    direction = np.linspace(1.0, 2.0, SMALL.n_embd).astype(np.float32)
    model.ln_f.b.assign(direction)
    wte = model.wte.numpy()
    wte[EOT_ID] = direction * 10
    model.wte.assign(wte)
    return model


def test_stops_at_end_of_text(eos_model):
    assert sample.generate(eos_model, [[1, 2], [3]], length=40, temperature=0) == [[], []]
    kept = sample.generate(eos_model, [[1, 2]], length=5, temperature=0, stop_at_eos=False)
    assert kept == [[EOT_ID] * 5]


def test_early_exit_when_all_rows_stop(eos_model, monkeypatch):
    list(sample.generate_stream(eos_model, [[1], [2, 3]], length=60, config=sample.SamplerConfig(temperature=0)))
    compiled = default_runner(eos_model)
    calls, steps = [], compiled.steps
    monkeypatch.setattr(compiled, "steps", lambda **args: calls.append(steps(**args)) or calls[-1])
    rows = list(
        sample.generate_stream(
            eos_model, [[1], [2, 3]], length=60, config=sample.SamplerConfig(temperature=0), chunk_steps=32
        )
    )
    assert rows == [] and len(calls) == 1  # one call of up to 32 steps...
    assert calls[0]["tokens"].shape == (1, 2)  # ... whose loop stopped after one: both rows hit <|endoftext|>


def test_stop_strings_cut_the_text(small_model):
    enc = gpt2tf.get_encoder()
    kwargs = dict(length=40, top_k=100, seed=8, stop_at_eos=False)
    (full,) = sample.generate_text(small_model, ["The"], **kwargs)
    stop = full[20:23]
    assert len(stop) == 3 and full.find(stop) > 0
    (cut,) = sample.generate_text(small_model, ["The"], stop=[stop, "never appears \x00"], **kwargs)
    assert cut == full[: full.find(stop)]
    (ids,) = sample.generate(small_model, [enc.encode("The")], stop=[stop], **kwargs)
    assert enc.decode(ids).startswith(cut) and len(ids) < 40
    streamed = [
        ids
        for _, ids in sample.generate_stream(
            small_model,
            [enc.encode("The")],
            length=40,
            config=sample.SamplerConfig(top_k=100),
            seed=8,
            stop_at_eos=False,
            stop=[stop],
            chunk_steps=1,
        )
    ]
    assert sum(streamed, []) == ids and len(streamed) > 1  # streamed piece by piece, same result


def test_empty_prompt_starts_from_end_of_text(small_model):
    a = sample.generate(small_model, [[]], length=6, temperature=0, stop_at_eos=False)
    b = sample.generate(small_model, [[EOT_ID]], length=6, temperature=0, stop_at_eos=False)
    assert a == b


def test_prompt_longer_than_context(small_model):
    long_prompt = list(range(1, 61))
    with pytest.raises(GPT2TFError, match="exceeds the model's context of 64"):
        sample.generate(small_model, [long_prompt], length=10)
    truncated = sample.generate(
        small_model, [long_prompt], length=10, temperature=0, truncate_prompt=True, stop_at_eos=False
    )
    assert truncated == sample.generate(small_model, [long_prompt[-54:]], length=10, temperature=0, stop_at_eos=False)


def test_repetition_penalty_reduces_repeats(small_model):
    plain = sample.generate(small_model, [[1, 2, 3]], length=40, temperature=0, stop_at_eos=False)[0]
    penalized = sample.generate(
        small_model, [[1, 2, 3]], length=40, temperature=0, stop_at_eos=False, repetition_penalty=5.0
    )[0]
    assert len(set(penalized)) > len(set(plain))


# ---------------------------------------------------------------------------------------------------------------
# Bad input to generate (issue 12)


def test_prompt_ids_outside_the_vocabulary_are_refused(small_model):
    for bad in (60000, 50257, -1):
        with pytest.raises(
            GPT2TFError,
            match=rf"prompt 1 holds token id {bad}, outside the model's vocabulary of "
            rf"50257 ids",
        ):
            sample.generate(small_model, [[1, 2], [3, bad]], length=2, seed=0)


def test_top_k_at_or_above_the_vocabulary_keeps_every_token(small_model):
    prompts = [[464, 2068]]
    everything = sample.generate(small_model, prompts, length=6, top_k=0, seed=3, stop_at_eos=False)
    for k in (50257, 10**6):
        assert sample.generate(small_model, prompts, length=6, top_k=k, seed=3, stop_at_eos=False) == everything
    logits = tf.constant([[1.0, 2.0, 3.0]])
    np.testing.assert_array_equal(filters.top_k_logits(logits, 5).numpy(), logits.numpy())


@pytest.mark.parametrize("seed", [2**31, -1, 2**32, 1.5, True])
def test_seeds_outside_0_to_2_31_are_refused(small_model, seed):
    with pytest.raises(GPT2TFError, match="seed must be a whole number from 0 to 2147483647"):
        sample.generate(small_model, [[1]], length=2, seed=seed)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(temperature=float("inf")),
        dict(temperature=float("nan")),
        dict(repetition_penalty=float("inf")),
        dict(top_p=float("nan")),
    ],
)
def test_infinite_and_nan_settings_are_refused(kwargs):
    with pytest.raises(GPT2TFError, match="must be"):
        sample.SamplerConfig(**kwargs)

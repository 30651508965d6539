"""The decode engine: outputs equal the recorded release, per-row settings, joining and leaving, invariance."""

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import gpt2tf
from gpt2tf.decode import filters
from gpt2tf.decode import generate as sample
from gpt2tf.decode.engine import Engine, Request
from gpt2tf.errors import GPT2TFError
from gpt2tf.layout import EOT_ID, MASKED_VALUE

from helpers import default_runner
from reference import top_p_kept

FIXTURES = Path(__file__).with_name("fixtures") / "generate_tokens.json"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    data = json.loads(FIXTURES.read_text())
    root = tmp_path_factory.mktemp("recorded")
    models = {}
    for name, (hparams, seed) in data["models"].items():
        gpt2tf.write_synthetic_checkpoint(root / name, gpt2tf.HParams(**hparams), seed=seed)
        models[name] = gpt2tf.load_model(root / name)
    return models, data["cases"]


def test_outputs_equal_the_recorded_release(recorded):
    models, cases = recorded
    for case in cases:
        got = getattr(sample, case["function"])(models[case["model"]], case["prompts"], **case["kwargs"])
        assert got == case["output"], case["kwargs"]


# ---- per-row settings ------------------------------------------------------------------------------------------

ROW_SETTINGS = [  # temperature, top_k, top_p, repetition_penalty: every path of the filters in one batch
    (0.0, 0, 1.0, 1.0),
    (1.0, 40, 1.0, 1.0),
    (0.7, 5, 0.6, 1.0),
    (1.0, 0, 0.9, 1.0),
    (1.3, 200, 0.95, 1.0),
    (1.0, 0, 1.0, 1.5),
    (0.0, 0, 1.0, 2.0),
    (0.9, 64, 0.5, 1.2),
]


def test_per_row_filters_equal_each_row_filtered_alone():
    rng = np.random.default_rng(0)
    logits = np.round(rng.normal(size=(len(ROW_SETTINGS), 500)) * 2, 1).astype(np.float32)  # ties are likely
    seen = rng.random((len(ROW_SETTINGS), 500)) < 0.1
    columns = [tf.constant(c) for c in zip(*ROW_SETTINGS)]
    batched = filters.filter_logits(tf.constant(logits), tf.constant(seen), *columns).numpy()
    for row, (t, k, p, r) in enumerate(ROW_SETTINGS):
        alone = filters.filter_logits(
            tf.constant(logits[row : row + 1]), tf.constant(seen[row : row + 1]), t, k, p, r
        ).numpy()[0]
        np.testing.assert_array_equal(batched[row], alone)
        # ... and the brute-force statement of the rules, row by row.
        want = np.where(
            seen[row] & (r != 1), np.where(logits[row] > 0, logits[row] / r, logits[row] * r), logits[row]
        ).astype(np.float32)
        if t == 0:
            np.testing.assert_array_equal(alone, want)
            continue
        want = want / np.float32(t)
        kept = set(range(500))
        if k:
            kth = np.sort(want)[::-1][k - 1]
            kept = set(np.flatnonzero(want >= kth))
        if p < 1:
            masked = np.array([want[i] if i in kept else -1e10 for i in range(500)], np.float64)
            kept &= top_p_kept(masked, p)
        assert set(np.flatnonzero(alone > MASKED_VALUE / 2)) == kept, (t, k, p, r)


def test_a_sampled_token_is_drawn_with_the_rows_own_settings():
    """Rows of one call with different settings draw what each draws alone (same seed, same step)."""
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(len(ROW_SETTINGS), 300)).astype(np.float32)
    seen = tf.zeros(logits.shape, tf.bool)
    seeds = tf.constant([[7, j] for j in range(len(ROW_SETTINGS))], tf.int32)
    steps = tf.constant(list(range(len(ROW_SETTINGS))), tf.int32)
    columns = dict(
        zip(("temperature", "top_k", "top_p", "repetition_penalty"), (tf.constant(c) for c in zip(*ROW_SETTINGS)))
    )
    batched = filters.choose_tokens(tf.constant(logits), seen, seeds, steps, **columns).numpy()
    for row, (t, k, p, r) in enumerate(ROW_SETTINGS):
        alone = filters.choose_tokens(
            tf.constant(logits[row : row + 1]),
            seen[row : row + 1],
            seeds[row : row + 1],
            steps[row : row + 1],
            temperature=t,
            top_k=k,
            top_p=p,
            repetition_penalty=r,
        ).numpy()
        assert batched[row] == alone[0]


def test_noise_is_drawn_only_for_the_rows_that_need_it():
    seeds = tf.constant([[7, 0], [7, 1], [9, 0]], tf.int32)
    steps = tf.constant([0, 3, 5], tf.int32)
    every = filters.gumbel_noise(seeds, steps, 300).numpy()
    some = filters.gumbel_noise(seeds, steps, 300, tf.constant([True, False, True])).numpy()
    np.testing.assert_array_equal(some[[0, 2]], every[[0, 2]])  # the same streams, bit for bit
    assert not some[1].any() and every[1].any()


# ---- joining, leaving, invariance --------------------------------------------------------------------------------

MIXED = [  # requests with different settings, prompt lengths and lengths
    dict(prompt=[464, 2068, 7586], max_new_tokens=12, temperature=0),
    dict(prompt=[15496], max_new_tokens=9, top_k=40, seed=7),
    dict(prompt=list(range(300, 340)), max_new_tokens=15, top_p=0.8, temperature=0.9, seed=3, sample=2),
    dict(prompt=[], max_new_tokens=10, temperature=0, repetition_penalty=1.4),
    dict(prompt=[40, 1842, 11], max_new_tokens=11, top_k=5, top_p=0.6, temperature=0.7, seed=11, sample=1),
]


def alone(model, spec):
    """What `generate` gives for this request on its own."""
    settings = {k: v for k, v in spec.items() if k not in ("prompt", "max_new_tokens", "sample")}
    nsamples = spec.get("sample", 0) + 1
    out = sample.generate(
        model, [spec["prompt"]], length=spec["max_new_tokens"], nsamples=nsamples, stop_at_eos=False, **settings
    )
    return out[nsamples - 1]


def drive(eng, schedule, steps):
    """Add request i at step schedule[i]; run `steps` steps; return each request's tokens by its index."""
    out, index_of = {}, {}
    for step in range(steps):
        for i, (when, spec) in enumerate(schedule):
            if when == step:
                index_of[eng.add(Request(**spec, stop_at_eos=False))] = i
        for rid, ids, finished in eng.step():
            out.setdefault(index_of[rid], []).extend(ids)
    return out


@pytest.fixture(scope="module")
def small_model(small_model_dir):
    return gpt2tf.load_model(small_model_dir)


def test_a_requests_tokens_do_not_depend_on_its_slot_its_neighbours_or_when_it_joined(small_model):
    want = [alone(small_model, spec) for spec in MIXED]
    for schedule in ([0, 0, 0, 0, 0], [0, 3, 5, 9, 14], [14, 9, 5, 3, 0], [2, 2, 0, 7, 1]):
        eng = Engine(small_model, max_batch=5, max_length=64)
        got = drive(eng, list(zip(schedule, MIXED)), 40)
        assert [got.get(i) for i in range(len(MIXED))] == want, schedule
        assert eng.active == 0 and eng.free_slots == 5


def test_slots_are_freed_reused_and_cancelled(small_model):
    eng = Engine(small_model, max_batch=2, max_length=64)
    first = eng.add(Request(**MIXED[1], stop_at_eos=False))
    second = eng.add(Request(**MIXED[0], stop_at_eos=False))
    assert eng.free_slots == 0 and eng.active == 2
    with pytest.raises(GPT2TFError, match="no free slot: all 2 are in use"):
        eng.add(Request(**MIXED[3]))
    eng.cancel(second)
    assert eng.free_slots == 1
    third = eng.add(Request(**MIXED[4], stop_at_eos=False))  # into the cancelled request's slot
    out = {}
    while eng.active:
        for rid, ids, finished in eng.step():
            out.setdefault(rid, []).extend(ids)
    assert second not in out
    assert out[first] == alone(small_model, MIXED[1]) and out[third] == alone(small_model, MIXED[4])
    eng.cancel(first)  # finished already: nothing happens


def test_a_long_prompt_is_prefilled_a_chunk_per_step_while_others_decode(recorded):
    models, _ = recorded
    model = models["medium"]  # n_ctx 256
    long_prompt = [(i * 31) % 50000 for i in range(150)]  # three chunks of 64
    eng = Engine(model, max_batch=2, max_length=256)
    running = eng.add(Request(prompt=[464, 2068], max_new_tokens=20, temperature=0, stop_at_eos=False))
    eng.step()
    joined = eng.add(Request(prompt=long_prompt, max_new_tokens=8, temperature=0, stop_at_eos=False))
    outputs = [eng.step(), eng.step(), eng.step()]  # a chunk each time: the running row gets a token each time
    assert [[rid for rid, ids, _ in out] for out in outputs] == [[running], [running], [running, joined]]
    tokens = {}
    while eng.active:
        for rid, ids, _ in eng.step():
            tokens.setdefault(rid, []).extend(ids)
    full = sample.generate(model, [long_prompt], length=8, temperature=0, stop_at_eos=False)[0]
    assert outputs[2][1][1] + tokens[joined] == full


def test_no_retracing_for_new_settings_prompt_lengths_or_engines(small_model_dir):
    model = gpt2tf.load_model(small_model_dir)  # its own: nothing compiled for it yet
    compiled = default_runner(model)
    for round_ in range(2):
        eng = Engine(model, max_batch=5, max_length=64)
        drive(eng, list(zip([0, 1, 2, 4, 6], MIXED)), 30)
        counts = dict(
            steps=compiled.steps_function.experimental_get_tracing_count(),
            prefill=compiled.prefill.experimental_get_tracing_count(),
            block=compiled.block.experimental_get_tracing_count(),
            prefill_block=compiled.prefill_block.experimental_get_tracing_count(),
            embed=compiled.embed.experimental_get_tracing_count(),
            head=compiled.head.experimental_get_tracing_count(),
        )
        if round_ == 0:
            first = counts
        assert counts == first  # a second engine, other settings: nothing traced again
    # One compiled block serves every layer; the prefill and the step are traced once per row count (1, 2, 4, 5).
    assert first["prefill_block"] == first["prefill"] <= 4 and first["steps"] == first["block"] <= 4
    assert first["embed"] == first["prefill"] + first["steps"]


def test_native_and_xla_give_the_same_greedy_tokens_with_per_row_lengths(small_model, monkeypatch):
    specs = [dict(spec, temperature=0, repetition_penalty=1.0) for spec in MIXED]
    with_kernel = drive(Engine(small_model, max_batch=5, max_length=64), list(zip([0, 2, 3, 5, 8], specs)), 40)
    monkeypatch.setenv("GPT2TF_NATIVE", "0")
    assert not default_runner(small_model).use_native
    without = drive(Engine(small_model, max_batch=5, max_length=64), list(zip([0, 2, 3, 5, 8], specs)), 40)
    assert with_kernel == without


@pytest.mark.parametrize(
    "spec, message",
    [
        (dict(prompt=[1], temperature=-1.0), "temperature must be a finite number >= 0"),
        (dict(prompt=[1], top_k=-2), "top_k must be an integer >= 0"),
        (dict(prompt=[1], seed=2**31), "seed must be a whole number from 0 to 2147483647"),
        (dict(prompt=[1], max_new_tokens=0), "max_new_tokens must be a positive number of tokens"),
        (dict(prompt="hello"), "a prompt is a list of token ids"),
        (dict(prompt=[1], stop=[3]), "stop must be a string or a list of strings"),
    ],
)
def test_bad_requests_are_one_line_errors(spec, message):
    with pytest.raises(GPT2TFError, match=message):
        Request(**spec)


def test_requests_that_do_not_fit_the_engine(small_model):
    eng = Engine(small_model, max_batch=1, max_length=32)
    with pytest.raises(GPT2TFError, match="the prompt has 30 tokens; with 5 new tokens that exceeds the 32"):
        eng.add(Request(prompt=list(range(30)), max_new_tokens=5))
    with pytest.raises(GPT2TFError, match="outside the model's vocabulary"):
        eng.add(Request(prompt=[50257]))
    assert eng.free_slots == 1
    with pytest.raises(GPT2TFError, match="max_length must be from 2 to the model's context of 64"):
        Engine(small_model, max_length=65)


# ---- the engine's bookkeeping, driven by a scripted backend --------------------------------------------------------


class ScriptedBackend:
    """A stand-in for the compiled model: row r's tokens are SCRIPTS[seed of r] in order, whatever the prompt."""

    def __init__(self, scripts, vocab):
        self.scripts, self.vocab = scripts, vocab

    def cache_variables(self, batch, max_length):
        return ()

    def prepare(self, rows, cache):
        pass

    def compiling(self):
        return False

    def ready_bucket(self, rows, buckets, cache):
        return rows

    def prefill(self, tokens, slots, starts, lasts, cache):
        return tf.zeros([tokens.shape[0], self.vocab])

    def steps(self, count, decoding, steps, limit, stop_at_eos, row_seeds, **_):
        decoding, steps = decoding.numpy().copy(), steps.numpy().copy()
        out = []
        for _ in range(int(count)):
            if not decoding.any():
                break
            row = [
                self.scripts[int(seed)][int(step)] if on else 0
                for on, seed, step in zip(decoding, row_seeds.numpy()[:, 0], steps)
            ]
            out.append(row)
            for r, token in enumerate(row):
                if decoding[r]:
                    steps[r] += 1
                    decoding[r] = not ((stop_at_eos.numpy()[r] and token == EOT_ID) or steps[r] >= limit.numpy()[r])
        return dict(tokens=tf.constant(np.array(out, np.int32).reshape(-1, len(decoding))))


def scripted_engine(small_model, scripts, max_batch=3):
    return Engine(
        small_model, max_batch=max_batch, max_length=64, runner=ScriptedBackend(scripts, small_model.hparams.n_vocab)
    )


def test_end_of_text_lengths_and_stop_strings(small_model):
    enc = gpt2tf.get_encoder()
    hello, comma, world, dot, space = (enc.encode(t)[0] for t in ("Hello", ",", " world", ".", " "))
    scripts = {
        1: [hello, comma, world, EOT_ID, hello],
        2: [hello] * 20,
        3: [hello, comma, world, dot, space, hello, dot],
    }
    eng = scripted_engine(small_model, scripts)
    requests = [
        Request(prompt=[1], max_new_tokens=10, seed=1),  # ends at <|endoftext|>, which is not output
        Request(prompt=[1], max_new_tokens=4, seed=2),  # ends after 4 tokens
        Request(prompt=[1], max_new_tokens=10, seed=3, stop=(". H", "xyz")),
    ]  # a stop string over 3 tokens
    rids = [eng.add(r) for r in requests]
    streamed = {rid: [] for rid in rids}
    finished_at = {}
    for step in range(12):
        for rid, ids, finished in eng.step():
            streamed[rid].extend(ids)
            if finished:
                finished_at[rid] = step
    assert streamed[rids[0]] == [hello, comma, world] and finished_at[rids[0]] == 3
    assert streamed[rids[1]] == [hello] * 4 and finished_at[rids[1]] == 3
    # The stop string starts inside " world." -> ". H": kept through the token where it ends, so it can be cut.
    assert enc.decode(streamed[rids[2]]).startswith("Hello, world") and finished_at[rids[2]] == 5
    assert sample.cut_at_stop(enc.decode(streamed[rids[2]]), (". H",)) == "Hello, world"
    assert eng.active == 0


def test_several_steps_per_call_give_what_single_steps_give(small_model):
    enc = gpt2tf.get_encoder()
    scripts = {s: [enc.encode(w)[0] for w in (" a", " b", " c", " d", " e", " f", " g", " h")] for s in (1, 2)}
    results = []
    for per_call in (1, 3, 32):
        eng = scripted_engine(small_model, scripts, max_batch=1)
        out = list(
            eng.run(
                [
                    Request(prompt=[1], max_new_tokens=7, seed=1, stop=(" e f",)),
                    Request(prompt=[1], max_new_tokens=5, seed=2),
                ],
                steps=per_call,
            )
        )
        results.append({i: sum((ids for j, ids, _ in out if j == i), []) for i in (0, 1)})
    assert results[0] == results[1] == results[2]
    assert enc.decode(results[0][0]) == " a b c d" and len(results[0][1]) == 5  # cut before " e f"


def test_finish_reasons_and_log_probabilities(small_model):
    eng = Engine(small_model, max_batch=2, max_length=64)
    by_length = eng.add(Request(prompt=[464, 2068], max_new_tokens=5, temperature=0, stop_at_eos=False, logprobs=3))
    plain = eng.add(Request(prompt=[10, 11], max_new_tokens=4, temperature=0, stop_at_eos=False))
    outputs = {}
    while eng.active:
        for output in eng.step():
            outputs.setdefault(output[0], []).append(output)
    assert [o[2] for o in outputs[by_length]] == [False] * 4 + ["length"]
    assert all(o.logprobs is None for o in outputs[plain])
    ids = [i for o in outputs[by_length] for i in o[1]]
    entries = [e for o in outputs[by_length] for e in o.logprobs]
    # Against the model's own forward pass: log-softmax of the logits before each new token.
    tokens = [464, 2068] + ids
    logits = small_model(tf.constant([tokens[:-1]]))[0, 1:].numpy().astype(np.float64)  # before each new token
    log_p = (
        logits
        - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
        - logits.max(-1, keepdims=True)
    )
    for step, (token, (chosen, top)) in enumerate(zip(ids, entries)):
        assert chosen == pytest.approx(log_p[step, token], abs=1e-4)
        best = np.argsort(-log_p[step])[:3]
        assert list(top) == list(best) and token == best[0]  # greedy: the chosen token is the most likely
        assert list(top.values()) == pytest.approx(list(log_p[step, best]), abs=1e-4)


def test_a_stop_string_or_end_of_text_finishes_with_stop(small_model):
    scripts = {1: [11, 12, EOT_ID], 2: [13, 13, 13]}
    eng = scripted_engine(small_model, scripts)
    a = eng.add(Request(prompt=[1], max_new_tokens=10, seed=1))
    b = eng.add(Request(prompt=[1], max_new_tokens=10, seed=2, stop=(gpt2tf.get_encoder().decode([13]),)))
    reasons = {}
    while eng.active:
        for rid, _, finished in eng.step():
            if finished:
                reasons[rid] = finished
    assert reasons == {a: "stop", b: "stop"}


def test_the_stop_scanner_equals_searching_the_whole_text_each_time():
    """The scanner looks only at the bytes a new token could complete; searching all of the text must agree."""
    from gpt2tf.decode.stops import StopScanner

    enc = gpt2tf.get_encoder()
    rng = np.random.default_rng(0)
    vocabulary = [enc.encode(w)[0] for w in (" a", "a", ".", " b", "b.", " the", "\n", "é", " ab")]
    for trial in range(200):
        tokens = [int(t) for t in rng.choice(vocabulary, 30)]
        stop = tuple({("a.", " b", "\n\n", "é.", "ab")[i] for i in rng.integers(0, 5, 2)})
        scanner = StopScanner(enc, stop)
        for n in range(1, len(tokens) + 1):
            got = scanner.add(tokens[n - 1])
            text = enc.decode_bytes(tokens[:n])
            hits = [(text.find(s.encode()), len(s.encode())) for s in stop if s.encode() in text]
            if not hits:
                assert got is None
                limit = len(text) - (max(len(s.encode()) for s in stop) - 1)
                ends = np.cumsum([len(enc.decode_bytes([t])) for t in tokens[:n]])
                assert scanner.safe_end() == int(np.sum(ends <= limit))
                continue
            first, size = min(hits)
            ends = list(np.cumsum([len(enc.decode_bytes([t])) for t in tokens[:n]]))
            before = sum(1 for e in ends if e <= first)  # tokens wholly before the stop string
            want = before if first in [0] + ends else sum(1 for e in ends if e < first + size) + 1
            assert got == want, (tokens[:n], stop)
            break


# ---- several steps per call, chosen by the engine (multi-step scheduling) ------------------------------------------


def test_steps_chosen_per_call_give_the_recorded_outputs(recorded, monkeypatch):
    """Every recorded case through calls whose length the engine chooses (as streaming and the server run them)."""
    models, cases = recorded
    chosen = []
    real_run, real_auto = Engine.run, Engine.auto_steps

    def run(self, requests, steps=None):
        self.stream_interval = 10.0  # long enough that a call runs as far as its rows need
        return real_run(self, requests, steps=None)

    def auto_steps(self, *args, **kwargs):
        chosen.append(real_auto(self, *args, **kwargs))
        return chosen[-1]

    monkeypatch.setattr(Engine, "run", run)
    monkeypatch.setattr(Engine, "auto_steps", auto_steps)
    for case in cases:
        got = getattr(sample, case["function"])(models[case["model"]], case["prompts"], **case["kwargs"])
        assert got == case["output"], case["kwargs"]
    assert max(chosen) > 10 and sum(c for c in chosen if c > 1) > 0.8 * sum(chosen)  # most steps ran several a call


def drive_outputs(eng, schedule, steps):
    """Like `drive`, with every Output kept (ids, finish reason, log-probabilities); `steps` None or 1 per call."""
    out, index_of, call = {}, {}, 0
    while call == 0 or eng.active or len(index_of) < len(schedule):
        for i, (when, request) in enumerate(schedule):
            if when == call:
                index_of[eng.add(request)] = i
        for output in eng.step(steps, queued=sum(when > call for when, _ in schedule)):
            out.setdefault(index_of[output.rid], []).append((output.ids, output.finished, output.logprobs))
        call += 1
    joined = lambda outs, k: sum((o[k] or [] for o in outs), [])  # noqa: E731
    return {i: (joined(outs, 0), outs[-1][1], joined(outs, 2)) for i, outs in out.items()}


def test_steps_chosen_per_call_keep_stop_strings_end_of_text_and_log_probabilities(small_model):
    enc = gpt2tf.get_encoder()
    text = sample.generate_text(small_model, ["The"], length=20, top_k=40, seed=5, stop_at_eos=False)[0]
    stop = text[len(text) // 2 : len(text) // 2 + 3]  # met mid-way, possibly inside a token
    requests = [
        Request(prompt=enc.encode("The"), max_new_tokens=20, top_k=40, seed=5, stop=(stop,), logprobs=2),
        Request(prompt=[15496], max_new_tokens=30, top_k=40, seed=7),  # may end at <|endoftext|>
        Request(prompt=list(range(300, 330)), max_new_tokens=25, top_p=0.8, seed=3, logprobs=0, stop_at_eos=False),
        Request(prompt=[40, 1842], max_new_tokens=9, temperature=0, repetition_penalty=1.4),
    ]
    schedule = list(zip([0, 0, 4, 11], requests))
    one = drive_outputs(Engine(small_model, max_batch=4, max_length=64), schedule, 1)
    eng = Engine(small_model, max_batch=4, max_length=64, stream_interval=10.0)
    chosen = drive_outputs(eng, schedule, None)
    assert {i: o[:2] for i, o in chosen.items()} == {i: o[:2] for i, o in one.items()}  # ids and finish reasons
    for i in one:  # log-probabilities to float rounding: a row's log-softmax may round differently in another slot
        assert [c for c, _ in chosen[i][2]] == pytest.approx([c for c, _ in one[i][2]], rel=1e-6)
        assert [list(t) for _, t in chosen[i][2]] == [list(t) for _, t in one[i][2]]
    assert one[0][1] == "stop" and sample.cut_at_stop(enc.decode(one[0][0]), [stop]) == text[: text.find(stop)]
    assert len(one[0][2]) == len(one[0][0]) and len(one[2][2]) == 25


def test_how_many_steps_a_call_runs(small_model):
    scripts = {1: [11] * 40, 2: [12] * 40, 3: [13] * 40}
    eng = scripted_engine(small_model, scripts)
    eng.stream_interval = 10.0
    a = eng.add(Request(prompt=[1], max_new_tokens=30, seed=1))
    assert eng.step(None) == [(a, [11], False)]  # the first token at once: one step
    assert eng.auto_steps() == 29  # then as far as the row needs (the scripted steps take microseconds)
    eng.add(Request(prompt=[1], max_new_tokens=5, seed=2))
    assert eng.auto_steps() == 1  # a prompt to prefill: one step, so its chunks are not held up
    eng.step(None)
    assert eng.auto_steps() == 28  # the longest row's need
    assert eng.auto_steps(queued=1) == 4  # someone waits for a slot: until the first row reaches its length
    eng.stream_interval = 0
    assert eng.auto_steps() == 1  # no time for more than one
    eng.stream_interval = 1e-9
    assert eng.auto_steps() == 1
    with pytest.raises(GPT2TFError, match="stream_interval must be a number of seconds >= 0"):
        Engine(small_model, max_length=64, stream_interval=-1)

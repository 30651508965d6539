"""The decoding controls' logit processors against transformers' own (`transformers.generation.logits_process`) and
OpenAI's formulas, on the same logits and histories: masked positions identical, finite values to 1e-6."""

import numpy as np
import pytest
import tensorflow as tf

from gpt2tf.decode import filters
from gpt2tf.layout import MASKED_VALUE

torch = pytest.importorskip("torch")
logits_process = pytest.importorskip("transformers.generation.logits_process")

VOCAB = 97


def random_logits(rows, seed, masked=0.0, scale=3.0):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal([rows, VOCAB]) * scale).astype(np.float32)
    logits[rng.random([rows, VOCAB]) < masked] = MASKED_VALUE
    return logits


def theirs(processor, logits, history=None):
    """A transformers processor on our logits (MASKED_VALUE as -inf), as numpy with -inf back to MASKED_VALUE."""
    scores = torch.tensor(np.where(logits == MASKED_VALUE, -np.inf, logits))
    ids = torch.zeros([len(logits), 1], dtype=torch.long) if history is None else torch.tensor(history)
    out = processor(ids, scores).numpy()
    return np.where(np.isneginf(out), MASKED_VALUE, out)


def same(ours, want):
    ours = np.asarray(ours)
    assert np.array_equal(ours == MASKED_VALUE, want == MASKED_VALUE)
    np.testing.assert_allclose(ours[ours != MASKED_VALUE], want[want != MASKED_VALUE], atol=1e-6, rtol=0)


@pytest.mark.parametrize("min_p", [0.0, 0.05, 0.1, 0.3, 0.9, 1.0])
def test_min_p_equals_transformers(min_p):
    for seed, masked in ((0, 0.0), (1, 0.3), (2, 0.9)):
        logits = random_logits(6, seed, masked)
        want = theirs(logits_process.MinPLogitsWarper(min_p), logits) if min_p > 0 else logits
        same(filters.min_p_logits(tf.constant(logits), tf.fill([6], min_p)), want)


@pytest.mark.parametrize("typical_p", [0.05, 0.2, 0.5, 0.9, 0.999])
def test_typical_p_equals_transformers(typical_p):
    for seed, masked, scale in ((0, 0.0, 3.0), (1, 0.3, 1.0), (2, 0.8, 6.0), (3, 0.0, 0.1)):
        logits = random_logits(5, seed, masked, scale)
        want = theirs(logits_process.TypicalLogitsWarper(typical_p), logits)
        same(filters.typical_p_logits(tf.constant(logits), tf.fill([5], typical_p)), want)


def test_per_row_settings_each_equal_their_own_processor():
    logits = random_logits(4, 7, 0.2)
    min_p = np.array([0.0, 0.2, 0.05, 0.5], np.float32)
    typical = np.array([1.0, 0.3, 0.95, 0.6], np.float32)
    got_min = filters.min_p_logits(tf.constant(logits), tf.constant(min_p)).numpy()
    got_typical = filters.typical_p_logits(tf.constant(logits), tf.constant(typical)).numpy()
    for r in range(4):
        row = logits[r : r + 1]
        same(got_min[r : r + 1], theirs(logits_process.MinPLogitsWarper(min_p[r]), row) if min_p[r] else row)
        same(
            got_typical[r : r + 1],
            theirs(logits_process.TypicalLogitsWarper(typical[r]), row) if typical[r] < 1 else row,
        )


def banned(mask):
    return np.where(mask, MASKED_VALUE, 0.0).astype(np.float32)


def histories(rows, length, seed, vocab=6):
    """Short-vocabulary histories (many repeated n-grams), each row with its own length."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, vocab, [rows, length]).astype(np.int32), rng.integers(1, length + 1, rows).astype(np.int32)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_no_repeat_ngram_equals_transformers(n):
    history, lengths = histories(6, 30, n)
    got = filters.no_repeat_ngram_mask(tf.constant(history), tf.constant(lengths), tf.fill([6], n), VOCAB).numpy()
    for r in range(6):
        row = history[r : r + 1, : lengths[r]]
        want = theirs(logits_process.NoRepeatNGramLogitsProcessor(n), np.zeros([1, VOCAB], np.float32), row)
        same(banned(got[r : r + 1]), want)


def test_no_repeat_ngram_per_row_sizes_and_off():
    history, lengths = histories(5, 25, 9, vocab=4)
    sizes = np.array([0, 2, 3, 1, 5], np.int32)
    got = filters.no_repeat_ngram_mask(tf.constant(history), tf.constant(lengths), tf.constant(sizes), VOCAB).numpy()
    assert not got[0].any()  # 0: off
    for r in range(1, 5):
        row = history[r : r + 1, : lengths[r]]
        want = theirs(logits_process.NoRepeatNGramLogitsProcessor(int(sizes[r])), np.zeros([1, VOCAB], np.float32), row)
        same(banned(got[r : r + 1]), want)


def right_aligned(sequences, width, count):
    table = np.full([count, width], -1, np.int32)
    for i, seq in enumerate(sequences):
        table[i, width - len(seq) :] = seq
    return table


def test_bad_words_equal_transformers():
    bad = [[3], [1, 2], [0, 1, 2], [4, 4], [2, 5, 1, 0]]
    history, lengths = histories(8, 20, 3)
    history[0, :2] = [0, 1]  # rows that end with a bad word's beginning
    lengths[0] = 2
    history[1, :4] = [5, 2, 5, 1]
    lengths[1] = 4
    table = np.broadcast_to(right_aligned(bad, 4, 6), [8, 6, 4])
    got = filters.bad_words_mask(tf.constant(history), tf.constant(lengths), tf.constant(table), VOCAB).numpy()
    for r in range(8):
        row = history[r : r + 1, : lengths[r]]
        want = theirs(logits_process.NoBadWordsLogitsProcessor(bad), np.zeros([1, VOCAB], np.float32), row)
        same(banned(got[r : r + 1]), want)
    assert got[0, 3] and got[0, 2] and got[1, 0]  # a one-token word; 0 1 -> 2; 5 2 5 1 -> 0


def test_bad_words_per_row():
    history, lengths = histories(3, 10, 5)
    ends_with = history[2, lengths[2] - 1]  # row 2's last token: [last, 9] bans 9 there
    tables = [right_aligned([[7]], 2, 2), right_aligned([], 2, 2), right_aligned([[ends_with, 9]], 2, 2)]
    got = filters.bad_words_mask(tf.constant(history), tf.constant(lengths), tf.constant(np.stack(tables)), VOCAB)
    got = got.numpy()
    assert list(np.flatnonzero(got[0])) == [7] and not got[1].any() and list(np.flatnonzero(got[2])) == [9]


def test_presence_and_frequency_are_openais_formula():
    logits = random_logits(3, 11)
    counts = np.random.default_rng(2).integers(0, 4, [3, VOCAB]).astype(np.int32)
    presence, frequency = np.array([0.0, 0.5, -1.5], np.float32), np.array([0.0, 1.2, 0.3], np.float32)
    got = filters.apply_presence_frequency(tf.constant(logits), tf.constant(counts), presence, frequency).numpy()
    want = logits - counts * frequency[:, None] - (counts > 0) * presence[:, None]
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert np.array_equal(got[0], logits[0])


def test_generated_counts_count_only_the_generated_tokens():
    history, lengths = histories(4, 12, 13)
    start = np.array([0, 3, 5, 12], np.int32)
    lengths = np.maximum(lengths, start)
    got = filters.generated_counts(tf.constant(history), tf.constant(start), tf.constant(lengths), VOCAB).numpy()
    for r in range(4):
        assert list(got[r]) == list(np.bincount(history[r, start[r] : lengths[r]], minlength=VOCAB))


def test_logit_bias_adds_to_the_named_tokens_only():
    logits = random_logits(2, 12)
    ids = np.array([[5, 9, 0], [5, 0, 0]], np.int32)
    values = np.array([[-100.0, 2.5, 0.0], [100.0, 0.0, 0.0]], np.float32)
    got = filters.apply_logit_bias(tf.constant(logits), tf.constant(ids), tf.constant(values)).numpy()
    want = logits.copy()
    want[0, 5] -= 100
    want[0, 9] += 2.5
    want[1, 5] += 100
    np.testing.assert_array_equal(got, want)


def off_controls(rows, length=8):
    return dict(
        presence_penalty=tf.zeros([rows]),
        frequency_penalty=tf.zeros([rows]),
        generated_from=tf.zeros([rows], tf.int32),
        bias_ids=tf.zeros([rows, 3], tf.int32),
        bias_values=tf.zeros([rows, 3]),
        no_repeat_ngram_size=tf.zeros([rows], tf.int32),
        bad_words=-tf.ones([rows, 2, 2], tf.int32),
        history=tf.zeros([rows, length], tf.int32),
        lengths=tf.zeros([rows], tf.int32),
        min_p=tf.zeros([rows]),
        typical_p=tf.ones([rows]),
    )


def test_choosing_with_every_control_off_is_choosing_without_them():
    logits = tf.constant(random_logits(4, 21))
    settings = dict(
        temperature=tf.constant([0.0, 1.0, 0.7, 1.2]),
        top_k=tf.constant([0, 40, 5, 0]),
        top_p=tf.constant([1.0, 1.0, 0.8, 0.9]),
        repetition_penalty=tf.constant([1.0, 1.3, 1.0, 1.0]),
    )
    seen = tf.constant(np.random.default_rng(1).random([4, VOCAB]) < 0.1)
    seeds = tf.constant([[1, 0], [2, 0], [3, 1], [4, 2]])
    for step in range(5):
        steps = tf.fill([4], step)
        want = filters.choose_tokens(logits, seen, seeds, steps, **settings)
        got = filters.choose_tokens(logits, seen, seeds, steps, **settings, controls=off_controls(4))
        assert list(got.numpy()) == list(want.numpy())


def test_bans_come_before_the_warpers_and_greedy_takes_the_best_allowed():
    logits = random_logits(2, 22)
    best, second = np.argsort(-logits, axis=-1)[:, 0], np.argsort(-logits, axis=-1)[:, 1]
    controls = off_controls(2)
    controls["bad_words"] = tf.constant([[[-1, int(best[0])], [-1, -1]], [[-1, int(best[1])], [-1, -1]]])
    settings = dict(temperature=tf.constant([0.0, 1.0]), top_k=tf.constant([0, 1]), top_p=tf.ones([2]))
    got = filters.choose_tokens(
        tf.constant(logits),
        tf.zeros([2, VOCAB], tf.bool),
        tf.constant([[1, 0], [2, 0]]),
        tf.zeros([2], tf.int32),
        repetition_penalty=tf.ones([2]),
        controls=controls,
        **settings,
    ).numpy()
    assert list(got) == list(second)  # greedy: the best allowed; top-k 1 counts among the allowed tokens only


# ---------------------------------------------------------------------------------------------------------------
# Through the engine: the same checkpoint in gpt2tf and transformers, token for token.


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """A tiny synthetic checkpoint (GPT-2's vocabulary) in gpt2tf and, written by save_hf_checkpoint, in
    transformers. Its greedy text repeats itself, which gives the bans something to do."""
    import transformers

    import gpt2tf
    from gpt2tf.hparams import HParams

    path = tmp_path_factory.mktemp("controls")
    gpt2tf.write_synthetic_checkpoint(
        path / "model", HParams(n_vocab=50257, n_ctx=128, n_embd=32, n_head=2, n_layer=2), seed=5
    )
    model = gpt2tf.load_model(path / "model")
    gpt2tf.save_hf_checkpoint(model, path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(path / "hf").eval()
    encoder = gpt2tf.get_encoder()
    prompts = [encoder.encode(t) for t in ("The cat sat on the mat.", "Hello world", "In 1905, Einstein", "def f(x):")]
    return model, hf, encoder, prompts


def hf_generate(hf, prompt, length, **kwargs):
    """transformers' new tokens for one prompt, without the <|endoftext|> that ends them (ours leave it out)."""
    kwargs.setdefault("do_sample", False)
    out = hf.generate(torch.tensor([prompt]), max_new_tokens=length, pad_token_id=50256, **kwargs)
    new = out[0, len(prompt) :].tolist()
    stops = kwargs.get("eos_token_id", 50256) is not None
    return new[:-1] if stops and new and new[-1] == 50256 else new


class OpenAIPenalties(logits_process.LogitsProcessor if logits_process else object):
    """OpenAI's presence and frequency penalties as a transformers processor, written from OpenAI's formula."""

    def __init__(self, prompt_length, presence, frequency):
        self.prompt_length, self.presence, self.frequency = prompt_length, presence, frequency

    def __call__(self, input_ids, scores):
        generated = input_ids[:, self.prompt_length :]
        counts = torch.zeros_like(scores).scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
        return scores - counts * self.frequency - (counts > 0).to(scores.dtype) * self.presence


@pytest.mark.parametrize("n", [1, 2, 3])
def test_greedy_with_no_repeat_ngrams_gives_transformers_tokens(both, n):
    import gpt2tf

    model, hf, _, prompts = both
    ours = gpt2tf.generate(model, prompts, length=40, temperature=0, no_repeat_ngram_size=n)
    for prompt, got in zip(prompts, ours):
        assert got == hf_generate(hf, prompt, 40, no_repeat_ngram_size=n)


def test_greedy_with_bad_words_gives_transformers_tokens(both):
    import gpt2tf

    model, hf, encoder, prompts = both
    plain = gpt2tf.generate(model, prompts, length=30, temperature=0)
    # Ban what greedy chose: its first token alone, and a two-token sequence it produced (banned at its last token).
    bad = [[plain[0][0]], [plain[1][0], plain[1][1]], encoder.encode(" world peace")]
    ours = gpt2tf.generate(model, prompts, length=30, temperature=0, bad_words=bad)
    for prompt, got, before in zip(prompts, ours, plain):
        assert got == hf_generate(hf, prompt, 30, bad_words_ids=bad)
    assert ours != plain
    # A string is banned as it encodes and after a space.
    word = encoder.decode([plain[2][0]]).strip()
    ours = gpt2tf.generate(model, prompts, length=30, temperature=0, bad_words=[word])
    forms = [encoder.encode(word), encoder.encode(" " + word)]
    for prompt, got in zip(prompts, ours):
        assert got == hf_generate(hf, prompt, 30, bad_words_ids=forms)
        assert plain[2][0] not in got


def test_a_batch_mixing_controls_gives_each_row_its_own_tokens(both):
    """One engine, one call per step: rows with different controls, each equal to transformers with its own."""
    from gpt2tf.decode.engine import Engine, Request

    model, hf, _, prompts = both
    first = hf_generate(hf, prompts[0], 1)[0]
    cases = [
        (dict(), {}),
        (dict(no_repeat_ngram_size=3), dict(no_repeat_ngram_size=3)),
        (
            dict(frequency_penalty=1.5, presence_penalty=0.7),
            dict(logits_processor=[OpenAIPenalties(len(prompts[2]), 0.7, 1.5)]),
        ),
        (dict(logit_bias={first: -100, 50256: 5}), dict(sequence_bias={(first,): -100.0, (50256,): 5.0})),
        (dict(bad_words=[[first]], no_repeat_ngram_size=2), dict(bad_words_ids=[[first]], no_repeat_ngram_size=2)),
        (
            dict(presence_penalty=-2.0, logit_bias={first: 3}, no_repeat_ngram_size=4),
            dict(
                logits_processor=[OpenAIPenalties(len(prompts[1]), -2.0, 0.0)],
                sequence_bias={(first,): 3.0},
                no_repeat_ngram_size=4,
            ),
        ),
    ]
    row_prompts = [prompts[i % len(prompts)] for i in range(len(cases))]
    cases[2][1]["logits_processor"][0].prompt_length = len(row_prompts[2])
    cases[5][1]["logits_processor"][0].prompt_length = len(row_prompts[5])
    engine = Engine(model, max_batch=len(cases), max_length=96)
    outputs = {}
    for (ours, _), prompt in zip(cases, row_prompts):
        outputs[engine.add(Request(prompt=prompt, max_new_tokens=40, temperature=0, stop_at_eos=False, **ours))] = []
    while engine.active:
        for rid, ids, _ in engine.step(None):
            outputs[rid] += ids
    for (_, theirs_kwargs), prompt, got in zip(cases, row_prompts, outputs.values()):
        assert got == hf_generate(hf, prompt, 40, **theirs_kwargs, eos_token_id=None)


def test_sampling_with_min_p_one_draws_transformers_single_token(both):
    """min_p = 1 keeps only the most probable token: a sample is then determined, and transformers' sampling (its
    MinPLogitsWarper) must draw the same. (typical-p has no such well-posed case on a 50,257-token vocabulary: the
    token closest to the entropy is one of thousands within float rounding of it; its warper is compared on the
    same logits above.)"""
    import gpt2tf

    model, hf, _, prompts = both
    got = gpt2tf.generate(model, prompts, length=24, temperature=1.0, seed=3, min_p=1.0)
    for prompt, row in zip(prompts, got):
        assert row == hf_generate(hf, prompt, 24, do_sample=True, top_k=0, min_p=1.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(presence_penalty=2.5), "presence_penalty must be from -2 to 2"),
        (dict(frequency_penalty=-3), "frequency_penalty must be from -2 to 2"),
        (dict(no_repeat_ngram_size=-1), "no_repeat_ngram_size must be an integer >= 0"),
        (dict(min_p=1.5), "min_p must be in [0, 1]"),
        (dict(typical_p=0.0), "typical_p must be in (0, 1]"),
        (dict(logit_bias={"7": 101}), "logit_bias values must be numbers from -100 to 100"),
        (dict(logit_bias={"x": 1}), "logit_bias keys must be token ids"),
        (dict(logit_bias={i: 1 for i in range(301)}), "at most 300 are allowed"),
        (dict(logit_bias={50257: 1}), "logit_bias names token id 50257, outside the model's vocabulary"),
        (dict(bad_words=[""]), "bad_words holds an empty string"),
        (dict(bad_words=[[]]), "bad_words holds an empty token list"),
        (dict(bad_words=[[50300]]), "bad_words holds token id 50300, outside"),
        (dict(bad_words=[list(range(17))]), "a bad word is at most 16 tokens long"),
        (dict(bad_words=[f"w{i}" for i in range(40)]), "more than the 64 a request may ban"),
    ],
)
def test_bad_settings_are_one_line_errors(both, kwargs, message):
    import gpt2tf
    from gpt2tf.errors import GPT2TFError

    model, *_ = both
    with pytest.raises(GPT2TFError) as error:
        gpt2tf.generate(model, [[1, 2]], length=2, **kwargs)
    assert message in str(error.value) and "\n" not in str(error.value)

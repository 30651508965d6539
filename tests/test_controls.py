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
        counts=tf.zeros([rows, VOCAB], tf.int32),
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

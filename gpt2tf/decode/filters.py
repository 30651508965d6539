"""Choosing the next token: pure functions over float32 logits `[batch, vocab]`, every setting a per-row tensor.

Order, as in OpenAI's `sample.py`: repetition penalty → temperature → top-k → top-p → draw.

- temperature 0 means greedy (argmax); otherwise logits are divided by it.
- top-k (0 = off; at or above the vocabulary size, every token stays) keeps the tokens whose logit is at least the
  k-th largest (OpenAI's rule: ties with the k-th are kept).
- top-p (1.0 = off) is nucleus sampling: walking the tokens from most to least probable, a token is kept while the
  mass of the tokens *before* it is still below p — the smallest set whose mass reaches p, **the token that crosses
  p included** (nshepperd's, gpt-2-simple's and keras-hub's rule; OpenAI's own code drops the crossing token). The
  most probable token is always kept; tokens tied with the last kept one are kept too.
- repetition penalty (1.0 = off) is CTRL's: every token already present in the row (prompt or output) has its logit
  divided by the penalty if positive, multiplied by it if negative — so a penalty > 1 always makes repeats less likely.
- The draw is Gumbel-max (argmax of logits plus Gumbel noise), an exact sample from softmax(logits). The noise of
  each row comes from a stateless generator keyed by (seed, sample number j, step): the j-th sample of a prompt
  depends only on the seed, the prompt and j — the same on every call, in every process, whatever the batch or the
  other rows in it.

Rows with different settings share one call and one trace: the settings are tensors, and which path a row takes
(no filter; its `FAST_K` largest logits; a sort of the whole vocabulary, only for the rows that need it) is chosen
at run time. Each path gives the same kept set, bit for bit, as filtering each row on its own. `kernels=` (a kernel
backend, `gpt2tf.kernels`, passed by the decode runner inside its compiled step) sorts those rows natively.
"""

import numpy as np
import tensorflow as tf

from gpt2tf.layout import MASKED_VALUE

FAST_K = 256  # rows are filtered from their FAST_K largest logits when that is exact (see _top_k_top_p)


def _per_row(value, batch, dtype):
    return tf.broadcast_to(tf.cast(value, dtype), [batch])


def apply_repetition_penalty(logits, seen, penalty):
    """CTRL's penalty on tokens already in the row (`seen`: bool [batch, vocab]; `penalty`: scalar or [batch])."""
    penalty = _per_row(penalty, tf.shape(logits)[0], tf.float32)[:, None]  # [batch, 1]
    penalized = tf.where(logits > 0, logits / penalty, logits * penalty)
    return tf.where(seen & (penalty != 1.0), penalized, logits)


def top_k_logits(logits, k):
    """Keep logits >= the k-th largest of their row (k = 0, or k >= vocabulary: all); the rest become -1e10."""
    return _top_k_top_p(logits, k, 1.0)


def top_p_logits(logits, p):
    """Keep the smallest most-probable set whose probability mass reaches p (crossing token included)."""
    return _top_k_top_p(logits, 0, p)


def _top_k_top_p(logits, k, p, kernels=None):
    """Top-k then top-p, per row (`k`, `p`: scalars or [batch]).

    Every filtered row is first filtered from its `FAST_K` largest logits, which is exact when its top-k is at most
    that and its nucleus ends within them; only the other rows are sorted whole (in TensorFlow's sort, or in the
    kernels' where they apply: see docs/performance.md for what each costs).
    """
    batch, vocab = tf.shape(logits)[0], logits.shape[-1]
    k = _per_row(k, batch, tf.int32)
    k = tf.where(k >= vocab, 0, k)  # k >= vocabulary keeps every token, as 0 does
    p = _per_row(p, batch, tf.float32)
    filtered = (k > 0) | (p < 1.0)
    fast_k = min(FAST_K, vocab)

    def fast_then_full():
        # Only the filtered rows are filtered (a batch's greedy and free rows pass as they are): first from their
        # FAST_K largest logits, then, for those where that is not exact, from the whole vocabulary sorted.
        rows = tf.where(filtered)[:, 0]
        sub, sub_k, sub_p = tf.gather(logits, rows), tf.gather(k, rows), tf.gather(p, rows)
        result, exact = _filter(sub, sub_k, sub_p, tf.math.top_k(sub, k=fast_k).values)
        again = tf.where(~exact)[:, 0]  # [positions in `sub` that need the whole vocabulary sorted]

        def full():
            refiltered, _ = _filter(
                tf.gather(sub, again),
                tf.gather(sub_k, again),
                tf.gather(sub_p, again),
                _sorted_rows(logits, tf.gather(rows, again), kernels),
            )
            return tf.tensor_scatter_nd_update(result, again[:, None], refiltered)

        result = tf.cond(tf.size(again) > 0, full, lambda: result)
        return tf.tensor_scatter_nd_update(logits, rows[:, None], result)

    return tf.cond(tf.reduce_any(filtered), fast_then_full, lambda: logits)


def _sorted_rows(logits, rows, kernels=None):
    """Rows `rows` of logits, each sorted from largest to smallest: [len(rows), vocab]."""
    if kernels is not None and kernels.sort_applies(logits):
        needed = tf.scatter_nd(tf.cast(rows, tf.int32)[:, None], tf.ones_like(rows, tf.float32), [logits.shape[0]])
        return tf.gather(kernels.sort_descending(logits, needed), rows)
    return tf.sort(tf.gather(logits, rows), axis=-1, direction="DESCENDING")


def _filter(logits, k, p, top_values):
    """Top-k and top-p given each row's largest logits in descending order (`top_values` [batch, n]): the n
    largest of the row, or all of them. Returns the filtered logits and, per row, whether they are exact: they are
    unless the row's top-k exceeds n, or it has no top-k and its nucleus does not end within the n."""
    n = tf.shape(top_values)[1]
    kk = tf.clip_by_value(tf.where(k > 0, k, n), 1, n)  # rows without top-k: the nucleus may reach any of the n
    kth = tf.gather(top_values, kk - 1, batch_dims=1)[:, None]  # [batch, 1]
    logits = tf.where((k > 0)[:, None] & (logits < kth), MASKED_VALUE, logits)
    # Probabilities are normalised over the whole row; the logits top-k masked add exp(-1e10) = 0, so the top k
    # values give the same threshold as the whole vocabulary sorted.
    probs = tf.exp(top_values - tf.reduce_logsumexp(logits, axis=-1, keepdims=True))  # [batch, n]
    mass_before = tf.math.cumsum(probs, axis=-1, exclusive=True)
    reached = tf.reduce_sum(tf.cast(mass_before < p[:, None], tf.int32), axis=-1)  # >= 1: mass_before[0] = 0
    kept = tf.minimum(reached, kk)  # never past the top k (values beyond it are not masked in top_values)
    threshold = tf.gather(top_values, kept - 1, batch_dims=1)[:, None]  # [batch, 1]: the last kept logit
    exact = ((k > 0) & (k <= n)) | ((k == 0) & ((p >= 1.0) | (reached < n)))
    return tf.where((p < 1.0)[:, None] & (logits < threshold), MASKED_VALUE, logits), exact


def filter_logits(logits, seen, temperature, top_k, top_p, repetition_penalty, kernels=None):
    """Every filter in OpenAI's order, per row; greedy rows (temperature 0) get only the penalty."""
    return _warp(apply_repetition_penalty(logits, seen, repetition_penalty), temperature, top_k, top_p, kernels)


def _warp(logits, temperature, top_k, top_p, kernels=None):
    """Temperature, then top-k and top-p, per row; greedy rows (temperature 0) pass unchanged."""
    batch = tf.shape(logits)[0]
    temperature = _per_row(temperature, batch, tf.float32)
    greedy = temperature == 0.0
    scaled = logits / tf.where(greedy, 1.0, temperature)[:, None]
    top_k = tf.where(greedy, 0, _per_row(top_k, batch, tf.int32))  # greedy rows need no filtering
    top_p = tf.where(greedy, 1.0, _per_row(top_p, batch, tf.float32))
    return tf.where(greedy[:, None], logits, _top_k_top_p(scaled, top_k, top_p, kernels))


def gumbel_noise(row_seeds, steps, vocab_size, needed=None):
    """Gumbel(0, 1) noise [batch, vocab], each row from its own stateless stream keyed by (row seed, step).

    row_seeds: int32 [batch, 2] ((seed, sample number) per row); steps: int32 scalar or [batch]; needed: bool
    [batch] or None (every row): rows not needed get zeros, and their noise is not drawn.
    """
    batch = row_seeds.shape[0]
    if batch is None:  # a batch of unknown size (the export): the same streams, row by row in a loop
        steps = tf.broadcast_to(tf.cast(steps, tf.int32), tf.shape(row_seeds)[:1])
        return tf.map_fn(
            lambda args: _gumbel_row(args[0], args[1], vocab_size), (row_seeds, steps), fn_output_signature=tf.float32
        )
    steps = tf.broadcast_to(tf.cast(steps, tf.int32), [batch])
    rows = []
    for row in range(batch):  # static batch size: unrolled, each row independent of the others
        noise = lambda row=row: _gumbel_row(row_seeds[row], steps[row], vocab_size)  # noqa: E731
        rows.append(noise() if needed is None else tf.cond(needed[row], noise, lambda: tf.zeros([vocab_size])))
    return tf.stack(rows)


def _gumbel_row(row_seed, step, vocab_size):
    seed = tf.random.experimental.stateless_fold_in(row_seed, step)
    uniform = tf.random.stateless_uniform([vocab_size], seed=seed, minval=np.finfo(np.float32).tiny, maxval=1.0)
    return -tf.math.log(-tf.math.log(uniform))


def choose_tokens(
    logits, seen, row_seeds, steps, *, temperature, top_k, top_p, repetition_penalty, kernels=None, controls=None
):
    """The next token of every row: int32 [batch]. Settings are scalars or per-row tensors; `steps` is each row's
    number of tokens generated so far (the noise's step).

    `controls` (optional, every entry per row): `history` [batch, T] and `lengths` [batch] (row r's tokens so far
    are history[r, :lengths[r]], its prompt and what it has generated) with `generated_from` [batch] (where its
    generated tokens begin); `presence_penalty`, `frequency_penalty` (on the generated tokens' counts); `bias_ids`,
    `bias_values` [batch, n]; `no_repeat_ngram_size`; `bad_words` [batch, W, S]; `min_p`, `typical_p`.
    The order: presence and frequency penalties, logit bias, repetition penalty, the banned tokens (n-grams, bad
    words) — then, for sampled rows, temperature, top-k, top-p, min-p, typical-p (transformers' order for its
    processors and warpers; a greedy row takes the argmax after the bans, as transformers' greedy search does).
    """
    batch = logits.shape[0] if logits.shape[0] is not None else tf.shape(logits)[0]
    vocab_size = logits.shape[-1]
    greedy = _per_row(temperature, batch, tf.float32) == 0.0
    plain = tf.reduce_all(greedy) & tf.reduce_all(_per_row(repetition_penalty, batch, tf.float32) == 1.0)
    if controls is not None:
        c = controls
        additive = tf.reduce_any(c["presence_penalty"] != 0.0) | tf.reduce_any(c["frequency_penalty"] != 0.0)
        biased = tf.reduce_any(c["bias_values"] != 0.0)
        ngrams = tf.reduce_any(c["no_repeat_ngram_size"] > 0)
        bad = tf.reduce_any(c["bad_words"][:, :, -1] >= 0)
        warped = tf.reduce_any(c["min_p"] > 0.0) | tf.reduce_any(c["typical_p"] < 1.0)
        plain = plain & ~(additive | biased | ngrams | bad)

    def processed():
        x = logits
        if controls is not None:
            x = tf.cond(
                additive,
                lambda: apply_presence_frequency(
                    x,
                    generated_counts(c["history"], c["generated_from"], c["lengths"], vocab_size),
                    c["presence_penalty"],
                    c["frequency_penalty"],
                ),
                lambda: x,
            )
            x = tf.cond(biased, lambda: apply_logit_bias(x, c["bias_ids"], c["bias_values"]), lambda: x)
        x = apply_repetition_penalty(x, seen, repetition_penalty)
        if controls is not None:
            banned = tf.cond(
                ngrams,
                lambda: no_repeat_ngram_mask(c["history"], c["lengths"], c["no_repeat_ngram_size"], vocab_size),
                lambda: tf.zeros([batch, vocab_size], tf.bool),
            )
            banned |= tf.cond(
                bad,
                lambda: bad_words_mask(c["history"], c["lengths"], c["bad_words"], vocab_size),
                lambda: tf.zeros([batch, vocab_size], tf.bool),
            )
            x = tf.where(banned, MASKED_VALUE, x)
        return x

    def sampled():
        x = processed()
        filtered = _warp(x, temperature, top_k, top_p, kernels)
        if controls is not None:  # sampled rows only: greedy search applies no warper
            min_p = tf.where(greedy, 0.0, _per_row(c["min_p"], batch, tf.float32))
            typical_p = tf.where(greedy, 1.0, _per_row(c["typical_p"], batch, tf.float32))
            filtered = tf.cond(
                warped, lambda: typical_p_logits(min_p_logits(filtered, min_p), typical_p), lambda: filtered
            )
        noisy = tf.cond(
            tf.reduce_all(greedy),
            lambda: filtered,  # an all-greedy batch draws no noise
            lambda: tf.where(greedy[:, None], filtered, filtered + gumbel_noise(row_seeds, steps, vocab_size, ~greedy)),
        )
        return tf.argmax(noisy, axis=-1, output_type=tf.int32)

    # Plain greedy rows (no penalty) need nothing but the argmax: the common case costs no more than that.
    return tf.cond(plain, lambda: tf.argmax(logits, axis=-1, output_type=tf.int32), sampled)


# ---------------------------------------------------------------------------------------------------------------
# More controls (each per row; a row whose setting is off passes unchanged). Masked logits are MASKED_VALUE, where
# transformers writes -inf: the same probabilities (exp underflows to 0 either way) and the same kept sets.


def apply_presence_frequency(logits, counts, presence, frequency):
    """OpenAI's presence and frequency penalties: logit - count * frequency - (count > 0) * presence, where count
    (`counts` [batch, vocab]) is how often the row has generated the token (its prompt does not count)."""
    batch = tf.shape(logits)[0]
    counts = tf.cast(counts, tf.float32)
    presence = _per_row(presence, batch, tf.float32)[:, None]
    frequency = _per_row(frequency, batch, tf.float32)[:, None]
    return logits - counts * frequency - tf.cast(counts > 0, tf.float32) * presence


def generated_counts(history, start, end, vocab_size):
    """How often each row has each token among history[r, start[r]:end[r]]: int32 [batch, vocab]."""
    batch, length = tf.shape(history)[0], tf.shape(history)[1]
    at = tf.range(length)[None, :]
    inside = tf.where((at >= start[:, None]) & (at < end[:, None]))  # [k, 2]: (row, position)
    indices = tf.stack([tf.cast(inside[:, 0], tf.int32), tf.gather_nd(history, inside)], -1)
    return tf.scatter_nd(indices, tf.ones_like(indices[:, 0]), [batch, vocab_size])


def apply_logit_bias(logits, bias_ids, bias_values):
    """OpenAI's logit_bias: `bias_values[r, i]` added to token `bias_ids[r, i]` of row r ([batch, n] each; unused
    entries have value 0, which adds nothing)."""
    batch, n = tf.shape(bias_ids)[0], tf.shape(bias_ids)[1]
    rows = tf.broadcast_to(tf.range(batch)[:, None], [batch, n])
    indices = tf.reshape(tf.stack([rows, tf.cast(bias_ids, tf.int32)], -1), [-1, 2])
    return tf.tensor_scatter_nd_add(logits, indices, tf.reshape(tf.cast(bias_values, tf.float32), [-1]))


def _suffix_matches(history, lengths, pattern, pattern_valid):
    """Whether each row's history ends with each pattern: history [batch, T] (row r's tokens are its first
    lengths[r]); pattern [batch, W, S], matched position by position against the last S tokens, where
    `pattern_valid` [batch, W, S] is False for positions that match anything. Returns bool [batch, W]."""
    size = tf.shape(pattern)[2]
    at = lengths[:, None] - size + tf.range(size)[None, :]  # [batch, S]: the last S positions (negative: before 0)
    last = tf.where(at >= 0, tf.gather(history, tf.maximum(at, 0), batch_dims=1), -1)  # [batch, S]
    return tf.reduce_all(~pattern_valid | (pattern == last[:, None, :]), axis=-1)


def no_repeat_ngram_mask(history, lengths, ngram_size, vocab_size):
    """transformers' `NoRepeatNGramLogitsProcessor`, per row (`ngram_size` [batch], 0 = off): the tokens that would
    complete an n-gram already in the row's history (its prompt and what it has generated) are banned. bool
    [batch, vocab].

    Every n-gram of the history whose first n - 1 tokens equal the history's last n - 1 tokens bans its last token.
    """
    batch, length = tf.shape(history)[0], tf.shape(history)[1]
    n = _per_row(ngram_size, batch, tf.int32)
    start = tf.range(length)[None, :]  # [1, T]: the n-gram starting at each position
    # Walk back from the end: the n-gram at s matches while history[s + j] == history[len - n + 1 + j], j < n - 1.
    longest = tf.reduce_max(n)

    def body(j, matched):
        here = tf.gather(history, tf.clip_by_value(tf.range(length) + j, 0, length - 1), axis=1)  # [batch, T]
        there = tf.gather(history, tf.clip_by_value(lengths - n + 1 + j, 0, length - 1)[:, None], batch_dims=1)
        return j + 1, matched & ((j >= n - 1)[:, None] | (here == there))

    _, matched = tf.while_loop(lambda j, _: j < longest - 1, body, (tf.constant(0), tf.ones([batch, length], tf.bool)))
    # An n-gram counts if it lies whole in the history (s + n <= len) and the suffix it is matched against exists.
    whole = (start + n[:, None] <= lengths[:, None]) & (n > 0)[:, None] & (lengths >= n)[:, None]
    banned_ids = tf.gather(history, tf.clip_by_value(start + n[:, None] - 1, 0, length - 1), batch_dims=1)
    hits = tf.where(matched & whole)  # [k, 2]: (row, start)
    return _mask_of(hits[:, 0], tf.gather_nd(banned_ids, hits), batch, vocab_size)


def _mask_of(rows, ids, batch, vocab_size):
    """bool [batch, vocab]: True at (rows[i], ids[i]) (pairs may repeat)."""
    indices = tf.stack([tf.cast(rows, tf.int32), tf.cast(ids, tf.int32)], -1)
    return tf.scatter_nd(indices, tf.ones_like(indices[:, 0]), [batch, vocab_size]) > 0


def bad_words_mask(history, lengths, bad_words, vocab_size):
    """transformers' `NoBadWordsLogitsProcessor`, per row: `bad_words` [batch, W, S] holds each row's banned token
    sequences right-aligned (-1 before a shorter one's first token, and for unused entries); a sequence's last token
    is banned when the history ends with the tokens before it (a one-token sequence: always). bool [batch, vocab]."""
    last = bad_words[:, :, -1]  # [batch, W]: the token each sequence bans
    before = bad_words[:, :, :-1]
    matched = _suffix_matches(history, lengths, before, before >= 0) & (last >= 0)
    hits = tf.where(matched)  # [k, 2]: (row, sequence)
    return _mask_of(hits[:, 0], tf.gather_nd(last, hits), tf.shape(history)[0], vocab_size)


def min_p_logits(logits, min_p):
    """transformers' `MinPLogitsWarper`, per row (`min_p` [batch], 0 = off): tokens whose probability is below
    min_p times the most probable token's are masked (the most probable is always kept)."""
    min_p = _per_row(min_p, tf.shape(logits)[0], tf.float32)
    probs = tf.nn.softmax(logits)
    threshold = min_p[:, None] * tf.reduce_max(probs, axis=-1, keepdims=True)
    top = tf.one_hot(tf.argmax(probs, axis=-1), tf.shape(logits)[1], on_value=True, off_value=False)
    return tf.where((probs < threshold) & ~top, MASKED_VALUE, logits)


def typical_p_logits(logits, typical_p):
    """transformers' `TypicalLogitsWarper`, per row (`typical_p` [batch], 1.0 = off): keep the tokens whose
    information (-log p) is closest to the distribution's entropy, in that order, until their mass reaches p (the
    token that crosses it included; the closest always kept). Only the rows with typical_p < 1 are sorted."""
    batch = tf.shape(logits)[0]
    mass = _per_row(typical_p, batch, tf.float32)
    on = mass < 1.0

    def typical():
        rows = tf.where(on)[:, 0]
        sub, sub_mass = tf.gather(logits, rows), tf.gather(mass, rows)
        normalized = tf.nn.log_softmax(sub)
        p = tf.exp(normalized)
        entropy = -tf.reduce_sum(tf.where(p > 0, normalized * p, 0.0), axis=-1, keepdims=True)
        shifted = tf.abs(-normalized - entropy)
        order = tf.argsort(shifted, axis=-1, stable=True)  # ascending
        sorted_shifted = tf.gather(shifted, order, batch_dims=1)
        cumulative = tf.math.cumsum(tf.nn.softmax(tf.gather(sub, order, batch_dims=1)), axis=-1)
        last = tf.minimum(
            tf.reduce_sum(tf.cast(cumulative < sub_mass[:, None], tf.int32), axis=-1), tf.shape(sub)[1] - 1
        )
        cut = tf.gather(sorted_shifted, last[:, None], batch_dims=1)  # [rows, 1]
        remove_sorted = (sorted_shifted > cut) & (tf.range(tf.shape(sub)[1]) > 0)[None, :]
        remove = tf.scatter_nd(
            tf.stack([tf.broadcast_to(tf.range(tf.shape(sub)[0])[:, None], tf.shape(order)), order], -1),
            remove_sorted,
            tf.shape(sub),
        )
        return tf.tensor_scatter_nd_update(logits, rows[:, None], tf.where(remove, MASKED_VALUE, sub))

    return tf.cond(tf.reduce_any(on), typical, lambda: logits)

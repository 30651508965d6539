"""Beam search's bookkeeping: transformers' `_beam_search` (v5), step for step, in TensorFlow ops.

Beam search keeps `num_beams` (K) running hypotheses per prompt. Each step, every running beam's next-token
log-probabilities (log-softmax of its logits, then the bans: no-repeat n-grams, bad words; `beam_log_probs`) are
added to its score; of all K x vocabulary continuations the best 2K are taken (`beam_step` is given each beam's own
best 2K or more, `candidates`, whose union holds them). A continuation that ends (<|endoftext|>, or the length
limit) is a finished hypothesis, scored sum(log p) / length**length_penalty (the length counting every generated
token, <|endoftext|> included), kept if it is among the best K finished so far and was among the best K of the 2K;
the best K that do not end run on. The search stops when no running beam can beat the worst finished one (by
transformers' heuristic, which depends on `early_stopping`: False — judged at the current length; "never" — at the
longest length when length_penalty > 0; True — as soon as K hypotheses are finished), or when every continuation
ends. The result is the finished hypotheses, best first.

Every rule here is transformers': the float32 arithmetic (scores + -1e9 for what may not be chosen), the 2K
continuations, the heuristic. A search's state is a dict of tensors over `groups` (prompts) of K beams each; one
`beam_step` advances every group by one token and says, per group, from which beam each new running beam comes and
with which token (the caller reorders its key/value cache by that) and whether the group is done. The engine calls it
between steps for the rows a beam request holds; the SavedModel's `beam_search` signature calls it in its graph.
"""

import functools

import tensorflow as tf

from gpt2tf.decode.filters import bad_words_mask, no_repeat_ngram_mask
from gpt2tf.layout import EOT_ID, MASKED_VALUE

NEG = -1.0e9  # transformers' "never choose this" score
EARLY_STOPPING = (True, False, "never")


def beam_log_probs(logits, *, history=None, lengths=None, no_repeat_ngram_size=None, bad_words=None):
    """Each row's next-token log-probabilities with the bans applied (banned tokens: MASKED_VALUE, where transformers
    writes -inf): transformers' order, log-softmax then its processors."""
    log_p = tf.nn.log_softmax(logits)
    vocab = logits.shape[-1]
    banned = tf.zeros(tf.shape(log_p), tf.bool)
    if no_repeat_ngram_size is not None:
        banned |= tf.cond(
            tf.reduce_any(no_repeat_ngram_size > 0),
            lambda: no_repeat_ngram_mask(history, lengths, no_repeat_ngram_size, vocab),
            lambda: tf.zeros(tf.shape(log_p), tf.bool),
        )
    if bad_words is not None:
        banned |= tf.cond(
            tf.reduce_any(bad_words[:, :, -1] >= 0),
            lambda: bad_words_mask(history, lengths, bad_words, vocab),
            lambda: tf.zeros(tf.shape(log_p), tf.bool),
        )
    return tf.where(banned, MASKED_VALUE, log_p)


def candidates(log_p, count):
    """Each row's `count` best continuations: (log-probabilities, token ids) [rows, count], best first."""
    top = tf.math.top_k(log_p, k=count)
    return top.values, top.indices


def beam_init(groups, num_beams, max_new_tokens):
    """The state of `groups` searches of `num_beams` beams that may generate up to `max_new_tokens` tokens each."""
    k = num_beams
    scores = tf.concat([tf.zeros([groups, 1]), tf.fill([groups, k - 1], NEG)], axis=1)
    empty = tf.fill([groups, k, max_new_tokens], EOT_ID)
    return dict(
        generated=tf.constant(0),  # tokens generated so far (the same for every running beam)
        running_tokens=empty,  # [G, K, T]: each running beam's tokens so far
        running_scores=scores,  # [G, K]: their summed log-probabilities (-1e9 added for those that may not win)
        finished_tokens=empty,  # [G, K, T]: the best finished hypotheses so far, best first
        finished_lengths=tf.zeros([groups, k], tf.int32),  # tokens in each (<|endoftext|> included)
        finished_scores=tf.fill([groups, k], NEG),  # their length-penalized scores (-1e9: none yet)
        is_finished=tf.zeros([groups, k], tf.bool),
        improvable=tf.ones([groups, 1], tf.bool),  # transformers' is_early_stop_heuristic_unsatisfied
    )


def beam_step(state, cand_log_p, cand_ids, *, max_new_tokens, length_penalty, early_stopping, stop_at_eos=True):
    """One step of every group: `cand_log_p`, `cand_ids` [G, K, C] are each running beam's best C >= 2K
    continuations (`candidates`); `max_new_tokens` is one number or one per group. Returns (the new state,
    parents [G, K]: the beam each new running beam continues, tokens [G, K]: the token it adds, done [G]: the
    group's search is over)."""
    k = state["running_scores"].shape[1] or tf.shape(state["running_scores"])[1]
    groups, count = tf.shape(cand_log_p)[0], tf.shape(cand_log_p)[2]
    keep = 2 * k  # transformers' beams_to_keep: (1 + number of end tokens) * num_beams
    generated = state["generated"]

    # c. The best 2K continuations of all the beams (transformers' _get_top_k_continuations).
    accumulated = tf.reshape(cand_log_p + state["running_scores"][:, :, None], [groups, -1])  # [G, K * C]
    top_log_p, top_index = tf.math.top_k(accumulated, k=keep)
    parent = top_index // count  # [G, 2K]
    token = tf.gather(tf.reshape(cand_ids, [groups, -1]), top_index, batch_dims=1)
    top_tokens = _write(tf.gather(state["running_tokens"], parent, batch_dims=1), generated, token)

    # d. Which of them end: <|endoftext|>, or the length limit (transformers' stopping criteria).
    limit = tf.reshape(max_new_tokens, [-1, 1])  # one for all groups, or one per group
    ends = tf.broadcast_to(generated + 1 >= limit, tf.shape(token))
    if stop_at_eos:
        ends |= token == EOT_ID

    # e. The best K that do not end run on (_get_running_beams_for_next_iteration).
    running_log_p = top_log_p + tf.cast(ends, tf.float32) * NEG
    chosen = tf.math.top_k(running_log_p, k=k).indices
    running_tokens = tf.gather(top_tokens, chosen, batch_dims=1)
    running_scores = tf.gather(running_log_p, chosen, batch_dims=1)
    parents, tokens = tf.gather(parent, chosen, batch_dims=1), tf.gather(token, chosen, batch_dims=1)

    # f. The finished hypotheses (_update_finished_beams).
    early_true = early_stopping is True
    just_finished = ends & (tf.range(keep) < k)[None, :]
    scores = top_log_p / _length_power(generated + 1, length_penalty)
    full = tf.reduce_all(state["is_finished"], axis=-1, keepdims=True) & early_true
    scores += tf.cast(full, tf.float32) * NEG
    scores += tf.cast(~state["improvable"], tf.float32) * NEG
    scores += tf.cast(~just_finished, tf.float32) * NEG
    merged_scores = tf.concat([state["finished_scores"], scores], axis=1)
    best = tf.math.top_k(merged_scores, k=k).indices
    lengths = tf.fill([groups, keep], generated + 1)

    def merged(old, new):
        return tf.gather(tf.concat([old, new], axis=1), best, batch_dims=1)

    finished_scores = tf.gather(merged_scores, best, batch_dims=1)
    finished_tokens = merged(state["finished_tokens"], top_tokens)
    finished_lengths = merged(state["finished_lengths"], lengths)
    is_finished = merged(state["is_finished"], just_finished)

    # g. Can the running beams still improve on the finished ones (_check_early_stop_heuristic)?
    generated += 1
    if early_stopping == "never" and length_penalty > 0.0:
        best_length = limit
    else:
        best_length = generated
    best_possible = running_scores[:, :1] / _length_power(best_length, length_penalty)
    worst_finished = tf.where(is_finished, tf.reduce_min(finished_scores, axis=1, keepdims=True), NEG)
    improvable = state["improvable"] & tf.reduce_any(best_possible > worst_finished, axis=-1, keepdims=True)
    open_beam = ~(tf.reduce_all(is_finished, axis=-1) & early_true)
    done = ~(improvable[:, 0] & open_beam & ~tf.reduce_all(ends, axis=-1))
    state = dict(
        generated=generated,
        running_tokens=running_tokens,
        running_scores=running_scores,
        finished_tokens=finished_tokens,
        finished_lengths=finished_lengths,
        finished_scores=finished_scores,
        is_finished=is_finished,
        improvable=improvable,
    )
    return state, parents, tokens, done


@functools.lru_cache(maxsize=64)
def compiled_step(max_new_tokens, length_penalty, early_stopping, stop_at_eos=True):
    """`beam_step` with these settings as one traced function (a step's ~50 ops in one call, not one by one)."""
    step = functools.partial(
        beam_step,
        max_new_tokens=max_new_tokens,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
        stop_at_eos=stop_at_eos,
    )
    return tf.function(step, autograph=False, reduce_retracing=True, jit_compile=True)


def _length_power(length, length_penalty):
    """length ** length_penalty as transformers has it: a Python float (double), applied to float32 scores."""
    return tf.cast(tf.pow(tf.cast(length, tf.float64), tf.constant(float(length_penalty), tf.float64)), tf.float32)


def _write(tokens, at, token):
    """tokens [G, N, T] with position `at` set to token [G, N]."""
    width = tf.shape(tokens)[2]
    return tf.where(tf.range(width)[None, None, :] == at, token[:, :, None], tokens)


def results(state, num_return_sequences, stop_at_eos=True):
    """The best `num_return_sequences` hypotheses of each group: [(token ids, score, "stop" or "length")], best
    first, as Python lists (a hypothesis that ended at <|endoftext|> leaves it out)."""
    out = []
    tokens, lengths = state["finished_tokens"].numpy(), state["finished_lengths"].numpy()
    scores = state["finished_scores"].numpy()
    for g in range(tokens.shape[0]):
        group = []
        for b in range(num_return_sequences):
            ids = [int(t) for t in tokens[g, b, : lengths[g, b]]]
            eos = stop_at_eos and ids and ids[-1] == EOT_ID
            group.append((ids[:-1] if eos else ids, float(scores[g, b]), "stop" if eos else "length"))
        out.append(group)
    return out

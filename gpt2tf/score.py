"""The one log-likelihood path: how likely a model finds each token of many sequences, batched and compiled.

`score(model, items)` takes `(ids, start)` pairs and gives, for every position p from `max(start, 1)` on, the
log-probability of `ids[p]` given `ids[:p]` and whether greedy decoding would have chosen it (and, from
`score_alternatives`, the most likely tokens at each position). Evaluation (perplexity, LAMBADA, multiple
choice), validation during fine-tuning, the server's prompt log-probabilities and the export's `score` all score
through here. Sequences are
right-padded to a bucketed length (the padding is never scored, and causal attention never lets it change the real
positions), grouped into batches of about `TOKENS_PER_CALL` tokens, and run through the model compiled by XLA once
per (batch, length) shape, so new sequences never retrace.
"""

import re

import numpy as np
import tensorflow as tf

from gpt2tf.errors import GPT2TFError
from gpt2tf.layout import PROMPT_BUCKET

TOKENS_PER_CALL = 2048  # per compiled call: the logits of that many tokens (2048 x 50257 floats, ~400 MB) at once


class Scorer:
    """The scoring function of one model (made once per model by `scorer_for`): a compiled one (traced once per
    shape, and compiled by XLA with `jit_compile`), or, with `compiled=False`, the same function run eagerly, op by
    op: nothing to trace or compile, for a one-off sequence where waiting for a compilation would cost more."""

    def __init__(self, model, *, jit_compile=True, compiled=True):
        self.model = model
        self.score_batch = self._score_batch
        if compiled:
            self.score_batch = tf.function(self._score_batch, jit_compile=jit_compile, autograph=False)

    def _score_batch(self, tokens, top=0):
        """tokens [batch, length]: each position's next token's log-probability (`log_p`) and whether it is the
        argmax (`greedy`), [batch, length - 1]; with `top`, the `top` most likely tokens' log-probabilities and ids
        at each position (`top_values`, `top_ids`: [batch, length - 1, top])."""
        logits = tf.cast(self.model(tokens), tf.float32)[:, :-1]  # [batch, length - 1, vocab]: predicts 1..
        targets = tokens[:, 1:]
        chosen = tf.gather(logits, targets, batch_dims=2)  # [batch, length - 1]
        normalizer = tf.reduce_logsumexp(logits, axis=-1)
        out = {
            "log_p": chosen - normalizer,
            "greedy": tf.argmax(logits, axis=-1, output_type=tf.int32) == targets,
        }
        if top:
            best = tf.math.top_k(logits, k=top)
            out.update(top_values=best.values - normalizer[..., None], top_ids=best.indices)
        return out


_scorers = {}


def scorer_for(model, *, jit_compile=True, compiled=True):
    key = (id(model), jit_compile, compiled)
    if key not in _scorers or _scorers[key].model is not model:
        _scorers[key] = Scorer(model, jit_compile=jit_compile, compiled=compiled)
    return _scorers[key]


def bucket(length, n_ctx):
    """The padded length a sequence of `length` tokens is scored at: a multiple of PROMPT_BUCKET, at most n_ctx."""
    return min(-(-length // PROMPT_BUCKET) * PROMPT_BUCKET, n_ctx)


def score(model, items, *, progress=None, jit_compile=True):
    """[(log-probabilities, greedy hits)] for `items` of `(ids, start)`, in order: arrays over positions
    max(start, 1)..len(ids) - 1 (each position predicted from the ones before it).

    `progress`, if given, is called with the number of tokens scored after each batch.
    """
    return [(r["log_p"], r["greedy"]) for r in _score(model, items, progress=progress, jit_compile=jit_compile)]


def score_alternatives(model, items, *, top, max_rows=None, jit_compile=True, compiled=True):
    """`score`'s log-probabilities with, at each position, the `top` most likely tokens' log-probabilities and ids:
    [(log_p [n], top_values [n, top], top_ids [n, top])]. `max_rows` caps the sequences a call scores (a server
    scoring one prompt pads it to one row, not to a batch of TOKENS_PER_CALL tokens); `compiled=False` runs the
    scoring function eagerly (see `Scorer`)."""
    results = _score(model, items, top=top, max_rows=max_rows, jit_compile=jit_compile, compiled=compiled)
    return [(r["log_p"], r["top_values"], r["top_ids"]) for r in results]


def _score(model, items, *, top=0, max_rows=None, progress=None, jit_compile=True, compiled=True):
    """Every item's arrays (`Scorer`'s, cut to its scored positions), in order."""
    n_ctx, n_vocab = model.hparams.n_ctx, model.hparams.n_vocab
    for i, (ids, _) in enumerate(items):
        if not 2 <= len(ids) <= n_ctx:
            raise GPT2TFError(f"sequence {i} has {len(ids)} tokens; scoring takes 2 to the model's context of {n_ctx}")
        if min(ids) < 0 or max(ids) >= n_vocab:
            raise GPT2TFError(f"sequence {i} holds token ids outside the model's vocabulary of {n_vocab}")
    scorer = scorer_for(model, jit_compile=jit_compile, compiled=compiled)
    results = [None] * len(items)
    by_length = {}
    for i, (ids, _) in enumerate(items):
        by_length.setdefault(bucket(len(ids), n_ctx), []).append(i)
    for length, indices in sorted(by_length.items()):
        rows = min(max(1, TOKENS_PER_CALL // length), max_rows or TOKENS_PER_CALL)
        for first in range(0, len(indices), rows):
            batch = indices[first : first + rows]
            tokens = np.zeros([rows, length], np.int32)  # a short last batch is padded: the same shape, no retrace
            for row, i in enumerate(batch):
                tokens[row, : len(items[i][0])] = items[i][0]
            out = {k: v.numpy() for k, v in scorer.score_batch(tf.constant(tokens), top).items()}
            for row, i in enumerate(batch):
                ids, start = items[i]
                begin, end = max(start, 1) - 1, len(ids) - 1  # position p is predicted at row index p - 1
                results[i] = {k: v[row, begin:end] for k, v in out.items()}
                results[i]["log_p"] = results[i]["log_p"].astype(np.float64)
            if progress:
                progress(sum(len(items[i][0]) - max(items[i][1], 1) for i in batch))
    return results


def text_units(text):
    r"""(UTF-8 bytes, words) of a document, the units bits per byte and word perplexity are per: words as
    lm-evaluation-harness counts them, `re.split(r"\s+", text)`."""
    return len(text.encode("utf-8")), len(re.split(r"\s+", text))


def windows(n_tokens, *, context, stride):
    """The HF perplexity guide's strided windows over a text of `n_tokens`: [(begin, end, first scored)], each
    window scoring only the tokens no earlier window scored (everything before them in it is context)."""
    if not 1 <= stride <= context:
        raise GPT2TFError(f"--stride must be from 1 to --context ({context}), got {stride}")
    out, previous_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + context, n_tokens)
        out.append((begin, end, previous_end - begin if previous_end > begin else 0))
        previous_end = end
        if end == n_tokens:
            break
    return out

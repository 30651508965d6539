"""The runner: a model's compiled decode pieces and the one decode loop, shared by the engine and the export.

    runner = runner_for(model)                        # built once per model (and settings), reused by every engine
    x, mask = runner.embed(tokens, starts, max_length)
    x = runner.block(x, mask, at, runner.weights[i], cache[i], i)       # cache: variables, updated in place
    logits = runner.head(x)

The model runs as compiled pieces: the embedding, one block (run for each layer with its weights and cache as
arguments: the blocks differ only in their weights, so the first call compiles one block instead of the whole
network; a model whose blocks are not alike, such as one with LoRA adapters, gets a function per block) and the
head, each compiled by XLA once per shape. The blocks come in two forms over the same computation: on a cache of
variables written in place (the engine's: XLA aliases the updated cache with its input and writes only the new
slots) and on a cache of tensors returned updated (the export's, whose batch size is not known until it runs).

`decode_loop` is the one decode loop: choose each row's next token from its logits with its own settings
(`gpt2tf.decode.filters`), run it through the model, stop rows at <|endoftext|> or their length limit. Its sampling
ops (top-k, sort, random) run as ordinary TensorFlow kernels, which on a CPU are much faster than XLA's lowering of
TopK/Sort and of the random generator; the native kernels (`gpt2tf.kernels`), when the runner has them, are passed
explicitly to the model and the sampler inside the compiled functions.
"""

import contextlib
import threading
import weakref

import tensorflow as tf
from tensorflow.compiler.tf2xla.python import xla

from gpt2tf.decode.beams import beam_log_probs, candidates
from gpt2tf.decode.filters import choose_tokens
from gpt2tf.layout import EOT_ID
from gpt2tf.settings import MAX_BAD_WORD_TOKENS, MAX_BAD_WORDS, MAX_LOGIT_BIAS, MAX_LOGPROBS


def decode_loop(
    step_model,
    state,
    *,
    count,
    logits,
    seen,
    decoding,
    position,
    steps,
    limit,
    stop_at_eos,
    logprobs,
    row_seeds,
    settings,
    max_length,
    kernels=None,
    last_step=True,
    controls=None,
    forced=None,
):
    """Up to `count` tokens for every decoding row, in a graph-mode while loop.

    Each step chooses every row's token from its `logits` [rows, vocab] with its own `settings` (temperature,
    top_k, top_p, repetition_penalty: [rows] each; `seen` [rows, vocab] is what the penalty reads), keyed by
    `row_seeds` [rows, 2] and its `steps` [rows] (tokens generated so far), then runs the tokens through the model:
    `step_model(tokens [rows], slots [rows], state) -> (logits, state)`, row r written at slot `slots[r]` of its
    cache (rows not decoding write their last slot, `max_length - 1`; their outputs are unused). A row stops at
    <|endoftext|> (with `stop_at_eos`) or after `limit` tokens in all, and the loop once no row decodes.
    `last_step=False` skips the model step after the tokens that end every row (whose logits nobody reads): the
    export's choice; the engine steps every time (a conditional around the model costs its hot loop more).

    `controls` (None: every one off) holds the other per-row settings `choose_tokens` takes (presence_penalty,
    frequency_penalty, bias_ids, bias_values, no_repeat_ngram_size, bad_words, min_p, typical_p) and `history`
    [rows, max_length]: each row's tokens so far at its slots (what the n-gram and bad-word bans and the penalties
    read; a row's generated tokens are the last `steps` before `position`). Each chosen token is written to it
    while a row reads it; it comes back updated as `history`.

    `forced` [rows] (None: none): a token a row takes at the first step instead of choosing one (-1: it chooses);
    a beam search's rows take the tokens their search chose.

    Returns {tokens, live: [steps run, rows] (whether the row was decoding at that step), logits, seen, state,
    and, when a row wants `logprobs`, the log-probabilities under the model (before any sampling setting) of each
    chosen token (`chosen`) and of the MAX_LOGPROBS most likely (`top_values`, `top_ids`: [steps run, rows, n])}.
    """
    rows = tf.shape(decoding)[0] if decoding.shape[0] is None else decoding.shape[0]
    vocab_size = logits.shape[-1]
    any_penalty = tf.reduce_any(settings["repetition_penalty"] != 1.0)
    any_logprobs = tf.reduce_any(logprobs)

    def log_probabilities(row_logits, token):
        log_p = tf.nn.log_softmax(row_logits)  # [rows, vocab]
        top = tf.math.top_k(log_p, k=MAX_LOGPROBS)
        return tf.gather(log_p, token, batch_dims=1), top.values, top.indices

    def none(row_logits, token):
        return tf.zeros([rows]), tf.zeros([rows, MAX_LOGPROBS]), tf.zeros([rows, MAX_LOGPROBS], tf.int32)

    if controls is not None:
        history = controls["history"]
        needs_history = reads_history(controls)
    else:
        history = tf.zeros([rows, 0], tf.int32)

    def body(i, decoding, position, steps, logits, seen, history, state, arrays):
        if controls is None:
            token = choose_tokens(logits, seen, row_seeds, steps, kernels=kernels, **settings)
        else:
            row_controls = dict(controls, history=history, lengths=position, generated_from=position - steps)
            token = choose_tokens(logits, seen, row_seeds, steps, kernels=kernels, controls=row_controls, **settings)
        if forced is not None:
            token = tf.where((forced >= 0) & (i == 0), forced, token)
        lp = tf.cond(any_logprobs, lambda: log_probabilities(logits, token), lambda: none(logits, token))
        token = tf.where(decoding, token, 0)
        done = decoding & ((stop_at_eos & (token == EOT_ID)) | (steps + 1 >= limit))
        at = tf.where(decoding, position, max_length - 1)
        if last_step:
            logits, state = step_model(token, at, state)
        else:
            logits, state = tf.cond(
                tf.reduce_any(decoding & ~done), lambda: step_model(token, at, state), lambda: (logits, state)
            )
        # Only rows with a penalty read what they have seen (each row's prompt is in it when it joins).
        seen = tf.cond(
            any_penalty, lambda: seen | ((tf.one_hot(token, vocab_size) > 0) & decoding[:, None]), lambda: seen
        )
        if controls is not None:
            history = tf.cond(
                needs_history,
                lambda: tf.tensor_scatter_nd_update(
                    history, tf.stack([tf.range(rows), tf.minimum(at, tf.shape(history)[1] - 1)], -1), token
                ),
                lambda: history,
            )
        step = tf.cast(decoding, tf.int32)
        arrays = [a.write(i, v) for a, v in zip(arrays, (token, decoding, *lp))]
        return i + 1, decoding & ~done, position + step, steps + step, logits, seen, history, state, arrays

    arrays = [
        tf.TensorArray(d, size=0, dynamic_size=True) for d in (tf.int32, tf.bool, tf.float32, tf.float32, tf.int32)
    ]
    _, _, position, _, logits, seen, history, state, arrays = tf.while_loop(
        lambda i, decoding, *_: (i < count) & tf.reduce_any(decoding),
        body,
        (tf.constant(0), decoding, position, steps, logits, seen, history, state, arrays),
    )
    tokens, live, chosen, top_values, top_ids = (a.stack() for a in arrays)
    return dict(
        tokens=tokens,
        live=live,
        chosen=chosen,
        top_values=top_values,
        top_ids=top_ids,
        logits=logits,
        seen=seen,
        history=history,
        position=position,
        state=state,
    )


class Runner:
    """The prefill and step functions of one model, traced once per number of rows run and cache shape, and reused
    by every engine with those shapes (an engine's variables are passed in as arguments); `kernels` is the kernel
    backend the compiled functions pass to the model and the sampler (None: TensorFlow's own ops)."""

    def __init__(self, model, *, jit_compile, kernels, shared):
        self._model = weakref.ref(model)  # held by the model's entry in `_runners`: no cycle keeping it alive
        self.vocab_size = model.hparams.n_vocab
        self.jit_compile = jit_compile
        self.kernels = kernels if jit_compile else None  # the native kernels run only inside XLA
        self._shared = shared
        self.weights = [
            ([w.value for w in block.trainable_variables], [w.value for w in block.non_trainable_variables])
            for block in model.h
        ]
        compiled = lambda f: tf.function(f, jit_compile=jit_compile, autograph=False)  # noqa: E731
        self.embed, self.head = compiled(self._embed), compiled(self._head)
        self.block, self.block_tensors = compiled(self._block), compiled(self._block_tensors)
        self.prefill_block = compiled(self._prefill_block)
        self.steps_function = tf.function(self._steps, autograph=False)
        self._concrete = {}  # (rows, cache shape) -> its traced step: called directly, less overhead per call
        self.prefill = tf.function(self._prefill, autograph=False)
        self.beam_candidates = tf.function(self._beam_candidates, autograph=False, reduce_retracing=True)
        self._ready = {}  # (rows, cache shape) -> Event, set once that step is compiled
        self._queue, self._worker, self._lock = [], None, threading.Lock()  # steps waiting to be compiled
        self._scratch = {}  # batch -> (logits, seen) variables the trial steps write

    @property
    def model(self):
        return self._model()

    @property
    def use_native(self):
        return self.kernels is not None

    def cache_variables(self, batch, max_length):
        """A key/value cache the compiled functions update in place: one pair of variables per layer.

        As variables (passed to the compiled functions as arguments, so one trace serves every engine), XLA aliases
        the updated cache with its input and writes only the new slots; a cache passed in and returned as tensors
        would be copied whole every step.
        """
        return tuple(
            (tf.Variable(keys, trainable=False), tf.Variable(values, trainable=False))
            for keys, values in self.model.init_cache(batch, max_length)
        )

    # -----------------------------------------------------------------------------------------------------------
    # Compiling ahead (the engine asks for a step's shapes before it needs them)

    def prepare(self, rows, cache):
        """Queue the step for `rows` rows of `cache`'s shape for compiling on a background thread, unless it is
        compiled or queued: XLA's compilation (seconds) then overlaps a prefill, or steps on a bucket that is ready.
        """
        key = (rows, cache[0][0].shape)
        if key in self._ready:
            return
        ready = threading.Event()
        if not self.jit_compile:
            ready.set()
        else:
            args = self._trial_args(rows, cache)
            self._concrete_step(args)  # tracing stays on this thread (and an error is raised here)
        self._ready[key] = ready
        if ready.is_set():
            return
        with self._lock:
            self._queue.append((args, ready))
            if self._worker is None:
                self._worker = threading.Thread(target=self._compile_queued, name="gpt2tf-compile", daemon=True)
                self._worker.start()

    def compiling(self):
        with self._lock:
            return self._worker is not None

    def ready_bucket(self, rows, buckets, cache):
        """How many rows to step: the smallest bucket >= `rows` whose step is compiled; if none is, `rows` once its
        compilation is done."""
        self.prepare(rows, cache)
        shape = cache[0][0].shape
        for b in buckets:
            if b >= rows and (b, shape) in self._ready and self._ready[(b, shape)].is_set():
                return b
        self._ready[(rows, shape)].wait()
        return rows

    def _compile_queued(self):
        while True:
            with self._lock:
                if not self._queue:
                    self._worker = None
                    return
                args, ready = self._queue.pop(0)
            with contextlib.suppress(Exception):  # the real step will compile it again and report the error
                self.steps(**args)["tokens"].numpy()
            ready.set()

    def steps(self, **args):
        """Run `_steps` (see there) through its traced function for these shapes: calling it directly skips the
        tf.function's matching of ~30 arguments (variables among them) against its traces on every call."""
        return self._concrete_step(args)(**args)

    def _concrete_step(self, args):
        key = (args["decoding"].shape[0], args["cache"][0][0].shape)  # every argument's shape follows from these
        if key not in self._concrete:
            self._concrete[key] = self.steps_function.get_concrete_function(**args)
        return self._concrete[key]

    def _trial_args(self, rows, cache):
        """A step's arguments with every row decoding at its last cache slot, on scratch logits and seen: the loop
        body runs (so XLA compiles it) and writes nothing an engine reads. It shares the engine's cache (a scratch
        one would double its memory) while the engine's own calls run: a compiled call holds the variables it uses
        for its whole run, and the slot it writes, the last of each row, is one a request writes before it reads."""
        batch, length = cache[0][0].shape[0], cache[0][0].shape[2]
        if batch not in self._scratch:
            self._scratch[batch] = (
                tf.Variable(tf.zeros([batch, self.vocab_size]), trainable=False),
                tf.Variable(tf.zeros([batch, self.vocab_size], tf.bool), trainable=False),
            )
        logits, seen = self._scratch[batch]
        if (batch, length) not in self._scratch:
            self._scratch[(batch, length)] = tf.Variable(tf.zeros([batch, length], tf.int32), trainable=False)
        zeros = tf.zeros([rows], tf.int32)
        return dict(
            count=tf.constant(1),
            logits=logits,
            seen=seen,
            cache=cache,
            decoding=tf.ones([rows], tf.bool),
            position=zeros + length - 1,
            steps=zeros,
            limit=zeros + 1,
            stop_at_eos=tf.zeros([rows], tf.bool),
            logprobs=tf.zeros([rows], tf.bool),
            row_seeds=tf.zeros([rows, 2], tf.int32),
            temperature=tf.zeros([rows]),
            top_k=zeros,
            top_p=tf.ones([rows]),
            repetition_penalty=tf.ones([rows]),
            history=self._scratch[(batch, length)],
            forced=zeros - 1,
            beam_width=zeros,
            **off_controls(rows),
        )

    # -----------------------------------------------------------------------------------------------------------
    # The engine's prefill and steps, on a cache of variables

    def _prefill(self, tokens, slots, starts, lasts, cache):
        """tokens [rows, chunk]: a chunk of the prompt in each of cache rows `slots`, at slots starts..; the logits
        after each row's token `lasts` [rows, vocab].

        Attention sees each row's slots before its start and, causally, its chunk; the chunk's keys and values are
        written at its start. A slot given twice must come with the same tokens and start (the padding of a batch).
        """
        max_length = cache[0][0].shape[2]
        x, mask = self.embed(tokens, starts, max_length)
        for i, layer_cache in enumerate(cache):
            x = self.prefill_block(x, mask, starts, self.weights[i], layer_cache, slots, None if self._shared else i)
        return self.head(tf.gather(x, lasts[:, None], batch_dims=1))  # [rows, 1, n_embd] -> [rows, vocab]

    def _steps(
        self,
        count,
        logits,
        seen,
        cache,
        decoding,
        position,
        steps,
        limit,
        stop_at_eos,
        logprobs,
        row_seeds,
        temperature,
        top_k,
        top_p,
        repetition_penalty,
        history,
        presence_penalty,
        frequency_penalty,
        bias_ids,
        bias_values,
        no_repeat_ngram_size,
        bad_words,
        min_p,
        typical_p,
        forced,
        beam_width,
    ):
        """`decode_loop` on the first `rows` rows of an engine's variables (rows = decoding's length): the cache is
        updated in place, the logits, seen and history written back. Returns decode_loop's arrays, and for the rows
        of a beam search (`beam_width` > 0) their next continuations (`cand_values`, `cand_ids`: [rows, 2 x the
        widest beam], see `gpt2tf.decode.beams`)."""
        max_length, rows = cache[0][0].shape[2], decoding.shape[0]

        def step_model(token, at, state):
            x, mask = self.embed(token[:, None], at, max_length)
            for layer, layer_cache in enumerate(cache):
                x = self.block(x, mask, at, self.weights[layer], layer_cache, None if self._shared else layer)
            return self.head(x), state

        settings = dict(temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty)
        controls = dict(
            history=history[:rows],
            presence_penalty=presence_penalty,
            frequency_penalty=frequency_penalty,
            bias_ids=bias_ids,
            bias_values=bias_values,
            no_repeat_ngram_size=no_repeat_ngram_size,
            bad_words=bad_words,
            min_p=min_p,
            typical_p=typical_p,
        )
        out = decode_loop(
            step_model,
            (),
            count=count,
            logits=logits[:rows],
            seen=seen[:rows],
            decoding=decoding,
            position=position,
            steps=steps,
            limit=limit,
            stop_at_eos=stop_at_eos,
            logprobs=logprobs,
            row_seeds=row_seeds,
            settings=settings,
            max_length=max_length,
            kernels=self.kernels,
            controls=controls,
            forced=forced,
        )
        logits[:rows].assign(out["logits"])
        tf.cond(reads_history(controls), lambda: history[:rows].assign(out["history"]).op, tf.no_op)
        tf.cond(tf.reduce_any(repetition_penalty != 1.0), lambda: seen[:rows].assign(out["seen"]).op, tf.no_op)
        width = 2 * tf.reduce_max(beam_width)
        values, ids = tf.cond(
            width > 0,
            lambda: self._beam_candidates(
                out["logits"], out["history"], out["position"], no_repeat_ngram_size, bad_words, width
            ),
            lambda: (tf.zeros([rows, 0]), tf.zeros([rows, 0], tf.int32)),
        )
        result = {k: out[k] for k in ("tokens", "chosen", "top_values", "top_ids")}
        return dict(result, cand_values=values, cand_ids=ids)

    def _beam_candidates(self, logits, history, lengths, no_repeat_ngram_size, bad_words, count):
        """Each row's `count` best continuations for a beam search: its log-probabilities with the bans, at most."""
        log_p = beam_log_probs(
            logits,
            history=history,
            lengths=lengths,
            no_repeat_ngram_size=no_repeat_ngram_size,
            bad_words=bad_words,
        )
        return candidates(log_p, count)

    # -----------------------------------------------------------------------------------------------------------
    # The pieces, each compiled by XLA

    def _embed(self, tokens, start, max_length):
        return self.model.embed(tokens, cache_index=start, max_length=max_length)

    def _block_math(self, x, mask, at, weights, keys, values, layer):
        """Block `layer` (or, for alike blocks, block 0 run with `weights`) on x, attending over the cache `keys`,
        `values` (tensors); returns x and the cache with x's keys and values written at `at`."""
        (x, (keys, values)), _ = self.model.h[layer or 0].stateless_call(
            *weights, x, mask, (keys, values), at, kernels=self.kernels
        )
        return x, keys, values

    def _block(self, x, mask, at, weights, cache, layer):
        """The block on one token per row; row r's keys and values are written at slot at[r] of its cache row
        (variables, updated in place)."""
        keys, values = cache
        x, new_keys, new_values = self._block_math(x, mask, at, weights, keys.read_value(), values.read_value(), layer)
        keys.assign(new_keys)
        values.assign(new_values)
        return x

    def _block_tensors(self, x, mask, at, weights, keys, values, layer):
        """The block on a cache of tensors: (x, keys, values), the cache returned updated."""
        return self._block_math(x, mask, at, weights, keys, values, layer)

    def _prefill_block(self, x, mask, starts, weights, cache, slots, layer):
        """The block on a chunk of each of some rows' prompts: cache rows `slots` are read and written, the others
        untouched."""
        keys, values = cache
        # Each row as its request wrote it: slots before its start; the rest is zeroed, so nothing a previous request
        # left there (an inf, say) can reach XLA's attention, which weighs masked slots by 0 (0 * inf is NaN).
        written = tf.reshape(tf.range(keys.shape[2])[None, :] < starts[:, None], [x.shape[0], 1, -1, 1])

        def rows(v):
            return tf.where(written, tf.gather(v.read_value(), slots), tf.zeros([], v.dtype))  # [rows, h, L, d]

        x, new_keys, new_values = self._block_math(x, mask, starts, weights, rows(keys), rows(values), layer)
        for variable, new in ((keys, new_keys), (values, new_values)):
            updated = variable.read_value()
            for r in range(x.shape[0]):  # a static number of rows: one in-place update each
                updated = xla.dynamic_update_slice(updated, new[r : r + 1], tf.stack([slots[r], 0, 0, 0]))
            variable.assign(updated)
        return x

    def _head(self, x):
        """x: [batch, 1, n_embd] after the last block; the logits [batch, vocab]."""
        return self.model.head(x, kernels=self.kernels)[:, 0]

    # -----------------------------------------------------------------------------------------------------------
    # The same pieces on a cache of tensors (a batch of any size: the export)

    def prefill_tensors(self, tokens, lengths, cache):
        """tokens [batch, width] (right-padded), each row written at slots 0..: the logits after each row's last
        token (`lengths` [batch]) and the cache."""
        max_length = tf.shape(cache[0][0])[2]
        x, mask = self.embed(tokens, tf.constant(0), max_length)
        cache = list(cache)
        for i, (keys, values) in enumerate(cache):
            x, *cache[i] = self.block_tensors(x, mask, tf.constant(0), self.weights[i], keys, values, self._layer(i))
        return self.head(tf.gather(x, lengths[:, None] - 1, batch_dims=1)), tuple(map(tuple, cache))

    def step_tensors(self, token, at, cache):
        """One token per row at its own slot `at` [batch]: the next logits [batch, vocab] and the cache."""
        max_length = tf.shape(cache[0][0])[2]
        x, mask = self.embed(token[:, None], at, max_length)
        cache = list(cache)
        for i, (keys, values) in enumerate(cache):
            x, *cache[i] = self.block_tensors(x, mask, at, self.weights[i], keys, values, self._layer(i))
        return self.head(x), tuple(map(tuple, cache))

    def _layer(self, i):
        return None if self._shared else i


def reads_history(controls):
    """Whether any row's controls read its tokens so far (the n-gram and bad-word bans, the penalties)."""
    return (
        tf.reduce_any(controls["no_repeat_ngram_size"] > 0)
        | tf.reduce_any(controls["bad_words"][:, :, -1] >= 0)
        | tf.reduce_any(controls["presence_penalty"] != 0.0)
        | tf.reduce_any(controls["frequency_penalty"] != 0.0)
    )


def off_controls(rows):
    """Every control off for `rows` rows (the trial step's, and a caller's that sets only some)."""
    return dict(
        presence_penalty=tf.zeros([rows]),
        frequency_penalty=tf.zeros([rows]),
        bias_ids=tf.zeros([rows, MAX_LOGIT_BIAS], tf.int32),
        bias_values=tf.zeros([rows, MAX_LOGIT_BIAS]),
        no_repeat_ngram_size=tf.zeros([rows], tf.int32),
        bad_words=tf.fill([rows, MAX_BAD_WORDS, MAX_BAD_WORD_TOKENS], -1),
        min_p=tf.zeros([rows]),
        typical_p=tf.ones([rows]),
    )


_KERAS_WRAPPED = ("build", "quantize")  # methods Keras itself wraps on every layer instance


def _alike(blocks):
    """Whether the blocks compute the same function of their own weights: same layer classes, dtype policies and
    weight names and shapes, and no adapter on a projection (LoRA's adapters hold weights of their own)."""

    def signature(block):
        layers = list(block._flatten_layers())
        adapted = any(getattr(layer, "adapter", None) is not None for layer in layers)
        return (
            adapted,
            [(type(layer), layer.dtype_policy.name) for layer in layers],
            [(w.path.split(block.name + "/", 1)[-1], tuple(w.shape), w.dtype) for w in block.weights],
        )

    first = signature(blocks[0])
    return not first[0] and all(signature(b) == first for b in blocks[1:])


_runners = weakref.WeakKeyDictionary()


def runner_for(model, *, jit_compile=True, kernels=None):
    """The runner of `model` with these settings, built once and reused by every later engine (and export)."""
    per_model = _runners.setdefault(model, {})
    shared = _alike(model.h)  # adapters may be attached later (LoRA)
    key = (jit_compile, None if kernels is None else kernels.name, shared)
    if key not in per_model:
        per_model[key] = Runner(model, jit_compile=jit_compile, kernels=kernels, shared=shared)
    return per_model[key]

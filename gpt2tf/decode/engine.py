"""The decode engine: a fixed set of slots that requests join and leave between steps (continuous batching).

    engine = Engine(model, max_batch=8)                      # max_length defaults to n_ctx
    rid = engine.add(Request(prompt=ids, max_new_tokens=128, temperature=0.8, top_k=40, seed=7))
    for rid, new_ids, finished in engine.step():             # the rows that produced output in this step
        ...

An engine owns a preallocated key/value cache of `max_batch` rows of `max_length` slots, and per row: its
position (tokens written so far), its sampling settings, its seed and noise step, its stop conditions and length
limit. `add` puts a request in a free row; each `step` first prefills one chunk of `PROMPT_BUCKET` tokens of every
prompt not yet in, together, so running rows never wait for more than one chunk; `step` advances every decoding row
by one token in one call whose settings are tensors, so rows with different settings share it and nothing is
retraced. A row's tokens sit at slots 0.. of its own cache row and attention sees exactly those: a request's tokens
do not depend on its row, on the other rows, or on when it joined. `Request(seed=s, sample=j)` gives what
`gpt2tf.decode.generate.generate(..., seed=s)` gives for sample j of that prompt.

The engine is the scheduler: it owns the slots and what each holds, and decides what runs next. What runs is the
model's `gpt2tf.decode.runner.Runner`, shared by every engine of the model: its compiled prefill and its decode loop
(`decode_loop`), given the engine's cache and per-row state as arguments. `kernels=` chooses the kernel backend
the runner passes to the model and the sampler: "auto" (the default) is the native kernels where they load and
`GPT2TF_NATIVE` does not turn them off; None is TensorFlow's own ops; or a backend object.
"""

import dataclasses
import functools
import itertools
import time

import numpy as np
import tensorflow as tf
from tensorflow.compiler.tf2xla.python import xla

from gpt2tf.decode import beams
from gpt2tf.decode.prompts import prompt_ids
from gpt2tf.decode.runner import runner_for
from gpt2tf.decode.stops import StopScanner
from gpt2tf.encoder import get_encoder
from gpt2tf.errors import GPT2TFError
from gpt2tf.layout import EOT_ID, PROMPT_BUCKET
from gpt2tf.settings import (
    BEAM_OFF,
    MAX_BAD_WORD_TOKENS,
    MAX_BAD_WORDS,
    MAX_LOGIT_BIAS,
    MAX_LOGPROBS,
    MAX_SEED,
    STREAM_INTERVAL,
    SamplerConfig,
    check_bad_words,
    check_beams,
    check_logit_bias,
    check_seed,
    random_seed,
)

MAX_INT32 = 2**31 - 1
CHUNK_STEPS = 32  # tokens per row per call when a whole batch is generated (`run`): one call, not 32
MAX_CALL_STEPS = 64  # the most steps an automatic call runs


@dataclasses.dataclass(frozen=True)
class Request:
    """One sequence to generate: a prompt (token ids; empty starts from <|endoftext|>) and how to continue it."""

    prompt: tuple = ()
    max_new_tokens: int = 16
    temperature: float = None  # None: 1.0, or 0 with beams
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int = None  # None: a random one
    sample: int = 0  # the sample number j: with the seed, it keys the noise (see gpt2tf.decode.filters)
    stop: tuple = ()  # strings that end the output (cut before them)
    stop_at_eos: bool = True
    logprobs: int = None  # None: no log-probabilities; n (0..5): each new token's, and the n most likely tokens'
    # The decoding controls (see gpt2tf.decode.filters and docs/inference.md): off by default.
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple = ()  # {token id: bias}, kept as sorted (id, bias) pairs
    no_repeat_ngram_size: int = 0
    bad_words: tuple = ()  # strings and token-id sequences that may never be generated
    min_p: float = 0.0
    typical_p: float = 1.0
    # Beam search (gpt2tf.decode.beams): num_beams > 1 takes that many rows and gives the num_return_sequences best.
    num_beams: int = 1
    num_return_sequences: int = 1
    length_penalty: float = 1.0
    early_stopping: object = False  # True, False or "never" (transformers' meanings)

    def __post_init__(self):
        try:
            prompt = tuple(int(t) for t in self.prompt)
        except (TypeError, ValueError):
            raise GPT2TFError(f"a prompt is a list of token ids, got {self.prompt!r}") from None
        object.__setattr__(self, "prompt", tuple(prompt_ids(prompt)))
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if not all(isinstance(s, str) for s in stop):
            raise GPT2TFError(f"stop must be a string or a list of strings, got {self.stop!r}")
        object.__setattr__(self, "stop", tuple(s for s in stop if s))
        if self.temperature is None:
            object.__setattr__(self, "temperature", 0.0 if _is_count(self.num_beams) and self.num_beams > 1 else 1.0)
        self.sampler()  # temperature, top_k, top_p, the penalties, no_repeat_ngram_size, min_p, typical_p
        bias = self.logit_bias
        bias = check_logit_bias(dict(bias) if isinstance(bias, (tuple, list)) else bias)
        object.__setattr__(self, "logit_bias", tuple(sorted(bias.items())))
        object.__setattr__(self, "bad_words", check_bad_words(self.bad_words))
        check_seed(self.seed)
        if not (
            isinstance(self.max_new_tokens, int)
            and not isinstance(self.max_new_tokens, bool)
            and self.max_new_tokens > 0
        ):
            raise GPT2TFError(f"max_new_tokens must be a positive number of tokens, got {self.max_new_tokens}")
        if not (isinstance(self.sample, int) and 0 <= self.sample <= MAX_SEED):
            raise GPT2TFError(f"sample must be a whole number from 0 to {MAX_SEED}, got {self.sample}")
        if self.logprobs is not None and not (
            isinstance(self.logprobs, int)
            and not isinstance(self.logprobs, bool)
            and 0 <= self.logprobs <= MAX_LOGPROBS
        ):
            raise GPT2TFError(f"logprobs must be a whole number from 0 to {MAX_LOGPROBS}, got {self.logprobs}")
        self._check_beams()

    def _check_beams(self):
        check_beams(
            self.num_beams,
            self.num_return_sequences,
            self.length_penalty,
            self.early_stopping,
            **{name: getattr(self, name) for name in BEAM_OFF},
        )
        if self.num_beams != 1 and (self.stop or self.logprobs is not None):
            name = "stop strings" if self.stop else "logprobs"
            raise GPT2TFError(f"beam search does not take {name}: drop them, or use num_beams 1")

    @property
    def rows(self):
        """The engine rows the request takes: one, or one per beam."""
        return self.num_beams

    def sampler(self):
        """The numeric sampling settings and controls, checked."""
        return SamplerConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(SamplerConfig)})

    @property
    def needs_history(self):
        """Whether the row's choices read its tokens so far (the n-gram and bad-word bans, the penalties)."""
        return bool(self.no_repeat_ngram_size or self.bad_words or self.presence_penalty or self.frequency_penalty)


class Output(tuple):
    """What `step` gives for a request: `(rid, new_ids, finished)`, finished being False or why it ended ("stop": at
    <|endoftext|> or a stop string; "length": after max_new_tokens). With `Request(logprobs=n)`, `.logprobs` holds a
    `(token's log-probability, {token id: log-probability} of the n most likely)` pair for each new id. A beam
    request gives one Output when its search ends: `ids` the best hypothesis, `.beams` the num_return_sequences best
    as `(ids, score, finished)`, best first (score: transformers' sequences_scores)."""

    def __new__(cls, rid, ids, finished, logprobs=None, beams=None):
        output = super().__new__(cls, (rid, ids, finished))
        output.logprobs = logprobs
        output.beams = beams
        return output

    rid = property(lambda self: self[0])
    ids = property(lambda self: self[1])
    finished = property(lambda self: self[2])


# A free row's settings: plain greedy, every control off.
_IDLE = dict(
    temperature=0.0,
    top_k=0,
    top_p=1.0,
    repetition_penalty=1.0,
    presence_penalty=0.0,
    frequency_penalty=0.0,
    no_repeat_ngram_size=0,
    min_p=0.0,
    typical_p=1.0,
)
_INTEGER_SETTINGS = ("top_k", "no_repeat_ngram_size")


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool)


@dataclasses.dataclass
class _Row:
    """A request in a slot: what is prefilled, generated and already given out."""

    rid: int
    request: Request
    seed: int
    prefilled: int = 0  # prompt tokens in the cache
    generated: list = dataclasses.field(default_factory=list)
    logprobs: list = dataclasses.field(default_factory=list)  # per generated token, with Request(logprobs=n)
    emitted: int = 0  # generated tokens already returned by `step`
    stops: StopScanner = None  # with Request(stop=...)
    bad_words: list = dataclasses.field(default_factory=list)  # the request's bad words as token-id sequences
    group: object = None  # a beam request's rows share their _BeamGroup


@dataclasses.dataclass
class _BeamGroup:
    """A beam request's search: its rows (beam i in rows[i]) and the search's state (gpt2tf.decode.beams)."""

    rows: list
    state: dict = None  # None until the prompt is in and the first step is chosen
    sequences: list = None  # each running beam's tokens so far (what its row's cache holds after the prompt)


class Engine:
    """Slots that requests join and leave between steps; see the module docstring."""

    def __init__(
        self,
        model,
        max_batch=8,
        *,
        max_length=None,
        jit_compile=True,
        encoder=None,
        kernels="auto",
        runner=None,
        backend=None,
        stream_interval=STREAM_INTERVAL,
    ):
        """`runner` stands in for the model's runner (tests drive the engine with a scripted one): anything with
        `cache_variables`, `prefill`, `steps`, `prepare`, `compiling` and `ready_bucket` as `Runner` has them
        (`backend`, its name before the decode package, is taken too)."""
        runner = runner or backend
        n_ctx = model.hparams.n_ctx
        if not (isinstance(max_batch, int) and max_batch > 0):
            raise GPT2TFError(f"max_batch must be a positive integer, got {max_batch}")
        max_length = n_ctx if max_length is None else max_length
        if not (isinstance(max_length, int) and 2 <= max_length <= n_ctx):
            raise GPT2TFError(f"max_length must be from 2 to the model's context of {n_ctx}, got {max_length}")
        if not (isinstance(stream_interval, (int, float)) and stream_interval >= 0):
            raise GPT2TFError(f"stream_interval must be a number of seconds >= 0, got {stream_interval!r}")
        self.model, self.max_batch, self.max_length = model, max_batch, max_length
        self.encoder, self.stream_interval = encoder, stream_interval
        self._step_seconds = {}  # rows run -> seconds per step of the last call on that many rows
        if kernels == "auto":
            kernels = default_kernels(jit_compile)
        self._runner = runner or runner_for(model, jit_compile=jit_compile, kernels=kernels)
        vocab = model.hparams.n_vocab
        self._cache = self._runner.cache_variables(max_batch, max_length)
        self._logits = tf.Variable(tf.zeros([max_batch, vocab]), trainable=False)
        self._seen = tf.Variable(tf.zeros([max_batch, vocab], tf.bool), trainable=False)
        # Each row's tokens so far (prompt and output, at the slots of its cache), written only for rows whose
        # controls read them (Request.needs_history).
        self._history = tf.Variable(tf.zeros([max_batch, max_length], tf.int32), trainable=False)
        # Per-row settings and positions live here and go to each step as small tensors.
        self._settings = {
            name: np.full(max_batch, value, np.int32 if name in _INTEGER_SETTINGS else np.float32)
            for name, value in _IDLE.items()
        }
        self._bias_ids = np.zeros([max_batch, MAX_LOGIT_BIAS], np.int32)
        self._bias_values = np.zeros([max_batch, MAX_LOGIT_BIAS], np.float32)
        self._bad_words = np.full([max_batch, MAX_BAD_WORDS, MAX_BAD_WORD_TOKENS], -1, np.int32)  # right-aligned
        self._forced = np.full(max_batch, -1, np.int32)  # a beam row's next token, chosen by its search (-1: none)
        self._beam_width = np.zeros(max_batch, np.int32)  # a beam row's num_beams (0: not a beam row)
        self._row_seeds = np.zeros([max_batch, 2], np.int32)
        self._steps = np.zeros(max_batch, np.int32)  # tokens generated so far: the noise's step
        self._position = np.zeros(max_batch, np.int32)  # slots written so far
        self._limit = np.ones(max_batch, np.int32)  # max_new_tokens
        self._stop_at_eos = np.zeros(max_batch, bool)
        self._logprobs = np.zeros(max_batch, bool)  # whether the row's request wants log-probabilities
        self._decoding = np.zeros(max_batch, bool)
        self._rows = [None] * max_batch  # slot -> _Row
        self._ids = itertools.count()
        # A step runs only the first b rows, b the smallest of these that holds every decoding row: with few
        # requests it costs what a small batch costs. Rows move down when that lets a smaller b serve.
        self._buckets = sorted({min(2**i, max_batch) for i in range(max_batch.bit_length() + 1)})

    # -----------------------------------------------------------------------------------------------------------
    # Joining and leaving

    @property
    def active(self):
        """How many requests hold a slot (being prefilled or decoding)."""
        return sum(row is not None for row in self._rows)

    @property
    def free_slots(self):
        return self.max_batch - self.active

    def add(self, request):
        """Put `request` in a free slot (the next `step` prefills its prompt); returns its id.

        Raises GPT2TFError when no slot is free (queue the request and add it after a step frees one), or when the
        prompt does not fit.
        """
        if not isinstance(request, Request):
            raise GPT2TFError(f"add takes a Request, got {type(request).__name__}")
        self.check(request)
        slots = [s for s, row in enumerate(self._rows) if row is None][: request.rows]
        if not slots:
            raise GPT2TFError(
                f"no free slot: all {self.max_batch} are in use; add the request after a step "
                f"finishes one (or cancel one)"
            )
        if len(slots) < request.rows:
            raise GPT2TFError(
                f"not enough free slots: num_beams {request.num_beams} needs {request.rows} and {len(slots)} are "
                f"free; add the request after steps finish others (or cancel some)"
            )
        if request.stop and self.encoder is None:
            self.encoder = get_encoder()
        rid, seed, bad_words = next(self._ids), request.seed, self.bad_word_ids(request)
        rows = [
            _Row(
                rid,
                request,
                seed if seed is not None else random_seed(),
                stops=StopScanner(self.encoder, request.stop) if request.stop else None,
                bad_words=bad_words,
            )
            for _ in slots
        ]
        if request.num_beams > 1:
            group = _BeamGroup(rows)
            for row in rows:
                row.group = group
        for slot, row in zip(slots, rows):
            self._rows[slot] = row
        return rid

    def warm_up(self):
        """Compile the prefill and the step for every number of rows a call may run, now (seconds in all), so that
        no request ever waits for a compilation; for a server, before the first request."""
        if self.active:
            raise GPT2TFError("warm_up runs before any request is added")
        chunk = min(PROMPT_BUCKET, self.max_length)
        for rows in self._buckets:  # every slot is free: what these write is overwritten by a request's prefill
            zeros = tf.zeros([rows], tf.int32)
            self._runner.prefill(tf.zeros([rows, chunk], tf.int32), tf.range(rows), zeros, zeros, self._cache).numpy()
            self._runner.prepare(rows, self._cache)
        for rows in self._buckets:
            self._runner.ready_bucket(rows, [rows], self._cache)

    def check(self, request, *, name="the prompt"):
        """A GPT2TFError if `request` cannot run on this engine's model and length (`name`: the prompt's, in it)."""
        vocab = self.model.hparams.n_vocab
        outside = [t for t in request.prompt if not 0 <= t < vocab]
        if outside:  # XLA's gather would clamp them to a real token: a silently different prompt
            raise GPT2TFError(
                f"{name} holds token id {outside[0]}, outside the model's vocabulary of {vocab} ids (0..{vocab - 1})"
            )
        if request.rows > self.max_batch:
            raise GPT2TFError(
                f"num_beams {request.num_beams} needs {request.rows} rows; this engine has {self.max_batch} "
                f"(raise max_batch, or --batch_size)"
            )
        outside = [t for t, _ in request.logit_bias if t >= vocab]
        if outside:
            raise GPT2TFError(
                f"logit_bias names token id {outside[0]}, outside the model's vocabulary of {vocab} ids "
                f"(0..{vocab - 1})"
            )
        self.bad_word_ids(request)
        if len(request.prompt) + request.max_new_tokens > self.max_length:
            raise GPT2TFError(
                f"{name} has {len(request.prompt)} tokens; with {request.max_new_tokens} new tokens "
                f"that exceeds the {self.max_length} this engine holds (the model's context is "
                f"{self.model.hparams.n_ctx}): shorten the prompt or the output"
            )

    def bad_word_ids(self, request):
        """The token-id sequences `request.bad_words` bans (see `bad_word_sequences`)."""
        if request.bad_words and any(isinstance(w, str) for w in request.bad_words):
            self.encoder = self.encoder or get_encoder()
        return bad_word_sequences(request.bad_words, self.encoder, self.model.hparams.n_vocab)

    def cancel(self, rid):
        """Free the slot of request `rid` (nothing happens if it has already finished)."""
        for slot, row in enumerate(self._rows):
            if row is not None and row.rid == rid:
                self._free(slot)

    def _free(self, slot):
        self._rows[slot] = None
        self._decoding[slot] = self._logprobs[slot] = False  # a free row costs the step nothing
        for name, value in self._settings.items():
            value[slot] = _IDLE[name]
        self._bias_ids[slot], self._bias_values[slot], self._bad_words[slot] = 0, 0.0, -1
        self._forced[slot], self._beam_width[slot] = -1, 0

    # -----------------------------------------------------------------------------------------------------------
    # Prefill and step

    def _prefill_chunks(self, slots):
        """Prefill the next chunk of the prompt in each of `slots`, in one call; a row whose prompt is all in
        starts decoding."""
        chunk = min(PROMPT_BUCKET, self.max_length)
        tokens = np.zeros([len(slots), chunk], np.int32)  # padding after a prompt: its slots are written before read
        starts, lasts = np.zeros(len(slots), np.int32), np.zeros(len(slots), np.int32)
        for i, slot in enumerate(slots):
            row = self._rows[slot]
            # A last chunk that would run past the cache ends at its end instead; the tokens it repeats are computed
            # again from the same cache and give the same keys and values.
            starts[i] = min(row.prefilled, self.max_length - chunk)
            piece = row.request.prompt[starts[i] : starts[i] + chunk]
            tokens[i, : len(piece)], lasts[i] = piece, len(piece) - 1
        rows = self._bucket(len(slots))
        pad = [len(slots) - 1] * (rows - len(slots))  # the batch's row count in buckets: the last row repeated
        logits = self._runner.prefill(
            tf.constant(np.concatenate([tokens, tokens[pad]])),
            tf.constant(np.array(list(slots) + [slots[-1]] * len(pad), np.int32)),
            tf.constant(np.concatenate([starts, starts[pad]])),
            tf.constant(np.concatenate([lasts, lasts[pad]])),
            self._cache,
        )
        for i, slot in enumerate(slots):
            row = self._rows[slot]
            row.prefilled = int(starts[i] + lasts[i] + 1)
            if row.prefilled >= len(row.request.prompt):
                self._start_decoding(slot, logits[i])

    def _start_decoding(self, slot, logits):
        row, request = self._rows[slot], self._rows[slot].request
        seen = np.zeros(self.model.hparams.n_vocab, bool)
        seen[list(request.prompt)] = True
        self._logits[slot].assign(logits)
        self._seen[slot].assign(seen)
        if request.needs_history:
            self._history[slot, : len(request.prompt)].assign(request.prompt)
        for name, value in self._settings.items():
            value[slot] = getattr(request, name)
        for i, (token, bias) in enumerate(request.logit_bias):
            self._bias_ids[slot, i], self._bias_values[slot, i] = token, bias
        for i, ids in enumerate(row.bad_words):
            self._bad_words[slot, i, MAX_BAD_WORD_TOKENS - len(ids) :] = ids
        self._row_seeds[slot] = (row.seed, request.sample)
        self._steps[slot], self._position[slot] = 0, len(request.prompt)
        self._limit[slot], self._stop_at_eos[slot] = request.max_new_tokens, request.stop_at_eos
        self._logprobs[slot] = request.logprobs is not None
        if row.group is not None:  # its search chooses its tokens and ends it
            self._beam_width[slot], self._limit[slot], self._stop_at_eos[slot] = request.num_beams, MAX_INT32, False
        self._decoding[slot] = True

    def _bucket(self, rows):
        return next(b for b in self._buckets if b >= rows)

    def _compact(self):
        """Move the highest rows down into free slots while that lets a smaller bucket hold them all."""
        while True:
            used = [s for s, row in enumerate(self._rows) if row is not None]
            free = [s for s, row in enumerate(self._rows) if row is None]
            if not used or not free or free[0] > used[-1] or self._bucket(len(used)) >= self._bucket(used[-1] + 1):
                return
            self._move(used[-1], free[0])

    def _move(self, source, target):
        for variable in [self._logits, self._seen, self._history] + [v for layer in self._cache for v in layer]:
            variable[target].assign(variable[source])
        for array in (
            *self._settings.values(),
            self._row_seeds,
            self._bias_ids,
            self._bias_values,
            self._bad_words,
            self._forced,
            self._beam_width,
            self._steps,
            self._position,
            self._limit,
            self._stop_at_eos,
            self._logprobs,
            self._decoding,
        ):
            array[target] = array[source]
        self._rows[target] = self._rows[source]
        self._free(source)

    def _step_args(self, rows):
        return dict(
            logits=self._logits,
            seen=self._seen,
            cache=self._cache,
            decoding=tf.constant(self._decoding[:rows]),
            position=tf.constant(self._position[:rows]),
            steps=tf.constant(self._steps[:rows]),
            limit=tf.constant(self._limit[:rows]),
            stop_at_eos=tf.constant(self._stop_at_eos[:rows]),
            logprobs=tf.constant(self._logprobs[:rows]),
            row_seeds=tf.constant(self._row_seeds[:rows]),
            history=self._history,
            bias_ids=tf.constant(self._bias_ids[:rows]),
            bias_values=tf.constant(self._bias_values[:rows]),
            bad_words=tf.constant(self._bad_words[:rows]),
            forced=tf.constant(self._forced[:rows]),
            beam_width=tf.constant(self._beam_width[:rows]),
            **{name: tf.constant(value[:rows]) for name, value in self._settings.items()},
        )

    def step(self, steps=1, *, queued=0):
        """Advance every decoding row by `steps` tokens in one call (after prefilling one more chunk of every prompt
        not yet in).

        Returns `[(rid, new_ids, finished)]` for the rows that produced output or finished. A row ends at
        <|endoftext|> (not included; with `stop_at_eos`), after `max_new_tokens`, or before a stop string (ids are
        held back while they may be the start of one); a finished row's slot is free for the next `add`. Requests
        join and leave only between calls; the call ends early once every row has ended.

        `steps=None` chooses how many (multi-step scheduling, see `auto_steps`): one while a prompt is being
        prefilled or a row has yet to give its first token, else as many as the rows still need and run within
        `stream_interval` seconds. `queued`: requests waiting for a slot, which then end the call by when the first
        row reaches its length.
        """
        self._compact()
        # (A beam request's prompt is prefilled in its first row and copied to the others: `_start_searches`.)
        waiting = [
            s
            for s, row in enumerate(self._rows)
            if row is not None and not self._decoding[s] and (row.group is None or row is row.group.rows[0])
        ]
        if waiting:
            # The step these rows will run in, compiled (if it is not) while their prompts are prefilled: only the
            # one the slots in use need, not one for each row as it was added (a batch would compile every bucket
            # below its own, on the cores its steps run on).
            used = max(s for s, row in enumerate(self._rows) if row is not None)
            self._runner.prepare(self._bucket(used + 1), self._cache)
            self._prefill_chunks(waiting)
        results = self._start_searches()
        if not self._decoding.any():
            return results
        rows = self._runner.ready_bucket(
            self._bucket(int(np.flatnonzero(self._decoding)[-1]) + 1), self._buckets, self._cache
        )
        if steps is None:
            steps = self.auto_steps(rows, queued=queued)
        if self._beam_width[:rows].any():
            steps = 1  # a search chooses its next tokens between steps
        started = time.perf_counter()
        out = self._runner.steps(count=tf.constant(steps), **self._step_args(rows))
        tokens = out["tokens"].numpy()  # [run, rows]
        if len(tokens):
            self._step_seconds[rows] = (time.perf_counter() - started) / len(tokens)
        if self._logprobs[:rows].any():
            chosen, top_values, top_ids = (out[k].numpy() for k in ("chosen", "top_values", "top_ids"))
        searches = {}
        for slot in np.flatnonzero(self._decoding):
            row = self._rows[slot]
            if row.group is not None:  # one token, the one its search chose
                self._steps[slot] += len(tokens)
                self._position[slot] += len(tokens)
                searches[id(row.group)] = row.group
                continue
            ids, finished, first = [], False, row.emitted
            for t, token in enumerate(tokens[:, slot]):
                self._steps[slot] += 1
                self._position[slot] += 1
                if row.request.logprobs is not None:
                    n = row.request.logprobs
                    row.logprobs.append(
                        (
                            float(chosen[t, slot]),
                            {int(i): float(v) for i, v in zip(top_ids[t, slot, :n], top_values[t, slot, :n])},
                        )
                    )
                new, finished = self._advance(row, int(token))
                ids += new
                if finished:
                    self._free(slot)
                    break
            if ids or finished:
                lp = row.logprobs[first : first + len(ids)] if row.request.logprobs is not None else None
                results.append(Output(row.rid, ids, finished, lp))
        if searches:
            values, ids = out["cand_values"].numpy(), out["cand_ids"].numpy()
            for group in searches.values():
                slots = [self._slot(row) for row in group.rows]
                results += self._search_step(group, values[slots], ids[slots])
        return results

    # -----------------------------------------------------------------------------------------------------------
    # Beam search: a request's beams are rows whose tokens its search (gpt2tf.decode.beams) chooses between steps

    def _slot(self, row):
        return next(s for s, r in enumerate(self._rows) if r is row)

    def _start_searches(self):
        """The first step of every search whose prompt is all in (in its first row: copied to the others now),
        chosen from the prompt's logits."""
        results = []
        for group in {id(r.group): r.group for r in self._rows if r is not None and r.group is not None}.values():
            slots = [self._slot(row) for row in group.rows]
            if group.state is not None or not self._decoding[slots[0]]:
                continue
            request = group.rows[0].request
            for slot in slots[1:]:
                self._start_decoding(slot, self._logits[slots[0]])
            source = tf.constant([slots[0]] * len(slots), tf.int32)
            _copy_window(self._cache, source, tf.constant(slots, tf.int32), 0, len(request.prompt))
            if request.needs_history:
                self._history.scatter_nd_update(tf.constant(slots)[:, None], tf.gather(self._history, source))
            group.state = beams.beam_init(1, request.num_beams, request.max_new_tokens)
            group.sequences = [[] for _ in slots]
            values, ids = self._runner.beam_candidates(
                tf.gather(self._logits, slots),
                tf.gather(self._history, slots),
                tf.constant(self._position[slots]),
                tf.constant(self._settings["no_repeat_ngram_size"][slots]),
                tf.constant(self._bad_words[slots]),
                2 * request.num_beams,
            )
            results += self._search_step(group, values.numpy(), ids.numpy())
        return results

    def _search_step(self, group, values, ids):
        """Advance `group`'s search by the candidates its rows' logits give ([K, C] each); either it ends (its Output)
        or each beam's next token is set and the rows take the caches (and histories) of the beams they continue."""
        request = group.rows[0].request
        step = beams.compiled_step(
            request.max_new_tokens, float(request.length_penalty), request.early_stopping, request.stop_at_eos
        )
        group.state, parents, tokens, done = step(group.state, tf.constant(values[None]), tf.constant(ids[None]))
        if bool(done[0]):
            best = beams.results(group.state, request.num_return_sequences, request.stop_at_eos)[0]
            for row in group.rows:
                self._free(self._slot(row))
            return [Output(group.rows[0].rid, best[0][0], best[0][2], beams=best)]
        parents, tokens = parents.numpy()[0], tokens.numpy()[0]
        # Beam i continues beam parents[i]: the first child of a beam takes over its row as it is; another child
        # takes the row of a beam that has none, which copies the parent's cache (and history) from where their
        # tokens first differ. Rows are relabelled, not moved: a step copies only what a beam's second child needs.
        old_rows, old = group.rows, group.sequences
        rows, spare, taken = [None] * len(parents), [], set()
        for i, p in enumerate(parents):
            if p not in taken:
                rows[i] = old_rows[p]
                taken.add(p)
        free = [j for j in range(len(parents)) if j not in taken]
        for i, p in enumerate(parents):
            if rows[i] is None:
                j = free.pop()
                rows[i] = old_rows[j]
                spare.append((self._slot(old_rows[p]), self._slot(old_rows[j]), _common_prefix(old[j], old[p])))
        first = min((x[2] for x in spare), default=len(old[0]))
        if first < len(old[0]):  # (at the first step every row holds the same prompt and nothing else)
            spare += [spare[0]] * (len(parents) - 1 - len(spare))  # a fixed number of pairs: one compiled copy
            source, target = (tf.constant(np.array(x, np.int32)) for x in list(zip(*spare))[:2])
            _copy_window(self._cache, source, target, len(request.prompt) + first, len(old[0]) - first)
            if request.needs_history:
                self._history.scatter_nd_update(target[:, None], tf.gather(self._history, source))
        group.rows = rows
        group.sequences = [old[p] + [int(t)] for p, t in zip(parents, tokens)]
        slots = [self._slot(row) for row in rows]
        self._forced[slots] = tokens
        return []

    def auto_steps(self, rows=None, *, queued=0):
        """How many steps the next call runs when it may choose (`step(None)`): 1 while a prompt is being prefilled
        (its chunks go one per call, beside the running rows' tokens) or a decoding row has yet to give its first
        token (so the time to the first token is one step's); else as many as fit in `stream_interval` seconds at
        the last call's speed on `rows` rows (at most MAX_CALL_STEPS), and no more than the longest row still needs
        (with `queued` requests waiting for a slot: than the shortest, so a slot frees when the call ends).

        A request that arrives during a call waits for it to end: at most `stream_interval`, or one step where a
        step takes longer, plus the time it takes to prefill its prompt.
        """
        decoding = np.flatnonzero(self._decoding)
        if len(decoding) == 0 or self.active > len(decoding):
            return 1
        if any(not self._rows[s].generated for s in decoding) or self._beam_width[decoding].any():
            return 1  # (a search chooses its tokens between steps)
        rows = rows or self._bucket(int(decoding[-1]) + 1)
        seconds = self._step_seconds.get(rows)
        if seconds is None or seconds <= 0:
            return 1
        remaining = self._limit[decoding] - self._steps[decoding]
        need = int(remaining.min() if queued else remaining.max())
        return max(1, min(need, MAX_CALL_STEPS, int(self.stream_interval / seconds)))

    def _advance(self, row, token):
        """Take one new token for `row`: (the ids it may give out now, False or why it finished)."""
        request = row.request
        row.generated.append(token)
        new = row.generated
        eos = request.stop_at_eos and token == EOT_ID
        end = len(new) - 1 if eos else len(new)
        finished = "stop" if eos else "length" if len(new) >= request.max_new_tokens else False
        if row.stops is not None and not eos:
            cut = row.stops.add(token)
            if cut is not None:
                end, finished = cut, "stop"
            elif not finished:
                end = row.stops.safe_end()  # hold back what may be a stop string's beginning
        ids = new[row.emitted : end] if end > row.emitted else []
        row.emitted = max(row.emitted, end)
        return ids, finished

    def run(self, requests, *, steps=CHUNK_STEPS):
        """Generate every request, adding each as slots free; yields `(index, new_ids, finished)` Outputs as `step`
        does, with the request's index in `requests` in place of its id. `steps`: tokens per row per call (None:
        chosen per call, as `step(None)` does, for output streamed as it comes)."""
        pending = list(enumerate(requests))[::-1]
        index_of = {}
        while pending or self.active:
            while pending and self.free_slots >= pending[-1][1].rows:
                i, request = pending.pop()
                index_of[self.add(request)] = i
            for output in self.step(steps, queued=len(pending)):
                yield Output(index_of[output.rid], output.ids, output.finished, output.logprobs, output.beams)


def _common_prefix(a, b):
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


@functools.lru_cache(maxsize=64)
def _window_copy(width):
    """A compiled copy of `width` slots of cache rows (see `_copy_window`)."""

    def copy(variables, source, target, start):
        for variable in variables:
            value = variable.read_value()
            shape = [1, value.shape[1], width, value.shape[3]]
            pieces = [xla.dynamic_slice(value, tf.stack([s, 0, start, 0]), shape) for s in tf.unstack(source)]
            for t, piece in zip(tf.unstack(target), pieces):  # every read before any write
                value = xla.dynamic_update_slice(value, piece, tf.stack([t, 0, start, 0]))
            variable.assign(value)

    return tf.function(copy, autograph=False, jit_compile=True)


def _copy_window(cache, source, target, start, count):
    """Rows target[i] of the cache take slots start..start+count of rows source[i] (a beam search's rows, as each
    continues another beam: only where their tokens differ). The width is rounded up to a power of two (>= 8), one
    compiled copy per width; XLA writes those slots in place."""
    length = cache[0][0].shape[2]
    width = min(max(8, 1 << (count - 1).bit_length()), length)
    start = tf.constant(min(start, length - width), tf.int32)
    _window_copy(width)([v for layer in cache for v in layer], source, target, start)


def bad_word_sequences(words, encoder, n_vocab):
    """The token-id sequences bad words ban: a sequence as given; a string as it encodes and, unless it starts with a
    space, as it encodes after one (" word" is how a word mostly appears in GPT-2's tokens; vLLM's rule). Checked:
    ids in the vocabulary, at most MAX_BAD_WORD_TOKENS tokens each and MAX_BAD_WORDS sequences in all."""
    sequences = []
    for word in words:
        if isinstance(word, str):
            forms = [word] if word.startswith(" ") else [word, " " + word]
            candidates = [tuple(encoder.encode(form)) for form in forms]
        else:
            candidates = [tuple(word)]
        for ids in candidates:
            if any(t >= n_vocab for t in ids):
                raise GPT2TFError(
                    f"bad_words holds token id {max(ids)}, outside the model's vocabulary of {n_vocab} ids "
                    f"(0..{n_vocab - 1})"
                )
            if len(ids) > MAX_BAD_WORD_TOKENS:
                raise GPT2TFError(
                    f"bad word {word!r} is {len(ids)} tokens long; at most {MAX_BAD_WORD_TOKENS} are allowed"
                )
            if ids not in sequences:
                sequences.append(ids)
    if len(sequences) > MAX_BAD_WORDS:
        raise GPT2TFError(
            f"bad_words gives {len(sequences)} token sequences, more than the {MAX_BAD_WORDS} a request may ban "
            f"(a string counts twice: with and without a leading space)"
        )
    return sequences


def default_kernels(jit_compile=True):
    """The kernel backend an engine uses unless told: the native kernels where they load (inside XLA only) and
    `GPT2TF_NATIVE` does not turn them off, else None (TensorFlow's own ops)."""
    from gpt2tf.kernels import native  # builds the kernels on first use: only when an engine asks

    return native.load() if jit_compile and native.requested() else None

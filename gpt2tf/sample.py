"""Decoding: logit filters as pure functions over float32 logits, and one cached decode loop compiled by XLA.

Order of the filters, as in OpenAI's `sample.py`: repetition penalty → temperature → top-k → top-p → draw.

- temperature 0 means greedy (argmax); otherwise logits are divided by it.
- top-k (0 = off) keeps the tokens whose logit is at least the k-th largest (OpenAI's rule: ties with the k-th
  are kept).
- top-p (1.0 = off) is nucleus sampling: walking the tokens from most to least probable, a token is kept while the
  mass of the tokens *before* it is still below p — the smallest set whose mass reaches p, **the token that crosses
  p included** (nshepperd's, gpt-2-simple's and keras-hub's rule; OpenAI's own code drops the crossing token). The
  most probable token is always kept; tokens tied with the last kept one are kept too.
- repetition penalty (1.0 = off) is CTRL's: every token already present in the row (prompt or output) has its logit
  divided by the penalty if positive, multiplied by it if negative — so a penalty > 1 always makes repeats less likely.
- The draw is Gumbel-max (argmax of logits plus Gumbel noise), an exact sample from softmax(logits). The noise of
  each row comes from a stateless generator keyed by (seed, sample number j, step): the j-th sample of a prompt
  depends only on the seed, the prompt and j — the same on every call, in every process, whatever the batch size
  or the other prompts in the batch.

The loop: prompts are left-padded to a bucketed length, prefilled into a preallocated key/value cache in one pass,
then decoded in chunks of steps by a graph-mode while loop whose model step runs compiled by XLA
(`tf.function(jit_compile=True)`: one compiled block, run for every layer with that layer's weights, between a
compiled embedding and head); between chunks Python checks stop strings, streams text and exits early once every
row has stopped. Shapes depend only on the batch size and the buckets, so new prompts and new calls reuse the
compiled functions.
"""

import threading
import types
import weakref

import numpy as np
import tensorflow as tf

from gpt2tf import native
from gpt2tf.encoder import get_encoder
from gpt2tf.errors import GPT2TFError
from gpt2tf.settings import SamplerConfig, check_seed, random_seed  # noqa: F401  (sample's API)

EOT_ID = 50256  # <|endoftext|>: OpenAI's end of text, and the start of an empty prompt
MASKED_LOGIT = -1e10  # what OpenAI's top_k_logits writes into filtered logits
PROMPT_BUCKET = 64  # prompt lengths are padded up to a multiple of this, to reuse compiled functions
CHUNK_STEPS = 32  # decode steps per compiled call between stop-string checks (1 when streaming)


# ---------------------------------------------------------------------------------------------------------------
# Logit filters: pure functions, float32 logits [batch, vocab] in and out.

def top_k_logits(logits, k):
    """Keep logits >= the k-th largest of their row (k=0: all); the rest become -1e10."""
    if k == 0 or k >= logits.shape[-1]:  # k >= vocabulary keeps every token
        return logits
    kth = tf.math.top_k(logits, k=k, sorted=True).values[:, -1:]  # [batch, 1]
    return tf.where(logits < kth, MASKED_LOGIT, logits)


def top_p_logits(logits, p):
    """Keep the smallest most-probable set whose probability mass reaches p (crossing token included)."""
    if p >= 1.0:
        return logits
    return _nucleus(logits, tf.sort(logits, axis=-1, direction="DESCENDING"), p)


def _nucleus(logits, top_values, p):
    """Top-p given the row's largest logits in descending order (all of them, or the top k after top-k)."""
    # Probabilities are normalised over the whole row; after top-k the masked entries add exp(-1e10) = 0, so
    # sorting only the k survivors gives the same threshold as sorting the whole vocabulary, at a fraction of the cost.
    probs = tf.exp(top_values - tf.reduce_logsumexp(logits, axis=-1, keepdims=True))  # [batch, n]
    mass_before = tf.math.cumsum(probs, axis=-1, exclusive=True)
    kept = tf.reduce_sum(tf.cast(mass_before < p, tf.int32), axis=-1, keepdims=True)  # >= 1: mass_before[0] = 0
    threshold = tf.gather(top_values, kept - 1, batch_dims=1)  # [batch, 1]: the last kept logit
    return tf.where(logits < threshold, MASKED_LOGIT, logits)


def apply_repetition_penalty(logits, seen, penalty):
    """CTRL's penalty on tokens already in the row (`seen`: bool [batch, vocab])."""
    if penalty == 1.0:
        return logits
    penalized = tf.where(logits > 0, logits / penalty, logits * penalty)
    return tf.where(seen, penalized, logits)


def filter_logits(logits, seen, config):
    """All of the configured filters, in OpenAI's order; greedy decoding needs only the penalty."""
    logits = apply_repetition_penalty(logits, seen, config.repetition_penalty)
    if config.greedy:
        return logits
    logits = logits / config.temperature
    if config.top_k == 0 or config.top_k >= logits.shape[-1]:  # k >= vocabulary keeps every token
        return top_p_logits(logits, config.top_p)
    top_values = tf.math.top_k(logits, k=config.top_k, sorted=True).values  # [batch, k], descending
    logits = tf.where(logits < top_values[:, -1:], MASKED_LOGIT, logits)  # = top_k_logits, reusing the values
    return logits if config.top_p >= 1.0 else _nucleus(logits, top_values, config.top_p)


def gumbel_noise(row_seeds, step, vocab_size):
    """Gumbel(0, 1) noise [batch, vocab], each row from its own stateless stream keyed by (row seed, step)."""
    rows = []
    for row in range(row_seeds.shape[0]):  # static batch size: unrolled, each row independent of the others
        seed = tf.random.experimental.stateless_fold_in(row_seeds[row], step)
        uniform = tf.random.stateless_uniform([vocab_size], seed=seed, minval=np.finfo(np.float32).tiny, maxval=1.0)
        rows.append(-tf.math.log(-tf.math.log(uniform)))
    return tf.stack(rows)


def choose_tokens(logits, seen, row_seeds, step, config):
    """The next token of every row: int32 [batch]."""
    logits = filter_logits(logits, seen, config)
    if not config.greedy:
        logits = logits + gumbel_noise(row_seeds, step, logits.shape[-1])
    return tf.argmax(logits, axis=-1, output_type=tf.int32)


# ---------------------------------------------------------------------------------------------------------------
# The compiled decode loop

class Decoder:
    """The prefill, model step and decode-chunk functions for one model and sampler config (`decoder_for`).

    The model runs as compiled pieces: the embedding, one block (run for each layer with its weights and cache as
    arguments) and the head, each compiled by XLA once per shape; the prefill calls them eagerly at the prompt's
    shape, the decode step from inside the graph loop at one token. The sampling ops (top-k, sort, random) run as
    ordinary TensorFlow kernels inside that loop, because XLA's CPU lowering of TopK/Sort and of the random
    generator is much slower than TensorFlow's kernels.
    """

    def __init__(self, model, config, *, eos_id, jit_compile=True, use_native=True, shared=None):
        self.model, self.config, self.eos_id = model, config, eos_id
        self.use_native = jit_compile and use_native  # the native kernel runs only inside XLA
        self.vocab_size = model.hparams.n_vocab
        self.jit_compile = jit_compile
        self._compiled = set()  # (batch, prompt_len, total_len) whose decode step XLA has compiled
        # One compiled function serves every block: the blocks differ only in their weights, passed as arguments.
        # So the first call traces and compiles one block instead of the whole network. A model whose blocks are
        # not alike (LoRA adapters patched into their layers) gets a function per block instead.
        self._shared = _alike(model.h) if shared is None else shared
        self._weights = [([w.value for w in block.trainable_variables],
                          [w.value for w in block.non_trainable_variables]) for block in model.h]
        self.block = tf.function(self._block, jit_compile=jit_compile, autograph=False)
        self.head = tf.function(self._head, jit_compile=jit_compile, autograph=False)
        self.embed = tf.function(self._embed, jit_compile=jit_compile, autograph=False)
        self.decode_chunk = tf.function(self._decode_chunk, jit_compile=False, autograph=False)

    def cache_variables(self, batch, max_length):
        """A key/value cache the compiled step updates in place: one variable per layer, for one generate call.

        As variables (passed to the compiled functions as arguments, so one trace serves every call), XLA aliases
        the step's updated cache with its input and writes one position per step; a cache passed in and returned
        as tensors would be copied whole every step (all layers, batch x max_length keys and values).
        """
        return tuple((tf.Variable(keys, trainable=False), tf.Variable(values, trainable=False))
                     for keys, values in self.model.init_cache(batch, max_length))

    def compile_in_background(self, batch, prompt_len, total_len, cache):
        """Compile the decode step for these shapes on another thread, so XLA's compilation (seconds) overlaps the
        prompt's prefill; returns a function that waits for it. Nothing to do once these shapes are compiled.

        The trial step writes a throwaway key/value at slot `prompt_len` of `cache`; decoding never reads a slot
        before writing it (attention sees only the slots before the current one), so it is harmless.
        """
        key = (batch, prompt_len, total_len)
        if not self.jit_compile or key in self._compiled:
            return lambda: None
        self._compiled.add(key)
        state = initial_state(np.zeros([batch, prompt_len], np.int32), np.ones([batch, total_len], bool),
                              tf.zeros([batch, self.vocab_size]), tf.zeros([batch, self.vocab_size], tf.bool),
                              np.zeros([batch, 2], np.int32), np.zeros(batch, bool), True)
        steps = tf.constant(1)
        self.decode_chunk.get_concrete_function(state, steps, cache)  # tracing stays on this thread

        def run():
            try:
                self.decode_chunk(state, steps, cache)["index"].numpy()
            except Exception:  # noqa: BLE001 -- the real first step will compile again and report the error
                self._compiled.discard(key)

        thread = threading.Thread(target=run, name="gpt2tf-compile", daemon=True)
        thread.start()
        return thread.join

    def prefill(self, prompt, padding_mask, cache):
        """prompt: int32 [batch, prompt_len], left-padded; padding_mask: bool [batch, total_len].

        Runs eagerly around the compiled blocks: there is no graph of its own to trace for each prompt length.
        Returns the logits after the prompt's last token and the tokens each row has seen (for the penalty).
        It writes cache slots [0, prompt_len) only; the steps write the others, each before any step reads it.
        """
        batch, prompt_len = prompt.shape
        logits = self._forward(prompt, tf.constant(0), padding_mask, cache)
        seen = tf.zeros([batch, self.vocab_size], tf.bool)
        if self.config.repetition_penalty != 1.0:
            rows = tf.broadcast_to(tf.range(batch)[:, None], [batch, prompt_len])
            real = tf.cast(padding_mask[:, :prompt_len], tf.int32)  # [batch, prompt_len]
            seen = tf.scatter_nd(tf.stack([rows, prompt], -1), real, [batch, self.vocab_size]) > 0
        return logits, seen

    def _forward(self, tokens, index, padding_mask, cache):
        """tokens [batch, seq] at slots index.. of the cache: the last token's logits [batch, vocab].

        The cache is written in place (slots index..index+seq-1 of every layer) by the compiled blocks.
        """
        x, mask = self.embed(tokens, index, padding_mask)
        for i, layer_cache in enumerate(cache):
            x = self.block(x, mask, index, self._weights[i], layer_cache, None if self._shared else i)
        return self.head(x[:, -1:] if x.shape[1] != 1 else x)  # the prefill shares the step's compiled head

    def _embed(self, tokens, index, padding_mask):
        return self.model.embed(tokens, cache_index=index, padding_mask=padding_mask, max_length=padding_mask.shape[1])

    def _block(self, x, mask, index, weights, cache, layer):
        """Block `layer` (or, for alike blocks, block 0 run with `weights`) on x; its cache variables updated."""
        keys, values = cache
        with native.use_in_decode_step(self.use_native):
            (x, (new_keys, new_values)), _ = self.model.h[layer or 0].stateless_call(
                *weights, x, mask, (keys.read_value(), values.read_value()), index)
        keys.assign(new_keys)
        values.assign(new_values)
        return x

    def _head(self, x):
        """x: [batch, 1, n_embd] after the last block; the logits [batch, vocab]."""
        with native.use_in_decode_step(self.use_native):
            return self.model.head(x)[:, 0]

    def _decode_chunk(self, state, steps, cache):
        """Run up to `steps` decode steps from `state` (a dict of tensors), stopping early once all rows are done."""
        config, eos_id = self.config, self.eos_id
        end = tf.shape(state["tokens"])[1]

        def cond(i, s):
            return (i < steps) & (s["index"] < end) & ~tf.reduce_all(s["done"])

        def body(i, s):
            index = s["index"]
            token = choose_tokens(s["logits"], s["seen"], s["row_seeds"], index - s["start"], config)
            token = tf.where(s["done"], eos_id, token)  # finished rows keep writing padding
            rows = tf.range(tf.shape(token)[0])
            tokens = tf.tensor_scatter_nd_update(s["tokens"], tf.stack([rows, tf.fill(tf.shape(token), index)], 1),
                                                 token)
            done = s["done"] | ((token == eos_id) & s["stop_at_eos"])
            seen = s["seen"]
            if config.repetition_penalty != 1.0:
                seen = seen | (tf.one_hot(token, self.vocab_size) > 0)
            # Finished rows write eos_id, which a small-vocabulary model may not have: feed it a valid id instead.
            logits = self._forward(tf.minimum(token, self.vocab_size - 1)[:, None], index, s["padding_mask"], cache)
            return i + 1, dict(s, tokens=tokens, done=done, seen=seen, logits=logits, index=index + 1)

        _, state = tf.while_loop(cond, body, (tf.constant(0), state))
        return state


def initial_state(prompt, padding_mask, logits, seen, row_seeds, done, stop_at_eos):
    """The decode loop's state before its first step: prompts (left-padded) prefilled, nothing generated yet."""
    prompt_len = prompt.shape[1]
    return dict(tokens=tf.constant(np.pad(prompt, [(0, 0), (0, padding_mask.shape[1] - prompt_len)])),
                padding_mask=tf.constant(padding_mask), logits=logits, seen=seen,
                row_seeds=tf.constant(row_seeds, tf.int32), start=tf.constant(prompt_len, tf.int32),
                index=tf.constant(prompt_len, tf.int32), done=tf.constant(done), stop_at_eos=tf.constant(stop_at_eos))


_KERAS_WRAPPED = ("build", "quantize")  # methods Keras itself wraps on every layer instance


def _alike(blocks):
    """Whether the blocks compute the same function of their own weights: same layer classes, dtype policies and
    weight names and shapes, and no method patched into a layer (as LoRA patches `call`)."""
    def signature(block):
        layers = list(block._flatten_layers())
        patched = any(isinstance(value, (types.FunctionType, types.MethodType)) and name not in _KERAS_WRAPPED
                      for layer in layers for name, value in vars(layer).items())
        return (patched, [(type(layer), layer.dtype_policy.name) for layer in layers],
                [(w.path.split(block.name + "/", 1)[-1], tuple(w.shape), w.dtype) for w in block.weights])
    first = signature(blocks[0])
    return not first[0] and all(signature(b) == first for b in blocks[1:])


_decoders = weakref.WeakKeyDictionary()


def decoder_for(model, config, *, eos_id=EOT_ID, jit_compile=True):
    """The compiled functions for (model, config), built once and reused by every later call."""
    per_model = _decoders.setdefault(model, {})
    key = (config, eos_id, jit_compile, native.requested(), _alike(model.h))  # LoRA may patch blocks later
    if key not in per_model:
        per_model[key] = Decoder(model, config, eos_id=eos_id, jit_compile=jit_compile, use_native=key[3],
                                 shared=key[4])
    return per_model[key]


def _round_up(n, multiple):
    return -(-n // multiple) * multiple


def _prepare_prompts(prompts, length, hparams, truncate_prompt):
    n_ctx = hparams.n_ctx
    prepared = []
    for i, prompt in enumerate(prompts):
        prompt = [int(t) for t in prompt] or [EOT_ID]  # OpenAI starts unconditional samples from <|endoftext|>
        outside = [t for t in prompt if not 0 <= t < hparams.n_vocab]
        if outside:  # XLA's gather would clamp them to a real token: a silently different prompt
            raise GPT2TFError(f"prompt {i} holds token id {outside[0]}, outside the model's vocabulary of "
                              f"{hparams.n_vocab} ids (0..{hparams.n_vocab - 1})")
        if len(prompt) + length > n_ctx:
            if not truncate_prompt:
                raise GPT2TFError(
                    f"prompt {i} has {len(prompt)} tokens; with {length} new tokens that exceeds the model's context "
                    f"of {n_ctx}: shorten the prompt or the output length, or allow left-truncation of the prompt "
                    f"(--truncate_prompt / truncate_prompt=True)")
            prompt = prompt[len(prompt) + length - n_ctx:]
        prepared.append(prompt)
    return prepared


def generate_stream(model, prompts, *, length, config=SamplerConfig(), seed=None, nsamples=1, batch_size=None,
                    stop=(), stop_at_eos=True, truncate_prompt=False, chunk_steps=CHUNK_STEPS, jit_compile=True,
                    encoder=None):
    """Yield `(row, new_ids)` as tokens are produced; rows are prompt-major (prompt i, sample j: row i*nsamples+j).

    A row's ids, concatenated over its yields, are its final output: it ends at <|endoftext|> (not included), after
    `length` tokens, or before a `stop` string (one that begins inside a token is kept whole, so the text can be cut
    exactly; `generate_text` does that).
    """
    if not (isinstance(length, int) and length > 0):
        raise GPT2TFError(f"length must be a positive number of tokens, got {length}")
    if not (isinstance(nsamples, int) and nsamples > 0):
        raise GPT2TFError(f"nsamples must be a positive integer, got {nsamples}")
    if batch_size is not None and not (isinstance(batch_size, int) and batch_size > 0):
        raise GPT2TFError(f"batch_size must be a positive integer, got {batch_size}")
    n_ctx = model.hparams.n_ctx
    if length >= n_ctx:
        raise GPT2TFError(f"length {length} must be below the model's context of {n_ctx} tokens")
    if check_seed(seed) is None:
        seed = random_seed()
    stop = [s for s in stop if s]
    encoder = encoder or (get_encoder() if stop else None)
    rows = [p for p in _prepare_prompts(prompts, length, model.hparams, truncate_prompt) for _ in range(nsamples)]
    batch_size = min(batch_size or len(rows), len(rows))
    decoder = decoder_for(model, config, jit_compile=jit_compile)
    cache = None  # the batches of this call share one cache while their lengths agree; it dies with the call

    for first in range(0, len(rows), batch_size):
        ids = list(range(first, min(first + batch_size, len(rows))))
        real_rows = len(ids)
        ids += [ids[-1]] * (batch_size - real_rows)  # a short last batch is padded with repeats (same shapes)
        batch = [rows[i] for i in ids]
        longest = max(len(p) for p in batch)
        prompt_len = max(longest, min(_round_up(longest, PROMPT_BUCKET), n_ctx - length))
        prompt = np.zeros((batch_size, prompt_len), np.int32)  # padding: any valid id, it is never attended to
        padding_mask = np.ones((batch_size, prompt_len + length), bool)
        for r, p in enumerate(batch):  # left-pad: every row's last prompt token sits at prompt_len - 1
            prompt[r, prompt_len - len(p):] = p
            padding_mask[r, :prompt_len - len(p)] = False
        if cache is None or cache[0][0].shape[2] != padding_mask.shape[1]:
            cache = decoder.cache_variables(batch_size, padding_mask.shape[1])
        else:  # an earlier batch's keys: never read, but a NaN among them would still poison XLA's 0-weighted sum
            for variable in (v for layer in cache for v in layer):
                variable.assign(tf.zeros_like(variable))
        compiled = decoder.compile_in_background(batch_size, prompt_len, padding_mask.shape[1], cache)
        logits, seen = decoder.prefill(tf.constant(prompt), tf.constant(padding_mask), cache)
        compiled()
        done = np.arange(batch_size) >= real_rows  # padding rows count as done from the start
        state = initial_state(prompt, padding_mask, logits, seen, [[seed, i % nsamples] for i in ids], done,
                              stop_at_eos)
        emitted = [0] * batch_size
        while not done.all():
            state = decoder.decode_chunk(state, tf.constant(chunk_steps), cache)
            tokens = state["tokens"].numpy()[:, prompt_len:int(state["index"])]  # [batch, generated so far]
            eos_done = state["done"].numpy()
            for r in np.flatnonzero(~done):
                new = tokens[r].tolist()
                end = new.index(EOT_ID) if stop_at_eos and EOT_ID in new else len(new)
                cut = _stop_cut(encoder, new[:end], stop) if stop else None
                finished = cut is not None or eos_done[r] or len(new) >= length
                if cut is not None:
                    end = cut
                elif stop and not finished:
                    end = _safe_end(encoder, new[:end], stop)  # hold back a possible stop string's beginning
                if end > emitted[r]:
                    yield ids[r], new[emitted[r]:end]
                    emitted[r] = end
                done[r] = finished
            if not done.all() and not np.array_equal(done, state["done"].numpy()):
                state = dict(state, done=tf.constant(done))  # rows cut by a stop string stop decoding too


def _token_ends(encoder, ids):
    """Byte offset at which each token's text ends."""
    return np.cumsum([len(encoder.decode_bytes([t])) for t in ids])


def _stop_cut(encoder, ids, stop):
    """How many tokens to keep before the earliest stop string, or None if there is none.

    Tokens before the one where the stop string begins; if it begins inside a token, through the token where it
    ends, so the text still holds the whole stop string and can be cut exactly.
    """
    text = encoder.decode_bytes(ids)
    hits = sorted((h, len(s.encode("utf-8"))) for s in stop if (h := text.find(s.encode("utf-8"))) >= 0)
    if not hits:
        return None
    first, size = hits[0]
    ends = _token_ends(encoder, ids)
    containing = int(np.searchsorted(ends, first, side="right"))  # the token holding byte `first`
    if (ends[containing - 1] if containing else 0) == first:
        return containing
    return int(np.searchsorted(ends, first + size - 1, side="right")) + 1


def _safe_end(encoder, ids, stop):
    """How many tokens can be released: those ending before the last (longest stop - 1) bytes."""
    ends = _token_ends(encoder, ids)
    if not len(ends):
        return 0
    limit = ends[-1] - (max(len(s.encode("utf-8")) for s in stop) - 1)
    return int(np.searchsorted(ends, limit, side="right"))


def generate(model, prompts, *, length, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0, seed=None,
             nsamples=1, batch_size=None, stop=(), stop_at_eos=True, truncate_prompt=False, jit_compile=True):
    """New token ids for every (prompt, sample): a list of `len(prompts) * nsamples` lists, prompt-major.

    `prompts` are lists of token ids (an empty one starts from <|endoftext|>). See the module docstring for the
    sampling rules; `seed` makes the output reproducible.
    """
    config = SamplerConfig(temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty)
    outputs = [[] for _ in range(len(prompts) * nsamples)]
    for row, ids in generate_stream(model, prompts, length=length, config=config, seed=seed, nsamples=nsamples,
                                    batch_size=batch_size, stop=stop, stop_at_eos=stop_at_eos,
                                    truncate_prompt=truncate_prompt, jit_compile=jit_compile):
        outputs[row].extend(ids)
    return outputs


def generate_text(model, prompts, *, encoder=None, stop=(), **kwargs):
    """`generate` on strings: prompts in, completions out (cut exactly at a stop string)."""
    encoder = encoder or get_encoder()
    outputs = generate(model, [encoder.encode(p) for p in prompts], stop=stop, **kwargs)
    texts = [encoder.decode(ids) for ids in outputs]
    return [cut_at_stop(t, stop) for t in texts]


def cut_at_stop(text, stop):
    """`text` up to the earliest of the `stop` strings in it."""
    hits = [text.find(s) for s in stop if s and s in text]
    return text[:min(hits)] if hits else text

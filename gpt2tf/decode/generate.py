"""Generating from prompts: `generate`, `generate_text` and `generate_stream`, the library's API on the engine.

A call is a set of requests added to one `gpt2tf.decode.engine.Engine` (rows are prompt-major: prompt i, sample j
is row i * nsamples + j, with the noise keyed by (seed, j)); rows join as slots free up, so a row that ends early
makes room for the next at once. The sampling rules are `gpt2tf.decode.filters`'; stop strings are
`gpt2tf.decode.stops`'; prompts are prepared by `gpt2tf.decode.prompts`.
"""

import dataclasses

from gpt2tf.decode.engine import CHUNK_STEPS, Engine, Request
from gpt2tf.decode.prompts import prepare_prompt
from gpt2tf.decode.stops import cut_at_stop
from gpt2tf.encoder import get_encoder
from gpt2tf.errors import GPT2TFError
from gpt2tf.layout import PROMPT_BUCKET
from gpt2tf.settings import SamplerConfig, check_seed, random_seed

DEFAULT_SAMPLER = SamplerConfig()


def generate_stream(
    model,
    prompts,
    *,
    length,
    config=None,
    seed=None,
    nsamples=1,
    batch_size=None,
    stop=(),
    stop_at_eos=True,
    truncate_prompt=False,
    chunk_steps=CHUNK_STEPS,
    jit_compile=True,
    encoder=None,
    logit_bias=None,
    bad_words=(),
    num_beams=1,
    num_return_sequences=1,
    length_penalty=1.0,
    early_stopping=False,
):
    """Yield `(row, new_ids)` as tokens are produced; rows are prompt-major (prompt i, sample j: row i*nsamples+j).

    A row's ids, concatenated over its yields, are its final output: it ends at <|endoftext|> (not included), after
    `length` tokens, or before a `stop` string (one that begins inside a token is kept whole, so the text can be cut
    exactly; `generate_text` does that). At most `batch_size` rows (default: all) decode at once, `chunk_steps`
    tokens per row per compiled call (1 yields each token as soon as it is chosen; None chooses per call: the first
    token at once, then bursts every `gpt2tf.settings.STREAM_INTERVAL` seconds, see `Engine.auto_steps`).
    `config` holds the numeric sampling settings and controls; `logit_bias` ({token id: bias}) and `bad_words`
    (strings or token-id sequences) are `Request`'s. With `num_beams` > 1 (beam search: `beam_search`), row
    i * num_return_sequences + j is prompt i's j-th best hypothesis, given whole when its search ends.
    """
    if config is None:  # temperature 1, or 0 for beam search
        config = SamplerConfig(temperature=0.0) if num_beams != 1 else DEFAULT_SAMPLER
    if num_beams != 1:
        if nsamples != 1:
            raise GPT2TFError("beam search gives num_return_sequences hypotheses per prompt: leave nsamples at 1")
        for row, (ids, _, _) in _beam_rows(
            model,
            prompts,
            length=length,
            config=config,
            batch_size=batch_size,
            stop_at_eos=stop_at_eos,
            truncate_prompt=truncate_prompt,
            jit_compile=jit_compile,
            encoder=encoder,
            bad_words=bad_words,
            num_beams=num_beams,
            num_return_sequences=num_return_sequences,
            length_penalty=length_penalty,
            early_stopping=early_stopping,
        ):
            if ids:
                yield row, ids
        return
    if not (isinstance(length, int) and length > 0):
        raise GPT2TFError(f"length must be a positive number of tokens, got {length}")
    if not (isinstance(nsamples, int) and nsamples > 0):
        raise GPT2TFError(f"nsamples must be a positive integer, got {nsamples}")
    if batch_size is not None and not (isinstance(batch_size, int) and batch_size > 0):
        raise GPT2TFError(f"batch_size must be a positive integer, got {batch_size}")
    if chunk_steps is not None and not (isinstance(chunk_steps, int) and chunk_steps > 0):
        raise GPT2TFError(f"chunk_steps must be a positive integer or None (chosen per call), got {chunk_steps}")
    if check_seed(seed) is None:
        seed = random_seed()
    prompts = _prepared(model, prompts, length, truncate_prompt)
    requests = [
        Request(
            prompt=prompt,
            max_new_tokens=length,
            **dataclasses.asdict(config),
            logit_bias=logit_bias,
            bad_words=bad_words,
            seed=seed,
            sample=j,
            stop=tuple(stop),
            stop_at_eos=stop_at_eos,
        )
        for prompt in prompts
        for j in range(nsamples)
    ]
    engine = _engine(model, prompts, requests[::nsamples], length, batch_size, jit_compile, encoder, nsamples)
    for row, ids, _ in engine.run(requests, steps=chunk_steps):
        if ids:
            yield row, ids


def _prepared(model, prompts, length, truncate_prompt):
    n_ctx = model.hparams.n_ctx
    if length >= n_ctx:
        raise GPT2TFError(f"length {length} must be below the model's context of {n_ctx} tokens")
    return [
        prepare_prompt(p, new_tokens=length, n_ctx=n_ctx, truncate=truncate_prompt, name=f"prompt {i}")
        for i, p in enumerate(prompts)
    ]


def _engine(model, prompts, per_prompt, length, batch_size, jit_compile, encoder, nsamples=1):
    """An engine for the requests (`per_prompt`: the first of each prompt, checked; `nsamples` of each), all rows
    at once unless `batch_size` says fewer."""
    rows = sum(r.rows for r in per_prompt) * nsamples
    # The cache holds the longest row, in whole buckets: calls of similar lengths share the compiled step.
    n_ctx = model.hparams.n_ctx
    max_length = min(n_ctx, -(-max(len(p) for p in prompts) // PROMPT_BUCKET) * PROMPT_BUCKET + length)
    engine = Engine(
        model,
        max_batch=min(batch_size or rows, rows),
        max_length=max_length,
        jit_compile=jit_compile,
        encoder=encoder,
    )
    for i, request in enumerate(per_prompt):
        engine.check(request, name=f"prompt {i}")
    return engine


def _beam_rows(
    model,
    prompts,
    *,
    length,
    config,
    num_beams,
    num_return_sequences,
    length_penalty,
    early_stopping,
    batch_size=None,
    stop_at_eos=True,
    truncate_prompt=False,
    jit_compile=True,
    encoder=None,
    bad_words=(),
):
    """(row, (ids, score, finished)) for every prompt's best hypotheses, row i * num_return_sequences + j."""
    if not (isinstance(length, int) and length > 0):
        raise GPT2TFError(f"length must be a positive number of tokens, got {length}")
    if batch_size is not None and not (isinstance(batch_size, int) and batch_size > 0):
        raise GPT2TFError(f"batch_size must be a positive integer, got {batch_size}")
    prompts = _prepared(model, prompts, length, truncate_prompt)
    fields = dataclasses.asdict(config)
    requests = [
        Request(
            prompt=prompt,
            max_new_tokens=length,
            **fields,
            bad_words=bad_words,
            stop_at_eos=stop_at_eos,
            num_beams=num_beams,
            num_return_sequences=num_return_sequences,
            length_penalty=length_penalty,
            early_stopping=early_stopping,
        )
        for prompt in prompts
    ]
    rows = None if batch_size is None else batch_size * num_beams  # batch_size: prompts searched together
    engine = _engine(model, prompts, requests, length, rows, jit_compile, encoder)
    for output in engine.run(requests, steps=1):
        for j, hypothesis in enumerate(output.beams or ()):
            yield output.rid * num_return_sequences + j, hypothesis


def generate(
    model,
    prompts,
    *,
    length,
    temperature=None,
    top_k=0,
    top_p=1.0,
    repetition_penalty=1.0,
    seed=None,
    nsamples=1,
    batch_size=None,
    stop=(),
    stop_at_eos=True,
    truncate_prompt=False,
    jit_compile=True,
    presence_penalty=0.0,
    frequency_penalty=0.0,
    logit_bias=None,
    no_repeat_ngram_size=0,
    bad_words=(),
    min_p=0.0,
    typical_p=1.0,
    num_beams=1,
    num_return_sequences=1,
    length_penalty=1.0,
    early_stopping=False,
):
    """New token ids for every (prompt, sample): a list of `len(prompts) * nsamples` lists, prompt-major.

    `prompts` are lists of token ids (an empty one starts from <|endoftext|>). The sampling rules and the controls
    (presence and frequency penalties, logit_bias, no_repeat_ngram_size, bad_words, min_p, typical_p) are
    `gpt2tf.decode.filters`'; docs/inference.md says what each does. `seed` makes the output reproducible.
    `temperature` defaults to 1 (0 with beams). With `num_beams` > 1 it is beam search (`beam_search`, which also
    gives the scores): `len(prompts) * num_return_sequences` lists, each prompt's best first.
    """
    if temperature is None:
        temperature = 0.0 if num_beams != 1 else 1.0
    config = SamplerConfig(
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        presence_penalty=presence_penalty,
        frequency_penalty=frequency_penalty,
        no_repeat_ngram_size=no_repeat_ngram_size,
        min_p=min_p,
        typical_p=typical_p,
    )
    outputs = [[] for _ in range(len(prompts) * max(nsamples, num_return_sequences))]
    for row, ids in generate_stream(
        model,
        prompts,
        length=length,
        config=config,
        seed=seed,
        nsamples=nsamples,
        batch_size=batch_size,
        stop=stop,
        stop_at_eos=stop_at_eos,
        truncate_prompt=truncate_prompt,
        jit_compile=jit_compile,
        logit_bias=logit_bias,
        bad_words=bad_words,
        num_beams=num_beams,
        num_return_sequences=num_return_sequences,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
    ):
        outputs[row].extend(ids)
    return outputs[: len(prompts) * (num_return_sequences if num_beams != 1 else nsamples)]


def generate_text(model, prompts, *, encoder=None, stop=(), **kwargs):
    """`generate` on strings: prompts in, completions out (cut exactly at a stop string)."""
    encoder = encoder or get_encoder()
    outputs = generate(model, [encoder.encode(p) for p in prompts], stop=stop, **kwargs)
    texts = [encoder.decode(ids) for ids in outputs]
    return [cut_at_stop(t, stop) for t in texts]


def beam_search(
    model,
    prompts,
    *,
    length,
    num_beams=4,
    num_return_sequences=1,
    length_penalty=1.0,
    early_stopping=False,
    no_repeat_ngram_size=0,
    bad_words=(),
    batch_size=None,
    stop_at_eos=True,
    truncate_prompt=False,
    jit_compile=True,
):
    """Beam search (transformers' rules, `gpt2tf.decode.beams`): for every prompt, its `num_return_sequences` best
    hypotheses as `(ids, score)`, best first; the score is transformers' `sequences_scores` (the sum of the tokens'
    log-probabilities divided by length ** length_penalty). A prompt takes `num_beams` rows of the engine; at most
    `batch_size` prompts (default: all) are searched at once."""
    config = SamplerConfig(temperature=0.0, no_repeat_ngram_size=no_repeat_ngram_size)
    results = [[None] * num_return_sequences for _ in prompts]
    for row, (ids, score, _) in _beam_rows(
        model,
        prompts,
        length=length,
        config=config,
        num_beams=num_beams,
        num_return_sequences=num_return_sequences,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
        batch_size=batch_size,
        stop_at_eos=stop_at_eos,
        truncate_prompt=truncate_prompt,
        jit_compile=jit_compile,
        bad_words=bad_words,
    ):
        results[row // num_return_sequences][row % num_return_sequences] = (ids, score)
    return results

"""OpenAI's completions API: `/v1/completions` (streaming, n, best_of, stop, seed, echo, logprobs, presence and
frequency penalties, logit_bias; plus, as extra fields the way vLLM takes them, top_k, repetition_penalty,
no_repeat_ngram_size, bad_words, min_p and typical_p) and `/v1/models`, over the engine's worker.

`parse_completion` checks a body into a `Completion` (or an ApiError naming the field and the fix), prompts
prepared by the one prompt rule (`gpt2tf.decode.prompts`); `engine_requests` turns it into the engine's requests;
`Choice` follows one choice's text as its tokens arrive; `add_routes` puts the routes on an app.
"""

import asyncio
import codecs
import dataclasses
import json
import math
import time
import uuid

from fastapi import Request
from fastapi.responses import StreamingResponse

from gpt2tf.decode.engine import Request as EngineRequest
from gpt2tf.decode.engine import bad_word_sequences
from gpt2tf.decode.prompts import PromptTooLong, prepare_prompt
from gpt2tf.decode.stops import cut_at_stop
from gpt2tf.errors import GPT2TFError
from gpt2tf.layout import ENDOFTEXT
from gpt2tf.serve.http import ApiError, event, read_json
from gpt2tf.serve.worker import Job, collect
from gpt2tf.settings import (
    BEAM_OFF,
    MAX_LOGPROBS,
    MAX_SEED,
    check_bad_words,
    check_beams,
    check_logit_bias,
    random_seed,
)

MAX_STOPS = 16  # stop strings per request besides <|endoftext|> (OpenAI takes 4, vLLM any number; lm-eval adds one)


@dataclasses.dataclass
class Completion:
    """A `/v1/completions` request, checked."""

    prompts: list  # token id lists
    prompt_texts: list
    n: int
    max_tokens: int
    settings: dict  # the Request fields: temperature, top_k, top_p, the penalties, the other controls
    seed: int
    stop: tuple
    stream: bool
    echo: bool
    logprobs: int  # or None
    include_usage: bool = False  # stream_options.include_usage: a last chunk with the usage
    best_of: int = None  # sequences generated per prompt, of which the n best are returned (None: n)

    @property
    def per_prompt(self):
        """Sequences generated per prompt (a beam search's n hypotheses are one request's)."""
        return self.best_of or self.n

    @property
    def requests_per_prompt(self):
        return 1 if self.settings.get("num_beams", 1) > 1 else self.per_prompt


_IGNORED = {"model", "user", "suffix"}


def parse_completion(body, *, encoder, n_ctx, truncate_prompt, max_choices, max_rows=None):
    """A `Completion` from the JSON body, or an ApiError (400) naming the field and the fix (`max_rows`: the
    engine's rows, which a beam search's num_beams may not exceed)."""
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    known = {
        "prompt",
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "repetition_penalty",
        "n",
        "stop",
        "seed",
        "stream",
        "echo",
        "logprobs",
        "stream_options",
        "best_of",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "no_repeat_ngram_size",
        "bad_words",
        "min_p",
        "typical_p",
        "num_beams",
        "length_penalty",
        "early_stopping",
    } | _IGNORED
    unknown = sorted(set(body) - known)
    if unknown:
        raise ApiError(400, f"unknown field {unknown[0]!r}", param=unknown[0])
    if body.get("suffix") is not None:
        raise ApiError(400, "suffix is not supported (GPT-2 has no insertion mode)", param="suffix")
    prompt = body.get("prompt", "")
    if isinstance(prompt, str) or _is_ids(prompt):
        prompt = [prompt]
    if not (isinstance(prompt, list) and prompt and all(isinstance(p, str) or _is_ids(p) for p in prompt)):
        raise ApiError(400, "prompt must be a string, a list of strings, or token ids", param="prompt")
    prompts = [encoder.encode(p) if isinstance(p, str) else list(p) for p in prompt]
    n = _integer(body, "n", 1, 1, max_choices)
    max_tokens = _integer(body, "max_tokens", 16, 1, n_ctx - 1)
    num_beams = _integer(body, "num_beams", 1, 1, max_rows or max_choices)
    settings = dict(
        temperature=_number(body, "temperature", 0.0 if num_beams > 1 else 1.0, 0.0, math.inf),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
        top_k=_integer(body, "top_k", 0, 0, 10**9),
        repetition_penalty=_number(body, "repetition_penalty", 1.0, 0.0, math.inf, low_open=True),
        presence_penalty=_number(body, "presence_penalty", 0.0, -2.0, 2.0),
        frequency_penalty=_number(body, "frequency_penalty", 0.0, -2.0, 2.0),
        no_repeat_ngram_size=_integer(body, "no_repeat_ngram_size", 0, 0, n_ctx),
        min_p=_number(body, "min_p", 0.0, 0.0, 1.0),
        typical_p=_number(body, "typical_p", 1.0, 0.0, 1.0, low_open=True),
    )
    try:
        bias = check_logit_bias(body.get("logit_bias"))
    except GPT2TFError as err:
        raise ApiError(400, str(err), param="logit_bias") from None
    outside = [t for t in bias if t >= len(encoder)]
    if outside:
        raise ApiError(
            400,
            f"logit_bias names token id {outside[0]}, outside the vocabulary (0..{len(encoder) - 1})",
            param="logit_bias",
        )
    try:
        bad_words = check_bad_words(body.get("bad_words"))
        bad_word_sequences(bad_words, encoder, len(encoder))
    except GPT2TFError as err:
        raise ApiError(400, str(err), param="bad_words") from None
    settings.update(logit_bias=bias, bad_words=bad_words)
    if num_beams > 1:
        early = body.get("early_stopping", False)
        settings.update(
            num_beams=num_beams,
            num_return_sequences=n,
            length_penalty=_number(body, "length_penalty", 1.0, -math.inf, math.inf),
            early_stopping=early,
        )
        if not (isinstance(early, bool) or early == "never"):
            raise ApiError(
                400, f'early_stopping must be true, false or "never", got {json.dumps(early)}', param="early_stopping"
            )
        if n > num_beams:
            raise ApiError(400, f"n ({n}) must be at most num_beams ({num_beams}): the best n are returned", param="n")
        for name, off in BEAM_OFF.items():
            if settings[name] != off and not (name == "logit_bias" and not settings[name]):
                raise ApiError(
                    400,
                    f"beam search (num_beams {num_beams}) is deterministic and takes no {name}: drop it",
                    param=name,
                )
        check_beams(**{k: settings[k] for k in ("num_beams", "num_return_sequences", "length_penalty")})
        for name in ("best_of", "logprobs"):
            if body.get(name) not in (None, 1 if name == "best_of" else None):
                raise ApiError(400, f"{name} cannot be used with num_beams (beam search ranks its own)", param=name)
        if body.get("stop"):
            raise ApiError(400, "stop cannot be used with num_beams", param="stop")
    best_of = body.get("best_of")
    if best_of is not None:
        best_of = _integer(body, "best_of", n, 1, max_choices)
        if best_of < n:
            raise ApiError(400, f"best_of ({best_of}) must be at least n ({n})", param="best_of")
        if best_of > n and _boolean(body, "stream"):
            raise ApiError(
                400, "best_of cannot be used with stream: the best are known only at the end", param="best_of"
            )
    seed = body.get("seed")
    seed = random_seed() if seed is None else _integer(body, "seed", 0, 0, MAX_SEED)
    stop = body.get("stop") or ()
    stop = (stop,) if isinstance(stop, str) else stop
    if not (isinstance(stop, (list, tuple)) and all(isinstance(s, str) for s in stop)):
        raise ApiError(400, "stop must be a string or a list of strings", param="stop")
    stop = [s for s in stop if s != ENDOFTEXT]  # generation always ends there: it is no stop string to look for
    if len(stop) > MAX_STOPS:
        raise ApiError(
            400, f"stop takes at most {MAX_STOPS} strings besides {ENDOFTEXT}, got {len(stop)}", param="stop"
        )
    logprobs = body.get("logprobs")
    logprobs = None if logprobs is None else _integer(body, "logprobs", 0, 0, MAX_LOGPROBS)
    for i, ids in enumerate(prompts):
        if any(not 0 <= t < len(encoder) for t in ids):
            raise ApiError(400, f"prompt {i} holds token ids outside the vocabulary", param="prompt")
        try:
            prompts[i] = prepare_prompt(ids, new_tokens=max_tokens, n_ctx=n_ctx, truncate=truncate_prompt)
        except PromptTooLong as err:
            raise ApiError(
                400,
                f"prompt {i} has {err.tokens} tokens; with max_tokens {max_tokens} that exceeds "
                f"the model's context of {n_ctx}: shorten the prompt or max_tokens",
                param="prompt",
                code="context_length_exceeded",
            ) from None
    per_prompt = best_of or n
    if len(prompts) * per_prompt > max_choices:
        name = "best_of" if best_of else "n"
        raise ApiError(
            400,
            f"{len(prompts)} prompts x {name}={per_prompt} is {len(prompts) * per_prompt} sequences, more than this "
            f"server takes at once ({max_choices}); send fewer",
            param=name,
        )
    options = body.get("stream_options")
    if options is not None and not (
        isinstance(options, dict)
        and set(options) <= {"include_usage"}
        and isinstance(options.get("include_usage", False), bool)
    ):
        raise ApiError(400, 'stream_options must be {"include_usage": true or false}', param="stream_options")
    if options is not None and not _boolean(body, "stream"):
        raise ApiError(400, "stream_options is only allowed with stream: true", param="stream_options")
    texts = [encoder.decode(ids) for ids in prompts]  # what echo returns: the prompt the model saw
    return Completion(
        prompts,
        texts,
        n,
        max_tokens,
        settings,
        seed,
        tuple(s for s in stop if s),
        _boolean(body, "stream"),
        _boolean(body, "echo"),
        logprobs,
        bool((options or {}).get("include_usage")),
        best_of if best_of and best_of > n else None,
    )


def _is_ids(value):
    return isinstance(value, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)


def _integer(body, name, default, low, high):
    value = body.get(name, default)
    if value is None:
        value = default
    if not (isinstance(value, int) and not isinstance(value, bool) and low <= value <= high):
        raise ApiError(400, f"{name} must be a whole number from {low} to {high}, got {json.dumps(value)}", param=name)
    return value


def _number(body, name, default, low, high, *, low_open=False):
    value = body.get(name, default)
    if value is None:
        value = default
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value > high or value < low or (low_open and value == low):
        bound = (
            f"{'(' if low_open else '['}{low}, {high}]" if math.isfinite(high) else f">{'' if low_open else '='} {low}"
        )
        raise ApiError(400, f"{name} must be a finite number {bound}, got {json.dumps(value)}", param=name)
    return float(value)


def _boolean(body, name):
    value = body.get(name, False)
    if not isinstance(value, bool) and value is not None:
        raise ApiError(400, f"{name} must be true or false, got {json.dumps(value)}", param=name)
    return bool(value)


def engine_requests(completion):
    """The engine's requests for a completion: prompt-major, sequence i * per_prompt + j is sample j of prompt i
    (with best_of, each sequence's log-probabilities are kept to rank them)."""
    logprobs = completion.logprobs
    if completion.best_of and logprobs is None:
        logprobs = 0
    return [
        EngineRequest(
            prompt=ids,
            max_new_tokens=completion.max_tokens,
            seed=completion.seed,
            sample=j,
            stop=completion.stop,
            stop_at_eos=True,
            logprobs=logprobs,
            **completion.settings,
        )
        for ids in completion.prompts
        for j in range(completion.requests_per_prompt)
    ]


def best_choices(completion, choices):
    """The n choices per prompt to return, of the `per_prompt` generated: all of them, or with best_of, the n with
    the highest log-probability per token (OpenAI's rule; an empty one ranks last), in the order generated."""
    if not completion.best_of:
        return choices
    kept, per = [], completion.per_prompt
    for first in range(0, len(choices), per):
        group = choices[first : first + per]
        mean = [sum(e[0] for e in c.logprobs) / len(c.logprobs) if c.logprobs else -math.inf for c in group]
        best = sorted(sorted(range(per), key=lambda i: -mean[i])[: completion.n])
        kept += [group[i] for i in best]
    return kept


class Choice:
    """One choice's text as it grows: whole characters only, the generated part cut before a stop string (an echoed
    prompt is never cut)."""

    def __init__(self, encoder, stop, prefix=""):
        self.encoder, self.stop, self.prefix = encoder, stop, prefix
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.generated, self.sent = "", 0
        self.ids, self.logprobs = [], []
        self.finish_reason = None
        self.prompt_logprobs_sent = False

    def add(self, output):
        self.ids += output.ids
        self.logprobs += output.logprobs or []
        self.generated += self.decoder.decode(self.encoder.decode_bytes(output.ids), final=bool(output.finished))
        if output.finished:
            self.finish_reason = output.finished

    @property
    def text(self):
        return self.prefix + cut_at_stop(self.generated, self.stop)

    def new_text(self):
        """The text not sent yet (what a stop string cuts off is never sent)."""
        text = self.text
        new, self.sent = text[self.sent :], len(text)
        return new


def logprobs_object(encoder, entries, ids, offset):
    """OpenAI's `logprobs` for these tokens: their text, log-probabilities, top alternatives and text offsets."""
    tokens = [encoder.decode([t]) for t in ids]
    offsets = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token)
    return {
        "tokens": tokens,
        "token_logprobs": [e[0] for e in entries],
        "top_logprobs": [None if e[1] is None else {encoder.decode([t]): v for t, v in e[1].items()} for e in entries],
        "text_offset": offsets,
    }


def add_routes(app, service):
    """`/v1/models` and `/v1/completions` on `app`, served by `service` (a `gpt2tf.serve.app.Service`)."""
    config, worker, encoder, name, n_ctx = service.config, service.worker, service.encoder, service.name, service.n_ctx
    created = service.created

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": "gpt2tf"}]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await read_json(request, config.max_body_bytes)
        completion = parse_completion(
            body,
            encoder=encoder,
            n_ctx=n_ctx,
            truncate_prompt=config.truncate_prompt,
            max_choices=config.max_batch + config.max_queue,
            max_rows=config.max_batch,
        )
        job = Job(
            engine_requests(completion),
            asyncio.get_running_loop(),
            score_prompts=completion.echo and completion.logprobs is not None,
            choices_per_request=completion.per_prompt // completion.requests_per_prompt,
        )
        worker.submit(job)
        meta = {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": name,
        }
        if completion.stream:
            return StreamingResponse(_stream(job, completion, meta), media_type="text/event-stream")
        generated = _choices(completion)
        prompt_scores = await collect(request, worker, job, generated)
        choices = best_choices(completion, generated)
        return {
            **meta,
            "choices": [
                {
                    "text": c.text,
                    "index": i,
                    "finish_reason": c.finish_reason,
                    "logprobs": _logprobs(completion, i, prompt_scores, c.ids, c.logprobs, 0),
                }
                for i, c in enumerate(choices)
            ],
            "usage": _usage(completion, generated),
        }

    def _usage(completion, choices):
        completion_tokens = sum(len(c.ids) for c in choices)  # with best_of, every one generated (as OpenAI bills)
        prompt_tokens = sum(len(p) for p in completion.prompts)
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }

    def _choices(completion):
        per = completion.per_prompt
        prefixes = [
            completion.prompt_texts[i // per] if completion.echo else "" for i in range(len(completion.prompts) * per)
        ]
        return [Choice(encoder, completion.stop, prefix) for prefix in prefixes]

    def _logprobs(completion, choice_index, prompt_scores, ids, entries, offset):
        if completion.logprobs is None:
            return None
        if prompt_scores is not None:  # echo: the prompt's tokens first
            prompt = completion.prompts[choice_index // completion.n]
            ids, entries = list(prompt) + ids, prompt_scores[tuple(prompt)] + entries
        return logprobs_object(encoder, entries, ids, offset)

    async def _stream(job, completion, meta):
        choices, prompt_scores, remaining = _choices(completion), None, set(range(job.choices))
        if completion.include_usage:  # OpenAI's: every chunk has "usage", null but in the last
            meta = {**meta, "usage": None}
        try:
            if completion.echo and completion.logprobs is None:
                for i, c in enumerate(choices):
                    yield event(
                        {
                            **meta,
                            "choices": [{"text": c.new_text(), "index": i, "logprobs": None, "finish_reason": None}],
                        }
                    )
            while remaining:
                choice, item = await job.queue.get()
                if isinstance(item, ApiError):
                    raise item
                if choice is None:
                    prompt_scores = item
                    continue
                c = choices[choice]
                offset = c.sent
                c.add(item)
                if item.finished:
                    remaining.discard(choice)
                logprobs = None
                if completion.logprobs is not None:
                    scores = prompt_scores if completion.echo and not c.prompt_logprobs_sent else None
                    c.prompt_logprobs_sent = True
                    logprobs = _logprobs(completion, choice, scores, item.ids, item.logprobs or [], offset)
                yield event(
                    {
                        **meta,
                        "choices": [
                            {
                                "text": c.new_text(),
                                "index": choice,
                                "logprobs": logprobs,
                                "finish_reason": c.finish_reason,
                            }
                        ],
                    }
                )
            if completion.include_usage:
                yield event({**meta, "choices": [], "usage": _usage(completion, choices)})
            yield "data: [DONE]\n\n"
        except ApiError as err:
            yield event(err.body())
        finally:
            worker.cancel(job)  # a finished job's cancel does nothing; a client gone frees its slots

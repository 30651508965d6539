"""The HTTP server: OpenAI's `/v1/completions`, TensorFlow Serving's predict API and a web page, over the engine.

    python serve.py --model_dir models/124M --port 8000          # also: gpt2tf serve ...

`create_app(config)` builds the FastAPI app (TensorFlow, FastAPI and the engine are imported there, so the flags
are checked first); `Worker` runs the decode engine on a thread of its own, so the HTTP
layer (an asyncio event loop) never blocks it and it never waits on a client: a request joins the running batch at
the next step and leaves it when it ends, is cancelled, or its client goes away. Requests beyond `max_batch` wait
in a queue; beyond `max_queue` they get HTTP 429. Every error is OpenAI's error object (or, on the TF Serving
routes, TF Serving's `{"error": ...}`), and nothing a client sends stops the loop or the other requests.
"""

import asyncio
import codecs
import collections
import dataclasses
import hmac
import json
import math
import os
import threading
import time
import uuid
from pathlib import Path

from gpt2tf.cli import flag
from gpt2tf.errors import GPT2TFError
from gpt2tf.inference import DEFAULT_MODEL_DIR, WEIGHTS_HELP, check_weights, load_for_inference
from gpt2tf.layout import WEIGHT_FORMATS
from gpt2tf.settings import MAX_LOGPROBS, MAX_SEED, random_seed
from gpt2tf.stops import cut_at_stop

API_KEY_ENV = "GPT2TF_API_KEY"
MAX_STOPS = 4  # stop strings per request, as OpenAI
PAGE = Path(__file__).with_name("page.html")


@dataclasses.dataclass
class ServeConfig:
    """What `serve.py` (and `gpt2tf serve`) does; each field is the flag of the same name."""

    model_dir: str = flag(None, f"an OpenAI model dir or a fine-tuning run dir (default: {DEFAULT_MODEL_DIR})")
    model_name: str = flag(None, "the model's id in the API (default: the model dir's name)")
    host: str = flag("127.0.0.1", "the address to listen on (0.0.0.0: every interface)")
    port: int = flag(8000, "the port to listen on")
    max_batch: int = flag(8, "requests decoded together (continuous batching)")
    max_queue: int = flag(64, "requests waiting for a slot; more get HTTP 429")
    api_key: str = flag(None, f"require `Authorization: Bearer KEY` on /v1/ (default: ${API_KEY_ENV} if set)")
    cors_origin: str = flag(None, "let pages from this origin call the API (default: no CORS)")
    truncate_prompt: bool = flag(False, "drop the start of a prompt that does not fit the context (else HTTP 400)")
    max_body_bytes: int = flag(1 << 20, "the largest request body accepted")
    precision: str = flag(
        "float32", "compute dtype (mixed types are for GPUs)", choices=("float32", "mixed_float16", "mixed_bfloat16")
    )
    no_xla: bool = flag(False, "don't compile the decode step with XLA")
    weights: str = flag(None, WEIGHTS_HELP, choices=WEIGHT_FORMATS)


def check(config):
    """The settings, as one-line errors, before TensorFlow and the model are loaded."""
    check_weights(config.weights, config.precision)
    for name in ("max_batch", "max_queue", "max_body_bytes"):
        if getattr(config, name) < 1:
            raise GPT2TFError(f"--{name} must be at least 1, got {getattr(config, name)}")
    if not 0 <= config.port <= 65535:
        raise GPT2TFError(f"--port must be from 0 to 65535, got {config.port}")


class ApiError(Exception):
    """A request the server refuses: HTTP `status` with OpenAI's error object."""

    def __init__(self, status, message, *, param=None, type="invalid_request_error", code=None):
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type, code

    def body(self):
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# ---------------------------------------------------------------------------------------------------------------
# The engine's thread


class Job:
    """One HTTP request's engine requests (its choices), and the queue their outputs come back on."""

    def __init__(self, requests, loop, *, score_prompts=False):
        self.requests, self.loop, self.score_prompts = requests, loop, score_prompts
        self.queue = asyncio.Queue()
        self.cancelled = False

    def put(self, item):
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the event loop is closed (the server is stopping): nobody is listening
            self.cancelled = True


class Worker:
    """Runs the engine on a thread of its own. `submit` queues a job's requests, which join the batch as slots free
    up; their outputs go back as `(choice, Output)` items on the job's queue, a failure as `(choice, ApiError)`,
    and `(None, prompt log-probabilities)` first for a job that asked for them."""

    def __init__(self, engine, *, max_queue):
        self.engine, self.max_queue = engine, max_queue
        self._waiting = collections.deque()  # (job, choice, Request) that have no slot yet
        self._cancelled = []
        self._owner = {}  # rid -> (job, choice)
        self._wake = threading.Condition()
        self.decoding = 0
        self._thread = threading.Thread(target=self._run, name="gpt2tf-engine", daemon=True)
        self._thread.start()

    @property
    def queued(self):
        return len(self._waiting)

    def submit(self, job):
        with self._wake:
            if len(self._waiting) + len(job.requests) > self.max_queue + self.engine.free_slots:
                raise ApiError(
                    429,
                    f"the server is busy: {len(self._waiting)} requests are waiting for a slot; retry later",
                    type="server_busy",
                    code="rate_limit_exceeded",
                )
            self._waiting.extend((job, choice, request) for choice, request in enumerate(job.requests))
            self._wake.notify()

    def cancel(self, job):
        with self._wake:
            job.cancelled = True
            self._cancelled.append(job)
            self._wake.notify()

    def _run(self):
        engine = self.engine
        while True:
            with self._wake:
                while not self._waiting and not self._cancelled and not engine.active:
                    self._wake.wait()
                cancelled, self._cancelled = self._cancelled, []
                self._waiting = collections.deque(w for w in self._waiting if not w[0].cancelled)
                joining = [self._waiting.popleft() for _ in range(min(engine.free_slots, len(self._waiting)))]
            for job in cancelled:
                for rid, (owner, _) in list(self._owner.items()):
                    if owner is job:
                        engine.cancel(rid)
                        del self._owner[rid]
            for job, choice, request in joining:
                self._join(job, choice, request)
            try:
                outputs = engine.step()
            except Exception as err:
                self._fail_all(err)
                continue
            for output in outputs:
                job, choice = self._owner[output.rid]
                job.put((choice, output))
                if output.finished:
                    del self._owner[output.rid]
            self.decoding = engine.active

    def _join(self, job, choice, request):
        try:
            if job.score_prompts and choice == 0:
                job.put((None, self._prompt_logprobs(job)))
            self._owner[self.engine.add(request)] = (job, choice)
        except GPT2TFError as err:
            job.put((choice, ApiError(400, str(err))))
        except Exception as err:
            job.put((choice, ApiError(500, f"the request failed: {err}", type="server_error")))

    def _prompt_logprobs(self, job):
        """Each prompt token's log-probability given the ones before it, and its 5 most likely, per prompt."""
        import tensorflow as tf

        scored = {}
        for request in job.requests:
            if request.prompt in scored:
                continue
            logits = self.engine.model(tf.constant([request.prompt]))[0]  # [len, vocab]
            log_p = tf.nn.log_softmax(logits[:-1])
            top = tf.math.top_k(log_p, k=MAX_LOGPROBS)
            chosen = tf.gather(log_p, list(request.prompt[1:]), batch_dims=1)
            n = request.logprobs
            scored[request.prompt] = [(None, None)] + [
                (float(c), dict(zip(map(int, ids[:n]), map(float, values[:n]))))
                for c, ids, values in zip(chosen.numpy(), top.indices.numpy(), top.values.numpy())
            ]
        return scored

    def _fail_all(self, err):
        from gpt2tf.checkpoint import first_line

        error = ApiError(500, f"decoding failed: {first_line(err)}", type="server_error")
        for rid, (job, choice) in list(self._owner.items()):
            job.put((choice, error))
            self.engine.cancel(rid)
        self._owner.clear()


# ---------------------------------------------------------------------------------------------------------------
# OpenAI's completions


@dataclasses.dataclass
class Completion:
    """A `/v1/completions` request, checked."""

    prompts: list  # token id lists
    prompt_texts: list
    n: int
    max_tokens: int
    settings: dict  # temperature, top_k, top_p, repetition_penalty
    seed: int
    stop: tuple
    stream: bool
    echo: bool
    logprobs: int  # or None


_IGNORED = {
    "model",
    "user",
    "stream_options",
    "suffix",
    "best_of",
    "logit_bias",
    "presence_penalty",
    "frequency_penalty",
}


def parse_completion(body, *, encoder, n_ctx, truncate_prompt, max_choices):
    """A `Completion` from the JSON body, or an ApiError (400) naming the field and the fix."""
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
    } | _IGNORED
    unknown = sorted(set(body) - known)
    if unknown:
        raise ApiError(400, f"unknown field {unknown[0]!r}", param=unknown[0])
    for name, neutral in (("presence_penalty", 0), ("frequency_penalty", 0), ("suffix", None), ("logit_bias", None)):
        if body.get(name) not in (neutral, None, {}):
            raise ApiError(400, f"{name} is not supported (use repetition_penalty to discourage repeats)", param=name)
    if body.get("best_of") not in (None, 1, body.get("n", 1)):
        raise ApiError(400, "best_of is not supported", param="best_of")
    prompt = body.get("prompt", "")
    if isinstance(prompt, str) or _is_ids(prompt):
        prompt = [prompt]
    if not (isinstance(prompt, list) and prompt and all(isinstance(p, str) or _is_ids(p) for p in prompt)):
        raise ApiError(400, "prompt must be a string, a list of strings, or token ids", param="prompt")
    prompts = [encoder.encode(p) if isinstance(p, str) else list(p) for p in prompt]
    n = _integer(body, "n", 1, 1, max_choices)
    max_tokens = _integer(body, "max_tokens", 16, 1, n_ctx - 1)
    settings = dict(
        temperature=_number(body, "temperature", 1.0, 0.0, math.inf),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
        top_k=_integer(body, "top_k", 0, 0, 10**9),
        repetition_penalty=_number(body, "repetition_penalty", 1.0, 0.0, math.inf, low_open=True),
    )
    seed = body.get("seed")
    seed = random_seed() if seed is None else _integer(body, "seed", 0, 0, MAX_SEED)
    stop = body.get("stop") or ()
    stop = (stop,) if isinstance(stop, str) else stop
    if not (isinstance(stop, (list, tuple)) and all(isinstance(s, str) for s in stop)):
        raise ApiError(400, "stop must be a string or a list of strings", param="stop")
    if len(stop) > MAX_STOPS:
        raise ApiError(400, f"stop takes at most {MAX_STOPS} strings, got {len(stop)}", param="stop")
    logprobs = body.get("logprobs")
    logprobs = None if logprobs is None else _integer(body, "logprobs", 0, 0, MAX_LOGPROBS)
    for i, ids in enumerate(prompts):
        if not ids:
            ids.append(encoder.eot_id)  # OpenAI's empty prompt is <|endoftext|>
        if any(not 0 <= t < len(encoder) for t in ids):
            raise ApiError(400, f"prompt {i} holds token ids outside the vocabulary", param="prompt")
        if len(ids) + max_tokens > n_ctx:
            if not truncate_prompt:
                raise ApiError(
                    400,
                    f"prompt {i} has {len(ids)} tokens; with max_tokens {max_tokens} that exceeds "
                    f"the model's context of {n_ctx}: shorten the prompt or max_tokens",
                    param="prompt",
                    code="context_length_exceeded",
                )
            del ids[: len(ids) + max_tokens - n_ctx]
    if len(prompts) * n > max_choices:
        raise ApiError(
            400,
            f"{len(prompts)} prompts x n={n} is {len(prompts) * n} sequences, more than this server "
            f"takes at once ({max_choices}); send fewer",
            param="n",
        )
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
    """The engine's requests for a completion: prompt-major, choice i * n + j is sample j of prompt i."""
    from gpt2tf.engine import Request

    return [
        Request(
            prompt=ids,
            max_new_tokens=completion.max_tokens,
            seed=completion.seed,
            sample=j,
            stop=completion.stop,
            stop_at_eos=True,
            logprobs=completion.logprobs,
            **completion.settings,
        )
        for ids in completion.prompts
        for j in range(completion.n)
    ]


class _Choice:
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


# ---------------------------------------------------------------------------------------------------------------
# The app


def create_app(config, *, model=None, encoder=None):
    """The FastAPI app serving `model` (default: loaded as `config` says) with its engine's thread started."""
    from fastapi import FastAPI
    from fastapi import Request as HttpRequest
    from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

    from gpt2tf.encoder import get_encoder
    from gpt2tf.engine import Engine

    check(config)
    encoder = encoder or get_encoder()
    model = model or load_for_inference(config.model_dir, precision=config.precision, weights=config.weights)
    name = config.model_name or Path(config.model_dir or DEFAULT_MODEL_DIR).name
    n_ctx = model.hparams.n_ctx
    engine = Engine(model, max_batch=config.max_batch, jit_compile=not config.no_xla, encoder=encoder)
    engine.warm_up()  # every compilation now, none while a request waits
    worker = Worker(engine, max_queue=config.max_queue)
    api_key = config.api_key or os.environ.get(API_KEY_ENV) or None
    created = int(time.time())
    app = FastAPI(title="gpt2tf", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.worker = worker

    @app.middleware("http")
    async def guard(request, call_next):
        path = request.url.path
        if api_key and path.startswith("/v1/"):
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return _error(
                    ApiError(
                        401, "missing or wrong API key: send `Authorization: Bearer <key>`", code="invalid_api_key"
                    ),
                    path,
                )
        length = request.headers.get("content-length")
        if length and (not length.isdigit() or int(length) > config.max_body_bytes):
            return _error(ApiError(413, f"the body is larger than the {config.max_body_bytes} bytes accepted"), path)
        return await call_next(request)

    if config.cors_origin:  # added last, so it is outermost: preflight requests carry no API key
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=[config.cors_origin],
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )

    async def read_json(request):
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > config.max_body_bytes:
                raise ApiError(413, f"the body is larger than the {config.max_body_bytes} bytes accepted")
        try:
            return json.loads(bytes(body))
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "the body is not JSON") from None

    @app.exception_handler(ApiError)
    async def api_error(request, err):
        return _error(err, request.url.path)

    @app.exception_handler(GPT2TFError)
    async def bad_input(request, err):  # the library's one-line errors are about what the request asked for
        return _error(ApiError(400, str(err)), request.url.path)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8").replace("{{MODEL}}", name))

    @app.get("/health")
    async def health():
        return {"status": "ok", "active": worker.decoding, "queued": worker.queued}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": "gpt2tf"}]}

    @app.post("/v1/completions")
    async def completions(request: HttpRequest):
        body = await read_json(request)
        completion = parse_completion(
            body,
            encoder=encoder,
            n_ctx=n_ctx,
            truncate_prompt=config.truncate_prompt,
            max_choices=config.max_batch + config.max_queue,
        )
        job = Job(
            engine_requests(completion),
            asyncio.get_running_loop(),
            score_prompts=completion.echo and completion.logprobs is not None,
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
        choices = _choices(completion)
        prompt_scores = await _collect(request, job, choices)
        completion_tokens = sum(len(c.ids) for c in choices)
        prompt_tokens = sum(len(p) for p in completion.prompts)
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
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def _choices(completion):
        prefixes = [
            completion.prompt_texts[i // completion.n] if completion.echo else ""
            for i in range(len(completion.prompts) * completion.n)
        ]
        return [_Choice(encoder, completion.stop, prefix) for prefix in prefixes]

    def _logprobs(completion, choice_index, prompt_scores, ids, entries, offset):
        if completion.logprobs is None:
            return None
        if prompt_scores is not None:  # echo: the prompt's tokens first
            prompt = completion.prompts[choice_index // completion.n]
            ids, entries = list(prompt) + ids, prompt_scores[tuple(prompt)] + entries
        return logprobs_object(encoder, entries, ids, offset)

    async def _collect(request, job, choices):
        """Wait for every choice of `job` (cancelling it if the client goes away); the prompt scores, if any."""
        prompt_scores, remaining = None, set(range(len(job.requests)))
        while remaining:
            try:
                choice, item = await asyncio.wait_for(job.queue.get(), timeout=0.2)
            except asyncio.TimeoutError:
                if await request.is_disconnected():  # the client is gone: free its slots
                    worker.cancel(job)
                    raise ApiError(499, "the client went away")
                continue
            if isinstance(item, ApiError):
                worker.cancel(job)
                raise item
            if choice is None:
                prompt_scores = item
                continue
            choices[choice].add(item)
            if item.finished:
                remaining.discard(choice)
        return prompt_scores

    async def _stream(job, completion, meta):
        choices, prompt_scores, remaining = _choices(completion), None, set(range(len(job.requests)))
        try:
            if completion.echo and completion.logprobs is None:
                for i, c in enumerate(choices):
                    yield _event(
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
                yield _event(
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
            yield "data: [DONE]\n\n"
        except ApiError as err:
            yield _event(err.body())
        finally:
            worker.cancel(job)  # a finished job's cancel does nothing; a client gone frees its slots

    # -----------------------------------------------------------------------------------------------------------
    # TensorFlow Serving's REST API

    @app.get("/v1/models/{model}")
    async def model_status(model: str):
        if model != name:
            return JSONResponse({"error": f"Servable not found for request: Latest({model})"}, status_code=404)
        return {
            "model_version_status": [
                {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
            ]
        }

    @app.post("/v1/models/{model}:predict")
    async def predict(model: str, request: HttpRequest):
        if model != name:
            return JSONResponse({"error": f"Servable not found for request: Latest({model})"}, status_code=404)
        try:
            body = await read_json(request)
            instances, columnar = _instances(body)
            completions = [
                parse_completion(i, encoder=encoder, n_ctx=n_ctx, truncate_prompt=config.truncate_prompt, max_choices=1)
                for i in instances
            ]
        except ApiError as err:
            return JSONResponse({"error": err.message}, status_code=err.status)
        requests = [r for c in completions for r in engine_requests(c)]
        choices = [_Choice(encoder, c.stop) for c in completions]
        try:
            if len(requests) > config.max_batch + config.max_queue:
                raise ApiError(
                    400,
                    f"{len(requests)} instances are more than this server takes at once "
                    f"({config.max_batch + config.max_queue}); send fewer",
                )
            job = Job(requests, asyncio.get_running_loop())
            worker.submit(job)
            await _collect(request, job, choices)
        except ApiError as err:
            return JSONResponse({"error": err.message}, status_code=err.status)
        if columnar:
            return {"outputs": {"text": [c.text for c in choices], "tokens": [c.ids for c in choices]}}
        return {"predictions": [{"text": c.text, "tokens": c.ids} for c in choices]}

    return app


def _instances(body):
    """TF Serving's row (`instances`) or columnar (`inputs`) form as a list of completion bodies; `max_new_tokens`
    is the instance's name for max_tokens."""
    if not isinstance(body, dict) or ("instances" in body) == ("inputs" in body):
        raise ApiError(400, 'the body must be a JSON object with "instances" (a list) or "inputs"')
    if "instances" in body:
        rows, columnar = body["instances"], False
        if not isinstance(rows, list) or not rows:
            raise ApiError(400, '"instances" must be a non-empty list')
    else:
        inputs, columnar = body["inputs"], True
        if isinstance(inputs, (str, list)):
            inputs = {"prompt": inputs}
        if not isinstance(inputs, dict) or "prompt" not in inputs:
            raise ApiError(400, '"inputs" must hold "prompt" (a string or a list of strings)')
        prompts = inputs["prompt"] if isinstance(inputs["prompt"], list) else [inputs["prompt"]]
        for key, value in inputs.items():
            if isinstance(value, list) and key != "stop" and len(value) != len(prompts):
                raise ApiError(
                    400,
                    f'"inputs" has {len(prompts)} prompts but {len(value)} values of {key!r}: '
                    f"give one per prompt, or a single value for all",
                )
        rows = [
            {k: (v[i] if isinstance(v, list) and k != "stop" else v) for k, v in inputs.items()}
            for i in range(len(prompts))
        ]
    out = []
    for row in rows:
        row = {"prompt": row} if isinstance(row, str) else row
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise ApiError(400, 'each instance needs a "prompt" string')
        known = {"prompt", "max_new_tokens", "temperature", "top_k", "top_p", "seed", "repetition_penalty", "stop"}
        unknown = sorted(set(row) - known)
        if unknown:
            raise ApiError(400, f"unknown instance field {unknown[0]!r}")
        row = dict(row)
        if "max_new_tokens" in row:
            row["max_tokens"] = row.pop("max_new_tokens")
        out.append(row)
    return out, columnar


def _event(payload):
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _error(err, path):
    from fastapi.responses import JSONResponse

    if "/v1/models/" in path and (path.endswith(":predict") or path.count("/") == 3):  # TF Serving's routes
        return JSONResponse({"error": err.message}, status_code=err.status)
    return JSONResponse(err.body(), status_code=err.status)


def serve(config):
    """Load the model, start the engine's thread and serve HTTP until interrupted."""
    import socket

    import uvicorn

    try:  # a busy port is found now, not after the model is loaded and compiled
        with socket.create_server((config.host, config.port)):
            pass
    except OSError as err:
        raise GPT2TFError(
            f"cannot listen on {config.host}:{config.port} ({err.strerror}); choose another --port "
            f"(or stop what uses it)"
        ) from None
    app = create_app(config)
    print(
        f"serving {Path(config.model_dir or DEFAULT_MODEL_DIR)} on http://{config.host}:{config.port}/ "
        f"(OpenAI API at /v1, the page at /)",
        flush=True,
    )
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning")

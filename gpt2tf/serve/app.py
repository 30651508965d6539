"""The HTTP app: the decode engine's worker behind FastAPI, with OpenAI's API, TF Serving's API and a page.

`serve(config)` runs the `serve` command; `create_app(config)` loads the model (unless given one), starts the
engine's thread (`gpt2tf.serve.worker`), and assembles the app from its pieces: the guard (API key, body size),
CORS, the error handlers, the page and `/health` (here), OpenAI's routes (`gpt2tf.serve.openai_api`) and TF
Serving's (`gpt2tf.serve.tf_serving`).
A new HTTP route goes in the module of the API it belongs to (or a new one with its own `add_routes`), added here.
"""

import dataclasses
import hmac
import os
import socket
import time
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from gpt2tf.decode.engine import Engine
from gpt2tf.encoder import get_encoder
from gpt2tf.errors import GPT2TFError
from gpt2tf.formats.load import load_for_inference
from gpt2tf.layout import DEFAULT_MODEL_DIR
from gpt2tf.serve import openai_api, tf_serving
from gpt2tf.serve.command import API_KEY_ENV, check
from gpt2tf.serve.http import ApiError, error_response
from gpt2tf.serve.worker import Worker

PAGE = Path(__file__).with_name("page.html")


@dataclasses.dataclass(frozen=True)
class Service:
    """What the routes serve: the config, the engine's worker, the tokenizer, the model's API name and context."""

    config: object
    worker: Worker
    encoder: object
    name: str
    n_ctx: int
    created: int  # when the server started (OpenAI's `created`)


def create_app(config, *, model=None, encoder=None):
    """The FastAPI app serving `model` (default: loaded as `config` says) with its engine's thread started."""
    check(config)
    encoder = encoder or get_encoder()
    model = model or load_for_inference(config.model_dir, dtype=config.dtype, weights=config.weights)
    engine = Engine(
        model,
        max_batch=config.max_batch,
        jit_compile=not config.no_xla,
        encoder=encoder,
        stream_interval=config.stream_interval,
    )
    engine.warm_up()  # every compilation now, none while a request waits
    worker = Worker(engine, max_queue=config.max_queue)
    name = config.model_name or Path(config.model_dir or DEFAULT_MODEL_DIR).name
    service = Service(config, worker, encoder, name, model.hparams.n_ctx, int(time.time()))
    app = FastAPI(title="gpt2tf", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.worker = worker
    _add_guard(app, config)
    _add_error_handlers(app)
    _add_page_and_health(app, service)
    openai_api.add_routes(app, service)
    tf_serving.add_routes(app, service)
    return app


def _add_guard(app, config):
    """The API key on /v1/ and the body size limit, checked before a route runs; CORS outermost."""
    api_key = config.api_key or os.environ.get(API_KEY_ENV) or None

    @app.middleware("http")
    async def guard(request, call_next):
        path = request.url.path
        if api_key and path.startswith("/v1/"):
            scheme, _, given = request.headers.get("authorization", "").strip().partition(" ")
            # The scheme is case-insensitive (RFC 9110); the key is compared in constant time.
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), api_key.encode()):
                refusal = "missing or wrong API key: send `Authorization: Bearer <key>`"
                return error_response(ApiError(401, refusal, code="invalid_api_key"), path)
        length = request.headers.get("content-length")
        if length and (not length.isdigit() or int(length) > config.max_body_bytes):
            refusal = f"the body is larger than the {config.max_body_bytes} bytes accepted"
            return error_response(ApiError(413, refusal), path)
        return await call_next(request)

    if config.cors_origin:  # added last, so it is outermost: preflight requests carry no API key
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=[config.cors_origin],
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )


def _add_error_handlers(app):
    @app.exception_handler(ApiError)
    async def api_error(request, err):
        return error_response(err, request.url.path)

    @app.exception_handler(GPT2TFError)
    async def bad_input(request, err):  # the library's one-line errors are about what the request asked for
        return error_response(ApiError(400, str(err)), request.url.path)


def _add_page_and_health(app, service):
    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8").replace("{{MODEL}}", service.name))

    @app.get("/health")
    async def health():
        return {"status": "ok", "active": service.worker.decoding, "queued": service.worker.queued}


def serve(config):
    """Load the model, start the engine's thread and serve HTTP until interrupted."""
    check(config)
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

"""TensorFlow Serving's REST API over the same worker: `GET /v1/models/<name>` and `POST /v1/models/<name>:predict`
in the row (`instances`) and columnar (`inputs`) forms, so a client written for the exported SavedModel under
TF Serving works against this server too. Errors are TF Serving's `{"error": ...}`.
"""

import asyncio

from fastapi import Request
from fastapi.responses import JSONResponse

from gpt2tf.serve.http import ApiError, read_json
from gpt2tf.serve.openai_api import Choice, engine_requests, parse_completion
from gpt2tf.serve.worker import Job, collect


def add_routes(app, service):
    """TF Serving's status and predict routes on `app`, served by `service` (a `gpt2tf.serve.app.Service`)."""
    config, worker, encoder, name, n_ctx = service.config, service.worker, service.encoder, service.name, service.n_ctx

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
    async def predict(model: str, request: Request):
        if model != name:
            return JSONResponse({"error": f"Servable not found for request: Latest({model})"}, status_code=404)
        try:
            body = await read_json(request, config.max_body_bytes)
            instances, columnar = _instances(body)
            completions = [
                parse_completion(i, encoder=encoder, n_ctx=n_ctx, truncate_prompt=config.truncate_prompt, max_choices=1)
                for i in instances
            ]
        except ApiError as err:
            return JSONResponse({"error": err.message}, status_code=err.status)
        requests = [r for c in completions for r in engine_requests(c)]
        choices = [Choice(encoder, c.stop) for c in completions]
        try:
            if len(requests) > config.max_batch + config.max_queue:
                raise ApiError(
                    400,
                    f"{len(requests)} instances are more than this server takes at once "
                    f"({config.max_batch + config.max_queue}); send fewer",
                )
            job = Job(requests, asyncio.get_running_loop())
            worker.submit(job)
            await collect(request, worker, job, choices)
        except ApiError as err:
            return JSONResponse({"error": err.message}, status_code=err.status)
        if columnar:
            return {"outputs": {"text": [c.text for c in choices], "tokens": [c.ids for c in choices]}}
        return {"predictions": [{"text": c.text, "tokens": c.ids} for c in choices]}


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

"""What every route of the server shares: its refusal type, reading a JSON body, and the error responses.

Every error is OpenAI's error object, or, on the TF Serving routes, TF Serving's `{"error": ...}`.
"""

import json

from fastapi.responses import JSONResponse


class ApiError(Exception):
    """A request the server refuses: HTTP `status` with OpenAI's error object."""

    def __init__(self, status, message, *, param=None, type="invalid_request_error", code=None, headers=None):
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type, code
        self.headers = headers  # e.g. Retry-After on a 429

    def body(self):
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


async def read_json(request, max_body_bytes):
    """A request's JSON body, read up to `max_body_bytes` (413 beyond; a body that is not JSON is 400)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_body_bytes:
            raise ApiError(413, f"the body is larger than the {max_body_bytes} bytes accepted")
    try:
        return json.loads(bytes(body))
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the body is not JSON") from None


def is_tf_serving(path):
    """Whether `path` is one of TF Serving's routes, which answer errors in TF Serving's shape."""
    return "/v1/models/" in path and (path.endswith(":predict") or path.count("/") == 3)


def error_response(err, path):
    headers = getattr(err, "headers", None)
    if is_tf_serving(path):
        return JSONResponse({"error": err.message}, status_code=err.status, headers=headers)
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


def event(payload):
    """One server-sent event."""
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

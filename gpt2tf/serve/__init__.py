"""Serving a model over HTTP, with continuous batching.

    http.py        what every route shares: ApiError, reading a JSON body, error responses
    worker.py      the engine's thread: requests join the running batch; outputs go back to the HTTP layer
    openai_api.py  OpenAI's /v1/completions and /v1/models
    tf_serving.py  TF Serving's /v1/models/<name>[:predict]
    command.py     the `serve` command's settings: ServeConfig and check
    app.py         create_app (the pieces assembled, the page (page.html) and /health) and serve

Re-exported lazily: importing the command's config loads neither TensorFlow nor FastAPI.
"""

from gpt2tf._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "ServeConfig": "gpt2tf.serve.command",
        "check": "gpt2tf.serve.command",
        "serve": "gpt2tf.serve.app",
        "create_app": "gpt2tf.serve.app",
        "ApiError": "gpt2tf.serve.http",
        "Worker": "gpt2tf.serve.worker",
        "parse_completion": "gpt2tf.serve.openai_api",
    },
)

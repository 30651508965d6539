"""The `serve` command's settings: `ServeConfig` (its flags, with their defaults) and `check`, with no TensorFlow
and no FastAPI; `gpt2tf.serve.app.serve` runs it.

    python serve.py --model_dir models/124M --port 8000          # also: gpt2tf serve ...
"""

import dataclasses

from gpt2tf.config import ModelFlags, PrecisionFlags, WeightsFlags, flag, override
from gpt2tf.errors import GPT2TFError
from gpt2tf.settings import STREAM_INTERVAL

API_KEY_ENV = "GPT2TF_API_KEY"


@dataclasses.dataclass
class ServeConfig(WeightsFlags, PrecisionFlags, ModelFlags):
    """What `serve.py` (and `gpt2tf serve`) does; each field is the flag of the same name."""

    no_xla: bool = override(PrecisionFlags, "no_xla", False, "don't compile the decode step with XLA")
    model_name: str = flag(None, "the model's id in the API (default: the model dir's name)")
    host: str = flag("127.0.0.1", "the address to listen on (0.0.0.0: every interface)")
    port: int = flag(8000, "the port to listen on")
    max_batch: int = flag(8, "requests decoded together (continuous batching)")
    max_queue: int = flag(64, "requests waiting for a slot; more get HTTP 429")
    stream_interval: float = flag(
        STREAM_INTERVAL,
        "seconds of decoding per call while nobody waits to join: tokens stream in bursts that often, a new "
        "request waits at most that long to join (0: one token per call)",
    )
    api_key: str = flag(None, f"require `Authorization: Bearer KEY` on /v1/ (default: ${API_KEY_ENV} if set)")
    cors_origin: str = flag(None, "let pages from this origin call the API (default: no CORS)")
    truncate_prompt: bool = flag(False, "drop the start of a prompt that does not fit the context (else HTTP 400)")
    max_body_bytes: int = flag(1 << 20, "the largest request body accepted")


def check(config):
    """The settings, as one-line errors, before TensorFlow and the model are loaded."""
    config.check_weights()
    for name in ("max_batch", "max_queue", "max_body_bytes"):
        if getattr(config, name) < 1:
            raise GPT2TFError(f"--{name} must be at least 1, got {getattr(config, name)}")
    if not 0 <= config.stream_interval <= 10:
        raise GPT2TFError(f"--stream_interval must be from 0 to 10 seconds, got {config.stream_interval}")
    if not 0 <= config.port <= 65535:
        raise GPT2TFError(f"--port must be from 0 to 65535, got {config.port}")

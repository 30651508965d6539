"""Where the decode engine (`gpt2tf.decode.engine`) used to live, kept so that `import gpt2tf.engine` keeps working: a
thin re-export.

New code imports from the new home."""

from gpt2tf.decode.engine import CHUNK_STEPS, Engine, Output, Request, default_kernels
from gpt2tf.decode.runner import Runner, decode_loop, runner_for

__all__ = ["CHUNK_STEPS", "Engine", "Output", "Request", "Runner", "decode_loop", "default_kernels", "runner_for"]

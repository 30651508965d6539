"""Where the decode engine (`gpt2tf.decode.engine`) and its runner (`gpt2tf.decode.runner`) used to live, kept so that
`import gpt2tf.engine` (and every name the old module had, its imports included) keeps working: a thin re-export.
New code imports from the new homes."""

from gpt2tf.decode.engine import CHUNK_STEPS, Engine, Output, Request, default_kernels
from gpt2tf.decode.filters import choose_tokens
from gpt2tf.decode.runner import Runner, decode_loop, runner_for
from gpt2tf.decode.stops import StopScanner
from gpt2tf.errors import GPT2TFError
from gpt2tf.layout import EOT_ID, PROMPT_BUCKET
from gpt2tf.settings import MAX_LOGPROBS, MAX_SEED, SamplerConfig, check_seed, random_seed


def compiled_for(model, *, jit_compile=True):
    """The runner an engine of `model` uses (what this function gave before the decode package)."""
    return runner_for(model, jit_compile=jit_compile, kernels=default_kernels(jit_compile))


__all__ = [
    "CHUNK_STEPS",
    "EOT_ID",
    "MAX_LOGPROBS",
    "MAX_SEED",
    "PROMPT_BUCKET",
    "Engine",
    "GPT2TFError",
    "Output",
    "Request",
    "Runner",
    "SamplerConfig",
    "StopScanner",
    "check_seed",
    "choose_tokens",
    "compiled_for",
    "decode_loop",
    "default_kernels",
    "random_seed",
    "runner_for",
]

"""Where generating from prompts (`gpt2tf.decode.generate`) used to live, kept so that `import gpt2tf.sample` (and
every name the old module had, its imports included) keeps working: a thin re-export. New code imports from the new
homes."""

from gpt2tf.decode.engine import CHUNK_STEPS, Engine, Request
from gpt2tf.decode.generate import generate, generate_stream, generate_text
from gpt2tf.decode.stops import cut_at_stop
from gpt2tf.encoder import get_encoder
from gpt2tf.errors import GPT2TFError
from gpt2tf.layout import EOT_ID, PROMPT_BUCKET
from gpt2tf.settings import SamplerConfig, check_seed, random_seed

__all__ = [
    "CHUNK_STEPS",
    "EOT_ID",
    "PROMPT_BUCKET",
    "Engine",
    "GPT2TFError",
    "Request",
    "SamplerConfig",
    "check_seed",
    "cut_at_stop",
    "generate",
    "generate_stream",
    "generate_text",
    "get_encoder",
    "random_seed",
]

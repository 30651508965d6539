"""Where choosing the next token (`gpt2tf.decode.filters`) used to live, kept so that `import gpt2tf.filters` (and
every name the old module had, its imports included) keeps working: a thin re-export. New code imports from the new
homes."""

from gpt2tf.decode.filters import (
    FAST_K,
    apply_repetition_penalty,
    choose_tokens,
    filter_logits,
    gumbel_noise,
    top_k_logits,
    top_p_logits,
)
from gpt2tf.layout import MASKED_VALUE

__all__ = [
    "FAST_K",
    "MASKED_VALUE",
    "apply_repetition_penalty",
    "choose_tokens",
    "filter_logits",
    "gumbel_noise",
    "top_k_logits",
    "top_p_logits",
]

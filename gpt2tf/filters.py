"""Where choosing the next token (`gpt2tf.decode.filters`) used to live, kept so that `import gpt2tf.filters` keeps
working: a thin re-export.

New code imports from the new home."""

from gpt2tf.decode.filters import (
    FAST_K,
    apply_repetition_penalty,
    choose_tokens,
    filter_logits,
    gumbel_noise,
    top_k_logits,
    top_p_logits,
)

__all__ = [
    "FAST_K",
    "apply_repetition_penalty",
    "choose_tokens",
    "filter_logits",
    "gumbel_noise",
    "top_k_logits",
    "top_p_logits",
]

"""Where generating from prompts (`gpt2tf.decode.generate`) used to live, kept so that `import gpt2tf.sample` keeps
working: a thin re-export.

New code imports from the new home."""

from gpt2tf.decode.generate import generate, generate_stream, generate_text

__all__ = ["generate", "generate_stream", "generate_text"]

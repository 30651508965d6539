"""gpt2tf: OpenAI's GPT-2 in TensorFlow 2 / Keras 3 — exact, fast to load, lean on memory.

The public names are imported lazily, so `import gpt2tf` (or `gpt2tf.encoder`, `gpt2tf.hparams`) does not load
TensorFlow, and `gpt2tf.load_model` imports the model and the one format it reads. Where everything lives:
docs/layout.md.
"""

from gpt2tf._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "HParams": "gpt2tf.hparams",
    "GPT2TFError": "gpt2tf.errors",
    "GPT2": "gpt2tf.model",
    "load_model": "gpt2tf.formats.load",
    "save_openai_checkpoint": "gpt2tf.formats.openai",
    "write_synthetic_checkpoint": "gpt2tf.formats.openai",
    "save_hf_checkpoint": "gpt2tf.formats.hf",
    "save_quantized": "gpt2tf.formats.quantized",
    "load_hf_model": "gpt2tf.formats.hf",
    "Encoder": "gpt2tf.encoder",
    "get_encoder": "gpt2tf.encoder",
    "generate": "gpt2tf.decode.generate",
    "generate_text": "gpt2tf.decode.generate",
    "beam_search": "gpt2tf.decode.generate",
    "TrainConfig": "gpt2tf.train.config",
    "finetune": "gpt2tf.train.loop",
    "load_h5_weights": "gpt2tf.formats.h5",
    "write_h5_weights": "gpt2tf.formats.h5",
}

__all__ = [  # noqa: RUF022 -- the public names, in _EXPORTS' order
    "HParams", "GPT2TFError", "GPT2", "load_model", "save_openai_checkpoint", "write_synthetic_checkpoint",
    "save_hf_checkpoint", "save_quantized", "load_hf_model", "Encoder", "get_encoder", "generate", "generate_text",
    "beam_search", "TrainConfig", "finetune", "load_h5_weights", "write_h5_weights",
]  # fmt: skip
__getattr__, _dir = lazy_exports(__name__, _EXPORTS)


def __dir__():
    return [*__all__, "__version__"]

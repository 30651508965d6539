"""gpt2tf: OpenAI's GPT-2 in TensorFlow 2 / Keras 3 — exact, fast to load, lean on memory.

The public names are imported lazily, so `import gpt2tf.encoder` (or `gpt2tf.hparams`) does not load TensorFlow.
"""

__version__ = "0.1.0"

_EXPORTS = {
    "HParams": "gpt2tf.hparams",
    "GPT2TFError": "gpt2tf.errors",
    "GPT2": "gpt2tf.model",
    "load_model": "gpt2tf.checkpoint",
    "save_openai_checkpoint": "gpt2tf.checkpoint",
    "write_synthetic_checkpoint": "gpt2tf.checkpoint",
    "save_hf_checkpoint": "gpt2tf.hf",
    "save_quantized": "gpt2tf.quantize",
    "load_hf_model": "gpt2tf.hf",
    "Encoder": "gpt2tf.encoder",
    "get_encoder": "gpt2tf.encoder",
    "generate": "gpt2tf.sample",
    "generate_text": "gpt2tf.sample",
    "TrainConfig": "gpt2tf.train",
    "finetune": "gpt2tf.train",
    "load_h5_weights": "gpt2tf.h5weights",
    "write_h5_weights": "gpt2tf.h5weights",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'gpt2tf' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__ + ["__version__"]

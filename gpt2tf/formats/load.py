"""The one `load_model` above the formats: which layout a path holds, and the model (or its shape, or its weights
into a model) read from it. Each format module knows only what its own files hold; this module only asks them.

Layouts, in the order a path is tried: a dir saved by `save_quantized` (its marker file, or its bundle's prefix),
Hugging Face's dir (`config.json` + safetensors, and not also OpenAI's layout), OpenAI's model dir or checkpoint
prefix (whose errors say what is missing when nothing matches). The ancestor's `.h5` files hold weights only:
`load_h5_model` takes their shape from a model dir. The format modules (and TensorFlow) are imported inside the
functions, when a path needs them: loading an OpenAI checkpoint imports nothing of the others (h5py among them),
and `detect` needs no TensorFlow.
"""

from pathlib import Path

from gpt2tf.encoder import get_encoder
from gpt2tf.errors import GPT2TFError
from gpt2tf.layout import (
    DEFAULT_MODEL_DIR,
    HF_CONFIG_FILE,
    HF_INDEX_FILE,
    HF_WEIGHTS_FILE,
    HPARAMS_FILE,
    LITERT_FILE,
    PREFIX_NAME,
    QUANTIZED_FILE,
    QUANTIZED_PREFIX,
    STATE_FILE,
)


def is_hf_dir(path):
    """Whether `path` holds a Hugging Face checkpoint: config.json and safetensors weights (or their index)."""
    path = Path(path)
    return (path / HF_CONFIG_FILE).is_file() and (
        (path / HF_WEIGHTS_FILE).is_file() or (path / HF_INDEX_FILE).is_file()
    )


def is_openai_dir(path):
    """Whether `path` is a model dir in OpenAI's layout (or a checkpoint prefix)."""
    path = Path(path)
    return Path(f"{path}.index").is_file() or (path / STATE_FILE).is_file() or (path / f"{PREFIX_NAME}.index").is_file()


def detect(path):
    """(layout, the path to give its loader): "quantized", "hf" or "openai" (also when nothing matches)."""
    path = Path(path)
    if (path / QUANTIZED_FILE).is_file():
        return "quantized", path
    if path.name == QUANTIZED_PREFIX and (path.parent / QUANTIZED_FILE).is_file():  # the bundle's prefix
        return "quantized", path.parent
    return ("hf" if is_hf_dir(path) and not is_openai_dir(path) else "openai"), path


def load_model(model_dir, *, dtype=None, weights=None):
    """Build a GPT2 from a model dir (or checkpoint prefix) in any layout gpt2tf reads, with its weights restored.

    `dtype` is a Keras dtype policy such as "mixed_float16"; weights stay float32 either way. `weights` "int8" or
    "bf16" quantizes the projections and the token embedding as they load, for decoding (no float32 copy of them
    is kept); a dir saved by `save_quantized` loads as what it holds.
    """
    if (Path(model_dir) / LITERT_FILE).is_file():
        raise GPT2TFError(
            f"{model_dir} is a LiteRT export (export.py --format litert): `gpt2tf generate --model_dir {model_dir}` "
            f"runs it; give this command the model dir it was exported from"
        )
    layout, path = detect(model_dir)
    if layout == "quantized":
        from gpt2tf.formats import quantized

        return quantized.load_quantized(path, weights=weights, dtype=dtype)
    weight_format = weights or "float32"  # GPT2 refuses a format it does not know
    if layout == "hf":
        from gpt2tf.formats import hf

        return hf.load_hf_model(path, dtype=dtype, weights=weight_format)
    from gpt2tf.formats import openai

    return openai.load_openai_model(path, dtype=dtype, weight_format=weight_format)


def model_hparams(path):
    """The HParams of a model in OpenAI's or Hugging Face's layout (its hparams.json or config.json)."""
    if detect(path)[0] == "hf":
        from gpt2tf.formats import hf

        return hf.hparams_from_config(path)
    from gpt2tf.formats import openai

    return openai.load_hparams(openai.resolve_checkpoint(path)[0])


def restore_into(model, path):
    """Read the weights of a model in OpenAI's or Hugging Face's layout (a dir or a checkpoint prefix) into
    `model`, of the same shape."""
    if detect(path)[0] == "hf":
        from gpt2tf.formats import hf

        return hf.restore_hf_weights(model, path)
    from gpt2tf.formats import openai

    return openai.restore_weights(model, openai.resolve_checkpoint(path)[1])


def load_h5_model(model_dir, path, *, dtype=None, weights=None):
    """The GPT-2 that `model_dir` describes (its hparams.json, or a Hugging Face dir's config.json), with the
    weights of the `.h5` file at `path`."""
    from gpt2tf.formats import h5, hf, openai
    from gpt2tf.model import GPT2

    if (Path(model_dir) / HPARAMS_FILE).is_file():
        hparams = openai.load_hparams(model_dir)
    elif detect(model_dir)[0] == "hf":
        hparams = hf.hparams_from_config(model_dir)
    else:
        raise GPT2TFError(
            f"{model_dir} has no {HPARAMS_FILE} (nor a Hugging Face {HF_CONFIG_FILE}): give a model dir (e.g. "
            f"models/124M) whose shape the weights in {path} have"
        )
    model = GPT2(hparams, initializer="empty", dtype=dtype, weight_format=weights or "float32")
    h5.load_h5_weights(model, path)
    return model


def load_for_inference(model_dir=None, *, custom_model=None, dtype=None, weights=None):
    """The model a command runs: `model_dir` (default models/124M), or the weights of a `custom_model` .h5 file on
    its shape, held as `weights` says; refused if its vocabulary is smaller than GPT-2's tokenizer."""
    if not model_dir and not Path(DEFAULT_MODEL_DIR).exists():
        raise GPT2TFError(
            f"no --model_dir given and {DEFAULT_MODEL_DIR} does not exist: download OpenAI's default "
            f"model with `python download_model.py 124M`, or give --model_dir"
        )
    model_dir = model_dir or DEFAULT_MODEL_DIR
    if custom_model:
        model = load_h5_model(model_dir, custom_model, dtype=dtype, weights=weights)
    else:
        model = load_model(model_dir, dtype=dtype, weights=weights)
    vocab = len(get_encoder())
    if model.hparams.n_vocab < vocab:
        raise GPT2TFError(
            f"the model has n_vocab {model.hparams.n_vocab}, fewer than GPT-2's {vocab} token ids: it was not "
            f"trained with GPT-2's tokenizer, so its output would be garbage"
        )
    return model

"""The `export` command: `ExportConfig` (its flags, with their defaults) and `export`, which writes the SavedModel
as `EXPORT_DIR/VERSION/` (TensorFlow Serving's layout), or with `--format litert` the LiteRT model and LiteRT-LM
bundle as `EXPORT_DIR/model.tflite` and `EXPORT_DIR/model.litertlm` (`gpt2tf.export.litert`), each through a
temporary dir renamed into place.

    python export.py --model_dir models/124M --export_dir exported/gpt2      # -> exported/gpt2/1/
    python export.py --model_dir models/124M --format litert --quantize int8  # -> exported/124M-litert/
"""

import dataclasses
import os
import sys
from pathlib import Path

from gpt2tf.config import ModelFlags, PrecisionFlags, SamplingFlags, flag, override
from gpt2tf.errors import GPT2TFError
from gpt2tf.layout import DEFAULT_MODEL_DIR, LITERT_INFO, QUANTIZED_FILE


@dataclasses.dataclass
class ExportConfig(SamplingFlags, PrecisionFlags, ModelFlags):
    """What `export.py` (and `gpt2tf export`) does; each field is the flag of the same name. The sampling flags
    are `serving_default`'s fixed settings."""

    temperature: float = override(
        SamplingFlags, "temperature", 1.0, "serving_default: sampling temperature; 0 = greedy"
    )
    top_k: int = override(SamplingFlags, "top_k", 40, "serving_default: keep the k most likely tokens; 0 = off")
    top_p: float = override(SamplingFlags, "top_p", 1.0, "serving_default: nucleus sampling's p, in (0, 1]; 1 = off")
    seed: int = override(SamplingFlags, "seed", None, "serving_default: a fixed seed (default: a random one per call)")
    no_xla: bool = override(
        PrecisionFlags,
        "no_xla",
        False,
        "export without XLA (jit_compile); TF Serving's GPU images cannot run XLA-compiled functions",
    )
    format: str = flag(
        "savedmodel",
        "savedmodel (text in, text out, for TF Serving or any TF program) or litert (model.tflite with a key/value "
        "cache, and a LiteRT-LM bundle, for phones and laptops without TensorFlow)",
        choices=("savedmodel", "litert"),
    )
    export_dir: str = flag(
        None,
        "where the export goes: EXPORT_DIR/VERSION/ (TF Serving's layout), or EXPORT_DIR/ with --format litert "
        "(default: exported/<model dir name>, or exported/<model dir name>-litert)",
    )
    quantize: str = flag(
        "none",
        "litert: the weights as float32 (none), float16 (fp16) or int8 (dynamic-range: int8 weights with a scale "
        "per output row, integer products)",
        choices=("none", "fp16", "int8"),
    )
    max_len: int = flag(
        None, "litert: the key/value cache's length, prompt + output (default: the model's context)", type=int
    )
    prefill_lengths: str = flag(
        None,
        "litert: the prompt chunk lengths with a prefill_N signature, comma-separated (default: 32,128,512, those "
        "within --max_len)",
        metavar="N,N,...",
    )
    no_bundle: bool = flag(False, "litert: write model.tflite only, without the LiteRT-LM bundle")
    version: int = flag(1, "the version subdirectory TF Serving loads (the highest)")
    overwrite: bool = flag(False, "replace an existing version dir")
    max_new_tokens: int = flag(64, "serving_default: tokens generated per prompt")
    num_beams: int = flag(4, "beam_search: the beams of each search (and the hypotheses it returns)")
    length_penalty: float = flag(1.0, "beam_search: a hypothesis scores sum(log p) / length**this")
    early_stopping: str = flag("false", "beam_search: transformers' early_stopping", choices=("true", "false", "never"))
    max_new_tokens_limit: int = flag(
        None, "the most tokens a row may ask for; more is clamped (default: half the model's context)", type=int
    )


def check(config):
    """The flags' one-line errors, before TensorFlow loads."""
    if config.format == "litert":
        return check_litert(config)
    if config.format != "savedmodel":
        raise GPT2TFError(f"--format must be savedmodel or litert, got {config.format!r}")
    if not (isinstance(config.version, int) and config.version >= 1):
        raise GPT2TFError(f"--version must be a positive integer, got {config.version}")
    if config.model_dir and (Path(config.model_dir) / QUANTIZED_FILE).is_file():
        raise GPT2TFError(
            f"{config.model_dir} holds weights quantized for decoding: the export holds float32 "
            f"weights; give the float32 model dir it was made from"
        )
    if config.max_new_tokens < 1:
        raise GPT2TFError(f"--max_new_tokens must be at least 1, got {config.max_new_tokens}")
    if config.max_new_tokens_limit is not None and config.max_new_tokens_limit < config.max_new_tokens:
        raise GPT2TFError(
            f"--max_new_tokens_limit {config.max_new_tokens_limit} is below --max_new_tokens {config.max_new_tokens}"
        )
    config.check_sampling()
    from gpt2tf.settings import check_beams

    check_beams(config.num_beams, length_penalty=config.length_penalty)
    if config.num_beams < 2:
        raise GPT2TFError(f"--num_beams must be at least 2 (the beam_search signature's beams), got {config.num_beams}")
    target = version_dir(config)
    for place in (target.parent, target):
        if place.exists() and not place.is_dir():
            raise GPT2TFError(f"{place} is a file, not a directory: give another --export_dir or --version")
    if not os.access(_existing_parent(target), os.W_OK):
        raise GPT2TFError(f"cannot write {target} (no permission): give an --export_dir you can write")
    if target.exists() and any(target.iterdir()) and not config.overwrite:
        raise GPT2TFError(
            f"{target} already holds an export: give another --version (TF Serving serves the highest) or --overwrite"
        )
    if target.exists() and not target.is_dir():
        raise GPT2TFError(f"{target} is a file, not a directory: give another --export_dir or --version")


def parse_lengths(text):
    """`--prefill_lengths` "32,128" -> [32, 128]."""
    try:
        lengths = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        lengths = []
    if not lengths or min(lengths) < 1:
        raise GPT2TFError(
            f"--prefill_lengths must be positive integers separated by commas (e.g. 32,128), got {text!r}"
        )
    return sorted(set(lengths))


def check_litert(config):
    import importlib.util

    if config.quantize not in ("none", "fp16", "int8"):
        raise GPT2TFError(f"--quantize must be none, fp16 or int8, got {config.quantize!r}")
    needed = {"ai_edge_litert": "ai-edge-litert"} if config.quantize == "int8" else {}
    if not config.no_bundle:
        needed["litert_lm_builder"] = "litert-lm-builder"
    missing = [package for module, package in needed.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise GPT2TFError(
            f"the LiteRT export needs {' and '.join(missing)}: pip install 'gpt2tf[litert]'"
            + ("" if config.no_bundle else " (or give --no_bundle to write model.tflite only)")
        )
    model_dir = config.model_dir or DEFAULT_MODEL_DIR
    if (Path(model_dir) / QUANTIZED_FILE).is_file():
        raise GPT2TFError(
            f"{model_dir} holds weights quantized for decoding: the LiteRT export starts from float32 weights; give "
            f"the float32 model dir it was made from (with --quantize int8 for int8 weights)"
        )
    if config.max_len is not None and config.max_len < 2:
        raise GPT2TFError(f"--max_len must be at least 2, got {config.max_len}")
    lengths = None if config.prefill_lengths is None else parse_lengths(config.prefill_lengths)
    if lengths and config.max_len is not None and lengths[-1] > config.max_len:
        raise GPT2TFError(
            f"--prefill_lengths {lengths[-1]} is above --max_len {config.max_len}: a prefill chunk must fit the cache"
        )
    target = litert_dir(config)
    source, resolved = Path(model_dir).resolve(), target.resolve()
    if resolved == source or source in resolved.parents or resolved in source.parents:
        raise GPT2TFError(f"--export_dir {target} would overlap the model dir {model_dir}: give a dir of its own")
    if target.exists() and not target.is_dir():
        raise GPT2TFError(f"{target} is a file, not a directory: give another --export_dir")
    if target.is_dir() and any(target.iterdir()):
        if not (target / LITERT_INFO).is_file():  # --overwrite replaces only an earlier LiteRT export
            raise GPT2TFError(f"{target} exists and is not a LiteRT export: give a new --export_dir")
        if not config.overwrite:
            raise GPT2TFError(f"{target} already holds a LiteRT export: give another --export_dir, or --overwrite")
    if not os.access(_existing_parent(target), os.W_OK):
        raise GPT2TFError(f"cannot write {target} (no permission): give an --export_dir you can write")


def _existing_parent(path):
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return path


def litert_dir(config):
    model_dir = config.model_dir or DEFAULT_MODEL_DIR
    name = Path(model_dir.rstrip("/\\")).name or "gpt2"
    return Path(config.export_dir or os.path.join("exported", f"{name}-litert"))


def version_dir(config):
    model_dir = config.model_dir or DEFAULT_MODEL_DIR
    export_dir = config.export_dir or os.path.join("exported", Path(model_dir.rstrip("/\\")).name or "gpt2")
    return Path(export_dir) / str(config.version)


def export(config, out=sys.stderr):
    """Write the SavedModel (or, with --format litert, the LiteRT export); returns its dir."""
    if config.format == "litert":
        from gpt2tf.export.litert import export_litert

        check(config)
        lengths = None if config.prefill_lengths is None else parse_lengths(config.prefill_lengths)
        return export_litert(config, target=litert_dir(config), lengths=lengths, out=out)
    import tensorflow as tf

    from gpt2tf.encoder import get_encoder
    from gpt2tf.export.savedmodel import Exported, signatures
    from gpt2tf.files import writing_dir
    from gpt2tf.formats.load import load_for_inference

    check(config)
    target = version_dir(config)
    model = load_for_inference(config.model_dir, dtype=config.dtype)
    if model.weight_format != "float32":
        raise GPT2TFError(
            f"{config.model_dir} holds {model.weight_format} weights saved for decoding: the export "
            f"holds float32 weights; give the float32 model dir it was made from"
        )
    if config.max_new_tokens >= model.hparams.n_ctx:
        raise GPT2TFError(
            f"--max_new_tokens {config.max_new_tokens} must be below the model's context of {model.hparams.n_ctx}"
        )
    module = Exported(model, get_encoder(), config)
    target.parent.mkdir(parents=True, exist_ok=True)
    with writing_dir(target, what="the export to ", replace=True, errors=(OSError, tf.errors.OpError)) as (work, _):
        tf.saved_model.save(module, str(work), signatures=signatures(module))
    print(f"exported {config.model_dir or DEFAULT_MODEL_DIR} to {target}", file=out)
    return target

"""The `evaluate` command: `EvaluateConfig` (its flags, with their defaults) and `run`, which loads each model,
runs the task and prints the reports side by side.

    python evaluate.py --model_dir models/124M --task perplexity --dataset_path wiki.test.raw --stride 512
"""

import dataclasses
import json
import sys
from pathlib import Path

from gpt2tf.config import ModelFlags, PrecisionFlags, SamplingFlags, WeightsFlags, flag, override
from gpt2tf.errors import GPT2TFError
from gpt2tf.files import write_text_atomic
from gpt2tf.layout import DEFAULT_MODEL_DIR

TASK_NAMES = ("perplexity", "lambada", "multiple_choice", "cnndm")


@dataclasses.dataclass
class EvaluateConfig(SamplingFlags, WeightsFlags, PrecisionFlags, ModelFlags):
    """What `evaluate.py` (and `gpt2tf evaluate`) does; each field is the flag of the same name. The sampling flags
    are the CNN/Daily Mail task's (the paper's top-k 2 and a fixed seed)."""

    model_dir: list = flag(
        [], f"one or more model dirs or run dirs, side by side (default: {DEFAULT_MODEL_DIR})", nargs="+"
    )
    top_k: int = override(SamplingFlags, "top_k", 2, "cnndm: top-k of the summaries' sampling (the paper's 2)")
    top_p: float = override(SamplingFlags, "top_p", 1.0, "cnndm: top-p of the summaries' sampling")
    temperature: float = override(SamplingFlags, "temperature", 1.0, "cnndm: temperature of the summaries' sampling")
    seed: int = override(SamplingFlags, "seed", 0, "cnndm: the sampling seed")
    task: str = flag("perplexity", "what to measure", choices=TASK_NAMES)
    dataset_path: str = flag(
        None,
        "perplexity: a text file, dir or glob; lambada, multiple_choice: a JSONL file; "
        "cnndm: the story layout, a JSONL file, or cnn_dailymail (tensorflow-datasets)",
    )
    split: str = flag("test", "cnndm: the split")
    context: int = flag(None, "perplexity: tokens per window (default: the model's n_ctx)", type=int)
    stride: int = flag(
        None, "perplexity: tokens between window starts (default: --context, disjoint windows)", type=int
    )
    prepend_eot: bool = flag(False, "perplexity: score the first token too, after <|endoftext|>")
    max_examples: int = flag(0, "evaluate at most this many rows or articles; 0: all")
    max_new_tokens: int = flag(100, "cnndm: tokens generated per summary (the paper's 100)")
    greedy: bool = flag(False, "cnndm: greedy summaries instead of sampling")
    num_beams: int = flag(1, "cnndm: beam-search summaries with this many beams (transformers' rules); 1 = off")
    length_penalty: float = flag(1.0, "cnndm: with --num_beams, sum(log p) / length**this")
    no_repeat_ngram_size: int = flag(
        0, "cnndm: never repeat an n-gram of this size in article + summary (3 is the usual recipe); 0 = off"
    )
    sentences: int = flag(3, "cnndm: generated sentences kept (the paper's 3)")
    batch_size: int = flag(8, "cnndm: summaries generated together")
    output: str = flag("table", "a table, or the report as one JSON object on stdout", choices=("table", "json"))
    report_file: str = flag(None, "also write the report (JSON) here")
    examples_file: str = flag(None, "write per-example rows here (JSON lines)")


def check(config):
    """Settings that cannot work, as one-line errors, before anything is loaded."""
    config.check_weights()
    if not config.dataset_path and config.task != "cnndm":
        raise GPT2TFError(f"--task {config.task} needs --dataset_path")
    for name in ("context", "stride"):
        if getattr(config, name) is not None and getattr(config, name) < 1:
            raise GPT2TFError(f"--{name} must be at least 1, got {getattr(config, name)}")
    if config.context and config.stride and config.stride > config.context:
        raise GPT2TFError(
            f"--stride {config.stride} is larger than --context {config.context}: some tokens would "
            f"never be scored; give a stride of at most the context"
        )
    for name in ("max_examples",):
        if getattr(config, name) < 0:
            raise GPT2TFError(f"--{name} must not be negative, got {getattr(config, name)}")
    for name in ("max_new_tokens", "sentences", "batch_size"):
        if getattr(config, name) < 1:
            raise GPT2TFError(f"--{name} must be at least 1, got {getattr(config, name)}")
    config.check_sampling()  # cnndm's summaries
    from gpt2tf.settings import SamplerConfig, check_beams

    SamplerConfig(no_repeat_ngram_size=config.no_repeat_ngram_size)
    check_beams(config.num_beams, length_penalty=config.length_penalty)


# ---------------------------------------------------------------------------------------------------------------
# Running and printing


def run(config, out=sys.stdout):
    """Evaluate every model of `config` on its task; print the reports; returns them ({model dir: report})."""
    from tqdm import tqdm

    from gpt2tf.encoder import get_encoder
    from gpt2tf.evaluate.tasks import TASKS, UNITS
    from gpt2tf.formats.load import load_for_inference

    check(config)
    encoder = get_encoder()
    reports, rows = {}, []
    for model_dir in config.model_dir or [None]:
        model = load_for_inference(model_dir, dtype=config.dtype, weights=config.weights)
        with tqdm(
            desc=f"{config.task} {model_dir or DEFAULT_MODEL_DIR}",
            unit=UNITS[config.task],
            file=sys.stderr,
            disable=None,
            unit_scale=True,
        ) as bar:
            report, examples = TASKS[config.task](model, config, encoder, bar.update)
        name = model_dir or DEFAULT_MODEL_DIR
        reports[name] = {"task": config.task, "model_dir": name, "dataset": config.dataset_path, **report}
        rows += [{"model_dir": name, **row} for row in examples]
    document = next(iter(reports.values())) if len(reports) == 1 else {"task": config.task, "models": reports}
    if config.report_file:
        _write(config.report_file, json.dumps(document, indent=2) + "\n")
    if config.examples_file:
        _write(config.examples_file, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    if config.output == "json":
        out.write(json.dumps(document) + "\n")
    else:
        out.write(table(reports))
    out.flush()
    return reports


def _write(path, text):
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, text)
    except OSError as err:
        raise GPT2TFError(f"cannot write {path} ({err.strerror}); choose a writable place") from None


def table(reports):
    """The reports' numbers side by side, one column per model."""
    names = list(reports)
    keys = [
        k
        for k, v in next(iter(reports.values())).items()
        if isinstance(v, (int, float, dict)) and not isinstance(v, bool) and k not in ("context", "stride")
    ]
    rows = []
    for key in keys:
        values = [reports[n][key] for n in names]
        if isinstance(values[0], dict):
            for sub in values[0]:
                rows.append((f"{key} {sub}", [_number(v[sub]) for v in values]))
        else:
            rows.append((key, [_number(v) for v in values]))
    header = ["", *names]
    widths = [
        max(len(str(r[i] if i == 0 else r[1][i - 1])) for r in [(header[0], header[1:])] + rows)
        for i in range(len(header))
    ]
    lines = ["  ".join(str(h).ljust(w) if i == 0 else str(h).rjust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    for key, values in rows:
        lines.append("  ".join([key.ljust(widths[0])] + [v.rjust(w) for v, w in zip(values, widths[1:])]))
    return "\n".join(lines) + "\n"


def _number(value):
    return f"{value:,}" if isinstance(value, int) else f"{value:.4f}"

"""The fine-tuning settings: `TrainConfig`, the one owner of their defaults, and every check on them.

No TensorFlow here: `finetune.py` parses and checks its flags (and a resumed run's saved settings) in a fraction of a
second, and reports a mistake before anything slow starts. `configure(flags)` merges the flags given with the run's
saved `train_config.json` (`--output_dir X` alone continues run X) and picks the run dir when none is given.
"""

import dataclasses
import json
import math
import os
from pathlib import Path

from gpt2tf.config import flag
from gpt2tf.data import LOADERS
from gpt2tf.errors import GPT2TFError
from gpt2tf.files import write_text_atomic
from gpt2tf.hparams import HParams
from gpt2tf.layout import CONFIG_FILE, RUNS_DIR, STATE_FILE

SCHEDULES = ("step", "cosine")
H5_DIR = "output"  # where --output_name NAME.h5 goes without a folder: the ancestor's place
OPTIMIZERS = ("adam", "adamw", "adafactor", "sgd")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
HPARAM_FIELDS = tuple(f.name for f in dataclasses.fields(HParams))
SESSION_FIELDS = ("restore_from", "max_steps")  # apply to one invocation; not stored with the run


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; the defaults are the fine-tuning defaults."""

    # What to train
    model_dir: str = flag(None, "the GPT-2 model dir to start from (e.g. models/124M)")
    init: str = flag(
        "pretrained",
        "pretrained: the weights in --model_dir; random: a new model shaped by the "
        "hparams flags below (or --model_dir's hparams.json)",
        choices=("pretrained", "random"),
    )
    n_vocab: int = flag(None, "with --init random (default: HParams' 124M shape)", type=int)
    n_ctx: int = flag(None, "with --init random", type=int)
    n_embd: int = flag(None, "with --init random", type=int)
    n_head: int = flag(None, "with --init random", type=int)
    n_layer: int = flag(None, "with --init random", type=int)
    # Data
    data_loader: str = flag("text", "how to read --dataset_path", choices=tuple(LOADERS))
    dataset_path: str = flag(
        None,
        "text: a file, directory or glob of UTF-8 text, or .npy/.npz tokens; cnndm: "
        "the story dir, a JSONL file, or cnn_dailymail (tensorflow-datasets); tfds: a "
        "dataset name such as reddit_tifu/short",
    )
    val_dataset_path: str = flag(None, "validation data, read by the same loader (default: no validation)")
    split: str = flag("train", "the training split (cnndm, tfds)")
    val_split: str = flag("validation", "the validation split (cnndm, tfds)")
    text_feature: str = flag("text", "tfds: the feature holding the text (reddit_tifu: documents)")
    cache_dir: str = flag(None, "where tokenised data is cached (default: next to the data)")
    summary_only: bool = flag(False, "cnndm: compute the loss on the summary tokens only")
    length: int = flag(None, "tokens per training window (default: n_ctx)", type=int)
    # The run
    output_dir: str = flag(
        None,
        "the run dir: a model dir with checkpoints, metrics and training state (default: "
        "runs/<model>-<data>, e.g. runs/355M-cnndm; see the README)",
    )
    output_name: str = flag(
        None,
        "also write the final weights to output/NAME.h5 (a path with a folder is used as "
        "given), a Keras .h5 weights file for inference.py --custom_model",
    )
    save_hf: bool = flag(
        False,
        "also write the final weights in Hugging Face's layout to RUN_DIR/hf (config.json, "
        "model.safetensors, tokenizer files; transformers' from_pretrained loads it)",
    )
    restore_from: str = flag(
        "latest",
        "latest: continue the run in --output_dir if there is one; fresh: start "
        "from --model_dir (refused if --output_dir holds a run); or a run dir, "
        "model dir or checkpoint prefix to start from",
    )
    seed: int = flag(0, "seeds the data order and a random init")
    num_epoch: int = flag(4, "epochs to train")
    steps_per_epoch: int = flag(100, "optimizer steps per epoch")
    max_steps: int = flag(0, "stop (with a checkpoint) after this many steps in all; 0: run num_epoch epochs")
    batch_size: int = flag(1, "sequences per micro-batch")
    accumulate_gradients: int = flag(1, "micro-batches per optimizer step (an N times larger batch)")
    # Learning rate
    base_lr: float = flag(1e-4, "learning rate")
    lr_schedule: str = flag(
        "step",
        "step: decay by --decay_lr at each of --decay_epochs; cosine: from base_lr to base_lr * decay_lr over the run",
        choices=SCHEDULES,
    )
    decay_lr: float = flag(0.1, "decay factor (step), or final fraction of base_lr (cosine)")
    decay_epochs: str = flag("", '0-based epochs at which the rate is multiplied by --decay_lr, e.g. "4,5"')
    warmup_steps: int = flag(0, "linear warmup over this many steps")
    # Optimisation
    optimizer: str = flag("adam", "adafactor keeps factored second moments: far less memory", choices=OPTIMIZERS)
    weight_decay: float = flag(0.01, "adamw's decoupled weight decay (not on biases and gains)")
    clip_norm: float = flag(1.0, "clip the global gradient norm (unscaled) to this; 0: off")
    precision: str = flag(
        "auto",
        "auto: float32 on CPU, mixed_bfloat16 on GPUs that have it, else mixed_float16 with loss scaling",
        choices=PRECISIONS,
    )
    xla: bool = flag(True, "compile the training step with XLA (--no_xla: off)")
    recompute: bool = flag(False, "recompute each block's activations in the backward pass (less memory)")
    strategy: str = flag(
        "auto",
        "auto: multi_worker when TF_CONFIG names several tasks, mirrored over every GPU "
        "of this machine when it has several, else none; mirrored: every GPU (or "
        "--cpu_replicas CPU replicas); multi_worker: the machines TF_CONFIG names (run the "
        "same command on each); --batch_size is the global batch, split evenly",
        choices=("auto", "none", "mirrored", "multi_worker"),
    )
    peer_timeout: float = flag(
        300.0,
        "multi_worker: seconds to wait for the other workers (at the start and in "
        "each exchange) before giving up with an error",
    )
    cpu_replicas: int = flag(
        0,
        "split this machine's CPU into N replicas (for --strategy mirrored without GPUs: testing the distributed step)",
    )
    only_train_transformer_layers: bool = flag(False, "train the blocks only, not wte, wpe or ln_f")
    lora_rank: int = flag(
        0,
        "train rank-R LoRA adapters on the attention and MLP projections instead of the "
        "weights; merged into the saved weights; 0: off",
    )
    lora_alpha: float = flag(16.0, "LoRA scale numerator: the adapters' output is multiplied by alpha / rank")
    # Feedback and checkpoints
    save_every: int = flag(1000, "checkpoint every N steps (also at the end and on Ctrl-C); 0: only then")
    keep_checkpoints: int = flag(3, "keep the last K checkpoints")
    log_every: int = flag(10, "write metrics every N steps")
    val_every: int = flag(0, "validate every N steps; 0: at each epoch's end (with --val_dataset_path)")
    val_batches: int = flag(
        0, "score at most this many batches (x --batch_size sequences) of the validation set; 0: all of it"
    )
    sample_every: int = flag(0, "print a sample every N steps; 0: off")
    sample_length: int = flag(64, "tokens per sample")
    sample_prompt: str = flag("", "the samples' prompt (default: start of a document)")

    @property
    def total_steps(self):
        return self.num_epoch * self.steps_per_epoch

    def to_json(self, path):
        values = {k: v for k, v in dataclasses.asdict(self).items() if k not in SESSION_FIELDS}
        write_text_atomic(path, json.dumps(values, indent=2) + "\n")


def configure(flags):
    """The config for `flags` (field -> value, only those given); `--output_dir X` alone continues run X."""
    flags = dict(flags)
    unknown = set(flags) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise GPT2TFError(f"unknown training option(s) {sorted(unknown)}")
    check_types(flags, "")
    if not flags.get("output_dir"):
        flags["output_dir"] = default_output_dir(flags)
    values = {}
    restore_from = flags.get("restore_from", TrainConfig.restore_from)
    if restore_from == "latest" or (restore_from != "fresh" and _inside(restore_from, flags["output_dir"])):
        values = _saved_config(flags["output_dir"]) or {}  # the run continues (from its latest or an earlier step)
        _check_resume(values, flags)
    values.update(flags)
    config = TrainConfig(**values)
    check(config)
    return config


def _saved_config(run_dir):
    """The settings saved with the run in `run_dir` (field -> value), or None if it holds no run."""
    saved = Path(run_dir) / CONFIG_FILE
    if not saved.is_file():
        return None
    try:
        values = json.loads(saved.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise GPT2TFError(f"cannot read {saved} ({err}); fix or delete it") from None
    if not isinstance(values, dict):
        raise GPT2TFError(f"{saved} is not a JSON object of settings; fix or delete it")
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:  # a damaged name would otherwise silently fall back to a default
        raise GPT2TFError(
            f"{saved} has unknown setting(s) {', '.join(unknown)}: it was damaged or written by another "
            f"gpt2tf; fix or delete them"
        )
    check_types(values, f"{saved}: ")
    return values


def check_types(values, where):
    """Each value has its field's type (None only where that is the default); floats are finite."""
    for field in dataclasses.fields(TrainConfig):
        if field.name not in values:
            continue
        value = values[field.name]
        if value is None and field.default is None:
            continue
        kind = field.type
        ok = (
            isinstance(value, bool)
            if kind is bool
            else isinstance(value, int) and not isinstance(value, bool)
            if kind is int
            else isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if kind is float
            else isinstance(value, kind)
        )
        if not ok:
            what = {bool: "true or false", int: "a whole number", float: "a finite number", str: "a string"}[kind]
            fix = "fix or delete that setting" if where else f"give --{field.name} {what}"
            raise GPT2TFError(f"{where}{field.name} must be {what}, got {value!r}; {fix}")


def _check_resume(saved, flags):
    """A run continues with the weights it was started from: another --model_dir would silently change them."""
    if not saved or not flags.get("model_dir") or not saved.get("model_dir"):
        return
    if os.path.abspath(flags["model_dir"]) != os.path.abspath(saved["model_dir"]):
        raise GPT2TFError(
            f"{flags['output_dir']} holds a run started from --model_dir {saved['model_dir']}, not "
            f"{flags['model_dir']}; continue it without --model_dir, or start a new run with another "
            f"--output_dir"
        )


SOURCE_FIELDS = ("init", "model_dir", "data_loader", "dataset_path")  # what a run is of: same values, same run


def default_output_dir(flags, runs_dir=RUNS_DIR):
    """The run dir for a command without --output_dir: `runs/<model>-<data>`, e.g. runs/355M-cnndm.

    <model> is --model_dir's name (`scratch` with --init random); <data> is --dataset_path's file or folder name
    without its extension, or the loader's name when there is no path (cnndm's tensorflow-datasets default). The
    same command again continues that run; if the dir holds a run of another model or other data (or
    --restore_from fresh is given), the first of `-2`, `-3`, ... that is free or holds this command's run is used.
    """
    value = lambda name: flags.get(name, getattr(TrainConfig, name))  # noqa: E731
    if value("init") == "random":
        model = "scratch"
    elif value("model_dir"):
        model = Path(value("model_dir")).name
    elif value("restore_from") not in ("latest", "fresh"):
        model = Path(value("restore_from")).name
    else:
        model = "model"
    path = value("dataset_path")
    if not path:
        data = value("data_loader")
    elif value("data_loader") == "tfds":
        data = path.replace("/", "-")
    else:
        parts = Path(path).parts
        globbed = next((i for i, part in enumerate(parts) if any(c in part for c in "*?[")), len(parts))
        data = Path(parts[globbed - 1]).stem if globbed else "data"  # data/*.txt -> data
    base = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{model}-{data}".strip("."))
    same = lambda a, b: (os.path.abspath(a) == os.path.abspath(b)) if a and b else a == b  # noqa: E731
    for n in range(1, 1000):
        candidate = Path(runs_dir) / (base if n == 1 else f"{base}-{n}")
        saved = _saved_config(candidate)
        if saved is None:
            return str(candidate)
        if value("restore_from") != "fresh" and all(
            same(saved.get(k, getattr(TrainConfig, k)), value(k))
            if k in ("model_dir", "dataset_path")
            else saved.get(k, getattr(TrainConfig, k)) == value(k)
            for k in SOURCE_FIELDS
        ):
            return str(candidate)
    raise GPT2TFError(f"{runs_dir} holds 999 runs named {base}-N; give --output_dir")


def check(config):
    """Conflicting or impossible settings, as one-line errors, before anything slow happens."""

    def conflict(message):
        raise GPT2TFError(message)

    check_types(dataclasses.asdict(config), "")
    for name in (
        "num_epoch",
        "steps_per_epoch",
        "batch_size",
        "accumulate_gradients",
        "keep_checkpoints",
        "log_every",
        "sample_length",
    ):
        if getattr(config, name) < 1:
            conflict(f"--{name} must be at least 1, got {getattr(config, name)}")
    for name in (
        "max_steps",
        "save_every",
        "val_every",
        "val_batches",
        "sample_every",
        "warmup_steps",
        "lora_rank",
        "clip_norm",
        "decay_lr",
        "weight_decay",
        "cpu_replicas",
        "peer_timeout",
    ):
        if getattr(config, name) < 0:
            conflict(f"--{name} must not be negative, got {getattr(config, name)}")
    if config.cpu_replicas > 1 and config.strategy == "none":
        conflict("--cpu_replicas makes replicas for --strategy mirrored (or auto), not --strategy none")
    if config.cpu_replicas > 1 and config.batch_size % config.cpu_replicas:
        conflict(
            f"--batch_size {config.batch_size} does not split evenly over --cpu_replicas {config.cpu_replicas}: "
            f"give a multiple of {config.cpu_replicas}"
        )
    for name in ("base_lr", "lora_alpha"):
        if getattr(config, name) <= 0:
            conflict(f"--{name} must be a positive number, got {getattr(config, name)}")
    for name in ("length", *HPARAM_FIELDS):
        if getattr(config, name) is not None and getattr(config, name) < 1:
            conflict(f"--{name} must be at least 1, got {getattr(config, name)}")
    parse_epochs(config.decay_epochs)
    shape_flags = [f"--{n}" for n in HPARAM_FIELDS if getattr(config, n) is not None]
    if config.init == "pretrained" and shape_flags:
        conflict(
            f"{', '.join(shape_flags)} only apply with --init random; a pretrained model's shape is its hparams.json"
        )
    holds_run = (Path(config.output_dir) / STATE_FILE).is_file()
    if (
        config.init == "pretrained"
        and not config.model_dir
        and config.restore_from in ("latest", "fresh")
        and not holds_run
    ):
        conflict("give --model_dir (e.g. models/124M), or --init random with hparams flags to train from scratch")
    if config.lora_rank and config.init == "random":
        conflict("--lora_rank adapts pretrained weights; it makes no sense with --init random")
    if config.lora_rank and config.only_train_transformer_layers:
        conflict("--lora_rank already trains only the adapters; drop --only_train_transformer_layers")
    if config.summary_only and config.data_loader != "cnndm":
        conflict("--summary_only needs --data_loader cnndm")
    if config.output_name and not config.output_name.endswith((".h5", ".hdf5")):
        conflict(f"--output_name {config.output_name} must end in .h5 (a Keras weights file), e.g. mytext.h5")
    if config.val_every and not config.val_dataset_path:
        conflict("--val_every needs --val_dataset_path")
    if config.restore_from == "fresh" and holds_run:
        conflict(
            f"{config.output_dir} already holds a run; continue it with --restore_from latest, or choose "
            f"another --output_dir"
        )
    if (
        config.restore_from not in ("latest", "fresh")
        and holds_run
        and not _inside(config.restore_from, config.output_dir)
    ):
        conflict(
            f"{config.output_dir} already holds a run, which starting from {config.restore_from} would "
            f"overwrite; choose another --output_dir (or drop --restore_from to continue that run)"
        )


def _inside(restore_from, run_dir):
    """Whether `restore_from` is `run_dir` itself or one of its checkpoints (going back to an earlier step)."""
    path, run = Path(os.path.abspath(restore_from)), Path(os.path.abspath(run_dir))
    return path == run or path.parent == run


def parse_epochs(text):
    """`"4,5"` -> (4, 5); the empty string means no decay."""
    try:
        return tuple(int(part) for part in str(text).replace(" ", "").split(",") if part)
    except ValueError:
        raise GPT2TFError(
            f'decay_epochs must be comma-separated 0-based epoch numbers such as "4,5", got {text!r}'
        ) from None


def cluster_from_env():
    """TF_CONFIG's (cluster {type: [host:port]}, task {type, index}), or None when it is unset; malformed: an error."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        return None
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        addresses = [a for kind in ("chief", "worker") for a in cluster.get(kind, [])]
        if (
            not addresses
            or task["type"] not in ("chief", "worker")
            or not 0 <= int(task["index"]) < len(cluster[task["type"]])
        ):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise GPT2TFError(
            'TF_CONFIG is not a cluster spec: expected {"cluster": {"worker": ["host:port", ...]}, '
            '"task": {"type": "worker", "index": i}} (a "chief" list too, optionally)'
        ) from None
    return cluster, task

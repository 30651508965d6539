"""The command-line interface: every script's flags, the `gpt2tf` command, and how a user error ends a command.

The top-level scripts (`download_model.py`, `inference.py`, `finetune.py`, `serve.py`, `evaluate.py`,
`export.py`, `convert.py`) are two lines each that call `run_script`; the `gpt2tf` subcommands call the same functions, so a flag
exists once. Flags are built from the
config dataclasses (`flag()` fields: the field name is the flag, its metadata the help), which own the defaults.
A `GPT2TFError` (or a usage error) becomes `error: <one line>` on stderr and exit status 2. This module imports no
TensorFlow: `gpt2tf --help` and `download` start at once, and the tokenizer's worker processes, which re-import the
calling script, stay light.
"""

import argparse
import contextlib
import dataclasses
import importlib
import os
import sys

from gpt2tf.errors import GPT2TFError


def flag(default, help, **metadata):
    """A config field that is also a command-line flag `--<field name>`.

    metadata: `group` (a help section), `choices`, `type` (when the default is None), `metavar`, `nargs` (a list
    field given as one flag with several values, instead of the flag repeated).
    """
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=dict(help=help, **metadata))
    return dataclasses.field(default=default, metadata=dict(help=help, **metadata))


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit status 2, like every other user error."""

    def error(self, message):
        raise GPT2TFError(f"{message} (see {self.prog} --help)")


def add_config_flags(parser, config_class):
    """One flag per `flag()` field of `config_class`. Only the flags given reach the parsed namespace (the parser
    must have `argument_default=argparse.SUPPRESS`), so the rest keep the config's defaults."""
    groups = {}
    for field in dataclasses.fields(config_class):
        meta = field.metadata
        if "help" not in meta:
            continue
        target = parser
        if "group" in meta:
            if meta["group"] not in groups:
                groups[meta["group"]] = parser.add_argument_group(meta["group"])
            target = groups[meta["group"]]
        default = field.default_factory() if field.default is dataclasses.MISSING else field.default
        help_text = meta["help"]
        if default not in (None, False, "", []) and "(default" not in help_text:
            help_text += f" (default: {default})"
        help_text = help_text.replace("%", "%%")
        name = f"--{field.name}"
        if isinstance(default, bool):
            target.add_argument(name, action="store_const", const=True, help=help_text)
            target.add_argument(
                f"--no_{field.name}", dest=field.name, action="store_const", const=False, help=argparse.SUPPRESS
            )
        elif isinstance(default, list) and "nargs" in meta:  # one flag, several values
            target.add_argument(name, nargs=meta["nargs"], metavar=meta.get("metavar"), help=help_text)
        elif isinstance(default, list):  # a flag given again for each value
            target.add_argument(name, action="append", metavar=meta.get("metavar"), help=help_text)
        else:
            kind = meta.get("type", type(default) if default is not None else str)
            target.add_argument(
                name, type=kind, choices=meta.get("choices"), metavar=meta.get("metavar"), help=help_text
            )


def _config_parser(prog, description, config_class):
    parser = Parser(prog=prog, description=description, argument_default=argparse.SUPPRESS)
    add_config_flags(parser, config_class)
    return parser


# ---------------------------------------------------------------------------------------------------------------
# The commands


def download_main(argv=None, *, prog="download_model.py"):
    from gpt2tf.download import (
        BASE_URL_ENV,
        DEFAULT_BASE_URL,
        LEGACY_NAMES,
        MODEL_NAMES,
        DownloadConfig,
        download_models,
    )

    parser = Parser(prog=prog, description="Download OpenAI's released GPT-2 models (resumable, verified).")
    parser.add_argument(
        "models",
        nargs="+",
        metavar="model",
        help=f"{', '.join(MODEL_NAMES)} (old names {', '.join(LEGACY_NAMES)} are accepted)",
    )
    parser.add_argument(
        "--models_dir",
        default=DownloadConfig.models_dir,
        help="each model goes to <models_dir>/<model> (default: %(default)s)",
    )
    parser.add_argument(
        "--base_url",
        default=os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL,
        help=f"where <model>/<file> is fetched from, e.g. a mirror; the default is ${BASE_URL_ENV} "
        f"if set, else {DEFAULT_BASE_URL}",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars or notes, only errors")
    parser.add_argument(
        "--no_verify",
        dest="verify",
        action="store_false",
        help="skip loading each model with gpt2tf.load_model after the download (no TensorFlow)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="download every file again, even complete ones (each is replaced only once its new copy is complete)",
    )
    args = parser.parse_args(argv)
    download_models(
        args.models,
        DownloadConfig(
            models_dir=args.models_dir, base_url=args.base_url, quiet=args.quiet, verify=args.verify, force=args.force
        ),
    )


def _config_command(argv, prog, module, config_name, description, runner):
    """A command whose flags are `module.<config_name>`'s fields: parse them, let `module.check` report a mistake
    before TensorFlow's seconds of start-up, then run `module.<runner>(config)`."""
    module = importlib.import_module(module)
    config_class = getattr(module, config_name)
    config = config_class(**vars(_config_parser(prog, description, config_class).parse_args(argv)))
    module.check(config)
    import_tensorflow_quietly()
    getattr(module, runner)(config)


def generate_main(argv=None, *, prog="inference.py"):
    _config_command(
        argv,
        prog,
        "gpt2tf.inference",
        "InferenceConfig",
        "Generate text with GPT-2 (OpenAI's model or a fine-tuned run dir).",
        "run",
    )


def finetune_main(argv=None, *, prog="finetune.py"):
    from gpt2tf.train_config import TrainConfig, configure

    parser = _config_parser(prog, "Fine-tune GPT-2 (or train one from scratch) in a resumable run dir.", TrainConfig)
    if any(arg == "--weights" or arg.startswith("--weights=") for arg in (sys.argv[1:] if argv is None else argv)):
        raise GPT2TFError(
            "--weights is for decoding (inference.py, serve.py): fine-tuning trains float32 weights "
            "(or --precision mixed_float16 on a GPU); drop --weights"
        )
    config = configure(vars(parser.parse_args(argv)))  # checked before TensorFlow's seconds of start-up
    made = {}

    def make_distribution(tf):  # before TensorFlow runs anything: logical devices and collectives need that
        from gpt2tf.distribute import make_distribution

        made["distribution"] = make_distribution(config.strategy, config.cpu_replicas, config.peer_timeout)

    if os.environ.get("TF_CONFIG") and config.strategy in ("auto", "multi_worker"):
        print(f"waiting for the workers TF_CONFIG names (at most {config.peer_timeout:g} s) ...", file=sys.stderr)
    import_tensorflow_quietly(setup=make_distribution)
    from gpt2tf.train import finetune

    finetune(config, distribution=made["distribution"])


def serve_main(argv=None, *, prog="serve.py"):
    _config_command(
        argv,
        prog,
        "gpt2tf.server",
        "ServeConfig",
        "Serve GPT-2 over HTTP: OpenAI's /v1/completions, TF Serving's predict API and a web page, with "
        "continuous batching.",
        "serve",
    )


def evaluate_main(argv=None, *, prog="evaluate.py"):
    _config_command(
        argv,
        prog,
        "gpt2tf.evaluate",
        "EvaluateConfig",
        "Evaluate GPT-2: perplexity, LAMBADA, multiple choice, CNN/Daily Mail ROUGE.",
        "run",
    )


def export_main(argv=None, *, prog="export.py"):
    _config_command(
        argv,
        prog,
        "gpt2tf.export",
        "ExportConfig",
        "Export a self-contained text-in/text-out SavedModel (exact BPE inside, cached decoding, "
        "sampling settings as inputs) in TF Serving's layout.",
        "export",
    )


def convert_main(argv=None, *, prog="convert.py"):
    parser = Parser(
        prog=prog,
        description="Convert a GPT-2 between OpenAI's checkpoint layout and Hugging Face's "
        "(config.json + model.safetensors + tokenizer files), exactly.",
    )
    parser.add_argument("source", help="a model dir or run dir in either layout")
    parser.add_argument("destination", help="the dir to write (written beside its name, then renamed into place)")
    parser.add_argument("--to", required=True, choices=("hf", "openai"), help="the layout to write")
    args = parser.parse_args(argv)
    if os.path.abspath(args.source) == os.path.abspath(args.destination):
        raise GPT2TFError("the destination is the source: give another dir")
    import_tensorflow_quietly()
    from gpt2tf.checkpoint import load_model, save_openai_checkpoint
    from gpt2tf.hf import save_hf_checkpoint

    model = load_model(args.source)
    (save_hf_checkpoint if args.to == "hf" else save_openai_checkpoint)(model, args.destination)
    print(f"wrote {args.destination} ({'Hugging Face' if args.to == 'hf' else 'OpenAI'}'s layout)", file=sys.stderr)


@dataclasses.dataclass(frozen=True)
class Command:
    script: str  # the top-level script that runs the same function
    summary: str
    example: str
    main: callable


COMMANDS = {
    "download": Command(
        "download_model.py",
        "download OpenAI's released models (resumable, verified)",
        "gpt2tf download 124M",
        download_main,
    ),
    "generate": Command(
        "inference.py",
        "generate text with a model or a fine-tuned run",
        'gpt2tf generate --nucleus --top_p 0.9 --starter "She picked up the sword"',
        generate_main,
    ),
    "finetune": Command(
        "finetune.py",
        "fine-tune (or train from scratch) in a resumable run dir",
        "gpt2tf finetune --model_dir models/124M --dataset_path mytext.txt",
        finetune_main,
    ),
    "serve": Command(
        "serve.py",
        "serve over HTTP (OpenAI and TF Serving APIs, a web page)",
        "gpt2tf serve --model_dir models/124M --port 8000",
        serve_main,
    ),
    "evaluate": Command(
        "evaluate.py",
        "perplexity, LAMBADA, multiple choice, CNN/Daily Mail ROUGE",
        "gpt2tf evaluate --task perplexity --dataset_path wiki.test.raw --stride 512",
        evaluate_main,
    ),
    "export": Command(
        "export.py",
        "a text-in/text-out SavedModel for TF Serving or any TF program",
        "gpt2tf export --model_dir models/124M --export_dir exported/gpt2",
        export_main,
    ),
    "convert": Command(
        "convert.py",
        "between OpenAI's checkpoint layout and Hugging Face's safetensors",
        "gpt2tf convert runs/cnndm out/cnndm-hf --to hf",
        convert_main,
    ),
}


def _usage():
    width = max(map(len, COMMANDS))
    lines = [
        "usage: gpt2tf <command> [flags]",
        "",
        "OpenAI's GPT-2 in TensorFlow 2 / Keras 3.",
        "",
        "commands (each takes exactly its script's flags; `gpt2tf <command> --help` lists them):",
    ]
    lines += [f"  {name:<{width}}  {c.summary} (= python {c.script})" for name, c in COMMANDS.items()]
    lines += ["", "examples:"] + [f"  {c.example}" for c in COMMANDS.values()]
    return "\n".join(lines) + "\n"


def main(argv=None):
    """The `gpt2tf` console command: `gpt2tf <command> [flags]`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        (sys.stdout if argv else sys.stderr).write(_usage())
        sys.exit(0 if argv else 2)
    if argv[0] == "--version":
        from gpt2tf import __version__

        print(f"gpt2tf {__version__}")
        sys.exit(0)
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(
            f"error: unknown command {name!r}; choose one of {', '.join(COMMANDS)} (see gpt2tf --help)", file=sys.stderr
        )
        sys.exit(2)
    run(lambda args: COMMANDS[name].main(args, prog=f"gpt2tf {name}"), rest)


def run_script(name):
    """What a top-level script runs: the command `name` with this process's arguments."""
    run(lambda args: COMMANDS[name].main(args, prog=f"python {COMMANDS[name].script}"))


# ---------------------------------------------------------------------------------------------------------------
# Start-up and errors


@contextlib.contextmanager
def _stderr_silenced():
    """Point file descriptor 2 at /dev/null (C++ code writes there directly, past Python's sys.stderr)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def import_tensorflow_quietly(setup=None):
    """Import TensorFlow without its start-up log lines (CUDA probing, oneDNN notices) unless the user asked for
    them with TF_CPP_MIN_LOG_LEVEL; an import failure still raises as usual. `setup(tf)`, if given, runs before
    TensorFlow initialises its devices (logical devices and collective ops must be set up before that)."""
    if "tensorflow" in sys.modules:
        if setup is not None:
            setup(sys.modules["tensorflow"])
        return
    quiet = "TF_CPP_MIN_LOG_LEVEL" not in os.environ
    if quiet:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    with _stderr_silenced() if quiet else contextlib.nullcontext():
        tf = importlib.import_module("tensorflow")
        if setup is not None:
            setup(tf)
        tf.constant(0)  # device initialisation logs too


def run(main, argv=None):
    """Call `main(argv)`; a `GPT2TFError` becomes `error: <message>` on stderr and exit status 2."""
    try:
        status = main(argv)
    except GPT2TFError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(status or 0)

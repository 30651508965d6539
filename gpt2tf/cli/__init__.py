"""The command line: the `gpt2tf` command, the top-level scripts, and how a user error ends a command. Dispatch only.

The top-level scripts (`download_model.py`, `inference.py`, `finetune.py`, `serve.py`, `evaluate.py`, `export.py`,
`convert.py`) call `run_script`; the `gpt2tf` subcommands call the same functions, so a flag exists once. Each
command's flags are its config's fields (`gpt2tf.config`), parsed and checked (`check`) before TensorFlow's seconds
of start-up, then its function runs. A `GPT2TFError` (or a usage error) becomes `error: <one line>` on stderr and
exit status 2. Nothing here imports TensorFlow: `gpt2tf --help` and `download` start at once, and the tokenizer's
worker processes, which re-import the calling script, stay light.
"""

import dataclasses
import importlib
import sys

from gpt2tf.config import parse_config
from gpt2tf.errors import GPT2TFError
from gpt2tf.startup import import_tensorflow_quietly


@dataclasses.dataclass(frozen=True)
class Command:
    script: str  # the top-level script that runs the same function
    summary: str
    example: str
    module: str  # where the command's config, `check` and function live
    config: str  # its config class
    function: str  # what runs it, function(config): a name in `module`, or "other.module:name"
    description: str
    tensorflow: bool = True  # whether to start TensorFlow (quietly) before `function`


COMMANDS = {
    "download": Command(
        "download_model.py",
        "download OpenAI's released models (resumable, verified)",
        "gpt2tf download 124M",
        "gpt2tf.download",
        "DownloadCommand",
        "run",
        "Download OpenAI's released GPT-2 models (resumable, verified).",
        tensorflow=False,
    ),
    "generate": Command(
        "inference.py",
        "generate text with a model or a fine-tuned run",
        'gpt2tf generate --nucleus --top_p 0.9 --starter "She picked up the sword"',
        "gpt2tf.inference",
        "InferenceConfig",
        "run",
        "Generate text with GPT-2 (OpenAI's model or a fine-tuned run dir).",
    ),
    "finetune": Command(
        "finetune.py",
        "fine-tune (or train from scratch) in a resumable run dir",
        "gpt2tf finetune --model_dir models/124M --dataset_path mytext.txt",
        "gpt2tf.train.config",
        "TrainConfig",
        "finetune",
        "Fine-tune GPT-2 (or train one from scratch) in a resumable run dir.",
    ),
    "serve": Command(
        "serve.py",
        "serve over HTTP (OpenAI and TF Serving APIs, a web page)",
        "gpt2tf serve --model_dir models/124M --port 8000",
        "gpt2tf.serve.command",
        "ServeConfig",
        "gpt2tf.serve.app:serve",
        "Serve GPT-2 over HTTP: OpenAI's /v1/completions, TF Serving's predict API and a web page, with continuous "
        "batching.",
    ),
    "evaluate": Command(
        "evaluate.py",
        "perplexity, LAMBADA, multiple choice, CNN/Daily Mail ROUGE",
        "gpt2tf evaluate --task perplexity --dataset_path wiki.test.raw --stride 512",
        "gpt2tf.evaluate.command",
        "EvaluateConfig",
        "run",
        "Evaluate GPT-2: perplexity, LAMBADA, multiple choice, CNN/Daily Mail ROUGE.",
    ),
    "export": Command(
        "export.py",
        "a text-in/text-out SavedModel for TF Serving or any TF program",
        "gpt2tf export --model_dir models/124M --export_dir exported/gpt2",
        "gpt2tf.export.command",
        "ExportConfig",
        "export",
        "Export a self-contained text-in/text-out SavedModel (exact BPE inside, cached decoding, sampling settings "
        "as inputs) in TF Serving's layout.",
    ),
    "convert": Command(
        "convert.py",
        "between OpenAI's checkpoint layout and Hugging Face's safetensors",
        "gpt2tf convert runs/cnndm out/cnndm-hf --to hf",
        "gpt2tf.formats.convert",
        "ConvertConfig",
        "convert",
        "Convert a GPT-2 between OpenAI's checkpoint layout and Hugging Face's (config.json + model.safetensors + "
        "tokenizer files), exactly.",
    ),
}


def run_command(name, argv=None, *, prog=None):
    """Command `name` on `argv`: its config parsed and checked before TensorFlow starts, then its function."""
    command = COMMANDS[name]
    module = importlib.import_module(command.module)
    argv = sys.argv[1:] if argv is None else list(argv)
    config_class = getattr(module, command.config)
    prog = prog or f"python {command.script}"
    if name == "finetune":
        return _finetune(module, argv, prog, command)
    config = parse_config(argv, prog=prog, description=command.description, config_class=config_class)
    module.check(config)
    if command.tensorflow and getattr(module, "needs_tensorflow", lambda _: True)(config):  # not for a LiteRT export
        import_tensorflow_quietly()
    where, _, function = command.function.rpartition(":")
    return getattr(importlib.import_module(where) if where else module, function)(config)


def _finetune(module, argv, prog, command):
    """finetune's flags merge with a resumed run's saved settings (`configure`), and its strategy is made before
    TensorFlow initialises its devices."""
    from gpt2tf.config import config_parser

    if any(arg == "--weights" or arg.startswith("--weights=") for arg in argv):
        raise GPT2TFError(
            "--weights is for decoding (inference.py, serve.py): fine-tuning trains float32 weights "
            "(or --precision mixed_float16 on a GPU); drop --weights"
        )
    parser = config_parser(prog, command.description, module.TrainConfig)
    config = module.configure(vars(parser.parse_args(argv)))  # checked before TensorFlow's seconds of start-up
    made = {}

    def make_distribution(tf):  # before TensorFlow runs anything: logical devices and collectives need that
        from gpt2tf.train.distribute import make_distribution

        made["distribution"] = make_distribution(config.strategy, config.cpu_replicas, config.peer_timeout)

    if module.cluster_from_env() and config.strategy in ("auto", "multi_worker"):  # a malformed one: its error now
        print(f"waiting for the workers TF_CONFIG names (at most {config.peer_timeout:g} s) ...", file=sys.stderr)
    import_tensorflow_quietly(setup=make_distribution)
    from gpt2tf.train.loop import finetune

    finetune(config, distribution=made["distribution"])


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
    run(lambda args: run_command(name, args, prog=f"gpt2tf {name}"), rest)


def run_script(name):
    """What a top-level script runs: the command `name` with this process's arguments."""
    run(lambda args: run_command(name, args))


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
    sys.exit(status if isinstance(status, int) else 0)


# The commands' entry points by name, as the scripts and tests call them: `generate_main(argv)` and so on.
def _entry(name):
    def entry(argv=None, *, prog=None):
        return run_command(name, argv, prog=prog)

    entry.__name__ = f"{name}_main"
    return entry


download_main, generate_main, finetune_main = _entry("download"), _entry("generate"), _entry("finetune")
serve_main, evaluate_main, export_main, convert_main = (_entry(n) for n in ("serve", "evaluate", "export", "convert"))

"""Command configs and their flags, with no TensorFlow: `flag()`, the flag groups commands share, and the parser.

A command's settings are a dataclass whose `flag()` fields are its flags: the field name is the flag (`--top_k`),
the field's default is the flag's default, its metadata the help. The groups that several commands take — where the
model comes from (`ModelFlags`), how it computes (`PrecisionFlags`), how it holds its weights (`WeightsFlags`), how
it samples (`SamplingFlags`) — are defined here once and composed into each command's config by inheritance; a
command whose default differs says so with `override()`. `parse_config` turns a command line into a config.
A `GPT2TFError` (or a usage error) becomes `error: <one line>` and exit status 2 in `gpt2tf.cli`.
"""

import argparse
import dataclasses
import json

from gpt2tf.errors import GPT2TFError
from gpt2tf.layout import DEFAULT_MODEL_DIR
from gpt2tf.settings import SamplerConfig, check_bad_words, check_logit_bias, check_seed
from gpt2tf.weight_formats import WEIGHT_FORMATS

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")  # a model's compute dtype for decoding and scoring
SAMPLING = "sampling"  # the help section of the sampling flags
COMPUTE = "compute"  # the help section of the precision and weights flags
CONTROLS = "decoding controls (docs/inference.md)"  # the help section of the controls' flags
BEAMS = "beam search"  # the help section of the beam-search flags


def flag(default, help, **metadata):
    """A config field that is also a command-line flag `--<field name>`.

    metadata: `group` (a help section), `choices`, `type` (when the default is None), `metavar`, `nargs` (a list
    field given as one flag with several values, instead of the flag repeated), `required`, `positional` (an
    argument without `--`), `negative_help` (a bool that is on by default: the help of `--no_<name>`).
    """
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=dict(help=help, **metadata))
    return dataclasses.field(default=default, metadata=dict(help=help, **metadata))


def override(group, name, default, help=None):
    """Field `name` of flag group `group` with another default (and help) for one command."""
    field = group.__dataclass_fields__[name]
    metadata = {k: v for k, v in field.metadata.items() if k != "help"}
    if default is None and field.default is not None and "type" not in metadata:
        metadata["type"] = type(field.default)  # the flag's type cannot come from a None default
    return flag(default, help or field.metadata["help"], **metadata)


# ---------------------------------------------------------------------------------------------------------------
# The shared flag groups


@dataclasses.dataclass
class ModelFlags:
    """Which model a command runs."""

    model_dir: str = flag(None, f"an OpenAI model dir or a fine-tuning run dir (default: {DEFAULT_MODEL_DIR})")


@dataclasses.dataclass
class PrecisionFlags:
    """How the model computes."""

    precision: str = flag("float32", "compute dtype (mixed types are for GPUs)", choices=PRECISIONS, group=COMPUTE)
    no_xla: bool = flag(False, "don't compile the model with XLA", group=COMPUTE)

    @property
    def dtype(self):
        """The Keras dtype policy to build the model with (None: float32)."""
        return None if self.precision == "float32" else self.precision


WEIGHTS_HELP = (
    "hold the weights for decoding as int8 (1/4 of float32's bytes: 1.6-3x faster batch-1 decoding on a 2-core "
    "CPU) or bf16 (1/2), quantized as they load; default: as the model dir holds them (float32, or what "
    "--save_quantized wrote)"
)


@dataclasses.dataclass
class WeightsFlags:
    """How the model holds its weights (with PrecisionFlags: quantized weights compute in float32)."""

    weights: str = flag(None, WEIGHTS_HELP, choices=WEIGHT_FORMATS, group=COMPUTE)

    def check_weights(self):
        if self.weights not in (None, "float32") and self.precision != "float32":
            raise GPT2TFError(
                f"{self.weights} weights compute in float32: drop --precision {self.precision} (mixed precision is "
                f"for float32 weights on a GPU)"
            )


@dataclasses.dataclass
class SamplingFlags:
    """How the next token is chosen (the rules: `gpt2tf.decode.filters`)."""

    temperature: float = flag(1.0, "0 means greedy", group=SAMPLING)
    top_k: int = flag(0, "keep the k most likely tokens; 0 = off", group=SAMPLING)
    top_p: float = flag(
        1.0, "keep the smallest most-likely set whose mass reaches p, in (0, 1]; 1 = off", group=SAMPLING
    )
    seed: int = flag(None, "same seed, same text (default: a random one)", type=int, group=SAMPLING)

    def sampler(self):
        """The SamplerConfig these flags mean, checked (one line naming the flag)."""
        return SamplerConfig(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)

    def check_sampling(self):
        self.sampler()
        check_seed(self.seed)


@dataclasses.dataclass
class ControlFlags:
    """The decoding controls beyond temperature, top-k and top-p (the rules: `gpt2tf.decode.filters`)."""

    no_repeat_ngram_size: int = flag(
        0, "never repeat an n-gram of this size (prompt included), transformers' rule; 0 = off", group=CONTROLS
    )
    presence_penalty: float = flag(
        0.0, "subtract this from a token's logit once it has been generated, -2..2 (OpenAI's); 0 = off", group=CONTROLS
    )
    frequency_penalty: float = flag(
        0.0, "subtract this times how often a token has been generated, -2..2 (OpenAI's); 0 = off", group=CONTROLS
    )
    logit_bias: str = flag(
        None,
        "JSON {\"token id\": bias}, bias -100..100 added to that token's logit (OpenAI's; -100 bans it), e.g. "
        "'{\"50256\": -100}'",
        metavar="JSON",
        group=CONTROLS,
    )
    bad_words: list = flag(
        [],
        "never generate this text (repeatable; banned as written and after a space, at its last token)",
        metavar="TEXT",
        group=CONTROLS,
    )
    min_p: float = flag(
        0.0, "drop tokens less likely than min_p times the most likely, in [0, 1]; 0 = off", group=CONTROLS
    )
    typical_p: float = flag(1.0, "locally typical sampling's mass, in (0, 1]; 1 = off", group=CONTROLS)
    num_beams: int = flag(
        1,
        "beam search with this many beams (transformers' rules; deterministic: temperature 0, no top-k/top-p); 1 = off",
        group=BEAMS,
    )
    num_return_sequences: int = flag(1, "with --num_beams: the best hypotheses given per prompt", group=BEAMS)
    length_penalty: float = flag(
        1.0, "with --num_beams: a hypothesis scores sum(log p) / length**this; > 0 favours longer ones", group=BEAMS
    )
    early_stopping: str = flag(
        "false",
        "with --num_beams: stop once num_beams hypotheses are done (true), when none can improve (false), or "
        "never before the length",
        choices=("true", "false", "never"),
        group=BEAMS,
    )

    @property
    def beams(self):
        """The beam-search settings as keyword arguments (early_stopping as transformers takes it)."""
        early = {"true": True, "false": False}.get(self.early_stopping, self.early_stopping)
        return dict(
            num_beams=self.num_beams,
            num_return_sequences=self.num_return_sequences,
            length_penalty=self.length_penalty,
            early_stopping=early,
        )

    def controls(self):
        """The controls as `generate`'s keyword arguments, checked (one line naming the setting)."""
        bias = None
        if self.logit_bias is not None:
            try:
                bias = json.loads(self.logit_bias)
            except json.JSONDecodeError:
                raise GPT2TFError(
                    f"--logit_bias must be a JSON object of token ids to biases, e.g. '{{\"50256\": -100}}', "
                    f"got {self.logit_bias!r}"
                ) from None
        controls = dict(
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            no_repeat_ngram_size=self.no_repeat_ngram_size,
            min_p=self.min_p,
            typical_p=self.typical_p,
        )
        SamplerConfig(**controls)
        return dict(controls, logit_bias=check_logit_bias(bias), bad_words=check_bad_words(list(self.bad_words)))


# ---------------------------------------------------------------------------------------------------------------
# Parsing


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit status 2, like every other user error."""

    def error(self, message):
        raise GPT2TFError(f"{message} (see {self.prog} --help)")


def add_config_flags(parser, config_class):
    """One flag per `flag()` field of `config_class`. Only the flags given reach the parsed namespace (the parser
    must have `argument_default=argparse.SUPPRESS`), so the rest keep the config's defaults. A field with
    `positional=True` in its metadata is a positional argument."""
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
        if meta.get("positional"):
            nargs = meta.get("nargs")
            target.add_argument(field.name, nargs=nargs, metavar=meta.get("metavar"), help=help_text)
            continue
        name = f"--{field.name}"
        if isinstance(default, bool):  # --name sets it, --no_name clears it; `negative_help` shows --no_name
            negative = meta.get("negative_help")
            target.add_argument(
                name, action="store_const", const=True, help=argparse.SUPPRESS if negative else help_text
            )
            target.add_argument(
                f"--no_{field.name}",
                dest=field.name,
                action="store_const",
                const=False,
                help=negative.replace("%", "%%") if negative else argparse.SUPPRESS,
            )
        elif isinstance(default, list) and "nargs" in meta:  # one flag, several values
            target.add_argument(name, nargs=meta["nargs"], metavar=meta.get("metavar"), help=help_text)
        elif isinstance(default, list):  # a flag given again for each value
            target.add_argument(name, action="append", metavar=meta.get("metavar"), help=help_text)
        else:
            kind = meta.get("type", type(default) if default is not None else str)
            target.add_argument(
                name,
                type=kind,
                choices=meta.get("choices"),
                metavar=meta.get("metavar"),
                required=meta.get("required", False),
                help=help_text,
            )


def config_parser(prog, description, config_class):
    parser = Parser(prog=prog, description=description, argument_default=argparse.SUPPRESS)
    add_config_flags(parser, config_class)
    return parser


def parse_config(argv, *, prog, description, config_class):
    """The `config_class` that the command line `argv` gives (flags not given keep the config's defaults)."""
    return config_class(**vars(config_parser(prog, description, config_class).parse_args(argv)))

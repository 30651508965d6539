"""The `convert` command: a model between OpenAI's checkpoint layout and Hugging Face's, exactly."""

import dataclasses
import os
import sys

from gpt2tf.config import flag
from gpt2tf.errors import GPT2TFError

DESCRIPTION = (
    "Convert a GPT-2 between OpenAI's checkpoint layout and Hugging Face's (config.json + model.safetensors + "
    "tokenizer files), exactly."
)
LAYOUTS = {"hf": "Hugging Face", "openai": "OpenAI"}


@dataclasses.dataclass
class ConvertConfig:
    """What `convert.py` (and `gpt2tf convert`) does; each field is the argument or flag of the same name."""

    source: str = flag(None, "a model dir or run dir in either layout", positional=True)
    destination: str = flag(
        None, "the dir to write (written beside its name, then renamed into place)", positional=True
    )
    to: str = flag(None, "the layout to write", choices=tuple(LAYOUTS), required=True)


def check(config):
    if os.path.abspath(config.source) == os.path.abspath(config.destination):
        raise GPT2TFError("the destination is the source: give another dir")


def convert(config, out=sys.stderr):
    """Load `config.source` and write it to `config.destination` in the layout `config.to`."""
    from gpt2tf.formats.hf import save_hf_checkpoint
    from gpt2tf.formats.load import load_model
    from gpt2tf.formats.openai import save_openai_checkpoint

    check(config)
    model = load_model(config.source)
    (save_hf_checkpoint if config.to == "hf" else save_openai_checkpoint)(model, config.destination)
    print(f"wrote {config.destination} ({LAYOUTS[config.to]}'s layout)", file=out)

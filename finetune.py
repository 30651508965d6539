"""Fine-tune GPT-2 (or train one from scratch): `python finetune.py --model_dir models/124M --dataset_path data.txt
--output_dir runs/mine`. Every flag is a field of `gpt2tf.train.TrainConfig`, which owns the defaults.

Kept short: the logic lives in `gpt2tf.train`, where it is tested.
"""

import argparse
import dataclasses

from gpt2tf.cli import run
from gpt2tf.errors import GPT2TFError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit status 2, like every other user error
        raise GPT2TFError(f"{message} (see python finetune.py --help)")


def main(argv=None):
    # Imported here, not above: the tokenizer's worker processes re-import this script, and need no TensorFlow.
    from gpt2tf.cli import import_tensorflow_quietly

    import_tensorflow_quietly()
    from gpt2tf.train import TrainConfig, configure, finetune

    parser = _Parser(description=__doc__.split("\n\n")[0], argument_default=argparse.SUPPRESS)
    for field in dataclasses.fields(TrainConfig):
        help_text = f"{field.metadata['help']} (default: {field.default})".replace("%", "%%")
        if isinstance(field.default, bool):
            parser.add_argument(f"--{field.name}", action="store_const", const=True, help=help_text)
            parser.add_argument(f"--no_{field.name}", dest=field.name, action="store_const", const=False,
                                help=argparse.SUPPRESS)
        else:
            kind = field.metadata.get("type", type(field.default) if field.default is not None else str)
            parser.add_argument(f"--{field.name}", type=kind, choices=field.metadata.get("choices"), help=help_text)
    # Only the flags given reach the config: the rest keep TrainConfig's defaults, or the resumed run's values.
    finetune(configure(vars(parser.parse_args(argv))))


if __name__ == "__main__":
    run(main)

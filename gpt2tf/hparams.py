"""Model shape: the one place that defines GPT-2's hyperparameters and the four released sizes.

Field names are the keys of OpenAI's `hparams.json`, verbatim, so a file round-trips without translation.
"""

import dataclasses
import json

from gpt2tf.errors import GPT2TFError
from gpt2tf.files import write_text_atomic


@dataclasses.dataclass(frozen=True)
class HParams:
    """The shape of a GPT-2 model; defaults are the 124M model."""

    n_vocab: int = 50257
    n_ctx: int = 1024
    n_embd: int = 768
    n_head: int = 12
    n_layer: int = 12

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise GPT2TFError(f"hparams: {field.name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise GPT2TFError(
                f"hparams: n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}); "
                f"pick an n_head that divides it"
            )

    @property
    def head_size(self):
        return self.n_embd // self.n_head

    @property
    def num_parameters(self):
        d = self.n_embd
        per_layer = 12 * d * d + 13 * d  # c_attn 3d^2+3d, c_proj d^2+d, c_fc 4d^2+4d, c_proj 4d^2+d, 2 LNs 4d
        return (self.n_vocab + self.n_ctx) * d + self.n_layer * per_layer + 2 * d

    @classmethod
    def from_dict(cls, values, *, source="hparams"):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        missing = sorted(names - set(values))
        if unknown or missing:
            raise GPT2TFError(
                f"{source}: expected keys {sorted(names)}; "
                + (f"missing {missing}" if missing else "")
                + ("; " if missing and unknown else "")
                + (f"unknown {unknown}" if unknown else "")
            )
        return cls(**{name: values[name] for name in names})

    @classmethod
    def from_json(cls, path):
        """Read an `hparams.json` as OpenAI ships it."""
        try:
            with open(path, encoding="utf-8") as f:
                values = json.load(f)
        except FileNotFoundError:
            raise GPT2TFError(
                f"no hparams.json at {path}: point at a GPT-2 model dir "
                f"(download one with `python download_model.py 124M`)"
            ) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise GPT2TFError(f"cannot read {path} as JSON ({err}); re-download or fix the file") from None
        if not isinstance(values, dict):
            raise GPT2TFError(f"{path} must hold a JSON object with the keys n_vocab, n_ctx, n_embd, n_head, n_layer")
        return cls.from_dict(values, source=str(path))

    def to_json(self, path):
        """Write `hparams.json` atomically."""
        write_text_atomic(path, json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


# The four released models, by their current names; the legacy names OpenAI used at release map onto them.
PRETRAINED = {
    "124M": HParams(n_embd=768, n_head=12, n_layer=12),
    "355M": HParams(n_embd=1024, n_head=16, n_layer=24),
    "774M": HParams(n_embd=1280, n_head=20, n_layer=36),
    "1558M": HParams(n_embd=1600, n_head=25, n_layer=48),
}
LEGACY_NAMES = {"117M": "124M", "345M": "355M"}


def pretrained(name):
    """HParams of a released model by name (`124M`, ..., or the legacy `117M`/`345M`)."""
    name = LEGACY_NAMES.get(name, name)
    if name not in PRETRAINED:
        raise GPT2TFError(f"unknown model size {name!r}; choose one of {', '.join(PRETRAINED)}")
    return PRETRAINED[name]

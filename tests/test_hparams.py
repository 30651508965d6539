import dataclasses
import json

import pytest

from gpt2tf.errors import GPT2TFError
from gpt2tf.hparams import PRETRAINED, HParams, pretrained

# Parameter counts of the released checkpoints, as published (REFERENCE.md), not derived from our formula.
RELEASED_PARAMETERS = {"124M": 124_439_808, "355M": 354_823_168, "774M": 774_030_080, "1558M": 1_557_611_200}


def test_defaults_are_124m():
    assert HParams() == pretrained("124M")
    assert (HParams().n_vocab, HParams().n_ctx, HParams().head_size) == (50257, 1024, 64)


@pytest.mark.parametrize("name", sorted(RELEASED_PARAMETERS))
def test_released_sizes(name):
    hp = pretrained(name)
    assert hp.num_parameters == RELEASED_PARAMETERS[name]
    assert hp.head_size == 64


def test_legacy_names_are_aliases():
    assert pretrained("117M") is PRETRAINED["124M"]
    assert pretrained("345M") is PRETRAINED["355M"]


def test_unknown_size_is_a_clear_error():
    with pytest.raises(GPT2TFError, match="unknown model size '2B'"):
        pretrained("2B")


def test_json_round_trip_uses_openai_keys(tmp_path):
    hp = HParams(n_vocab=11, n_ctx=7, n_embd=6, n_head=3, n_layer=2)
    hp.to_json(tmp_path / "hparams.json")
    assert json.loads((tmp_path / "hparams.json").read_text()) == {
        "n_vocab": 11,
        "n_ctx": 7,
        "n_embd": 6,
        "n_head": 3,
        "n_layer": 2,
    }
    assert HParams.from_json(tmp_path / "hparams.json") == hp
    assert not list(tmp_path.glob("*.tmp-*"))


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        HParams().n_layer = 3


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(n_embd=10, n_head=4), "n_embd \\(10\\) must be divisible by n_head \\(4\\)"),
        (dict(n_layer=0), "n_layer must be a positive integer"),
        (dict(n_ctx=-1), "n_ctx must be a positive integer"),
        (dict(n_vocab=1.5), "n_vocab must be a positive integer"),
        (dict(n_head=True), "n_head must be a positive integer"),
    ],
)
def test_validation(changes, message):
    with pytest.raises(GPT2TFError, match=message):
        HParams(**changes)


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no hparams.json"),
        ("{not json", "cannot read .* as JSON"),
        ("[1, 2]", "must hold a JSON object"),
        ('{"n_vocab": 5, "n_ctx": 4, "n_embd": 4, "n_head": 2}', "missing \\['n_layer'\\]"),
        ('{"n_vocab": 5, "n_ctx": 4, "n_embd": 4, "n_head": 2, "n_layer": 1, "n_x": 3}', "unknown \\['n_x'\\]"),
    ],
)
def test_bad_json_files(tmp_path, content, message):
    path = tmp_path / "hparams.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(GPT2TFError, match=message) as info:
        HParams.from_json(path)
    assert "\n" not in str(info.value)

"""The decode engine: outputs equal the recorded release, per-row settings, joining and leaving, invariance."""

import json
from pathlib import Path

import pytest

import gpt2tf
from gpt2tf import sample

FIXTURES = Path(__file__).with_name("fixtures") / "generate_tokens.json"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    data = json.loads(FIXTURES.read_text())
    root = tmp_path_factory.mktemp("recorded")
    models = {}
    for name, (hparams, seed) in data["models"].items():
        gpt2tf.write_synthetic_checkpoint(root / name, gpt2tf.HParams(**hparams), seed=seed)
        models[name] = gpt2tf.load_model(root / name)
    return models, data["cases"]


def test_outputs_equal_the_recorded_release(recorded):
    models, cases = recorded
    for case in cases:
        got = getattr(sample, case["function"])(models[case["model"]], case["prompts"], **case["kwargs"])
        assert got == case["output"], case["kwargs"]

"""Shared fixtures: tiny synthetic model dirs in OpenAI's layout, written once per session."""

import os
import threading

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported anywhere

import pytest

from helpers import SMALL, TINY


@pytest.fixture(scope="session")
def tiny_hparams():
    return TINY


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A complete tiny model dir; tests must not modify it (copy it first)."""
    import gpt2tf

    path = tmp_path_factory.mktemp("tiny") / "model"
    gpt2tf.write_synthetic_checkpoint(path, TINY, seed=1)
    return path


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    import gpt2tf

    return gpt2tf.load_model(tiny_model_dir)


@pytest.fixture(scope="session")
def small_model_dir(tmp_path_factory):
    """A model dir with the full GPT-2 vocabulary (so <|endoftext|> and real text work) but a tiny network."""
    import gpt2tf

    path = tmp_path_factory.mktemp("small") / "model"
    gpt2tf.write_synthetic_checkpoint(path, SMALL, seed=11)
    return path


@pytest.fixture
def store(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # never route the test traffic anywhere else
    from http_store import FakeStore

    server = FakeStore()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)

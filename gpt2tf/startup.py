"""Starting TensorFlow quietly: commands check their flags first, then import TensorFlow without its log lines."""

import contextlib
import importlib
import os
import sys


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

"""Shared plumbing for the thin command-line scripts: quiet TensorFlow start-up, one-line errors, exit status 2."""

import contextlib
import os
import sys

from gpt2tf.errors import GPT2TFError


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


def import_tensorflow_quietly():
    """Import TensorFlow without its start-up log lines (CUDA probing, oneDNN notices) unless the user asked for
    them with TF_CPP_MIN_LOG_LEVEL; an import failure still raises as usual."""
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        import tensorflow  # noqa: F401
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    with _stderr_silenced():
        import tensorflow as tf

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

"""Shared plumbing for the thin command-line scripts: turn user errors into one line and exit status 2."""

import sys

from gpt2tf.errors import GPT2TFError


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

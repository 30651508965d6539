"""The one exception type that means "the user gave us something wrong", and how an error becomes one line.

Library code raises `GPT2TFError` with a one-line message that names the problem and the fix; the command-line
scripts print that line and exit with status 2 instead of showing a traceback. Anything else is a bug.
"""

import re


class GPT2TFError(Exception):
    """A user-facing error; `str(err)` is one line that says what is wrong and what to do."""


def first_line(err):
    """An error's first line, without the `{{function_node ...}}` prefix TensorFlow puts on op errors."""
    text = re.sub(r"\{\{[^}]*\}\}\s*", "", getattr(err, "message", None) or str(err)).strip()
    return text.splitlines()[0] if text else type(err).__name__

"""The one exception type that means "the user gave us something wrong".

Library code raises `GPT2TFError` with a one-line message that names the problem and the fix; the command-line
scripts print that line and exit with status 2 instead of showing a traceback. Anything else is a bug.
"""


class GPT2TFError(Exception):
    """A user-facing error; `str(err)` is one line that says what is wrong and what to do."""

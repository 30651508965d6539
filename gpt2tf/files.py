"""Writing files so that an interruption never leaves a half-written one under the final name, and checking where
output dirs go."""

import contextlib
import os
from pathlib import Path

from gpt2tf.errors import GPT2TFError


def write_text_atomic(path, text):
    """Write `text` to a temporary file beside `path`, flush it to disk, then rename it over `path`. A failure
    (a full disk, say) removes the temporary file and leaves `path` as it was."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def check_output_dir(out_dir, *, marker, what):
    """Refuse, in one line, a dir to write `what` into that is a file, cannot be read, or holds something other than
    an earlier `what` (recognised by its `marker` file)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise GPT2TFError(f"{out_dir} is a file: give a new dir for the {what}")
    try:
        holds_files = out_dir.is_dir() and any(out_dir.iterdir())
    except OSError as err:
        raise GPT2TFError(f"cannot read {out_dir} ({err.strerror}): give a writable dir for the {what}") from None
    if holds_files and not (out_dir / marker).is_file():
        raise GPT2TFError(f"{out_dir} exists and is not a {what} dir: give a new dir for the {what}")

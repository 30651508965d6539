"""Writing files so that an interruption never leaves a half-written one under the final name."""

import contextlib
import os


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

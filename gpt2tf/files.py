"""Writing files so that an interruption never leaves a half-written one under the final name."""

import os


def write_text_atomic(path, text):
    """Write `text` to a temporary file beside `path`, flush it to disk, then rename it over `path`."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)

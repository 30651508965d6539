"""Writing files so that an interruption never leaves a half-written one under its final name: the one place that
writes beside a final name and renames into place. Also where output dirs are checked.

Every temporary is named by `temp_name` (`<final name>.tmp-<pid>`), so a later run can recognise and remove what an
interrupted one left (`gpt2tf.train.rundir` does). No TensorFlow here: formats pass their own error types to
`writing_dir` so that their failures, too, become one line.
"""

import contextlib
import os
import secrets
import shutil
from pathlib import Path

from gpt2tf.errors import GPT2TFError, first_line

TEMP_MARK = ".tmp-"  # in every temporary's name


def temp_name(path):
    """A temporary beside `path` to write before renaming it to `path`: this process's id and a random part, so
    that two writers never share one (processes of the same id in containers sharing a dir, say)."""
    return f"{path}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}"


@contextlib.contextmanager
def atomic_path(path):
    """`with atomic_path(path) as temp:` write the file `temp`; when the block ends it is renamed to `path`. A failure
    (a full disk, say) removes `temp` and leaves `path` as it was."""
    temp = temp_name(path)
    try:
        yield temp
        os.replace(temp, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temp)


@contextlib.contextmanager
def atomic_paths(paths):
    """`with atomic_paths([a, b]) as (temp_a, temp_b):` write several files, renamed into place one after another,
    in the given order, only once every one of them is written; a failure while writing removes them all and leaves
    every path as it was (for files that must not mix old and new, as a model's shards: the renames take
    microseconds, the writing the time)."""
    temps = [temp_name(path) for path in paths]
    try:
        yield temps
        for temp, path in zip(temps, paths):
            os.replace(temp, path)
    finally:
        for temp in temps:
            with contextlib.suppress(OSError):
                os.unlink(temp)


def write_text_atomic(path, text):
    """Write `text` (UTF-8) to `path` atomically, flushed to disk before the rename."""
    with atomic_path(path) as temp, open(temp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def copy_atomic(source, target):
    """Copy the file `source` to `target` atomically."""
    with atomic_path(target) as temp:
        shutil.copyfile(source, temp)


@contextlib.contextmanager
def writing_dir(out_dir, *, what="", replace=False, errors=(OSError,)):
    """`with writing_dir(out_dir) as (work, fresh):` write a dir of files so that an interruption never leaves one
    that looks complete.

    A new `out_dir` (or any, with `replace`) is written as `work`, a dir beside it, renamed into place when the
    block ends (an existing `out_dir` is then removed first) and removed if it fails; an existing one is `work`
    itself (`fresh` False), whose writer must write each file through `atomic_path`. An error of the types in
    `errors` is one line naming `out_dir` and what to do.
    """
    out_dir = Path(out_dir)
    fresh = replace or not out_dir.exists()
    work = out_dir.with_name(f".{Path(temp_name(out_dir.name))}") if fresh else out_dir
    if fresh:
        remove_stale_work_dirs(out_dir)
    try:
        work.mkdir(parents=True, exist_ok=True)
        yield work, fresh
        if fresh:
            _swap_into_place(work, out_dir)
    except errors as err:
        reason = getattr(err, "strerror", None) or first_line(err)
        raise GPT2TFError(
            f"cannot write {what}{out_dir} ({reason}); choose a writable location with enough free space"
        ) from None
    finally:
        if fresh and work.exists():
            shutil.rmtree(work, ignore_errors=True)


def remove_stale_work_dirs(out_dir):
    """Remove the work dirs of earlier writers of `out_dir` whose process is gone (a kill -9 mid-export leaves one,
    as big as the export); a live writer's is kept."""
    prefix = f".{Path(out_dir).name}{TEMP_MARK}"
    parent = Path(out_dir).parent
    try:
        candidates = [p for p in parent.iterdir() if p.name.startswith(prefix) and p.is_dir()]
    except OSError:
        return
    for path in candidates:
        pid = path.name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # another user's process, or not knowable here: keep its dir
    return True


def _swap_into_place(work, out_dir):
    """Rename the finished dir `work` to `out_dir`; an `out_dir` being replaced is renamed aside first and removed
    only once the new one is in place (put back if that fails), so there is always one of them."""
    if not out_dir.is_dir():
        os.replace(work, out_dir)
        return
    aside = out_dir.with_name(f".{Path(temp_name(out_dir.name))}-old")
    os.replace(out_dir, aside)
    try:
        os.replace(work, out_dir)
    except BaseException:
        os.replace(aside, out_dir)
        raise
    shutil.rmtree(aside, ignore_errors=True)


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

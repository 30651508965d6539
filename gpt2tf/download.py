"""Resumable, verified downloads of OpenAI's released GPT-2 checkpoints, which running again always repairs.

Owns the download URL, the files fetched per model, the byte sizes we know, and the rule that a file under its final
name is complete: bytes stream into `<file>.part` (resumed with an HTTP Range request after an interruption) and are
renamed with `os.replace` only once their length matches what the server announced and the size we know for the
file, and their first bytes are not an HTML page (a captive portal's login page, a wrong --base_url), and a JSON or
`checkpoint` file parses. A body longer than a file can be is cut off at once. So after any failure only `.part`
files can be partial, and running the same command again picks up where it left off.

Running again also repairs a damaged dir. A file already under its final name is kept only if it passes the same
checks (known size, not HTML, parses); otherwise it is fetched again. Then the model is loaded (`check_model_loads`);
if that fails, the files `load_model` reads that this run kept from before are fetched again, the small ones first and
then the data file, checking after each step. `force` fetches every file again. TensorFlow is imported only by
`check_model_loads`.
"""

import contextlib
import dataclasses
import json
import os
import re
import sys
import time
from pathlib import Path

import requests
from tqdm import tqdm

from gpt2tf.config import flag
from gpt2tf.errors import GPT2TFError
from gpt2tf.hparams import LEGACY_NAMES, PRETRAINED, HParams
from gpt2tf.layout import HPARAMS_FILE, MODELS_DIR, PREFIX_NAME, STATE_FILE, VOCAB_FILES
from gpt2tf.startup import import_tensorflow_quietly
from gpt2tf.weight_formats import FORMATS

DEFAULT_BASE_URL = "https://openaipublic.blob.core.windows.net/gpt-2/models"  # where OpenAI serves the files
BASE_URL_ENV = "GPT2TF_BASE_URL"

MODEL_NAMES = tuple(PRETRAINED)  # a legacy name (LEGACY_NAMES) is fetched and stored under its current name

# The files OpenAI ships per model, by the names `gpt2tf.layout` gives them (no TensorFlow): `load_model` reads all of
# them except model.ckpt.meta (a TF1 graph), fetched so the dir matches OpenAI's.
DATA_FILE = f"{PREFIX_NAME}.data-00000-of-00001"
INDEX_FILE = f"{PREFIX_NAME}.index"
MODEL_FILES = tuple(sorted((STATE_FILE, *VOCAB_FILES, HPARAMS_FILE, DATA_FILE, INDEX_FILE, f"{PREFIX_NAME}.meta")))
LOADED_FILES = (STATE_FILE, HPARAMS_FILE, INDEX_FILE, DATA_FILE)  # what `load_model` reads

# Sizes in bytes that we have confirmed, per model. A file missing here is checked only against the server's own
# Content-Length: the 774M and 1558M data files should be 4 bytes per parameter, but nobody has confirmed that, and
# a wrong guess would make the download impossible.
_VOCAB_SIZES = dict(zip(VOCAB_FILES, (1_042_301, 456_318)))  # encoder.json, vocab.bpe
KNOWN_SIZES = {
    "124M": {**_VOCAB_SIZES, DATA_FILE: 497_759_232},
    "355M": {**_VOCAB_SIZES, DATA_FILE: 1_419_292_672},
    "774M": dict(_VOCAB_SIZES),
    "1558M": dict(_VOCAB_SIZES),
}

# The most bytes accepted for a file other than the data file whose size we do not know. The largest such file,
# 1558M's model.ckpt.meta, is a few MB (an index is tens of KB, checkpoint and hparams.json under 100 bytes), so
# 64 MiB leaves a wide margin and still stops a mirror that streams an endless body within a second or so.
SMALL_FILE_CAP = 64 << 20


@dataclasses.dataclass(frozen=True)
class DownloadConfig:
    """How models are downloaded; the fields with help are `download_model.py`'s flags."""

    models_dir: str = flag(MODELS_DIR, "each model goes to <models_dir>/<model>")
    base_url: str = flag(
        None,
        f"where <model>/<file> is fetched from, e.g. a mirror (default: ${BASE_URL_ENV} if set, else "
        f"{DEFAULT_BASE_URL})",
    )
    quiet: bool = flag(False, "no progress bars or notes, only errors")
    verify: bool = flag(
        True,
        "load each model with gpt2tf.load_model after the download (imports TensorFlow)",
        negative_help="skip loading each model with gpt2tf.load_model after the download (no TensorFlow)",
    )
    force: bool = flag(
        False,
        "download every file again, even complete ones (each is replaced only once its new copy is complete)",
    )
    tries: int = 5  # consecutive attempts without progress before giving up on a file
    backoff_s: float = 1.0  # sleep after the n-th failure in a row is backoff_s * 2**(n-1), capped at 60 s
    timeout_s: float = 30.0  # connect timeout, and the longest silence allowed mid-transfer
    chunk_bytes: int = 1 << 20
    known_sizes: dict = dataclasses.field(default_factory=lambda: KNOWN_SIZES)  # model name -> {file: bytes}
    small_file_cap: int = SMALL_FILE_CAP  # bytes


@dataclasses.dataclass(frozen=True)
class DownloadCommand(DownloadConfig):
    """What `download_model.py` (and `gpt2tf download`) does: the models to fetch, and how."""

    models: list = flag(
        [],
        f"{', '.join(MODEL_NAMES)} (old names {', '.join(LEGACY_NAMES)} are accepted)",
        positional=True,
        nargs="+",
        metavar="model",
    )


def check(config):
    for name in config.models:
        canonical_name(name)


def run(config):
    download_models(config.models, config)


def base_url(config):
    """Where files are fetched from: the config's base URL, else $GPT2TF_BASE_URL, else OpenAI's."""
    return (config.base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/")


def canonical_name(name):
    """The current name of a model ("117M" -> "124M"); a `GPT2TFError` for a name OpenAI never released."""
    if name in MODEL_NAMES:
        return name
    if name in LEGACY_NAMES:
        return LEGACY_NAMES[name]
    raise GPT2TFError(
        f"unknown model {name!r}; choose from {', '.join(MODEL_NAMES)} (old names {', '.join(LEGACY_NAMES)} also work)"
    )


def download_models(names, config):
    """Download, finish or repair each named model in `config.models_dir/<name>`; return the dirs."""
    current_names = [canonical_name(name) for name in names]  # reject a typo before fetching gigabytes
    fetched = []  # per model, the files fetched by this run
    with _session() as session:
        for name, current in zip(names, current_names):
            if name != current:
                _note(
                    config, f"note: {name} is the old name of {current}; saving to {Path(config.models_dir) / current}"
                )
            fetched.append(download_model(current, config, session=session))
        for current, fetched_files in zip(current_names, fetched):
            if config.verify:
                _check_and_repair(current, fetched_files, config, session)
            if not config.quiet:
                print(
                    f"{Path(config.models_dir) / current}: ready" + ("" if config.verify else " (load check skipped)")
                )
    return [Path(config.models_dir) / current for current in current_names]


def download_model(name, config, *, session=None):
    """Fetch the files of one model (current name) that are missing or flawed (`_flaw`), or all of them with
    `config.force`, into `config.models_dir/<name>`; return the names of the files fetched."""
    if session is None:
        with _session() as session:
            return download_model(name, config, session=session)
    model_dir = Path(config.models_dir) / name
    wanted = []
    with _disk_errors(model_dir):
        model_dir.mkdir(parents=True, exist_ok=True)
        for file_name in MODEL_FILES:
            path = model_dir / file_name
            if config.force or not path.is_file():
                wanted.append(file_name)
                continue
            # Only an atomic rename after these same checks creates the final name, so a flaw means the file was put
            # there some other way (by hand, by another tool) or was damaged since.
            flaw = _flaw(path, config.known_sizes.get(name, {}).get(file_name), _max_size(name, file_name, config))
            if flaw is None:
                _note(config, f"{path}: already complete, skipped")
                continue
            _note(config, f"note: {path} {flaw}; downloading it again")
            path.unlink()
            wanted.append(file_name)
    fetch_files(session, name, wanted, config, fresh=config.force)
    return wanted


def fetch_files(session, name, file_names, config, *, fresh=False):
    """Download `file_names` of model `name`, each through its `.part`; `fresh` starts from byte zero rather than
    resuming a `.part` left from before. A file already under its final name is replaced only by a complete one."""
    model_dir = Path(config.models_dir) / name
    with _disk_errors(model_dir):
        for file_name in file_names:
            path = model_dir / file_name
            if fresh:
                _part(path).unlink(missing_ok=True)
            download_file(
                session,
                f"{base_url(config)}/{name}/{file_name}",
                path,
                expected_size=config.known_sizes.get(name, {}).get(file_name),
                max_size=_max_size(name, file_name, config),
                config=config,
            )


def _check_and_repair(name, fetched, config, session):
    """Load the model; while that fails, fetch again the files `load_model` reads that this run kept from before
    (not `fetched`): the small ones first, being cheap, then the data file, loading again after each step."""
    model_dir = Path(config.models_dir) / name
    kept = [file_name for file_name in LOADED_FILES if file_name not in fetched]
    for step in ([f for f in kept if f != DATA_FILE], [f for f in kept if f == DATA_FILE]):
        if not step:
            continue
        try:
            return check_model_loads(model_dir)
        except GPT2TFError as err:
            _note(
                config,
                f"note: {model_dir} does not load, so downloading {', '.join(step)} again ({err.__cause__ or err})",
            )
        fetch_files(session, name, step, config, fresh=True)
    check_model_loads(model_dir)  # everything it reads is now fresh from the server: a failure is final


def download_file(session, url, path, *, expected_size, max_size, config):
    """Stream `url` into `path` via `path.part`, resuming and retrying; `path` appears only when complete."""
    part = _part(path)
    best = _size(part)  # progress = a new high-water mark of verified-so-far bytes on disk
    failures = 0
    while True:
        try:
            _fetch_into(session, url, part, expected_size=expected_size, max_size=max_size, config=config)
            break
        except (
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
            _Retryable,
        ) as err:
            reason = _failure_reason(err, part)
        except requests.RequestException as err:  # a malformed URL and the like: retrying cannot help
            raise GPT2TFError(f"cannot fetch {url}: {_one_line(err)}; check --base_url") from err
        # Count only attempts that made no progress, so a flaky link that drops every few hundred MB still
        # finishes a 6 GB file, while a server that never delivers is given up on after `tries` attempts.
        if _size(part) > best:
            best, failures = _size(part), 0
        else:
            failures += 1
            if failures >= config.tries:
                raise GPT2TFError(
                    f"giving up on {url} after {failures} tries without progress ({reason}); "
                    f"run the same command again to resume"
                )
        delay = min(config.backoff_s * 2 ** max(failures - 1, 0), 60.0)
        _note(config, f"{path.name}: {reason}; retrying in {delay:g} s")
        time.sleep(delay)
    if _is_html(part):  # served without a text/html Content-Type
        part.unlink()
        raise _html_error(url)
    flaw = _text_flaw(part, path.name)
    if flaw:
        part.unlink()
        raise GPT2TFError(f"{url} {flaw}; check --base_url")
    with open(part, "rb+") as f:  # make the bytes durable before the name says they are complete
        os.fsync(f.fileno())
    os.replace(part, path)


class _Retryable(Exception):
    """A failure worth another attempt: a 5xx, a short body, a resume the server could not honour."""


def _fetch_into(session, url, part, *, expected_size, max_size, config):
    """One attempt: append the rest of `url` to `part`; return only when `part` holds the whole, verified file."""
    have = _size(part)
    if have > max_size:  # more than the known size, or than the cap
        part.unlink()  # exists: it has more than zero bytes
        have = 0
    if have and have == expected_size:
        return  # finished downloading last time, stopped before the rename
    headers = {"Range": f"bytes={have}-"} if have else {}
    with session.get(url, headers=headers, stream=True, timeout=config.timeout_s) as response:
        status = response.status_code
        if status == 404:
            raise GPT2TFError(f"{url} not found (HTTP 404); check the model name and --base_url")
        if status == 416:  # nothing left after `have` bytes: the .part is either complete or longer than the file
            _, total = _parse_content_range(response.headers.get("Content-Range", ""))
            if total == have and expected_size in (None, have):
                return
            part.unlink(missing_ok=True)
            raise _Retryable(f"server refused to resume at byte {have:,}; restarting from zero")
        if status == 429 or status >= 500:
            raise _Retryable(f"HTTP {status} {response.reason}")
        if status == 206:
            start, total = _parse_content_range(response.headers.get("Content-Range", ""))
            if start != have:
                part.unlink(missing_ok=True)
                raise _Retryable(f"server resumed at byte {start} instead of {have:,}; restarting from zero")
            mode = "ab"
        elif status == 200:
            if have:
                _note(config, f"{part.name}: server ignored the resume request; restarting from zero")
            have, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        else:
            raise GPT2TFError(f"{url} answered HTTP {status} {response.reason}; check --base_url")
        # Nothing of this response is on disk yet, so a .part being resumed keeps the good bytes it has.
        if "html" in response.headers.get("Content-Type", "").lower():  # text/html, application/xhtml+xml
            raise _html_error(url)
        if expected_size is not None and total is not None and total != expected_size:
            part.unlink(missing_ok=True)
            raise GPT2TFError(
                f"{url} is {total:,} bytes but this file is known to be {expected_size:,}; check --base_url"
            )
        if total is not None and total > max_size:
            part.unlink(missing_ok=True)
            raise _too_big_error(url, max_size)
        label = f"{part.parent.name}/{part.name.removesuffix('.part')}"
        # disable=None: tqdm draws only on a terminal, so logs of unattended runs stay clean.
        with (
            open(part, mode) as f,
            tqdm(
                total=total,
                initial=have,
                desc=label,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                disable=True if config.quiet else None,
            ) as bar,
        ):
            for chunk in response.iter_content(chunk_size=config.chunk_bytes):
                f.write(chunk)
                bar.update(len(chunk))
                if f.tell() > max_size:
                    break  # a body without a length that goes on and on: stop now, refused below
    size = _size(part)
    if size > max_size:
        part.unlink()
        raise _too_big_error(url, max_size)
    if total is not None and size < total:
        raise _Retryable(f"connection closed after {size:,} of {total:,} bytes")
    if (total is not None and size > total) or (expected_size is not None and size != expected_size):
        part.unlink(missing_ok=True)
        raise GPT2TFError(f"{url} delivered {size:,} bytes, expected {expected_size or total:,}; check --base_url")


def check_model_loads(model_dir):
    """Raise a `GPT2TFError` unless `gpt2tf.load_model` accepts the downloaded directory."""
    import_tensorflow_quietly()  # a download alone should not pay for TensorFlow, nor print its start-up lines
    from gpt2tf.formats.load import load_model

    try:
        load_model(model_dir)
    except GPT2TFError as err:
        raise GPT2TFError(f"{model_dir} was downloaded but does not load: {err}") from err


def _max_size(name, file_name, config):
    """The most bytes `file_name` of model `name` can have: its known size, else a bound no real file reaches."""
    known_size = config.known_sizes.get(name, {}).get(file_name)
    if known_size is not None:
        return known_size
    if file_name == DATA_FILE:
        # float32 tensors: 4 bytes per parameter, exactly so for 124M and 355M. Twice that is a margin for the
        # unconfirmed sizes that still stops an endless body before it fills a disk.
        return 2 * FORMATS["float32"].bytes_per_weight * PRETRAINED[name].num_parameters
    return config.small_file_cap


def _flaw(path, known_size, max_size):
    """Why the file at `path` cannot be complete, as a phrase, or None. Cheap: sizes, the first bytes, small files."""
    size = path.stat().st_size
    if known_size is not None and size != known_size:
        return f"has {size:,} bytes instead of {known_size:,}"
    if size > max_size:
        return f"has {size:,} bytes, more than {path.name} can have"
    if _is_html(path):
        return "is an HTML page"
    return _text_flaw(path, path.name)


# An HTML document's start, after an optional UTF-8 byte order mark and white space.
_HTML_START = re.compile(rb"(\xef\xbb\xbf)?\s*<(!doctype\s+html|html)[\s>]", re.IGNORECASE)


def _is_html(path):
    with open(path, "rb") as f:
        return _HTML_START.match(f.read(1024)) is not None


def _text_flaw(path, file_name):
    """Why `path` is not a sound `file_name`, as a phrase, or None; only the text files are read."""
    if file_name == STATE_FILE:  # the line gpt2tf.formats.openai.read_state_file needs
        if not re.search(rb'^model_checkpoint_path:\s*"', path.read_bytes(), re.MULTILINE):
            return "has no model_checkpoint_path line"
    elif file_name.endswith(".json"):
        try:
            values = json.loads(path.read_bytes())
        except ValueError:  # JSONDecodeError and UnicodeDecodeError
            return "is not valid JSON"
        if file_name == HPARAMS_FILE:
            try:
                HParams.from_dict(values if isinstance(values, dict) else {})
            except GPT2TFError:
                keys = ", ".join(field.name for field in dataclasses.fields(HParams))
                return f"does not hold {keys} as positive integers"
    return None


def _html_error(url):
    return GPT2TFError(
        f"{url} sent an HTML page instead of the file (a wrong --base_url, or a network's sign-in "
        f"page); check --base_url or sign in to the network, then run the same command again"
    )


def _too_big_error(url, max_size):
    return GPT2TFError(f"{url} is longer than this file can be (over {max_size:,} bytes); check --base_url")


@contextlib.contextmanager
def _disk_errors(model_dir):
    """A failure to write (a full disk, a file where a dir should be) as a one-line error."""
    try:
        yield
    except OSError as err:  # requests' own errors are OSErrors too, but download_file never lets one escape
        raise GPT2TFError(
            f"cannot write {err.filename or model_dir}: {err.strerror or err}; "
            f"free some space or choose another --models_dir"
        ) from err


def _part(path):
    return path.with_name(path.name + ".part")


def _parse_content_range(value):
    """`bytes 100-199/200` -> (100, 200); `bytes */200` -> (None, 200); a missing part is None."""
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value)
    if not match:
        return None, None
    start, total = match.groups()
    return (int(start) if start else None), (int(total) if total != "*" else None)


def _session():
    session = requests.Session()
    # Ask for the stored bytes: a compressed transfer would make Content-Length disagree with the file size.
    session.headers.update({"Accept-Encoding": "identity", "User-Agent": "gpt2tf-download"})
    return session


def _size(path):
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _failure_reason(err, part):
    """A short phrase for a failed attempt; requests' own messages run to several hundred characters."""
    if isinstance(err, _Retryable):
        return str(err)
    if isinstance(err, requests.exceptions.ChunkedEncodingError):
        return f"connection broken at byte {_size(part):,}"
    if isinstance(err, requests.Timeout) or "timed out" in str(err):  # a stall mid-body is a ConnectionError
        return f"timed out at byte {_size(part):,}"
    errno_text = re.search(r"\[Errno -?\d+\] ([^'\"()]+)", str(err))  # "Connection refused" and the like
    return errno_text.group(1).strip() if errno_text else _one_line(err)


def _one_line(err):
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _note(config, message):
    if not config.quiet:
        print(message, file=sys.stderr)

"""Resumable, verified downloads of OpenAI's released GPT-2 checkpoints.

Owns the download URL, the files fetched per model, the byte sizes we know, and the rule that a file under its final
name is complete: bytes stream into `<file>.part` (resumed with an HTTP Range request after an interruption) and are
renamed with `os.replace` only once their length matches what the server announced and the size we know for the
file. So after any failure only `.part` files can be partial, and running the same command again picks up where it
left off. TensorFlow is imported only by `check_model_loads`.
"""

import dataclasses
import os
import re
import sys
import time
from pathlib import Path

import requests
from tqdm import tqdm

from gpt2tf.errors import GPT2TFError
from gpt2tf.hparams import LEGACY_NAMES, PRETRAINED

DEFAULT_BASE_URL = "https://openaipublic.blob.core.windows.net/gpt-2/models"  # where OpenAI serves the files
BASE_URL_ENV = "GPT2TF_BASE_URL"

MODEL_NAMES = tuple(PRETRAINED)  # a legacy name (LEGACY_NAMES) is fetched and stored under its current name

# The files OpenAI ships per model. `gpt2tf.checkpoint` owns these names but imports TensorFlow, which a download
# must not pay for; it reads all of them except model.ckpt.meta (a TF1 graph), fetched so the dir matches OpenAI's.
DATA_FILE = "model.ckpt.data-00000-of-00001"
MODEL_FILES = ("checkpoint", "encoder.json", "hparams.json", DATA_FILE, "model.ckpt.index", "model.ckpt.meta",
               "vocab.bpe")

# Sizes in bytes that we have confirmed, per model. A file missing here is checked only against the server's own
# Content-Length: the 774M and 1558M data files should be 4 bytes per parameter, but nobody has confirmed that, and
# a wrong guess would make the download impossible.
_VOCAB_SIZES = {"encoder.json": 1_042_301, "vocab.bpe": 456_318}
KNOWN_SIZES = {
    "124M": {**_VOCAB_SIZES, DATA_FILE: 497_759_232},
    "355M": {**_VOCAB_SIZES, DATA_FILE: 1_419_292_672},
    "774M": dict(_VOCAB_SIZES),
    "1558M": dict(_VOCAB_SIZES),
}


@dataclasses.dataclass(frozen=True)
class DownloadConfig:
    models_dir: str = "models"
    base_url: str = DEFAULT_BASE_URL
    quiet: bool = False  # no progress bars, notes or summary
    verify: bool = True  # load each downloaded model with gpt2tf.load_model (imports TensorFlow)
    tries: int = 5  # consecutive attempts without progress before giving up on a file
    backoff_s: float = 1.0  # sleep after the n-th failure in a row is backoff_s * 2**(n-1), capped at 60 s
    timeout_s: float = 30.0  # connect timeout, and the longest silence allowed mid-transfer
    chunk_bytes: int = 1 << 20
    known_sizes: dict = dataclasses.field(default_factory=lambda: KNOWN_SIZES)  # model name -> {file: bytes}


def canonical_name(name):
    """The current name of a model ("117M" -> "124M"); a `GPT2TFError` for a name OpenAI never released."""
    if name in MODEL_NAMES:
        return name
    if name in LEGACY_NAMES:
        return LEGACY_NAMES[name]
    raise GPT2TFError(f"unknown model {name!r}; choose from {', '.join(MODEL_NAMES)} "
                      f"(old names {', '.join(LEGACY_NAMES)} also work)")


def download_models(names, config):
    """Download (or finish downloading) each named model into `config.models_dir/<name>`; return the dirs."""
    current_names = [canonical_name(name) for name in names]  # reject a typo before fetching gigabytes
    model_dirs = []
    with _session() as session:
        for name, current in zip(names, current_names):
            if name != current:
                _note(config, f"note: {name} is the old name of {current}; saving to "
                              f"{Path(config.models_dir) / current}")
            model_dirs.append(download_model(current, config, session=session))
    for model_dir in model_dirs:
        if config.verify:
            check_model_loads(model_dir)
        if not config.quiet:
            print(f"{model_dir}: ready" + ("" if config.verify else " (load check skipped)"))
    return model_dirs


def download_model(name, config, *, session=None):
    """Fetch the files of one model (current name) that are not complete yet; return its directory."""
    if session is None:
        with _session() as session:
            return download_model(name, config, session=session)
    model_dir = Path(config.models_dir) / name
    known_sizes = config.known_sizes.get(name, {})
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
        for file_name in MODEL_FILES:
            path = model_dir / file_name
            expected_size = known_sizes.get(file_name)
            if path.is_file():
                size = path.stat().st_size
                # Only an atomic rename after verification creates the final name, so it is complete unless it
                # contradicts a size we know (e.g. a file put there by hand).
                if expected_size is None or size == expected_size:
                    _note(config, f"{path}: already complete, skipped")
                    continue
                _note(config, f"note: {path} has {size:,} bytes instead of {expected_size:,}; downloading it again")
                path.unlink()
            url = f"{config.base_url.rstrip('/')}/{name}/{file_name}"
            download_file(session, url, path, expected_size=expected_size, config=config)
    except OSError as err:  # requests' own errors are OSErrors too, but download_file never lets one escape
        raise GPT2TFError(f"cannot write {err.filename or model_dir}: {err.strerror or err}; "
                          f"free some space or choose another --models_dir") from err
    return model_dir


def download_file(session, url, path, *, expected_size, config):
    """Stream `url` into `path` via `path.part`, resuming and retrying; `path` appears only when complete."""
    part = path.with_name(path.name + ".part")
    best = _size(part)  # progress = a new high-water mark of verified-so-far bytes on disk
    failures = 0
    while True:
        try:
            _fetch_into(session, url, part, expected_size=expected_size, config=config)
            break
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                _Retryable) as err:
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
                raise GPT2TFError(f"giving up on {url} after {failures} tries without progress ({reason}); "
                                  f"run the same command again to resume")
        delay = min(config.backoff_s * 2 ** max(failures - 1, 0), 60.0)
        _note(config, f"{path.name}: {reason}; retrying in {delay:g} s")
        time.sleep(delay)
    with open(part, "rb+") as f:  # make the bytes durable before the name says they are complete
        os.fsync(f.fileno())
    os.replace(part, path)


class _Retryable(Exception):
    """A failure worth another attempt: a 5xx, a short body, a resume the server could not honour."""


def _fetch_into(session, url, part, *, expected_size, config):
    """One attempt: append the rest of `url` to `part`; return only when `part` holds the whole, verified file."""
    have = _size(part)
    if expected_size is not None and have > expected_size:
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
        if expected_size is not None and total is not None and total != expected_size:
            part.unlink(missing_ok=True)
            raise GPT2TFError(f"{url} is {total:,} bytes but this file is known to be {expected_size:,}; "
                              f"check --base_url")
        label = f"{part.parent.name}/{part.name.removesuffix('.part')}"
        # disable=None: tqdm draws only on a terminal, so logs of unattended runs stay clean.
        with open(part, mode) as f, tqdm(total=total, initial=have, desc=label, unit="B", unit_scale=True,
                                         unit_divisor=1024, disable=True if config.quiet else None) as bar:
            for chunk in response.iter_content(chunk_size=config.chunk_bytes):
                f.write(chunk)
                bar.update(len(chunk))
    size = _size(part)
    if total is not None and size < total:
        raise _Retryable(f"connection closed after {size:,} of {total:,} bytes")
    if total is not None and size > total or expected_size is not None and size != expected_size:
        part.unlink(missing_ok=True)
        raise GPT2TFError(f"{url} delivered {size:,} bytes, expected {expected_size or total:,}; check --base_url")


def check_model_loads(model_dir):
    """Raise a `GPT2TFError` unless `gpt2tf.load_model` accepts the downloaded directory."""
    from gpt2tf import load_model  # imports TensorFlow, which a download alone should not pay for

    try:
        load_model(model_dir)
    except GPT2TFError as err:
        raise GPT2TFError(f"{model_dir} was downloaded but does not load: {err}") from err


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

"""Training data: loaders that tokenise a dataset once (cached), and the fixed-shape batches drawn from it.

Every loader has one signature, `load(path, *, tokenizer, split, feature, cache_dir)`, and `LOADERS` maps the
`--data_loader` names to them. A loader returns either a `TokenStream` (documents joined end to end by the
end-of-text id 50256, read as random windows) or `Examples` (variable-length prompt + completion pairs, right-padded).
Both give `batch(index, batch_size=, length=, seed=)`: a pure function of the batch index and the seed, so a resumed
run draws exactly the batches an uninterrupted one would, from nothing but the number of batches already used.

Tokenising runs once, in parallel, with a progress bar; the ids are cached as `.npz` next to the data (or in
`cache_dir`, or in ~/.cache/gpt2tf if the data's directory is read-only), keyed by the data's content and the
tokenizer's vocab, so a second run starts at once.
"""

import dataclasses
import functools
import glob
import hashlib
import json
import logging
import os
import socket
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
from tqdm import tqdm

from gpt2tf.encoder import ENDOFTEXT, split_exact
from gpt2tf.errors import GPT2TFError
from gpt2tf.files import atomic_path

CACHE_VERSION = 1  # bump when the cached arrays would change for the same input
CACHE_DIR_NAME = ".gpt2tf-cache"
TLDR = "\nTL;DR:\n"  # between a CNN/Daily Mail article and its summary, as in the GPT-2 paper
ENCODE_CHUNK_CHARS = 16 << 20  # characters per parallel encode call (one progress-bar tick)
TOKEN_FILE_SUFFIXES = (".npy", ".npz")


@dataclasses.dataclass(frozen=True)
class Batch:
    tokens: np.ndarray  # [batch, length + 1] int32: the inputs are tokens[:, :-1], the targets tokens[:, 1:]
    weights: np.ndarray  # [batch, length] float32: 1 where a target counts in the loss, 0 on padding


class TokenStream:
    """Documents joined end to end by the end-of-text id; a batch is `batch_size` windows at random offsets."""

    def __init__(self, tokens, *, name):
        self.tokens, self.name = tokens, name

    def __len__(self):
        return len(self.tokens)

    def check_fits(self, length):
        if len(self.tokens) < length + 1:
            raise GPT2TFError(
                f"{self.name} has {len(self.tokens):,} tokens, too few for one training window of "
                f"--length {length} (+1 for the targets); give more data or a smaller --length"
            )

    def batch(self, index, *, batch_size, length, seed):
        starts = np.random.default_rng([seed, index]).integers(0, len(self.tokens) - length, size=batch_size)
        tokens = np.stack([self.tokens[s : s + length + 1] for s in starts]).astype(np.int32)  # [batch, length + 1]
        return Batch(tokens, np.ones((batch_size, length), np.float32))


class Examples:
    """Examples `context + prompt + completion`, shuffled anew each epoch, right-padded to `length + 1` tokens.

    An example too long for the window loses the end of its context (a CNN article), never its completion (the
    summary). `loss_on="completion"` counts only the completion's tokens in the loss.
    """

    def __init__(self, tokens, offsets, context_lengths, prompt_lengths, *, name, pad_id, loss_on="all"):
        self.tokens, self.offsets = tokens, offsets  # example i is tokens[offsets[i]:offsets[i + 1]]
        self.context_lengths, self.prompt_lengths = context_lengths, prompt_lengths
        self.name, self.pad_id, self.loss_on = name, pad_id, loss_on

    def __len__(self):
        return len(self.offsets) - 1

    def check_fits(self, length):
        if not len(self):
            raise GPT2TFError(f"{self.name} has no examples")

    def example(self, i, max_tokens):
        """Example i's ids cut to `max_tokens` by shortening its context, and how many ids precede the completion."""
        ids = self.tokens[self.offsets[i] : self.offsets[i + 1]]
        context, prompt = int(self.context_lengths[i]), int(self.prompt_lengths[i])
        excess = len(ids) - max_tokens
        if excess > 0:
            cut = min(excess, context)
            ids = np.concatenate([ids[: context - cut], ids[context:]])[:max_tokens]  # rarely, the completion too
            prompt -= cut
        return ids, prompt

    @functools.lru_cache(maxsize=2)  # noqa: B019 -- keeps the dataset alive: it lives as long as the run anyway
    def _order(self, seed, epoch):
        return np.random.default_rng([seed, epoch]).permutation(len(self))

    def batch(self, index, *, batch_size, length, seed):
        tokens = np.full((batch_size, length + 1), self.pad_id, np.int32)
        weights = np.zeros((batch_size, length), np.float32)
        for row in range(batch_size):
            epoch, position = divmod(index * batch_size + row, len(self))
            ids, prompt = self.example(self._order(seed, epoch)[position], length + 1)
            tokens[row, : len(ids)] = ids
            # Target j is token j + 1, so the completion's first token is target prompt - 1.
            weights[row, (max(prompt - 1, 0) if self.loss_on == "completion" else 0) : len(ids) - 1] = 1.0
        return Batch(tokens, weights)


# ---------------------------------------------------------------------------------------------------------------
# Tokenising and its cache


def encode_texts(tokenizer, texts, *, desc, allowed_special=frozenset()):
    """Each text's ids as a uint16/int32 array, encoded on all cores in chunks with a progress bar."""
    dtype = _token_dtype(tokenizer)
    # Long texts in parts, so one big file uses every core; an empty text has no parts (and no ids).
    pieces = [list(split_exact(text, ENCODE_CHUNK_CHARS // 4)) if text else [] for text in texts]
    flat = [part for parts in pieces for part in parts]
    encoded = []
    with tqdm(
        total=sum(map(len, flat)), desc=desc, unit="char", unit_scale=True, file=sys.stderr, disable=None, leave=False
    ) as progress:
        chunk, chunk_chars = [], 0
        for i, text in enumerate(flat):
            chunk.append(text)
            chunk_chars += len(text)
            if chunk_chars >= ENCODE_CHUNK_CHARS or i == len(flat) - 1:
                encoded += [
                    np.asarray(ids, dtype) for ids in tokenizer.encode_batch(chunk, allowed_special=allowed_special)
                ]
                progress.update(chunk_chars)
                chunk, chunk_chars = [], 0
    out, start = [], 0
    for parts in pieces:
        out.append(np.concatenate(encoded[start : start + len(parts)]) if parts else np.zeros(0, dtype))
        start += len(parts)
    return out


def _token_dtype(tokenizer):
    return np.uint16 if len(tokenizer) <= 1 << 16 else np.int32  # GPT-2's 50,257 ids fit in 16 bits


def tokenizer_fingerprint(tokenizer):
    """A digest of the vocab: cached ids are reused only with the tokenizer that made them."""
    digest = hashlib.sha256(json.dumps(tokenizer.encoder, sort_keys=True).encode())
    digest.update(json.dumps(tokenizer.bpe_merges).encode())
    return digest.hexdigest()[:16]


def file_digest(path):
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cached(build, *, key, name, data_dir, cache_dir):
    """`build()` (a dict of arrays), or its result from an earlier run with the same key."""
    key = hashlib.sha256(json.dumps([CACHE_VERSION, key], sort_keys=True).encode()).hexdigest()[:20]
    filename = f"{name}-{key}.npz"
    dirs = [Path(cache_dir)] if cache_dir else [Path(data_dir) / CACHE_DIR_NAME, _user_cache_dir()]
    for directory in dirs:
        if (directory / filename).is_file():
            try:
                with np.load(directory / filename) as arrays:
                    return dict(arrays)
            except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
                pass  # a damaged cache file is rebuilt and replaced
    arrays = build()
    for directory in dirs:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with atomic_path(directory / filename) as tmp, open(tmp, "wb") as f:  # a reader never sees half a file
                np.savez(f, **arrays)
            break
        except OSError:
            continue  # read-only data dir: try the next place; no cache at all only costs time
    return arrays


def _user_cache_dir():
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpt2tf" / "tokens"


# ---------------------------------------------------------------------------------------------------------------
# text: files, a directory, a glob, or pre-encoded .npy/.npz


def load_text(path, *, tokenizer, split="train", feature=None, cache_dir=None):
    """UTF-8 text files (a file, a directory searched recursively, or a glob) and/or pre-encoded .npy/.npz tokens.

    Each file is a document, and so is each part of a file between literal "<|endoftext|>" markers; documents are
    joined by the end-of-text id. `.npy`/`.npz` files are token streams taken as they are. `split` and `feature`
    are unused.
    """
    files = find_files(path)
    texts = [f for f in files if f.suffix not in TOKEN_FILE_SUFFIXES]
    eot = tokenizer.eot_id

    def build():
        documents = encode_texts(
            tokenizer, [read_text(f) for f in texts], desc=f"tokenising {path}", allowed_special={ENDOFTEXT}
        )
        by_file = dict(zip(texts, documents))
        parts = []
        for f in files:
            ids = by_file[f] if f in by_file else _read_tokens(f, len(tokenizer))
            if len(ids):
                parts += [ids, np.array([eot], ids.dtype)]
        if not parts:
            raise GPT2TFError(f"dataset {path} is empty: its files hold no text")
        return {"tokens": np.concatenate(parts[:-1])}  # a document boundary between files, not after the last

    if texts:
        key = [
            "text",
            tokenizer_fingerprint(tokenizer),
            [(f.suffix in TOKEN_FILE_SUFFIXES, file_digest(f)) for f in files],
        ]
        data_dir = Path(path) if Path(path).is_dir() else Path(texts[0]).parent
        arrays = cached(build, key=key, name=_safe_name(path), data_dir=data_dir, cache_dir=cache_dir)
    else:
        arrays = build()
    return TokenStream(arrays["tokens"], name=f"dataset {path}")


def find_files(path):
    text = str(path)
    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = [
            p
            for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        ]  # e.g. our cache
    elif any(c in text for c in "*?["):
        files = [Path(p) for p in glob.glob(text, recursive=True) if os.path.isfile(p)]
    else:
        raise GPT2TFError(f"--dataset_path {text} does not exist; give a text file, a directory or a glob")
    if not files:
        raise GPT2TFError(f"--dataset_path {text} matches no files; give a text file, a directory or a glob")
    return sorted(files)


def read_text(path):
    try:
        data = path.read_bytes()
        if b"\0" in data:
            raise UnicodeDecodeError("utf-8", data, data.index(b"\0"), data.index(b"\0") + 1, "NUL byte")
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise GPT2TFError(
            f"{path} is not UTF-8 text ({err.reason} at byte {err.start}); give text files or "
            f"pre-encoded .npy/.npz token files"
        ) from None
    except OSError as err:
        raise GPT2TFError(f"cannot read {path}: {err.strerror}") from None


def _read_tokens(path, n_vocab):
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            arrays = [loaded]
        else:
            with loaded:  # arr_0, arr_1, ..., arr_10 in numeric order
                arrays = [loaded[k] for k in sorted(loaded.files, key=lambda k: (len(k), k))]
        ids = np.concatenate([a.ravel() for a in arrays]) if arrays else np.zeros(0, np.int64)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise GPT2TFError(
            f"cannot read {path} as NumPy token ids ({err or type(err).__name__}); give a .npy or "
            f".npz file written by numpy.save/numpy.savez"
        ) from None
    if ids.size and (not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0 or ids.max() >= n_vocab):
        raise GPT2TFError(f"{path} must hold integer token ids in 0..{n_vocab - 1}")
    return ids.astype(np.uint16 if n_vocab <= 1 << 16 else np.int32)


def _safe_name(path):
    name = Path(str(path).rstrip("/*")).name or "data"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:40]


# ---------------------------------------------------------------------------------------------------------------
# cnndm: CNN / Daily Mail summarisation, "article \nTL;DR:\n highlight <|endoftext|>"

CNNDM_TFDS_NAME = "cnn_dailymail"  # what the cnndm loader reads when no --dataset_path is given
SPLIT_FILES = {"train": "all_train.txt", "validation": "all_val.txt", "val": "all_val.txt", "test": "all_test.txt"}


def load_cnndm(path, *, tokenizer, split="train", feature=None, cache_dir=None):
    """CNN / Daily Mail as `article + "\\nTL;DR:\\n" + one highlight + <|endoftext|>` examples.

    `path` is the story layout (`url_lists/` and `{cnn,dailymail}/stories/`), a JSONL file with `article` and
    `highlights` fields, or a tensorflow-datasets name (`cnn_dailymail`, its data dir from $TFDS_DATA_DIR).
    """
    source = cnndm_source(path, split)

    def build():
        articles, tails = [], []
        for article, highlights in source.articles():
            # One highlight per article, picked by the article's own hash: stable across runs and caches.
            highlight = highlights[zlib.crc32(article.encode("utf-8")) % len(highlights)]
            articles.append(article)
            tails.append(TLDR + highlight)
        # Article and tail are encoded apart: after a stripped article, "\n" starts a new pre-split piece anyway,
        # so the ids equal those of the joined text, and the article's length is known for truncation.
        ids = encode_texts(tokenizer, articles + tails, desc=f"tokenising {path}")
        article_ids, tail_ids = ids[: len(articles)], ids[len(articles) :]
        tldr_length = len(tokenizer.encode(TLDR))  # the tail's pieces start afresh after TLDR's final "\n" too
        prompt_lengths = [len(a) + tldr_length for a in article_ids]
        eot = np.array([tokenizer.eot_id], ids[0].dtype)
        examples = [np.concatenate([a, t, eot]) for a, t in zip(article_ids, tail_ids)]
        return {
            "tokens": np.concatenate(examples),
            "offsets": np.cumsum([0] + [len(e) for e in examples]).astype(np.int64),
            "context_lengths": np.array([len(a) for a in article_ids], np.int64),
            "prompt_lengths": np.array(prompt_lengths, np.int64),
        }

    key = [*source.key, split, tokenizer_fingerprint(tokenizer)]
    arrays = cached(
        build, key=key, name=source.name, data_dir=source.data_dir or _user_cache_dir(), cache_dir=cache_dir
    )
    return Examples(
        arrays["tokens"],
        arrays["offsets"],
        arrays["context_lengths"],
        arrays["prompt_lengths"],
        name=f"dataset {path} ({split})",
        pad_id=tokenizer.eot_id,
    )


@dataclasses.dataclass
class CnndmSource:
    """Where CNN / Daily Mail's articles come from (see `cnndm_source`)."""

    path: Path
    split: str
    pairs: callable  # () -> iterable of raw (article, [highlights])
    key: list  # what identifies the data, for caches
    data_dir: Path
    name: str

    def articles(self):
        """(article, [highlights]) with white space trimmed; articles without text or highlights are skipped."""
        found = False
        for article, highlights in self.pairs():
            highlights = [h.strip() for h in highlights if h.strip()]
            article = article.strip()
            if article and highlights:  # a few CNN stories are empty
                found = True
                yield article, highlights
        if not found:
            raise GPT2TFError(f"dataset {self.path} ({self.split}) has no article with a highlight")


def cnndm_source(path, split):
    """The CNN / Daily Mail articles at `path` (the story layout, a JSONL file, or tfds' cnn_dailymail)."""
    path = Path(path)
    if (path / "url_lists").is_dir():
        if split not in SPLIT_FILES:
            raise GPT2TFError(f"unknown split {split!r} for the CNN/Daily Mail stories; use {', '.join(SPLIT_FILES)}")
        url_list = path / "url_lists" / SPLIT_FILES[split]
        stories = _story_files(path, url_list)
        return CnndmSource(
            path,
            split,
            lambda: (_read_story(f) for f in stories),
            ["cnndm-stories", file_digest(url_list), [file_digest(f) for f in stories]],
            path,
            f"cnndm-{split}",
        )
    if path.is_file():
        return CnndmSource(
            path, split, lambda: _read_jsonl(path), ["cnndm-jsonl", file_digest(path)], path.parent, _safe_name(path)
        )
    if path.exists():
        raise GPT2TFError(
            f"{path} is not a CNN/Daily Mail dataset: expected url_lists/ and cnn/stories/, "
            f"dailymail/stories/ inside it, a JSONL file, or the tensorflow-datasets name cnn_dailymail"
        )
    records = _tfds_records(str(path), split, download=True)
    return CnndmSource(
        path,
        split,
        lambda: ((_text(r["article"]), _text(r["highlights"]).split("\n")) for r in records),
        ["cnndm-tfds", records.identity],
        None,
        f"{_safe_name(path)}-{split}",
    )


def _story_files(root, url_list):
    if not url_list.is_file():
        raise GPT2TFError(
            f"{url_list} is missing: the CNN/Daily Mail layout needs url_lists/all_train.txt, "
            f"all_val.txt and all_test.txt"
        )
    files, missing = [], 0
    for url in url_list.read_text(encoding="utf-8").split():
        site = "dailymail" if "dailymail.co.uk" in url else "cnn"
        story = root / site / "stories" / f"{hashlib.sha1(url.encode('utf-8')).hexdigest()}.story"
        if story.is_file():
            files.append(story)
        else:
            missing += 1
    if not files:
        raise GPT2TFError(f"none of the stories listed in {url_list} is in {root}/{{cnn,dailymail}}/stories/")
    if missing:
        print(
            f"note: {missing:,} stories listed in {url_list} are missing; using the other {len(files):,}",
            file=sys.stderr,
        )
    return files


def _read_story(path):
    """A .story file: the article, then blocks that each start with a line `@highlight`."""
    article, *blocks = read_text(path).split("@highlight")
    return article, [block.strip().split("\n")[0] for block in blocks]


def _read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                article, highlights = record["article"], record["highlights"]
            except (ValueError, KeyError, TypeError):
                record = article = highlights = None
            if isinstance(highlights, str):
                highlights = highlights.split("\n")
            if not (
                isinstance(article, str)
                and isinstance(highlights, list)
                and all(isinstance(h, str) for h in highlights)
            ):
                raise GPT2TFError(
                    f'{path} line {number} is not a JSON object with a string "article" and '
                    f'"highlights" (a string, or a list of strings)'
                )
            yield article, highlights


# ---------------------------------------------------------------------------------------------------------------
# tfds: one text feature of any tensorflow-datasets dataset


def load_tfds(path, *, tokenizer, split="train", feature="text", cache_dir=None):
    """The `feature` texts of the tensorflow-datasets dataset named `path` (e.g. `reddit_tifu/short`, `documents`)."""
    records = _tfds_records(str(path), split)
    if feature not in records.features:
        raise GPT2TFError(
            f"tensorflow-datasets {path} has no feature {feature!r}; pick --text_feature from "
            f"{', '.join(sorted(records.features))}"
        )

    def build():
        texts = [_text(r[feature]) for r in records]
        documents = [ids for ids in encode_texts(tokenizer, texts, desc=f"tokenising {path}") if len(ids)]
        if not documents:
            raise GPT2TFError(f"tensorflow-datasets {path} ({split}) has no text in {feature!r}")
        eot = np.array([tokenizer.eot_id], documents[0].dtype)
        return {"tokens": np.concatenate([part for ids in documents for part in (ids, eot)][:-1])}

    key = ["tfds", records.identity, feature, tokenizer_fingerprint(tokenizer)]
    arrays = cached(build, key=key, name=f"{_safe_name(path)}-{split}", data_dir=_user_cache_dir(), cache_dir=cache_dir)
    return TokenStream(arrays["tokens"], name=f"tensorflow-datasets {path} ({split})")


class _TfdsRecords:
    """The examples of one split of a tensorflow-datasets dataset, as dicts of NumPy values.

    With `download`, a dataset that is not prepared yet is downloaded and prepared by tfds first (into
    $TFDS_DATA_DIR or tfds' default dir, with tfds' progress bars); otherwise it must be prepared already.
    """

    def __init__(self, name, split, *, download=False):
        try:
            import tensorflow_datasets as tfds
        except ImportError:
            raise GPT2TFError("the tfds loader needs tensorflow-datasets: pip install tensorflow-datasets") from None
        try:
            builder = tfds.builder(name)
            if download and not _quietly(builder.is_prepared):
                _download_and_prepare(builder, name)
            self.dataset = builder.as_dataset(split=split)
        except (AssertionError, ValueError, KeyError) as err:  # not prepared, unknown name, unknown split
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise GPT2TFError(
                f"cannot read tensorflow-datasets {name} split {split!r} ({first}); prepare it first "
                f"(`tfds build {name}`) and set $TFDS_DATA_DIR if it is not in the default "
                f"place"
            ) from None
        self.features = set(builder.info.features.keys())
        self.identity = [builder.info.full_name, split, str(builder.data_dir)]
        self.tfds = tfds

    def __iter__(self):
        return iter(self.tfds.as_numpy(self.dataset))


def _quietly(function):
    """`function()` without absl's warnings (tfds warns that a dataset it was asked about is not there)."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return function()
    finally:
        logger.setLevel(level)


def _tfds_records(name, split, *, download=False):
    return _TfdsRecords(name, split, download=download)


# The hosts tfds downloads a dataset from (its builder's URLs). Checked first, so that a machine without network
# gets its error at once instead of after tfds' minutes of retries.
DOWNLOAD_HOSTS = {CNNDM_TFDS_NAME: ("drive.google.com", "raw.githubusercontent.com")}
PROXY_VARIABLES = ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


def _download_and_prepare(builder, name):
    root = Path(builder.data_dir).parents[1]  # <root>/<name>/<version>
    tried = f"tensorflow-datasets {name} is not prepared in {root} (set $TFDS_DATA_DIR if it is elsewhere)"
    how = (
        "give --dataset_path: the CNN/Daily Mail story layout (url_lists/, cnn/stories/, dailymail/stories/) or "
        'a JSONL file with "article" and "highlights"'
        if name == CNNDM_TFDS_NAME
        else f"prepare it with `tfds build {name}` where it can be downloaded"
    )
    if not any(os.environ.get(v) for v in PROXY_VARIABLES):
        for host in DOWNLOAD_HOSTS.get(name, ()):
            reason = _unreachable(host)
            if reason:
                raise GPT2TFError(f"{tried}, and downloading it failed: {host} is unreachable ({reason}); {how}")
    print(f"downloading and preparing tensorflow-datasets {name} into {root} (once)", file=sys.stderr)
    try:
        builder.download_and_prepare()
    except Exception as err:  # network, quota, disk: tfds raises many kinds; each means "no data this way"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise GPT2TFError(f"{tried}, and downloading it failed ({type(err).__name__}: {first}); {how}") from None


def _unreachable(host, timeout_s=10.0):
    """None if a TCP connection to `host`:443 opens, else why not."""
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
        return None
    except OSError as err:
        return err.strerror or type(err).__name__


def _text(value):
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


# The --data_loader choices.
LOADERS = {"text": load_text, "cnndm": load_cnndm, "tfds": load_tfds}


def load_dataset(loader, path, *, tokenizer, split="train", feature="text", cache_dir=None):
    """Run the loader named `loader` (a key of LOADERS); cnndm without a path reads tfds' cnn_dailymail."""
    if loader not in LOADERS:
        raise GPT2TFError(f"unknown data loader {loader!r}; choose one of {', '.join(LOADERS)}")
    if not path and loader == "cnndm":
        path = CNNDM_TFDS_NAME
    if not path:
        raise GPT2TFError(f"the {loader} loader needs --dataset_path")
    return LOADERS[loader](path, tokenizer=tokenizer, split=split, feature=feature, cache_dir=cache_dir)

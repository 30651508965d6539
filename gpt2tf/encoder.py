"""GPT-2's byte-level BPE tokenizer: text <-> token ids, bit-exact with OpenAI's `encoder.py`.

This module owns what the vocab files (`encoder.json` and `vocab.bpe`, bundled under `gpt2tf/vocab/`) hold and
everything that reads them. It imports no TensorFlow, so it stays quick to import.
"""

import functools
import json
import multiprocessing
import os
import re
from heapq import heapify, heappop, heappush
from itertools import chain, repeat
from pathlib import Path

import regex

from gpt2tf.errors import GPT2TFError
from gpt2tf.layout import ENDOFTEXT, VOCAB_DIR, VOCAB_FILES

# Pieces of more bytes than this are merged with a heap, O(n log n), rather than by the O(n^2) loop.
HEAP_BPE_BYTES = 32
# Pieces of more characters than this are not cached: they rarely repeat.
CACHE_MAX_CHARS = 64
# Below this many characters in total, `encode_batch` does not start worker processes.
PARALLEL_MIN_CHARS = 1 << 20
# Texts longer than this are encoded in chunks of about this many characters (see `split_exact`).
CHUNK_CHARS = 1 << 16


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """OpenAI's fixed byte -> character table, in which the vocab files spell every token."""
    # BPE runs on UTF-8 bytes, but OpenAI stored its tokens as JSON text. So each byte is given a visible
    # character: the 188 bytes that are printable non-space Latin-1 ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for
    # themselves, and the other 68 (controls, space, DEL, NBSP, soft hyphen) take U+0100, U+0101, ... in byte
    # order. Hence a space is 'Ġ' (U+0120) and a newline 'Ċ' (U+010A) in encoder.json.
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {byte: chr(byte) for byte in printable}
    for n, byte in enumerate(b for b in range(256) if b not in table):
        table[byte] = chr(256 + n)
    return dict(sorted(table.items()))


# Before BPE, OpenAI cuts text into pieces and never merges across them. Its pattern is
#     's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
# and PATTERN below is the same with the contractions factored (same matches, fewer tries). In order:
#   's 't 're 've 'm 'll 'd  English contractions; lower case only, so "DON'T" gives "DON", "'", "T"
#    ?\p{L}+                 a run of letters with at most one leading space: " hello"
#    ?\p{N}+                 a run of digits or other numerals, likewise
#    ?[^\s\p{L}\p{N}]+       a run of anything else (punctuation, symbols, emoji, control chars), likewise
#   \s+(?!\S)                whitespace, minus its last character when a non-space follows, so that a single
#                            space is left to prefix the next word: "a   b" -> "a", "  ", " b"
#   \s+                      whatever whitespace remains, e.g. the "\n" of "a\nb"
# The classes are the `regex` module's (Unicode properties; stdlib `re` has no \p{...}).
PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# Speed: stdlib `re` runs the same pattern faster than `regex` once \p{L}, \p{N} and \s are written out as
# explicit character ranges, but only for ranges within the BMP: `re` tests ranges above U+FFFF one by one, which
# makes it slower than `regex` there. So `_bmp_pattern` copies the `regex` module's classes for U+0000..U+FFFF,
# and only text that has a character above U+FFFF (or a lone surrogate, see `_pieces`) goes through `regex`. The
# tests check both paths against an independent tokenizer.


def _bmp_ranges(unicode_class: str) -> str:
    """`unicode_class` (e.g. r"\\p{L}") as explicit `re` ranges over U+0000..U+FFFF, taken from `regex`."""
    members = [ord(c) for c in regex.findall(unicode_class, "".join(map(chr, range(0x10000))))]
    starts = [cp for i, cp in enumerate(members) if i == 0 or members[i - 1] != cp - 1]
    ends = [cp for i, cp in enumerate(members) if i == len(members) - 1 or members[i + 1] != cp + 1]
    return "".join(f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in zip(starts, ends))


@functools.cache
def _bmp_pattern() -> re.Pattern:
    """`PATTERN` for stdlib `re`, exact on text without characters above U+FFFF."""
    s, letter, number = _bmp_ranges(r"\s"), _bmp_ranges(r"\p{L}"), _bmp_ranges(r"\p{N}")
    return re.compile(
        f"'(?:[sdmt]|ll|ve|re)| ?[{letter}]+| ?[{number}]+| ?[^{s}{letter}{number}]+|[{s}]+(?![^{s}])|[{s}]+"
    )


class _PieceCache(dict):
    """piece -> its token ids, at most `max_size` of them. A missing piece is encoded (and stored if short)."""

    def __init__(self, encode_piece, max_size: int):
        super().__init__()
        self.encode_piece, self.max_size = encode_piece, max_size

    def __missing__(self, piece: str) -> tuple[int, ...]:
        ids = self.encode_piece(piece)
        if len(piece) <= CACHE_MAX_CHARS:
            if len(self) >= self.max_size:
                self.clear()  # crude but bounded; the frequent pieces come straight back
            self[piece] = ids
        return ids


def split_exact(text: str, size: int | None = None):
    """`text` in pieces of about `size` (default CHUNK_CHARS) characters that pre-split exactly as the whole does,
    so their encodings, concatenated, are the encoding of the whole (used to encode long texts in parallel too)."""
    size = size or CHUNK_CHARS
    # A "\n" between two non-whitespace characters is always a piece of its own (no alternative of PATTERN takes
    # it together with a neighbour, and \s+(?!\S) or \s+ match it alone whether text follows or not), so cutting
    # just after it changes no piece. str.isspace() is true for every \s character (tested), so it is safe here.
    start = 0
    while len(text) - start > 2 * size:
        cut = text.find("\n", start + size)
        while cut != -1 and (text[cut - 1].isspace() or text[cut + 1 : cut + 2].isspace()):
            cut = text.find("\n", cut + 1)
        if cut == -1:
            break
        yield text[start : cut + 1]
        start = cut + 1
    yield text[start:]


class Encoder:
    """GPT-2's tokenizer. `encode(text) -> ids`, `decode(ids) -> text`; bit-exact with OpenAI's encoder.

    Special tokens are off by default, as in OpenAI's encoder: the text "<|endoftext|>" encodes as 7 ordinary
    tokens, which keeps untrusted text from injecting document boundaries. Ask for the id explicitly with
    `encode(text, allowed_special={"<|endoftext|>"})` (or "all"), or append `eot_id` (50256) between documents.
    """

    def __init__(self, encoder: dict[str, int], bpe_merges: list[tuple[str, str]], *, cache_size: int = 1 << 18):
        self.encoder = encoder  # token (spelled with bytes_to_unicode characters) -> id, as in encoder.json
        self.bpe_merges = bpe_merges  # vocab.bpe's merges; a merge's line number is its rank
        lacking = [token for token in [*bytes_to_unicode().values(), ENDOFTEXT] if token not in encoder]
        if lacking:
            raise GPT2TFError(f"encoder.json lacks {len(lacking)} byte or special tokens (e.g. {lacking[0]!r})")
        self.eot_id = self.eot_token = encoder[ENDOFTEXT]
        self.special_tokens = {ENDOFTEXT: self.eot_id}

        to_byte = {ord(char): byte for byte, char in bytes_to_unicode().items()}
        self._token_bytes = {i: token.translate(to_byte).encode("latin-1") for token, i in encoder.items()}
        self._byte_ids = [encoder[char] for char in bytes_to_unicode().values()]  # byte value -> id
        self._ranks = {}  # (left id, right id) -> rank
        self._merges = []  # rank -> (left id, right id, merged id)
        for left, right in bpe_merges:
            merged = encoder.get(left + right)
            if merged is None or left not in encoder or right not in encoder:
                raise GPT2TFError(f"vocab.bpe merges {left!r} and {right!r}, but encoder.json lacks one of them")
            self._ranks[encoder[left], encoder[right]] = len(self._merges)
            self._merges.append((encoder[left], encoder[right], merged))
        self._cache = _PieceCache(self._bpe_piece, cache_size)
        self._pattern = regex.compile(PATTERN)

    def __len__(self) -> int:
        return len(self.encoder)

    def __reduce__(self):
        # Worker processes rebuild the tables rather than unpickle them (and the cache).
        return functools.partial(type(self), cache_size=self._cache.max_size), (self.encoder, self.bpe_merges)

    def encode(self, text: str, *, allowed_special=frozenset()) -> list[int]:
        """Token ids of `text`. `allowed_special`: special tokens whose literal text becomes their id, or "all"."""
        specials = self._specials(allowed_special)
        if not specials:
            return self._encode_ordinary(text)
        ids = []
        parts = re.split("(" + "|".join(map(re.escape, sorted(specials))) + ")", text)
        for i, part in enumerate(parts):  # text, special, text, special, ..., text
            if i % 2:
                ids.append(self.special_tokens[part])
            else:
                ids.extend(self._encode_ordinary(part))
        return ids

    def _specials(self, allowed_special) -> set[str]:
        if isinstance(allowed_special, str):
            allowed_special = self.special_tokens if allowed_special == "all" else {allowed_special}
        unknown = set(allowed_special) - set(self.special_tokens)
        if unknown:
            raise GPT2TFError(f"unknown special token(s) {sorted(unknown)}; known: {sorted(self.special_tokens)}")
        return set(allowed_special)

    def _encode_ordinary(self, text: str) -> list[int]:
        ids = []
        lookup = self._cache.__getitem__  # a miss runs BPE, so a hit never leaves C code
        for chunk in split_exact(text):
            ids.extend(chain.from_iterable(map(lookup, self._pieces(chunk))))
        return ids

    def _pieces(self, text: str) -> list[str]:
        try:
            bmp_only = text.isascii() or len(text.encode("utf-16-le")) == 2 * len(text)
        except UnicodeEncodeError:
            # Lone surrogates, which UTF-8 cannot encode either. Like tiktoken, pair them up where they form a
            # character and replace the rest with U+FFFD.
            text, bmp_only = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace"), False
        return (_bmp_pattern() if bmp_only else self._pattern).findall(text)

    def _bpe_piece(self, piece: str) -> tuple[int, ...]:
        return tuple(self._bpe([self._byte_ids[byte] for byte in piece.encode("utf-8")]))

    def _bpe(self, ids: list[int]) -> list[int]:
        """Apply the merges to one piece's byte ids, lowest rank first, equal ranks left to right."""
        # OpenAI's loop merges every occurrence of the best pair in one sweep; merging only the leftmost and
        # looking again gives the same result, since a merge's parts always rank before the merge (tested).
        if len(ids) > HEAP_BPE_BYTES:
            return self._bpe_long(ids)
        rank_of, merges = self._ranks.get, self._merges
        no_rank = len(merges)
        ranks = list(map(rank_of, zip(ids, ids[1:]), repeat(no_rank)))  # ranks[i]: pair ids[i], ids[i + 1]
        while ranks:
            rank = min(ranks)
            if rank == no_rank:
                break
            i = ranks.index(rank)
            merged = ids[i] = merges[rank][2]
            del ids[i + 1], ranks[i]
            if i:  # only the pairs on either side of the merged token change
                ranks[i - 1] = rank_of((ids[i - 1], merged), no_rank)
            if i < len(ranks):
                ranks[i] = rank_of((merged, ids[i + 1]), no_rank)
        return ids

    def _bpe_long(self, ids: list[int]) -> list[int]:
        """`_bpe` in O(n log n) for long pieces (a CJK paragraph, a run of spaces): a heap over a linked list."""
        # Pops the lowest rank, leftmost first, and merges it, like `_bpe`; stale entries are skipped.
        rank_of, n = self._ranks.get, len(ids)
        next_ = list(range(1, n + 1))  # index of the next live symbol; n past the end
        prev = list(range(-1, n - 1))
        heap = [(rank, i) for i, rank in enumerate(map(rank_of, zip(ids, ids[1:]))) if rank is not None]
        heapify(heap)
        while heap:
            rank, i = heappop(heap)
            j = next_[i]
            if ids[i] is None or j == n or rank_of((ids[i], ids[j])) != rank:
                continue  # stale: one of the two symbols was merged with another since
            merged = ids[i] = self._merges[rank][2]
            ids[j] = None
            k = next_[i] = next_[j]
            if k < n:
                prev[k] = i
                right_rank = rank_of((merged, ids[k]))
                if right_rank is not None:
                    heappush(heap, (right_rank, i))
            h = prev[i]
            if h >= 0:
                left_rank = rank_of((ids[h], merged))
                if left_rank is not None:
                    heappush(heap, (left_rank, h))
        return [token for token in ids if token is not None]

    def decode_bytes(self, ids) -> bytes:
        """The UTF-8 bytes behind `ids`; for streaming, since one character may span several tokens."""
        try:
            return b"".join(map(self._token_bytes.__getitem__, ids))
        except KeyError as err:
            raise GPT2TFError(f"token id {err.args[0]!r} is not in the vocabulary (0..{len(self) - 1})") from None

    def decode(self, ids) -> str:
        """Text of `ids`; bytes that are not valid UTF-8 (e.g. half an emoji) become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def encode_batch(self, texts, *, num_workers: int | None = None, allowed_special=frozenset()) -> list[list[int]]:
        """`[encode(text) for text in texts]`, in order, on `num_workers` processes (default: one per core).

        Small inputs are encoded serially. Workers start by forkserver (safe even with TensorFlow's threads in
        this process), so a script calling this needs the usual `if __name__ == "__main__":` guard.
        """
        texts = list(texts)
        self._specials(allowed_special)  # fail here rather than in a worker
        workers = min(num_workers or _cpu_count(), len(texts))
        if workers <= 1 or sum(map(len, texts)) < PARALLEL_MIN_CHARS:
            return [self.encode(text, allowed_special=allowed_special) for text in texts]
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        with context.Pool(workers, initializer=_start_worker, initargs=(self,)) as pool:
            args = zip(texts, repeat(allowed_special))
            return pool.starmap(_encode_in_worker, args, chunksize=max(1, len(texts) // (8 * workers)))


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


_worker_encoder = None  # a worker process's copy of the parent's Encoder


def _start_worker(encoder: Encoder):
    global _worker_encoder
    _worker_encoder = encoder


def _encode_in_worker(text: str, allowed_special) -> list[int]:
    return _worker_encoder.encode(text, allowed_special=allowed_special)


def get_encoder(vocab_dir: str | os.PathLike | None = None) -> Encoder:
    """The encoder of `vocab_dir` (holding encoder.json and vocab.bpe), by default GPT-2's bundled vocab.

    Cached: repeated calls with the same directory return the same `Encoder`.
    """
    return _load(None if vocab_dir is None else os.path.abspath(vocab_dir))


@functools.lru_cache(maxsize=8)
def _load(vocab_dir: str | None) -> Encoder:
    directory = VOCAB_DIR if vocab_dir is None else Path(vocab_dir)
    encoder_path, merges_path = (directory / name for name in VOCAB_FILES)
    missing = [path.name for path in (encoder_path, merges_path) if not path.is_file()]
    if missing:
        raise GPT2TFError(f"no {' or '.join(missing)} in {directory}; vocab_dir must hold GPT-2's vocab files")
    try:
        encoder = json.loads(encoder_path.read_text(encoding="utf-8"))
        lines = merges_path.read_text(encoding="utf-8").split("\n")
    except (OSError, ValueError) as err:  # ValueError covers bad JSON and bad UTF-8
        raise GPT2TFError(f"cannot read the vocab in {directory}: {err}".replace("\n", " ")) from None
    merges = [tuple(line.split()) for line in lines[1:] if line]  # line 0 is "#version: 0.2"
    if not all(len(merge) == 2 for merge in merges):
        raise GPT2TFError(f"{merges_path} is not a BPE merges file: each line after the first must be two tokens")
    return Encoder(encoder, merges)

"""Tests for `gpt2tf.encoder`: bit-exact with tiktoken (an independent implementation, built offline from the
bundled vocab) on a large varied corpus and on every code point; golden ids; special tokens; decoding; bulk mode;
vocab files and errors."""

import hashlib
import json
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import regex
import tiktoken  # a test dependency: without it these tests must fail, not skip
import tiktoken.load

from gpt2tf import encoder as encoder_module
from gpt2tf.encoder import ENDOFTEXT, VOCAB_DIR, Encoder, bytes_to_unicode, get_encoder
from gpt2tf.errors import GPT2TFError

from helpers import adversarial_documents, real_documents

# tiktoken's spelling of OpenAI's pre-split pattern.
GPT2_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@pytest.fixture(scope="module")
def enc() -> Encoder:
    return get_encoder()


@pytest.fixture(scope="module")
def reference() -> tiktoken.Encoding:
    """tiktoken's GPT-2, built from our bundled files with its cache off and the network cut."""

    def no_network(*args, **kwargs):
        raise AssertionError("tiktoken tried to use the network")

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TIKTOKEN_CACHE_DIR", "")  # read the files directly; no copy under /tmp
        patch.setattr(socket.socket, "connect", no_network)
        ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=str(VOCAB_DIR / "vocab.bpe"), encoder_json_file=str(VOCAB_DIR / "encoder.json")
        )
    return tiktoken.Encoding(
        name="gpt2-local", pat_str=GPT2_PAT, mergeable_ranks=ranks, special_tokens={ENDOFTEXT: 50256}
    )


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return real_documents() + adversarial_documents(random.Random(20260522), 3000)


def _first_difference(ours: list[int], theirs: list[int]) -> str:
    i = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    return f"at token {i}: ours {ours[max(0, i - 3) : i + 3]} vs tiktoken {theirs[max(0, i - 3) : i + 3]}"


# --- exactness ------------------------------------------------------------------------------------------------


def test_matches_tiktoken_on_a_large_varied_corpus(enc, reference, corpus, capsys):
    mismatches = [
        (text[:80], _first_difference(ours, theirs))
        for text in corpus
        if (ours := enc.encode(text)) != (theirs := reference.encode_ordinary(text))
    ]
    assert mismatches == []
    whole = "".join(corpus)  # also one long text, which the encoder cuts into chunks
    tokens = enc.encode(whole)
    assert tokens == reference.encode_ordinary(whole)
    astral = sum(any(ord(c) > 0xFFFF for c in text) for text in corpus)
    assert 0 < astral < len(corpus)  # both pre-split paths (stdlib `re` and `regex`) were exercised
    with capsys.disabled():
        print(
            f"\n[encoder] corpus: {len(corpus)} texts, {len(whole.encode()) / 1e6:.1f} MB UTF-8, "
            f"{len(tokens):,} tokens, 0 mismatches vs tiktoken"
        )


def test_matches_tiktoken_on_every_code_point(enc, reference):
    # Every code point but the surrogates, 64 to a line, so that any character that the two regex engines
    # classify differently (\p{L}, \p{N}, \s; e.g. from different Unicode versions) changes the pieces.
    code_points = [cp for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF]
    lines = ["".join(map(chr, code_points[i : i + 64])) for i in range(0, len(code_points), 64)]
    text = "\n".join(lines)
    if enc.encode(text) != reference.encode_ordinary(text):
        bad = [
            f"U+{ord(lines[i][0]):04X}..U+{ord(lines[i][-1]):04X}"
            for i, line in enumerate(lines)
            if enc.encode(line) != reference.encode_ordinary(line)
        ]
        pytest.fail(f"tokens differ on the lines starting {bad[:20]}")


def test_bmp_pattern_splits_like_the_regex_module():
    text = "".join(chr(cp) + (" " if cp % 3 else "a") for cp in range(0x10000) if not 0xD800 <= cp <= 0xDFFF)
    assert encoder_module._bmp_pattern().findall(text) == regex.findall(encoder_module.PATTERN, text)


def test_factored_contractions_split_like_openais_pattern(corpus):
    openai = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    text = "I'm 'S 'sa 'll've DON'T ''d 're' it's" + "".join(corpus[-500:])
    assert regex.findall(openai, text) == regex.findall(encoder_module.PATTERN, text)


def test_chunking_changes_no_token(enc, reference, monkeypatch):
    text = "".join(adversarial_documents(random.Random(7), 300))
    monkeypatch.setattr(encoder_module, "CHUNK_CHARS", 50)
    assert len(list(encoder_module.split_exact(text))) > 100
    assert "".join(encoder_module.split_exact(text)) == text
    assert enc.encode(text) == reference.encode_ordinary(text)


def test_whitespace_is_a_subset_of_str_isspace():
    # `split_exact` uses str.isspace() to find cuts; that is safe only if every \s of `regex` is isspace().
    everything = "".join(chr(cp) for cp in range(0x110000))
    assert all(c.isspace() for c in regex.findall(r"\s", everything))


def test_lone_surrogates_become_replacement_characters_like_tiktoken(enc, reference):
    for text in ["a\ud800b", "\udfff", "x \ud83d\ude00 y", "\ud835\udc00bc", "é\ud800" * 3]:
        assert enc.encode(text) == reference.encode_ordinary(text)


def _openai_bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """OpenAI's merge loop, restated: take the lowest-ranked adjacent pair, merge it everywhere, repeat."""
    parts = list(word)
    while len(parts) > 1:
        best = min(zip(parts, parts[1:]), key=lambda pair: ranks.get(pair, float("inf")))
        if best not in ranks:
            break
        merged, i = [], 0
        while i < len(parts):
            if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                merged.append(parts[i] + parts[i + 1])
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        parts = merged
    return parts


def test_bpe_matches_openais_merge_loop(enc, corpus, monkeypatch):
    # Ours merges the leftmost lowest-ranked pair, one at a time (a loop, or a heap for long pieces); OpenAI's
    # merges a rank everywhere at once. Same result as long as a merge's parts rank before the merge itself:
    token_rank = {merged: rank for rank, (_, _, merged) in enumerate(enc._merges)}
    assert all(
        token_rank.get(left, -1) < rank and token_rank.get(right, -1) < rank
        for rank, (left, right, _) in enumerate(enc._merges)
    )
    ranks = {pair: rank for rank, pair in enumerate(enc.bpe_merges)}
    byte_char = bytes_to_unicode()
    pieces = sorted({piece for text in corpus[-400:] for piece in regex.findall(encoder_module.PATTERN, text)})
    pieces = [piece for piece in pieces if len(piece.encode()) <= 200]
    assert len(pieces) > 3000
    for heap_above in (0, 10**9):  # every piece through the heap, then every piece through the loop
        monkeypatch.setattr(encoder_module, "HEAP_BPE_BYTES", heap_above)
        for piece in pieces:
            tokens = _openai_bpe("".join(byte_char[b] for b in piece.encode()), ranks)
            assert enc._bpe_piece(piece) == tuple(enc.encoder[token] for token in tokens), piece


def test_cache_stays_bounded_and_exact(enc, corpus):
    small = Encoder(enc.encoder, enc.bpe_merges, cache_size=500)
    texts = corpus[-300:]
    assert [small.encode(text) for text in texts] == [enc.encode(text) for text in texts]
    assert 0 < len(small._cache) <= 500


# --- golden ids and special tokens -----------------------------------------------------------------------------


def test_golden_ids(enc):
    assert enc.encode("the quick brown fox.") == [1169, 2068, 7586, 21831, 13]
    assert enc.encode("Hello!! I'm Andrej Karpathy. It's 2022. w00t :D 🤗") == [
        15496,
        3228,
        314,
        1101,
        10948,
        73,
        509,
        5117,
        10036,
        13,
        632,
        338,
        33160,
        13,
        266,
        405,
        83,
        1058,
        35,
        12520,
        97,
        245,
    ]


def test_endoftext_is_ordinary_text_unless_allowed(enc, reference):
    assert enc.encode(ENDOFTEXT) == [27, 91, 437, 1659, 5239, 91, 29]
    assert enc.encode(ENDOFTEXT, allowed_special={ENDOFTEXT}) == [50256]
    assert enc.encode(ENDOFTEXT, allowed_special="all") == [50256]
    assert enc.eot_id == enc.eot_token == enc.encoder[ENDOFTEXT] == 50256
    text = "a<|endoftext|>b"
    assert enc.encode(text, allowed_special="all") == enc.encode("a") + [50256] + enc.encode("b")
    for text in ["a<|endoftext|>b", " x <|endoftext|><|endoftext|>\n\n<|endoftext|", "<|endoftext|> tail"]:
        assert enc.encode(text, allowed_special="all") == reference.encode(text, allowed_special="all")
        assert enc.encode(text) == reference.encode_ordinary(text)


def test_unknown_special_token_is_a_user_error(enc):
    with pytest.raises(GPT2TFError, match="unknown special"):
        enc.encode("x", allowed_special={"<|startoftext|>"})


# --- decoding --------------------------------------------------------------------------------------------------


def test_round_trip(enc, corpus):
    for text in corpus:
        assert enc.decode(enc.encode(text)) == text


def test_partial_utf8_decodes_to_replacement_character(enc):
    ids = enc.encode(" 🤗")  # one 4-byte character in three tokens
    assert ids == [12520, 97, 245]
    assert enc.decode(ids[:1]) == " \ufffd"
    assert set(enc.decode(ids[1:])) == {"\ufffd"}
    assert b"".join(enc.decode_bytes([i]) for i in ids) == enc.decode_bytes(ids) == " 🤗".encode()
    assert enc.decode([50256]) == ENDOFTEXT


def test_unknown_id_is_a_user_error(enc):
    for bad in (50257, -1):
        with pytest.raises(GPT2TFError, match="not in the vocabulary"):
            enc.decode([1, bad])


# --- bulk mode -------------------------------------------------------------------------------------------------


def test_encode_batch_equals_encode(enc, monkeypatch):
    texts = adversarial_documents(random.Random(11), 200)
    expected = [enc.encode(text, allowed_special="all") for text in texts]
    assert enc.encode_batch(texts, allowed_special="all") == expected  # small: serial
    monkeypatch.setattr(encoder_module, "PARALLEL_MIN_CHARS", 0)
    assert enc.encode_batch(iter(texts), num_workers=2, allowed_special="all") == expected  # two processes
    assert enc.encode_batch([]) == []


# --- vocab files, loading, errors ------------------------------------------------------------------------------


def test_bundled_vocab_is_openais(enc):
    files = ("encoder.json", "vocab.bpe")
    digests = {name: hashlib.sha256((VOCAB_DIR / name).read_bytes()).hexdigest() for name in files}
    assert digests == {
        "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
        "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    }
    assert len(enc) == len(enc.encoder) == 50257
    assert len(enc.bpe_merges) == 50000


def test_get_encoder_is_cached_and_accepts_a_directory(enc):
    assert get_encoder() is enc
    assert get_encoder(str(VOCAB_DIR)) is get_encoder(VOCAB_DIR)
    assert get_encoder(VOCAB_DIR).encode("the quick brown fox.") == [1169, 2068, 7586, 21831, 13]


def test_bad_vocab_dir_is_a_one_line_user_error(tmp_path):
    with pytest.raises(GPT2TFError) as missing:
        get_encoder(tmp_path / "nowhere")
    (tmp_path / "encoder.json").write_text("{not json")
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\n")
    with pytest.raises(GPT2TFError) as malformed:
        get_encoder(tmp_path)
    (tmp_path / "encoder.json").write_text(json.dumps({"a": 0, ENDOFTEXT: 1}))
    with pytest.raises(GPT2TFError) as not_gpt2:
        get_encoder(tmp_path)
    tokens = [*bytes_to_unicode().values(), ENDOFTEXT]
    (tmp_path / "encoder.json").write_text(json.dumps({token: i for i, token in enumerate(tokens)}))
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\na b\n")
    with pytest.raises(GPT2TFError) as inconsistent:
        get_encoder(tmp_path)
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\na b\nĠ t\n")
    with pytest.raises(GPT2TFError):
        get_encoder(tmp_path)
    for err in (missing, malformed, not_gpt2, inconsistent):
        assert "\n" not in str(err.value) and str(err.value)
    assert "encoder.json" in str(missing.value)


def test_importing_the_encoder_does_not_import_tensorflow():
    code = "import sys, gpt2tf.encoder; sys.exit('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1]).returncode == 0

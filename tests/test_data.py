"""Data loaders on small data written here: text (file, dir, glob, .npy/.npz), cnndm (stories, JSONL, tfds), tfds."""

import hashlib
import json

import numpy as np
import pytest

from gpt2tf import data
from gpt2tf.encoder import Encoder, get_encoder, split_exact
from gpt2tf.errors import GPT2TFError

EOT = 50256
LITERAL_EOT = [27, 91, 437, 1659, 5239, 91, 29]  # "<|endoftext|>" as ordinary text


@pytest.fixture(scope="module")
def enc():
    return get_encoder()


def load(loader, path, enc, tmp_path, **kwargs):
    return data.load_dataset(
        loader, str(path), tokenizer=enc, cache_dir=kwargs.pop("cache_dir", tmp_path / "cache"), **kwargs
    )


def contains(haystack, needle):
    haystack, needle = list(haystack), list(needle)
    return any(haystack[i : i + len(needle)] == needle for i in range(len(haystack) - len(needle) + 1))


def test_registry_is_the_cli_choices():
    from gpt2tf.train import TrainConfig

    assert list(data.LOADERS) == ["text", "cnndm", "tfds"]
    choices = {f.name: f.metadata.get("choices") for f in TrainConfig.__dataclass_fields__.values()}
    assert choices["data_loader"] == tuple(data.LOADERS)
    with pytest.raises(GPT2TFError, match="unknown data loader 'coqa'"):
        data.load_dataset("coqa", "x", tokenizer=None)


# ---- text ------------------------------------------------------------------------------------------------------


def test_text_file_dir_and_glob_join_documents_with_the_eot_id(tmp_path, enc):
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    (corpus / "a.txt").write_text("Hello world.")
    (corpus / "sub" / "b.txt").write_text("Second document.")
    (corpus / ".hidden").write_text("not data")
    expected = enc.encode("Hello world.") + [EOT] + enc.encode("Second document.")
    for path in (corpus, f"{corpus}/**/*.txt"):
        tokens = load("text", path, enc, tmp_path).tokens
        assert tokens.tolist() == expected
        assert not contains(tokens, LITERAL_EOT)
    assert load("text", corpus / "a.txt", enc, tmp_path).tokens.tolist() == enc.encode("Hello world.")


def test_literal_endoftext_in_a_file_is_a_document_boundary(tmp_path, enc):
    (tmp_path / "d.txt").write_text("One.<|endoftext|>Two.")
    tokens = load("text", tmp_path / "d.txt", enc, tmp_path).tokens.tolist()
    assert tokens == enc.encode("One.") + [EOT] + enc.encode("Two.")


def test_pre_encoded_npy_and_npz(tmp_path, enc):
    np.save(tmp_path / "a.npy", np.array([1, 2, 3], np.int32))
    np.savez(tmp_path / "b.npz", np.array([4, 5]), np.array([6]))
    assert load("text", tmp_path / "b.npz", enc, tmp_path).tokens.tolist() == [4, 5, 6]
    assert load("text", tmp_path, enc, tmp_path).tokens.tolist() == [1, 2, 3, EOT, 4, 5, 6]
    np.save(tmp_path / "bad.npy", np.array([1, 60000]))
    with pytest.raises(GPT2TFError, match="token ids in 0..50256"):
        load("text", tmp_path / "bad.npy", enc, tmp_path)


def test_windows_are_reproducible_under_the_seed(tmp_path, enc):
    np.save(tmp_path / "t.npy", np.arange(1000) % 50000)
    stream = load("text", tmp_path / "t.npy", enc, tmp_path)
    a = stream.batch(7, batch_size=3, length=16, seed=5)
    assert a.tokens.shape == (3, 17) and a.weights.shape == (3, 16) and a.weights.all()
    assert np.array_equal(a.tokens, stream.batch(7, batch_size=3, length=16, seed=5).tokens)
    assert not np.array_equal(a.tokens, stream.batch(7, batch_size=3, length=16, seed=6).tokens)
    assert not np.array_equal(a.tokens, stream.batch(8, batch_size=3, length=16, seed=5).tokens)
    assert all(np.array_equal(np.diff(row), np.ones(16)) for row in a.tokens)  # contiguous windows
    tiny = data.TokenStream(np.arange(17), name="tiny")  # exactly one window: always the same
    assert tiny.batch(3, batch_size=2, length=16, seed=0).tokens.tolist() == [list(range(17))] * 2


def test_bad_text_datasets_are_one_line_errors(tmp_path, enc):
    (tmp_path / "short.txt").write_text("Too short.")
    with pytest.raises(GPT2TFError, match="too few for one training window") as info:
        load("text", tmp_path / "short.txt", enc, tmp_path).check_fits(1024)
    assert "\n" not in str(info.value)
    (tmp_path / "blob.bin").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    with pytest.raises(GPT2TFError, match="is not UTF-8 text"):
        load("text", tmp_path / "blob.bin", enc, tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "e.txt").write_text("")
    with pytest.raises(GPT2TFError, match="is empty"):
        load("text", tmp_path / "empty", enc, tmp_path)
    with pytest.raises(GPT2TFError, match="does not exist"):
        load("text", tmp_path / "missing.txt", enc, tmp_path)
    with pytest.raises(GPT2TFError, match="matches no files"):
        load("text", tmp_path / "*.nothing", enc, tmp_path)


def test_tokenising_is_cached_by_content_and_tokenizer(tmp_path, enc, monkeypatch):
    calls = []
    original = Encoder.encode_batch
    monkeypatch.setattr(
        Encoder, "encode_batch", lambda self, texts, **kw: calls.append(1) or original(self, texts, **kw)
    )
    path = tmp_path / "data" / "d.txt"
    path.parent.mkdir()
    path.write_text("Some text to cache.")
    first = data.load_dataset("text", str(path), tokenizer=enc).tokens  # default: cached next to the data
    assert len(calls) == 1 and len(list((path.parent / data.CACHE_DIR_NAME).glob("*.npz"))) == 1
    assert np.array_equal(data.load_dataset("text", str(path), tokenizer=enc).tokens, first)
    assert len(calls) == 1  # the second run read the cache
    path.write_text("Other text.")
    assert data.load_dataset("text", str(path), tokenizer=enc).tokens.tolist() == enc.encode("Other text.")
    assert len(calls) == 2  # new content, new key


def test_split_for_parallel_encoding_is_exact(enc):
    text = "First line.\nSecond line, longer.\n\n  indented\nword\n" * 200
    parts = list(split_exact(text, 300))  # how encode_texts cuts long texts for parallel encoding
    assert len(parts) > 5 and "".join(parts) == text
    assert sum((enc.encode(p) for p in parts), []) == enc.encode(text)


# ---- cnndm -----------------------------------------------------------------------------------------------------


def write_stories(root, stories):
    """The layout the ancestor's cnndm loader reads: url lists plus <sha1(url)>.story files."""
    (root / "url_lists").mkdir(parents=True)
    for site in ("cnn", "dailymail"):
        (root / site / "stories").mkdir(parents=True)
    urls = {"train": [], "val": [], "test": []}
    for i, (split, article, highlights) in enumerate(stories):
        site = "dailymail" if i % 2 else "cnn"
        url = f"http://www.{'dailymail.co.uk' if i % 2 else 'cnn.com'}/story-{i}.html"
        urls[split].append(url)
        body = article + "".join(f"\n\n@highlight\n\n{h}" for h in highlights)
        (root / site / "stories" / f"{hashlib.sha1(url.encode()).hexdigest()}.story").write_text(body)
    for split, listed in urls.items():
        (root / "url_lists" / f"all_{split}.txt").write_text("\n".join(listed) + "\n")


def decode_examples(examples, enc, length=10_000):
    return [enc.decode(examples.example(i, length)[0].tolist()) for i in range(len(examples))]


def test_cnndm_stories(tmp_path, enc):
    write_stories(
        tmp_path / "cnndm",
        [
            ("train", "The cat sat on the mat.\n\nIt was happy.", ["Cat sits.", "Cat happy."]),
            ("train", "Stocks rose today.", ["  Markets up.  "]),
            ("val", "A validation article.", ["Val summary."]),
            ("train", "", ["An empty story is skipped."]),
        ],
    )
    train = load("cnndm", tmp_path / "cnndm", enc, tmp_path)
    texts = decode_examples(train, enc)
    assert len(texts) == 2
    assert texts[1] == "Stocks rose today.\nTL;DR:\nMarkets up.<|endoftext|>"
    assert texts[0].startswith("The cat sat on the mat.\n\nIt was happy.\nTL;DR:\nCat ")
    assert texts[0].endswith(("Cat sits.<|endoftext|>", "Cat happy.<|endoftext|>"))
    ids, _ = train.example(1, 10_000)
    assert ids[-1] == EOT and not contains(ids, LITERAL_EOT)
    assert ids.tolist() == enc.encode("Stocks rose today.\nTL;DR:\nMarkets up.") + [EOT]  # = encoding the whole
    val = load("cnndm", tmp_path / "cnndm", enc, tmp_path, split="validation")
    assert decode_examples(val, enc) == ["A validation article.\nTL;DR:\nVal summary.<|endoftext|>"]


def test_cnndm_truncates_the_article_not_the_summary_and_masks_for_summary_only(tmp_path, enc):
    article = " ".join(f"word{i}" for i in range(200))
    path = tmp_path / "cnndm.jsonl"
    path.write_text(json.dumps({"article": article, "highlights": "The summary stays whole."}) + "\n")
    examples = load("cnndm", path, enc, tmp_path)
    tail = enc.encode("\nTL;DR:\nThe summary stays whole.") + [EOT]
    batch = examples.batch(0, batch_size=1, length=31, seed=0)
    row = batch.tokens[0]
    assert len(row) == 32 and row[-len(tail) :].tolist() == tail
    assert row[: 32 - len(tail)].tolist() == enc.encode(article)[: 32 - len(tail)]
    assert batch.weights.sum() == 31

    examples.loss_on = "completion"
    weights = examples.batch(0, batch_size=1, length=31, seed=0).weights[0]
    summary = len(enc.encode("The summary stays whole.")) + 1  # + EOT
    # The targets counted are exactly the summary's tokens and the EOT: target j is token j + 1.
    assert weights.tolist() == [0.0] * (31 - summary) + [1.0] * summary


def test_cnndm_short_examples_are_padded_and_the_padding_is_not_trained(tmp_path, enc):
    path = tmp_path / "cnndm.jsonl"
    path.write_text(
        "\n".join(json.dumps({"article": f"Article {i}.", "highlights": [f"Summary {i}."]}) for i in range(3)) + "\n"
    )
    examples = load("cnndm", path, enc, tmp_path)
    batch = examples.batch(0, batch_size=3, length=40, seed=1)
    for row, weights in zip(batch.tokens, batch.weights):
        n = int(weights.sum())  # targets of an example of n + 1 tokens
        assert weights[:n].all() and not weights[n:].any()
        assert row[n] == EOT and (row[n + 1 :] == EOT).all()  # padded with EOT after the example's own EOT
    order = sorted(int(row[1]) for row in batch.tokens)  # one epoch of 3 examples: each once
    assert order == sorted(enc.encode(f"Article {i}.")[1] for i in range(3))
    assert np.array_equal(batch.tokens, examples.batch(0, batch_size=3, length=40, seed=1).tokens)


def test_cnndm_bad_inputs(tmp_path, enc):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"article": "x"}\n')
    with pytest.raises(GPT2TFError, match="line 1"):
        load("cnndm", bad, enc, tmp_path)
    (tmp_path / "not_cnndm").mkdir()
    with pytest.raises(GPT2TFError, match="not a CNN/Daily Mail dataset"):
        load("cnndm", tmp_path / "not_cnndm", enc, tmp_path)


def test_cnndm_without_a_path_downloads_cnn_dailymail_through_tfds(tmp_path, enc, monkeypatch):
    import tensorflow_datasets as tfds

    prepared = []
    monkeypatch.setattr(data, "_unreachable", lambda host: None)  # as on a machine with network
    with tfds.testing.mock_data(num_examples=4):  # download_and_prepare is a no-op, as_dataset gives mock records
        real = tfds.core.DatasetBuilder.download_and_prepare
        monkeypatch.setattr(
            tfds.core.DatasetBuilder,
            "download_and_prepare",
            lambda builder, *a, **k: prepared.append(builder.name) or real(builder, *a, **k),
        )
        examples = data.load_dataset("cnndm", None, tokenizer=enc, cache_dir=tmp_path / "cache")
        assert prepared == ["cnn_dailymail"]
        assert len(load("cnndm", "cnn_dailymail", enc, tmp_path)) == 4  # the name given explicitly: the same
    texts = decode_examples(examples, enc)
    assert len(texts) == 4 and all("\nTL;DR:\n" in t and t.endswith("<|endoftext|>") for t in texts)


def test_cnndm_default_without_network_is_one_line_naming_what_was_tried(tmp_path, enc, monkeypatch):
    for variable in data.PROXY_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setitem(data.DOWNLOAD_HOSTS, "cnn_dailymail", ("gpt2tf-test.invalid",))  # .invalid never resolves
    with pytest.raises(GPT2TFError) as err:
        data.load_dataset("cnndm", None, tokenizer=enc)
    message = str(err.value)
    assert "\n" not in message
    assert "tensorflow-datasets cnn_dailymail is not prepared in " in message  # and where it looked
    assert "gpt2tf-test.invalid is unreachable" in message
    assert "give --dataset_path: the CNN/Daily Mail story layout" in message and "JSONL" in message


def test_cnndm_default_when_tfds_fails_to_download(tmp_path, enc, monkeypatch):
    import tensorflow_datasets as tfds

    def fail(builder, *args, **kwargs):
        raise ConnectionError("Google Drive quota exceeded\nmore text")

    monkeypatch.setattr(data, "_unreachable", lambda host: None)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", fail)
    with pytest.raises(
        GPT2TFError,
        match=r"downloading it failed \(ConnectionError: Google Drive quota exceeded\); "
        r"give --dataset_path",
    ):
        data.load_dataset("cnndm", None, tokenizer=enc)


# ---- tfds ------------------------------------------------------------------------------------------------------


def test_tfds_text_feature(tmp_path, enc):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=5):
        stream = load("tfds", "reddit_tifu/short", enc, tmp_path, feature="documents")
        assert (stream.tokens == EOT).sum() == 4  # five documents, four boundaries
        with pytest.raises(GPT2TFError, match="no feature 'text'.*documents"):
            load("tfds", "reddit_tifu/short", enc, tmp_path, feature="text")
    with pytest.raises(GPT2TFError, match="tensorflow-datasets"):
        load("tfds", "no_such_dataset_here", enc, tmp_path)


def test_token_files_numpy_cannot_read_are_one_line_errors(tmp_path, enc):
    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(GPT2TFError, match=r"cannot read .*empty.npy as NumPy token ids"):
        load("text", tmp_path / "empty.npy", enc, tmp_path)
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 this is not a zip archive")
    with pytest.raises(GPT2TFError, match=r"cannot read .*broken.npz as NumPy token ids"):
        load("text", tmp_path / "broken.npz", enc, tmp_path)


@pytest.mark.parametrize(
    "record",
    [
        '{"article": 5, "highlights": "x"}',
        '{"article": "a", "highlights": [1, 2]}',
        '{"article": "a", "highlights": null}',
        '["article", "highlights"]',
    ],
)
def test_cnndm_jsonl_fields_of_the_wrong_type(tmp_path, enc, record):
    (tmp_path / "bad.jsonl").write_text(record + "\n")
    with pytest.raises(GPT2TFError, match='line 1 is not a JSON object with a string "article"'):
        load("cnndm", tmp_path / "bad.jsonl", enc, tmp_path)

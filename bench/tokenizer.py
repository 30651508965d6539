"""Tokenizer throughput: `gpt2tf.encoder` single-threaded (cold and warm cache) and in bulk, next to tiktoken and
HF `tokenizers` when they are importable. Prints one JSON line.

The corpus is text already on the machine, mostly English prose: the package docs under /usr/share/doc
(changelogs, decompressed; copyright/license files; READMEs; .txt/.md/.rst), at most 256K characters per file, in
sorted path order, up to --max_mb. Python's own sources fill in if that is not enough.

    python bench/tokenizer.py [--max_mb 20] [--repeat 3]
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the repo root, so the bench runs from a checkout without installing

import argparse  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import sysconfig  # noqa: E402
import time  # noqa: E402

from gpt2tf.encoder import ENDOFTEXT, PATTERN, VOCAB_DIR, Encoder, get_encoder  # noqa: E402

DOC_DIR = Path("/usr/share/doc")
MAX_FILE_CHARS = 256 * 1024


def _is_prose(path: Path) -> bool:
    name = path.name.lower()
    return name.startswith(("changelog", "copyright", "readme", "news")) or name.endswith((".txt", ".md", ".rst"))


def load_corpus(max_mb: float) -> tuple[list[str], list[Path]]:
    """Documents (one per file) of mostly natural-language text found on this machine, up to `max_mb` MB."""
    paths = sorted(p for p in DOC_DIR.rglob("*") if p.is_file() and _is_prose(p)) if DOC_DIR.is_dir() else []
    paths += sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py"))
    docs, used, size = [], [], 0
    for path in paths:
        try:
            raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
            text = raw.decode("utf-8")[:MAX_FILE_CHARS]
        except (OSError, EOFError, UnicodeDecodeError):
            continue  # unreadable, not gzip after all, or not UTF-8: skip
        docs.append(text)
        used.append(path)
        size += len(text.encode())
        if size >= max_mb * 1e6:
            break
    return docs, used


def timed(fn, repeat: int):
    """(best seconds, result) of `repeat` calls; the machine may be shared, so the best is the least disturbed."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def tiktoken_encode():
    """tiktoken's GPT-2 built offline from the bundled files, or None if tiktoken is not installed."""
    try:
        import tiktoken
        import tiktoken.load
    except ImportError:
        return None
    os.environ["TIKTOKEN_CACHE_DIR"] = ""  # read the local files directly
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(VOCAB_DIR / "vocab.bpe"), encoder_json_file=str(VOCAB_DIR / "encoder.json")
    )
    specials = {ENDOFTEXT: 50256}
    encoding = tiktoken.Encoding("gpt2-local", pat_str=PATTERN, mergeable_ranks=ranks, special_tokens=specials)
    return encoding.encode_ordinary


def hf_encode():
    """HF `tokenizers`' byte-level BPE on the bundled files, single-threaded, or None if not installed."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    except ImportError:
        return None
    tokenizer = Tokenizer(models.BPE.from_file(str(VOCAB_DIR / "encoder.json"), str(VOCAB_DIR / "vocab.bpe")))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return lambda text: tokenizer.encode(text).ids


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max_mb", type=float, default=20.0, help="corpus size in MB of UTF-8")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per figure; the best is reported")
    args = parser.parse_args(argv)

    load_avg = os.getloadavg()[0]  # other work on the machine slows every figure, the bulk one most
    docs, paths = load_corpus(args.max_mb)
    from_doc_dir = sum(DOC_DIR in path.parents for path in paths)
    mb = sum(len(doc.encode()) for doc in docs) / 1e6
    start = time.perf_counter()
    shared = get_encoder()
    load_s = time.perf_counter() - start

    def cold_then_warm():
        encoder = Encoder(shared.encoder, shared.bpe_merges)  # an empty cache
        start = time.perf_counter()
        tokens = [encoder.encode(doc) for doc in docs]
        first = time.perf_counter() - start
        start = time.perf_counter()
        assert [encoder.encode(doc) for doc in docs] == tokens
        return first, time.perf_counter() - start, tokens

    runs = [cold_then_warm() for _ in range(args.repeat)]
    first_s, warm_s, tokens = min(run[0] for run in runs), min(run[1] for run in runs), runs[0][2]
    n_tokens = sum(map(len, tokens))
    bulk_s, bulk_tokens = timed(lambda: shared.encode_batch(docs), args.repeat)  # workers start with empty caches
    assert bulk_tokens == tokens

    result = {
        "corpus": f"{from_doc_dir} prose files from {DOC_DIR} (changelogs, licenses, READMEs) and "
        f"{len(docs) - from_doc_dir} Python sources, <=256K chars each",
        "mb": round(mb, 1),
        "tokens": n_tokens,
        "tokens_per_s": round(n_tokens / first_s),  # first pass, cache cold at the start
        "warm_tokens_per_s": round(n_tokens / warm_s),  # second pass over the same text
        "bulk_tokens_per_s": round(n_tokens / bulk_s),  # encode_batch on every core, process start included
        "cpus": os.cpu_count(),
        "load_avg_1m_before": round(load_avg, 2),
        "load_s": round(load_s, 3),
    }
    for name, encode in (("tiktoken", tiktoken_encode()), ("hf_tokenizers", hf_encode())):
        if encode is not None:
            seconds, theirs = timed(lambda: [encode(doc) for doc in docs], args.repeat)
            result[f"{name}_tokens_per_s"] = round(n_tokens / seconds)
            result[f"{name}_exact"] = theirs == tokens
    result.update(repeat=args.repeat, python=platform.python_version(), max_mb=args.max_mb)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

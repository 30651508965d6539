"""What several test modules share, imported as a module (`from helpers import ...`): the tiny model shapes, the
text corpus the tokenizers are checked on, and whether this machine can run the native kernels.

Test modules never import each other; conftest.py's fixtures use these too.
"""

import os
import platform
import pydoc
import random
import shutil
import socket
import string
import sysconfig
import threading
import time
import unicodedata
from pathlib import Path

import pytest

from gpt2tf.hparams import HParams
from gpt2tf.layout import ENDOFTEXT

TINY = HParams(n_vocab=101, n_ctx=32, n_embd=16, n_head=4, n_layer=2)
SMALL = HParams(n_vocab=50257, n_ctx=64, n_embd=16, n_head=2, n_layer=2)  # GPT-2's vocabulary, a tiny network


# --- the native kernels ---------------------------------------------------------------------------------------


def _cpu_has_avx2_fma():
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx2" in flags and "fma" in flags


def kernel_machine():
    """Whether this machine can build and run the native kernels: Linux x86-64 with AVX2 and FMA, a C++ compiler,
    no GPU, and GPT2TF_NATIVE not set to 0."""
    import tensorflow as tf

    return bool(
        platform.system() == "Linux"
        and platform.machine() in ("x86_64", "AMD64")
        and _cpu_has_avx2_fma()
        and (os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++"))
        and os.environ.get("GPT2TF_NATIVE", "1") != "0"
        and not tf.config.list_physical_devices("GPU")
    )


def default_runner(model):
    """The runner an engine of `model` uses when nothing else is asked for (its kernels: the default backend)."""
    from gpt2tf.decode.engine import default_kernels
    from gpt2tf.decode.runner import runner_for

    return runner_for(model, kernels=default_kernels())


def loaded_kernels():
    """The native kernels, loaded: a failure here (on a machine that can run them) fails the test."""
    from gpt2tf.kernels import native

    kernels = native.load()
    assert kernels is not None, "the native kernels did not load on a machine that can run them"
    return kernels


def compiled_product():
    """`product(x, w, scale=None)`: the kernels' `x @ w^T` (times `scale` for int8) in an XLA-compiled function,
    checked to be the kernel's."""
    import tensorflow as tf

    kernels = loaded_kernels()

    @tf.function(jit_compile=True, autograph=False)
    def product(x, w, scale=None):
        assert kernels.matmul_applies(x, w)
        return kernels.matmul_transposed(x, w, scale)

    return product


# CI sets GPT2TF_REQUIRE_KERNEL=1 where the machine has AVX2: there the kernel tests run and fail if the kernel
# does not build or register, instead of skipping (a green run then always holds kernel coverage).
REQUIRE_KERNEL = os.environ.get("GPT2TF_REQUIRE_KERNEL") == "1"
KERNEL_MACHINE = REQUIRE_KERNEL or kernel_machine()
needs_kernel = pytest.mark.skipif(
    not KERNEL_MACHINE, reason="the native kernel needs Linux x86-64, AVX2+FMA, a C++ compiler and no GPU"
)


# --- the corpus: real text found on any machine with the test deps, plus seeded adversarial text -------------

SCRIPTS = {  # name: code point ranges that words are drawn from
    "latin": [(0x41, 0x5A), (0x61, 0x7A), (0xC0, 0x24F), (0x1E00, 0x1EFF)],
    "greek": [(0x370, 0x3FF)],
    "cyrillic": [(0x400, 0x4FF)],
    "hebrew": [(0x591, 0x5F4)],
    "arabic": [(0x600, 0x6FF)],
    "devanagari": [(0x900, 0x97F)],
    "thai": [(0xE01, 0xE5B)],
    "kana": [(0x3041, 0x30FF)],
    "cjk": [(0x4E00, 0x9FFF), (0x20000, 0x2A6DF)],
    "hangul": [(0xAC00, 0xD7A3), (0x1100, 0x11FF)],
    "math letters": [(0x1D400, 0x1D7FF)],
    "fullwidth": [(0xFF01, 0xFFEF)],
    "numerals": [(0x30, 0x39), (0x660, 0x669), (0x966, 0x96F), (0xB2, 0xB3), (0xBC, 0xBE), (0x2160, 0x2188)],
    "symbols": [(0x2000, 0x2BFF), (0x1F300, 0x1FAFF)],
    "combining": [(0x300, 0x36F), (0x1AB0, 0x1AFF), (0x20D0, 0x20FF)],
}
EMOJI = [
    "🤗",
    "👨\u200d👩\u200d👧\u200d👦",
    "👍🏽",
    "👩🏿\u200d💻",
    "🇺🇸",
    "🇯🇵",
    "1\ufe0f\u20e3",
    "❤\ufe0f",
    "🏳\ufe0f\u200d🌈",
]
SPACES = [" ", "  ", "\t", "\n", "\r\n", "\n\n", "\u00a0", "\u3000", "\x0b", "\x0c", "\x85", "\u2028", "\u2009"]
ZERO_WIDTH = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad"]
CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "don't", "DON'T", "y'all", "''s", "'''", "O'Neil"]


def word(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.45:
        ranges = SCRIPTS[rng.choice(list(SCRIPTS))]
        return "".join(chr(rng.randint(*rng.choice(ranges))) for _ in range(rng.randint(1, 12)))
    if kind < 0.55:
        return rng.choice(CONTRACTIONS + [c.upper() for c in CONTRACTIONS])
    if kind < 0.65:
        return "".join(rng.choice(string.printable) for _ in range(rng.randint(1, 20)))
    if kind < 0.72:
        return "".join(rng.choice(string.punctuation) for _ in range(rng.randint(1, 30)))
    if kind < 0.78:
        return "".join(rng.choice(string.digits) for _ in range(rng.randint(1, 60)))
    if kind < 0.84:
        return rng.choice(EMOJI) * rng.randint(1, 3)
    if kind < 0.88:
        return rng.choice([ENDOFTEXT, "<|endoftext|", "<|endoftext|>>", "<<|endoftext|>"])
    if kind < 0.93:
        return "".join(chr(rng.choice([*range(0x20), 0x7F, *range(0x80, 0xA0)])) for _ in range(rng.randint(1, 5)))
    return rng.choice(ZERO_WIDTH) + rng.choice(["a", "é", "1", "", " "])


def adversarial_documents(rng: random.Random, count: int) -> list[str]:
    docs = []
    for _ in range(count):
        parts = []
        for _ in range(rng.randint(1, 120)):
            parts.append(word(rng))
            parts.append(rng.choice(SPACES) * rng.choice([1, 1, 1, 2, 3, 7]) if rng.random() < 0.3 else " ")
        docs.append("".join(parts))
    # Long runs: whitespace (alone and around words), digits, punctuation, letters, a CJK paragraph, emoji.
    docs += [" " * 20000, "x" + " " * 5000 + "y", "\t\n " * 3000, "a\r\n" * 2000, "7" * 30000, "!?" * 4000]
    docs += ["e" * 5000, "".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(3000)), "😀" * 2000, "\x00" * 300]
    docs += ["".join(rng.choice(SPACES) for _ in range(4000)) + "end", ""]
    return docs


def real_documents() -> list[str]:
    """Python's own sources, help() texts and Unicode character names: present wherever Python is."""
    docs, size = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        if size > 1_500_000:
            break
        docs.append(path.read_text(encoding="utf-8", errors="replace"))
        size += len(docs[-1])
    docs += [pydoc.render_doc(obj, renderer=pydoc.plaintext) for obj in (str, bytes, dict, list, int, float, set)]
    code_points = [cp for cp in range(0, 0x32000, 11) if not 0xD800 <= cp <= 0xDFFF]  # no lone surrogates here
    names = [f"{chr(cp)} U+{cp:04X} {unicodedata.name(chr(cp), '')}" for cp in code_points]
    docs += ["\n".join(names[i : i + 500]) for i in range(0, len(names), 500)]
    return docs


# --- servers ----------------------------------------------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Running:
    """An app served by uvicorn on a thread, on a free port."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)

"""The native decode kernel: products against NumPy, used in the compiled step, same tokens as XLA's own dot."""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import tensorflow as tf

import gpt2tf
from gpt2tf.decode import engine
from gpt2tf.decode import generate as sample
from gpt2tf.decode.runner import runner_for
from gpt2tf.errors import GPT2TFError
from gpt2tf.kernels import native
from gpt2tf.model import project

from helpers import KERNEL_MACHINE, compiled_product, loaded_kernels, needs_kernel


@needs_kernel
def test_kernel_builds_and_registers_here():
    assert native.available() and isinstance(native.load(), native.NativeKernels)


@needs_kernel
@pytest.mark.parametrize(
    "m,k,n",
    [
        (1, 16, 48),
        (1, 768, 2304),
        (2, 17, 5),
        (3, 33, 100),
        (8, 768, 3072),
        (5, 3072, 768),
        (16, 40, 257),
        (1, 7, 1),
        (2, 255, 70),
        (3, 1001, 333),
        (16, 600, 70),  # these two: a short last chunk, a column tail
        (1, 3072, 768),
        (1, 1001, 100),
        (1, 100, 70),  # one row: vector tails
        (6, 40, 257),
        (7, 33, 13),
        (5, 16, 3),
        (4, 100, 70),
        (11, 40, 257),
        (2, 3072, 70),
        (4, 1025, 33),
    ],
)  # 2-4 rows too wide for L1: the lanes kernel
def test_products_match_numpy(m, k, n):
    rng = np.random.default_rng(m * 1000 + k + n)
    x = rng.normal(size=(m, k)).astype(np.float32)
    w = rng.normal(size=(n, k)).astype(np.float32)
    product = compiled_product()
    got = product(tf.constant(x), tf.constant(w)).numpy()
    want = x.astype(np.float64) @ w.T.astype(np.float64)
    assert "gpt2tf_matmul" in product.experimental_get_compiler_ir(tf.constant(x), tf.constant(w), None)(stage="hlo")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.sqrt(k))


def _numpy_attention(q, keys, values, own_k, own_v, cached_mask, own_mask):
    """The model's rule in float64: masked scores are -1e10, one softmax over the cache and the token's own key."""
    q, keys, values, own_k, own_v = (a.astype(np.float64) for a in (q, keys, values, own_k, own_v))
    old = np.where(cached_mask[:, None, None, :], q @ np.swapaxes(keys, -1, -2), -1e10)  # [b, h, 1, L]
    own = np.where(own_mask[:, None, None, None], np.sum(q * own_k, -1, keepdims=True), -1e10)  # [b, h, 1, 1]
    scores = np.concatenate([old, own], -1)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return probs[..., :-1] @ values + probs[..., -1:] * own_v


@needs_kernel
@pytest.mark.parametrize("batch,heads,length,size", [(1, 12, 192, 64), (3, 2, 37, 24), (4, 3, 9, 7)])
def test_attention_matches_numpy(batch, heads, length, size):
    rng = np.random.default_rng(length)
    q, own_k, own_v = (rng.normal(size=(batch, heads, 1, size)).astype(np.float32) for _ in range(3))
    keys, values = (rng.normal(size=(batch, heads, length, size)).astype(np.float32) for _ in range(2))
    keys[:, :, length // 2 :] = np.nan  # slots not yet written must never be read
    cached = np.arange(length)[None, :] < length // 2  # [1, L]: the slots before this token
    cached = np.repeat(cached, batch, 0)
    cached[0, :3] = False  # left padding in row 0
    own = np.ones(batch, bool)
    if batch > 2:
        own[1] = False  # a padding token: attends to the cache only
        cached[2] = False  # ...and a row with nothing to attend to at all: the average of every slot
        keys[2], values[2] = 0.0, rng.normal(size=(heads, length, size))

    kernels = loaded_kernels()

    @tf.function(jit_compile=True)
    def attend(*args):
        assert kernels.attention_applies(args[0], args[1:3])
        return kernels.attend(*args)

    got = attend(q, keys, values, own_k, own_v, cached[:, None, None, :], own[:, None, None, None]).numpy()
    want = _numpy_attention(q, np.nan_to_num(keys), values, own_k, own_v, cached, own)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@needs_kernel
def test_attention_nan_and_many_units():
    """A NaN score makes its (sequence, head) NaN, as XLA's softmax does; more units than one chunk field holds."""

    kernels = loaded_kernels()

    @tf.function(jit_compile=True)
    def attend(*args):
        return kernels.attend(*args)

    batch, heads, length, size = 5462, 12, 2, 3  # 65544 (sequence, head) units
    rng = np.random.default_rng(0)
    q, own_k, own_v = (rng.normal(size=(batch, heads, 1, size)).astype(np.float32) for _ in range(3))
    keys, values = (rng.normal(size=(batch, heads, length, size)).astype(np.float32) for _ in range(2))
    keys[7, 2, 0, 1] = np.nan
    cached, own = np.ones([batch, 1, 1, length], bool), np.ones([batch, 1, 1, 1], bool)
    got = attend(q, keys, values, own_k, own_v, cached, own).numpy()
    want = _numpy_attention(q, keys, values, own_k, own_v, cached[:, 0, 0], own[:, 0, 0, 0])
    assert np.isnan(got[7, 2]).all() and np.isnan(got).sum() == size
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)  # NaNs compare equal here


def test_without_kernels_and_beyond_their_rows_it_is_tf_matmul():
    """The model's own product where no kernel is passed, and where the kernels do not apply (a prefill's rows)."""
    x, w = tf.ones([2, 8]), tf.ones([4, 8])

    @tf.function(jit_compile=True)
    def plain(x, w):
        return project(x, w)

    @tf.function(jit_compile=True)
    def many_rows(x, w):
        return project(tf.tile(x, [native.MAX_ROWS + 1, 1]), w, kernels=native.NativeKernels())

    for fn in (plain, many_rows):
        assert "custom-call" not in fn.experimental_get_compiler_ir(x, w)(stage="hlo")
    np.testing.assert_array_equal(plain(x, w).numpy(), np.full([2, 4], 8.0))


@needs_kernel
@pytest.mark.parametrize("rows", [4, 6])  # 6: each caller packs x into its own buffer
def test_concurrent_calls_are_correct(rows):
    """Three threads in the kernel at once: one gets the pool, the others compute alone; all the same bits."""
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(rows, 512)).astype(np.float32))
    w = tf.constant(rng.normal(size=(1024, 512)).astype(np.float32))
    want = x.numpy().astype(np.float64) @ w.numpy().T.astype(np.float64)
    product = compiled_product()
    product(x, w)
    errors, first = [], product(x, w).numpy()

    def run():
        for _ in range(30):
            got = product(x, w).numpy()
            errors.append(np.abs(got - want).max() if np.array_equal(got, first) else np.inf)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 90 and max(errors) < 1e-3


@needs_kernel
def test_same_bits_whatever_the_thread_count(tmp_path):
    """Products are cut into chunks by shape alone, and each output is computed whole by one thread."""
    code = (
        "import hashlib, numpy as np, tensorflow as tf, gpt2tf.kernels.native as n\n"
        "ok = n.available()\n"
        "kern = n.load()\n"
        "r = np.random.default_rng(1)\n"
        "out = []\n"
        "for m, k, n_ in [(8, 768, 3072), (3, 1001, 333), (2, 3072, 768), (1, 768, 2304), (1, 3072, 771),\n"
        "                 (6, 1001, 333)]:\n"
        "    x = tf.constant(r.normal(size=(m, k)).astype(np.float32))\n"
        "    w = tf.constant(r.normal(size=(n_, k)).astype(np.float32))\n"
        "    f = tf.function(lambda x, w: kern.matmul_transposed(x, w), jit_compile=True)\n"
        "    out.append(f(x, w).numpy().tobytes())\n"
        "print(ok, hashlib.sha256(b''.join(out)).hexdigest())"
    )
    outputs = set()
    for threads in ("1", "2", "3"):
        env = dict(os.environ, GPT2TF_NATIVE_THREADS=threads, GPT2TF_CACHE_DIR=str(tmp_path), TF_CPP_MIN_LOG_LEVEL="3")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        outputs.add(out.stdout.strip().splitlines()[-1])
    assert len(outputs) == 1 and outputs.pop().startswith("True ")


@needs_kernel
def test_sort_matches_tf_sort():
    rng = np.random.default_rng(5)
    values = rng.normal(0, 0.6, size=(6, 5003)).astype(np.float32)
    values[0, :50], values[0, 50:100] = 0.0, -0.0  # signed zeros (equal as floats)
    values[1, ::3] = -1e10  # logits masked by top-k
    values[2, :4], values[2, 4:8] = np.inf, -np.inf
    values[3] = np.round(values[3] * 4) / 4  # many ties
    values[4, :300] = 1e-41  # subnormals
    needed = np.array([True, True, True, True, True, False])
    kernels = loaded_kernels()
    assert kernels.sort_applies(tf.constant(values))
    got = kernels.sort_descending(tf.constant(values), tf.constant(needed)).numpy()
    want = tf.sort(values, direction="DESCENDING").numpy()
    np.testing.assert_array_equal(got[:5], want[:5])
    assert np.signbit(got[0]).sum() == np.signbit(values[0]).sum()  # every value kept, -0 included
    assert got[5].tobytes() == values[5].tobytes()  # a row not needed comes back as it was
    assert not kernels.sort_applies(tf.constant(values, tf.float64))  # another dtype: tf.sort


@needs_kernel
def test_top_p_with_the_native_sort_gives_the_same_tokens(monkeypatch):
    """Rows whose nucleus is wider than the fast path's top values are sorted whole, by the kernel in the step: the
    same filtered logits, bit for bit, and the same tokens."""
    from gpt2tf.decode.filters import FAST_K, choose_tokens, filter_logits

    rng = np.random.default_rng(6)
    scale = np.array([[0.3], [0.5], [0.4], [0.2], [0.6]], np.float32)  # each row its own: a wrong row shows
    logits = tf.constant(rng.normal(size=(5, 3000)).astype(np.float32) * scale)  # flat: nuclei of >1000 tokens
    # Rows: greedy, free, top-k + top-p (exact from the top values), then two that must be sorted whole: the
    # filtered rows are 2-4 and the sorted ones 3-4 of the batch (1-2 of the filtered), so positions are mapped.
    settings = dict(
        temperature=tf.constant([0.0, 1.0, 1.0, 1.0, 0.7]),
        top_k=tf.constant([0, 0, 40, 0, 0]),
        top_p=tf.constant([1.0, 1.0, 0.9, 0.9, 0.95]),
        repetition_penalty=tf.constant([1.0] * 5),
    )
    seen, seeds = tf.zeros([5, 3000], tf.bool), tf.constant([[s, 0] for s in range(5)], tf.int32)
    sorted_rows = []
    real = native.NativeKernels.sort_descending
    monkeypatch.setattr(
        native.NativeKernels, "sort_descending", lambda self, v, n: sorted_rows.append(v.shape) or real(self, v, n)
    )
    kernels = loaded_kernels()

    def run(kernels):
        @tf.function(autograph=False)
        def choose(step):
            return choose_tokens(logits, seen, seeds, step, kernels=kernels, **settings)

        @tf.function(autograph=False)
        def filtered():
            return filter_logits(logits, seen, **settings, kernels=kernels)

        return filtered().numpy(), [choose(tf.constant(step)).numpy().tolist() for step in range(20)]

    (with_kernel, tokens), (without, want) = run(kernels), run(None)
    assert with_kernel.tobytes() == without.tobytes() and tokens == want
    kept = (without > -1e9).sum(axis=1)
    assert kept[3] > FAST_K and kept[4] > FAST_K  # those two were sorted whole
    assert sorted_rows == [tf.TensorShape([5, 3000])] * 2  # traced with the kernel: once per function

    @tf.function(autograph=False)
    def alone(row):  # each row filtered on its own (a batch of one), with the kernel
        one = {k: v[row : row + 1] for k, v in settings.items()}
        return filter_logits(logits[row : row + 1], seen[:1], **one, kernels=kernels)

    for row in range(5):
        assert alone(row).numpy().tobytes() == with_kernel[row : row + 1].tobytes()


@needs_kernel
def test_decode_step_uses_the_kernel_and_gives_the_same_tokens(small_model_dir, monkeypatch):
    sorts = []
    real_sort = native.NativeKernels.sort_descending
    monkeypatch.setattr(
        native.NativeKernels, "sort_descending", lambda self, v, n: sorts.append(v.shape) or real_sort(self, v, n)
    )
    model = gpt2tf.load_model(small_model_dir)
    prompts = [[464, 2068, 7586], [10, 11]]
    kwargs = dict(length=20, temperature=0, batch_size=2, stop_at_eos=False)
    with_kernel = sample.generate(model, prompts, **kwargs)
    nucleus = dict(length=6, top_p=0.9, seed=3, batch_size=2, stop_at_eos=False)  # nearly flat: sorts whole rows
    nucleus_with_kernel = sample.generate(model, prompts, **nucleus)
    assert sorts  # the engine's step was traced with top-p's sort in the kernel
    runner = runner_for(model, kernels=engine.default_kernels())
    assert runner.use_native
    cache = runner.cache_variables(2, 84)
    d = model.hparams.n_embd
    x, mask = tf.zeros([2, 1, d]), (tf.ones([2, 1, 1, 84], tf.bool), tf.ones([1, 1, 1, 1], tf.bool))
    block = runner.block.experimental_get_compiler_ir(
        x, mask, tf.constant([64, 70]), runner.weights[0], cache[0], None
    )(stage="hlo")
    head = runner.head.experimental_get_compiler_ir(x)(stage="hlo")
    assert block.count("gpt2tf_matmul_nt") == 4 and "gpt2tf_matmul_nt" in head  # every product of the step
    assert block.count("gpt2tf_attend") == 1  # and the attention over the cache
    monkeypatch.setenv("GPT2TF_NATIVE", "0")
    assert engine.default_kernels() is None
    assert sample.generate(model, prompts, **kwargs) == with_kernel
    assert sample.generate(model, prompts, **nucleus) == nucleus_with_kernel


def test_no_compiler_falls_back_with_a_warning(small_model_dir, tmp_path):
    code = (
        "import warnings, gpt2tf, gpt2tf.decode.generate as s, gpt2tf.kernels.native as n\n"
        "m = gpt2tf.load_model(%r)\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    out = s.generate(m, [[1, 2, 3]], length=5, temperature=0, stop_at_eos=False)\n"
        "print(n.available(), len(out[0]), any('native decode kernel is unavailable' in str(x.message) "
        "for x in w))" % str(small_model_dir)
    )
    env = dict(os.environ, CXX="/bin/false", GPT2TF_CACHE_DIR=str(tmp_path), TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    expected = "False 5 True" if KERNEL_MACHINE else "False 5 False"
    assert out.strip().splitlines()[-1] == expected
    assert not list(tmp_path.glob("*.so"))


@needs_kernel
def test_build_is_cached_and_replaces_older_builds(tmp_path):
    stale = tmp_path / "native_matmul-0123456789abcdef.so"
    stale.write_bytes(b"an older build")
    code = "import gpt2tf.kernels.native as n; print(n.available())"
    env = dict(os.environ, GPT2TF_CACHE_DIR=str(tmp_path), TF_CPP_MIN_LOG_LEVEL="3")
    for _ in range(2):  # the second run loads the cached build
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        assert out.stdout.strip().splitlines()[-1] == "True"
    builds = list(tmp_path.iterdir())
    assert len(builds) == 1 and builds[0].name.startswith("native_matmul-") and builds[0] != stale


@pytest.mark.parametrize("value", ["abc", "0", "-2"])
def test_bad_thread_count_is_a_one_line_error(small_model_dir, value):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # the script quiets TF itself
    env["GPT2TF_NATIVE_THREADS"] = value
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(root, "inference.py"),
            "--model_dir",
            str(small_model_dir),
            "--starter",
            "hi",
            "--output_length",
            "2",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: GPT2TF_NATIVE_THREADS must be a positive number of threads, got {value!r}: fix or unset it"
    )


def test_a_thread_count_far_above_the_cores_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("GPT2TF_NATIVE_THREADS", "100000")
    monkeypatch.delenv("GPT2TF_NATIVE", raising=False)
    with pytest.raises(
        GPT2TFError,
        match=rf"GPT2TF_NATIVE_THREADS=100000 is more than the {native.MAX_THREADS} "
        rf"threads the kernel runs at most",
    ):
        native.requested()

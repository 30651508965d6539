"""The decode step's matrix products and attention on all CPU cores: small C++ kernels registered as XLA custom calls.

XLA's CPU dot runs a matrix-vector product (batch 1 decoding) on one core, and for a few rows (batch 8) packs the
weights first: both leave most of the memory bandwidth unused, and decoding is bound by reading every weight once
per step. `native_matmul.cc` reads each weight once, straight from memory, on every core (the model holds its
weights so that each output's are contiguous: `x @ transpose(w)`), and computes the step's attention over the
key/value cache reading only the slots written so far. It is built on first use with the system C++ compiler
(once per source and compiler), cached under `~/.cache/gpt2tf/` (or `$GPT2TF_CACHE_DIR`), loaded into the process and
registered with XLA as the custom-call targets `gpt2tf_matmul_nt` (and its `_i8` / `_bf16` forms for weights stored
as int8 or bfloat16, see `gpt2tf.quantize`), `gpt2tf_attend` and `gpt2tf_sort_descending` (the sampling's top-p
sorts whole rows of logits: a radix sort, ~8x faster than TensorFlow's, giving the same sorted values).

It is used only where it helps and is safe: inside the compiled decode step (`use_in_decode_step`), for float32
(or int8 / bfloat16-weight) products of at most `MAX_ROWS` rows and one-token attention, on an x86-64 CPU with AVX2 and FMA, when no GPU is
visible. Anywhere else, or if it cannot be built (no compiler, another architecture), `matmul_transposed` is
`tf.matmul`, the model computes attention itself, and decoding runs on XLA's own ops — slower, same results to
float rounding. `GPT2TF_NATIVE=0` turns it off; `GPT2TF_NATIVE_THREADS` sets its thread count (default: the CPUs
this process may run on).
"""

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.compiler.tf2xla.ops import gen_xla_ops

from gpt2tf.errors import GPT2TFError

SOURCE = Path(__file__).with_name("native_matmul.cc")
MAX_THREADS = max(256, 4 * (os.cpu_count() or 1))
MAX_ROWS = 16  # beyond this many rows (a prompt's prefill, training) XLA's and Eigen's GEMMs are the right tool
COMPILE_FLAGS = ["-O3", "-std=c++17", "-shared", "-fPIC", "-pthread", "-D_GLIBCXX_USE_CXX11_ABI=1"]
# xla::CustomCallTargetRegistry::Global() and ::Register(const std::string&, void*, const std::string&)
_REGISTRY_SYMBOLS = (
    "_ZN3xla24CustomCallTargetRegistry6GlobalEv",
    "_ZN3xla24CustomCallTargetRegistry8RegisterERKNSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEEPvS8_",
)

_lock = threading.Lock()
_loaded = None  # None: not tried yet; then True or False
_context = threading.local()


def requested():
    """False when the user turned the kernel off with GPT2TF_NATIVE=0; checks GPT2TF_NATIVE_THREADS when it is on.

    The decoder asks this before it traces anything, so a bad setting is a one-line GPT2TFError, not an error
    raised (and rewrapped by Keras) from inside a layer being traced.
    """
    on = os.environ.get("GPT2TF_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")
    if on:
        _requested_threads()
    return on


def _requested_threads():
    """GPT2TF_NATIVE_THREADS as a positive int, or None if unset; a bad value is the user's error to fix."""
    value = os.environ.get("GPT2TF_NATIVE_THREADS", "").strip()
    if not value:
        return None
    if not (value.isdigit() and int(value) > 0):
        raise GPT2TFError(f"GPT2TF_NATIVE_THREADS must be a positive number of threads, got {value!r}: fix or unset it")
    if int(value) > MAX_THREADS:  # each is an OS thread started up front; more than cores only adds switching
        raise GPT2TFError(
            f"GPT2TF_NATIVE_THREADS={value} is more than the {MAX_THREADS} threads the kernel runs "
            f"at most: set it to about the number of cores, or unset it"
        )
    return int(value)


def available():
    """Whether the kernel is built, loaded and registered with XLA (tries once per process).

    Never raises: a missing compiler or an unsupported machine means XLA's own dot, with one warning.
    """
    global _loaded
    with _lock:
        if _loaded is None:
            _loaded = False  # settled before anything below can raise (even a warning turned into an error)
            try:
                _loaded = _load()
            except Exception as e:
                try:
                    warnings.warn(
                        f"gpt2tf: the native decode kernel is unavailable ({e}); decoding uses XLA's "
                        f"own dot (slower on CPU, same results)",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                except Exception:
                    pass
        return _loaded


def _supported_here():
    if not requested():
        return False
    if platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    if tf.config.list_physical_devices("GPU"):
        return False  # the step runs on the GPU, where XLA's own dot is the fast one
    return True


def _load():
    if not _supported_here():
        return False
    library = ctypes.CDLL(str(_build()))
    registry = _registry_addresses()
    threads = _requested_threads() or _usable_cpus()
    library.gpt2tf_register.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
    if library.gpt2tf_register(registry[0], registry[1], threads) != 0:
        return False  # this CPU lacks AVX2/FMA
    _self_test()
    return True


def _usable_cpus():
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota (containers)."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cpus


def _self_test():
    """Run one product through XLA, so a registry XLA does not look in fails here, not in the user's decode step."""
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(2, 40)).astype(np.float32), rng.normal(size=(24, 40)).astype(np.float32)

    @tf.function(jit_compile=True, autograph=False)
    def product(x, w):
        return _custom_call(x, w)

    with tf.init_scope():  # available() may be first asked while a function is being traced
        got = product(tf.constant(x), tf.constant(w)).numpy()
    if not np.allclose(got, x @ w.T, rtol=1e-4, atol=1e-4):
        raise RuntimeError("the kernel's self-test gave wrong products")


def _build():
    """The compiled kernel's path: built once per (source, compiler) and cached; an atomic rename publishes it."""
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not compiler:
        raise RuntimeError("no C++ compiler found (install g++ or set CXX)")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    key = hashlib.sha256(SOURCE.read_bytes() + version.encode() + " ".join(COMPILE_FLAGS).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("GPT2TF_CACHE_DIR") or Path.home() / ".cache" / "gpt2tf")
    target = cache / f"native_matmul-{key}.so"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=target.name, suffix=".part", dir=cache)
    os.close(fd)
    try:
        result = subprocess.run(
            [compiler, *COMPILE_FLAGS, str(SOURCE), "-o", partial], capture_output=True, text=True, timeout=300
        )
        if result.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {result.stderr.strip().splitlines()[-1:]}")
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    for stale in cache.glob("native_matmul-*.so"):  # builds of other versions (a process using one keeps its copy)
        if stale != target:
            stale.unlink(missing_ok=True)
    return target


def _registry_addresses():
    """Addresses of XLA's custom-call registry functions inside the TensorFlow library this process loaded."""
    for name in ("libtensorflow_cc.so.2", "libtensorflow_framework.so.2", "python/_pywrap_tensorflow_internal.so"):
        path = os.path.join(tf.sysconfig.get_lib(), name)
        if not os.path.exists(path):
            continue
        try:
            library = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)  # the copy already loaded, never a second
            return [ctypes.cast(getattr(library, symbol), ctypes.c_void_p).value for symbol in _REGISTRY_SYMBOLS]
        except (OSError, AttributeError):  # not loaded in this process, or without the symbols
            continue
    raise RuntimeError(f"XLA's custom-call registry is not exported by TensorFlow {tf.__version__}")


@contextlib.contextmanager
def use_in_decode_step(enabled=True):
    """While tracing a function under this context (compiled with jit_compile=True), `matmul_transposed` and
    `attend` may use the kernels; so may `sort_descending`, in any function (it compiles its own call)."""
    previous = getattr(_context, "enabled", False)
    _context.enabled = enabled
    try:
        yield
    finally:
        _context.enabled = previous


def _in_decode_step():
    return getattr(_context, "enabled", False)


_TARGETS = {tf.float32: "gpt2tf_matmul_nt", tf.int8: "gpt2tf_matmul_nt_i8", tf.bfloat16: "gpt2tf_matmul_nt_bf16"}


def matmul_transposed(x, w, scale=None):
    """`x @ transpose(w)` for x [m, k] and w [n, k]; the native kernel where `use_in_decode_step` allows it.

    w may be stored weights (see `gpt2tf.quantize`): int8 with `scale` [n] (the result is `(x @ w^T) * scale`, each
    output scaled once) or bfloat16. The kernel reads them as stored; elsewhere (prefill, more than MAX_ROWS rows,
    no kernel) XLA or TensorFlow converts one matrix at a time to x's dtype for the product.
    """
    w = tf.convert_to_tensor(w)  # a Keras variable's dtype is a string
    scale = None if scale is None else tf.convert_to_tensor(scale)
    rows, inner = x.shape
    if (
        _in_decode_step()
        and x.dtype == tf.float32
        and w.dtype in _TARGETS
        and rows is not None
        and inner is not None
        and rows <= MAX_ROWS
        and available()
    ):
        return _custom_call(x, w, scale)
    y = tf.matmul(x, tf.cast(w, x.dtype), transpose_b=True)
    return y if scale is None else y * tf.cast(scale, y.dtype)


def attention_applies(q, cache):
    """Whether `attend` runs the kernel for this query and cache (else the caller computes attention itself)."""
    return (
        _in_decode_step()
        and q.dtype == tf.float32
        and q.shape.is_fully_defined()
        and q.shape[2] == 1
        and cache[0].shape.is_fully_defined()
        and cache[0].dtype == tf.float32
        and available()
    )


def attend(q, keys, values, own_k, own_v, cached_mask, own_mask):
    """Attention of one new token per sequence over the cache: [batch, n_head, 1, head_size].

    q, own_k, own_v: [batch, n_head, 1, head_size] (q already scaled); keys, values: the cache before this token,
    [rows, n_head, max_length, head_size] with rows >= batch (the query rows are its first rows; the rest are not
    read); cached_mask: bool, broadcastable to [batch, 1, 1, max_length]; own_mask: bool, broadcastable to
    [batch, 1, 1, 1]. Masked scores count as -1e10, as in the model's own code.
    """
    batch = q.shape[0]
    _, heads, length, size = keys.shape
    mask = tf.reshape(tf.cast(tf.broadcast_to(cached_mask, [batch, 1, 1, length]), tf.float32), [batch, length])
    own = tf.reshape(tf.cast(tf.broadcast_to(own_mask, [batch, 1, 1, 1]), tf.float32), [batch])
    rows = [batch, heads, size]
    out = gen_xla_ops.xla_custom_call_v2(
        [tf.reshape(q, rows), keys, values, tf.reshape(own_k, rows), tf.reshape(own_v, rows), mask, own],
        "gpt2tf_attend",
        f"{batch},{heads},{length},{size}",
        False,
        [tf.float32],
        [rows],
    )[0]
    return tf.reshape(out, [batch, heads, 1, size])


def _custom_call(x, w, scale=None):
    (rows, inner), cols = x.shape, w.shape[0]
    operands = [x, w] if w.dtype != tf.int8 else [x, w, scale]
    return gen_xla_ops.xla_custom_call_v2(
        operands, _TARGETS[w.dtype], f"{rows},{inner},{cols}", False, [tf.float32], [[rows, cols]]
    )[0]


def sort_applies(values):
    """Whether `sort_descending` runs the kernel for these values (else the caller sorts with `tf.sort`)."""
    return (
        _in_decode_step()
        and values.dtype == tf.float32
        and values.shape.rank == 2
        and values.shape.is_fully_defined()
        and available()
    )


def sort_descending(values, needed):
    """values [m, n] float32 with the rows where `needed` [m] (bool, or a number: nonzero) is set sorted from largest
    to smallest, the others as they are: for those rows, the values `tf.sort(..., direction="DESCENDING")` gives
    (equal values are indistinguishable, except +0 and -0, which compare equal). A NaN sorts first (or last, with
    its sign bit set), where TensorFlow's sort leaves a row holding one unordered; the logsumexp of such a row is
    NaN either way."""
    return _sort_call(values, tf.cast(needed, tf.float32))  # the kernel reads a float flag per row


@tf.function(jit_compile=True, autograph=False)
def _sort_call(values, needed):
    rows, n = values.shape
    return gen_xla_ops.xla_custom_call_v2(
        [values, needed], "gpt2tf_sort_descending", f"{rows},{n}", False, [tf.float32], [[rows, n]]
    )[0]

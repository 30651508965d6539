"""The decode step's matrix products, attention and sorts on all CPU cores: small C++ kernels registered as XLA
custom calls, and the backend object through which the model and the sampler use them.

XLA's CPU dot runs a matrix-vector product (batch 1 decoding) on one core, and for a few rows (batch 8) packs the
weights first: both leave most of the memory bandwidth unused, and decoding is bound by reading every weight once
per step. `native_matmul.cc` reads each weight once, straight from memory, on every core (the model holds its
weights so that each output's are contiguous: `x @ transpose(w)`), computes the step's attention over the
key/value cache reading only the slots written so far, and sorts rows of logits for top-p (a radix sort giving the
values `tf.sort` gives). It is built on first use with the system C++ compiler (once per source and compiler),
cached under `~/.cache/gpt2tf/` (or `$GPT2TF_CACHE_DIR`), loaded into the process and registered with XLA as the
custom-call targets the weight-format table names (`gpt2tf.weight_formats`), `gpt2tf_attend` and
`gpt2tf_sort_descending`.

`load()` gives the backend, a `NativeKernels`, or None where it cannot run (another CPU or OS, a GPU, no compiler,
`GPT2TF_NATIVE=0`); nothing is chosen behind the caller's back: the decode runner passes the backend explicitly as
`kernels=` to the model and the sampler inside its XLA-compiled functions (the custom calls exist only there), and
each `*_applies` method says where a kernel is used — float32 (or int8 / bfloat16-weight) products of at most
`MAX_ROWS` rows, one-token attention, whole-row sorts. Elsewhere the model's own TensorFlow ops run: slower on a
CPU, the same results to float rounding. `GPT2TF_NATIVE_THREADS` sets the kernels' thread count (default: the CPUs
this process may run on).
"""

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import threading
import warnings
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.compiler.tf2xla.ops import gen_xla_ops

from gpt2tf.errors import GPT2TFError
from gpt2tf.files import atomic_path
from gpt2tf.weight_formats import FORMATS

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
            except Exception as e:  # any failure means: use XLA's own dot, and say why once
                # with warnings configured as errors, the fallback still stands
                with contextlib.suppress(Exception):
                    warnings.warn(
                        f"gpt2tf: the native decode kernel is unavailable ({e}); decoding uses XLA's "
                        f"own dot (slower on CPU, same results)",
                        RuntimeWarning,
                        stacklevel=2,
                    )
        return _loaded


def _supported_here():
    if not requested():
        return False
    if platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    return not tf.config.list_physical_devices("GPU")  # on a GPU, XLA's own dot is the fast one


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
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
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
        return NativeKernels().matmul_transposed(x, w)

    with tf.init_scope():  # available() may be first asked while a function is being traced
        got = product(tf.constant(x), tf.constant(w)).numpy()
    if not np.allclose(got, x @ w.T, rtol=1e-4, atol=1e-4):
        raise RuntimeError("the kernel's self-test gave wrong products")


def _build():
    """The compiled kernel's path: built once per (source, compiler) and cached; an atomic rename publishes it."""
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not compiler:
        raise RuntimeError("no C++ compiler found (install g++ or set CXX)")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60, check=False).stdout
    key = hashlib.sha256(SOURCE.read_bytes() + version.encode() + " ".join(COMPILE_FLAGS).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("GPT2TF_CACHE_DIR") or Path.home() / ".cache" / "gpt2tf")
    target = cache / f"native_matmul-{key}.so"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as partial:
        result = subprocess.run(
            [compiler, *COMPILE_FLAGS, str(SOURCE), "-o", partial],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {result.stderr.strip().splitlines()[-1:]}")
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


class NativeKernels:
    """The native kernels as the model (`matmul_transposed`, `attend`) and the sampler (`sort_descending`) call them:
    only inside a function compiled with jit_compile=True, and only where the matching `*_applies` says so."""

    name = "native"
    max_rows = MAX_ROWS

    def matmul_applies(self, x, w):
        """Whether `matmul_transposed(x, w)` runs the kernel: float32 x of at most MAX_ROWS static rows, and a
        weight format the kernels read."""
        rows, inner = x.shape
        return (
            x.dtype == tf.float32
            and w.dtype in _TARGETS
            and rows is not None
            and inner is not None
            and rows <= MAX_ROWS
        )

    def matmul_transposed(self, x, w, scale=None):
        """`x @ transpose(w)` for x [m, k] and w [n, k] as stored (int8 times `scale` [n], or bfloat16)."""
        (rows, inner), cols = x.shape, w.shape[0]
        operands = [x, w] if scale is None else [x, w, tf.convert_to_tensor(scale)]
        return gen_xla_ops.xla_custom_call_v2(
            operands, _TARGETS[w.dtype], f"{rows},{inner},{cols}", False, [tf.float32], [[rows, cols]]
        )[0]

    def attention_applies(self, q, cache):
        """Whether `attend` runs for this query and cache (else the model computes attention itself)."""
        return (
            q.dtype == tf.float32
            and q.shape.is_fully_defined()
            and q.shape[2] == 1
            and cache[0].shape.is_fully_defined()
            and cache[0].dtype == tf.float32
        )

    def attend(self, q, keys, values, own_k, own_v, cached_mask, own_mask):
        """Attention of one new token per sequence over the cache: [batch, n_head, 1, head_size].

        q, own_k, own_v: [batch, n_head, 1, head_size] (q already scaled); keys, values: the cache before this
        token, [rows, n_head, max_length, head_size] with rows >= batch (the query rows are its first rows; the rest
        are not read); cached_mask: bool, broadcastable to [batch, 1, 1, max_length]; own_mask: bool, broadcastable
        to [batch, 1, 1, 1]. Masked scores count as -1e10, as in the model's own code.
        """
        batch = q.shape[0]
        _, heads, length, size = keys.shape
        mask = tf.reshape(tf.cast(tf.broadcast_to(cached_mask, [batch, 1, 1, length]), tf.float32), [batch, length])
        own = tf.reshape(tf.cast(tf.broadcast_to(own_mask, [batch, 1, 1, 1]), tf.float32), [batch])
        rows = [batch, heads, size]
        operands = [tf.reshape(q, rows), keys, values, tf.reshape(own_k, rows), tf.reshape(own_v, rows), mask, own]
        out = gen_xla_ops.xla_custom_call_v2(
            operands, "gpt2tf_attend", f"{batch},{heads},{length},{size}", False, [tf.float32], [rows]
        )[0]
        return tf.reshape(out, [batch, heads, 1, size])

    def sort_applies(self, values):
        """Whether `sort_descending` runs for these values (else the caller sorts with `tf.sort`)."""
        return values.dtype == tf.float32 and values.shape.rank == 2 and values.shape.is_fully_defined()

    def sort_descending(self, values, needed):
        """values [m, n] float32 with the rows where `needed` [m] (bool, or a number: nonzero) is set sorted from
        largest to smallest, the others as they are: for those rows, the values `tf.sort(..., "DESCENDING")` gives
        (equal values are indistinguishable, except +0 and -0, which compare equal). A NaN sorts first (or last,
        with its sign bit set), where TensorFlow's sort leaves a row holding one unordered; the logsumexp of such a
        row is NaN either way."""
        return _sort_call(values, tf.cast(needed, tf.float32))  # the kernel reads a float flag per row


_TARGETS = {tf.as_dtype(f.stored_dtype): f.kernel_target for f in FORMATS.values()}


def load():
    """The native kernels, built, loaded and registered (tried once per process), or None where they cannot run.

    Never raises for a machine that cannot run them: a missing compiler or a failed build means None, with one
    warning; a bad GPT2TF_NATIVE_THREADS is the user's GPT2TFError.
    """
    requested()  # a bad setting is reported here, before anything is traced
    return NativeKernels() if available() else None


@tf.function(jit_compile=True, autograph=False)
def _sort_call(values, needed):
    rows, n = values.shape
    return gen_xla_ops.xla_custom_call_v2(
        [values, needed], "gpt2tf_sort_descending", f"{rows},{n}", False, [tf.float32], [[rows, n]]
    )[0]

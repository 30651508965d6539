// Multi-threaded float32 matrix products with few rows (the decode step: one row per sequence), registered as
// XLA CPU custom-call targets. XLA's own CPU dot runs a matrix-vector product on one core and, for a handful of
// rows, packs the weight matrix first; both leave memory bandwidth unused. Here every weight is read once, straight
// from memory, by all cores.
//
//   gpt2tf_matmul_nn: y[m, n] = x[m, k] @ w[k, n]      (w row-major: OpenAI's conv1d weights)
//   gpt2tf_matmul_nt: y[m, n] = x[m, k] @ w[n, k]^T    (w row-major: the tied token embedding, for the logits)
//
// The backend config (XLA's "opaque" string) is "m,k,n". Built by gpt2tf/native.py with the system C++ compiler,
// loaded into the TensorFlow process, registered with XLA through `gpt2tf_register`. It links against nothing of
// TensorFlow: the registry's two entry points are passed in as addresses.

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>
#include <unistd.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define GPT2TF_AVX2 __attribute__((target("avx2,fma")))

namespace {

// ---------------------------------------------------------------------------------------------------------------
// Kernels. Each computes output columns [j0, j1) of its product.

// y[i, j] = sum_k x[i, k] w[k, j]. Walks w eight rows at a time (eight sequential streams), each 32-column chunk of
// those rows applied to every x row while it is in L1. The partial sums live in a per-thread scratch whose row
// stride is not a multiple of 4 KiB: with y's own stride (n floats, often 3 x 4 KiB) the stores to y alias the
// loads from w in the store buffer and the kernel runs at half speed.
GPT2TF_AVX2 void matmul_nn(const float* __restrict x, const float* __restrict w, float* __restrict y, long m, long k,
                           long n, long j0, long j1) {
  constexpr long kRows = 8;
  const long width = j1 - j0, vec_width = width / 32 * 32, stride = vec_width + 40;
  thread_local std::vector<float> scratch_buffer;
  if (static_cast<long>(scratch_buffer.size()) < m * stride + 16) scratch_buffer.resize(m * stride + 16);
  float* scratch = scratch_buffer.data();
  std::memset(scratch, 0, m * stride * sizeof(float));
  for (long k0 = 0; k0 < k; k0 += kRows) {
    const long rows = k - k0 < kRows ? k - k0 : kRows;
    const float* wk = w + k0 * n + j0;
    for (long j = 0; j < vec_width; j += 32) {
      for (long i = 0; i < m; ++i) {
        const float* xi = x + i * k + k0;
        float* yi = scratch + i * stride + j;
        __m256 a0 = _mm256_loadu_ps(yi), a1 = _mm256_loadu_ps(yi + 8), a2 = _mm256_loadu_ps(yi + 16),
               a3 = _mm256_loadu_ps(yi + 24);
        for (long r = 0; r < rows; ++r) {
          const __m256 s = _mm256_broadcast_ss(xi + r);
          const float* wr = wk + r * n + j;
          a0 = _mm256_fmadd_ps(s, _mm256_loadu_ps(wr), a0);
          a1 = _mm256_fmadd_ps(s, _mm256_loadu_ps(wr + 8), a1);
          a2 = _mm256_fmadd_ps(s, _mm256_loadu_ps(wr + 16), a2);
          a3 = _mm256_fmadd_ps(s, _mm256_loadu_ps(wr + 24), a3);
        }
        _mm256_storeu_ps(yi, a0);
        _mm256_storeu_ps(yi + 8, a1);
        _mm256_storeu_ps(yi + 16, a2);
        _mm256_storeu_ps(yi + 24, a3);
      }
    }
  }
  for (long i = 0; i < m; ++i) {
    std::memcpy(y + i * n + j0, scratch + i * stride, vec_width * sizeof(float));
    for (long j = j0 + vec_width; j < j1; ++j) {  // a last chunk narrower than 32 columns
      float a = 0.f;
      for (long t = 0; t < k; ++t) a += x[i * k + t] * w[t * n + j];
      y[i * n + j] = a;
    }
  }
}

GPT2TF_AVX2 inline float sum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// y[i, j] = sum_k x[i, k] w[j, k]: dot products of x rows with w rows, four w rows by two x rows at a time.
GPT2TF_AVX2 void matmul_nt(const float* __restrict x, const float* __restrict w, float* __restrict y, long m, long k,
                           long n, long j0, long j1) {
  const long kv = k / 8 * 8;
  long j = j0;
  for (; j + 4 <= j1; j += 4) {
    const float* r0 = w + j * k;
    const float* r1 = r0 + k;
    const float* r2 = r1 + k;
    const float* r3 = r2 + k;
    long i = 0;
    for (; i + 2 <= m; i += 2) {
      const float* xa = x + i * k;
      const float* xb = xa + k;
      __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0, t0 = s0, t1 = s0, t2 = s0, t3 = s0;
      for (long t = 0; t < kv; t += 8) {
        const __m256 va = _mm256_loadu_ps(xa + t), vb = _mm256_loadu_ps(xb + t);
        const __m256 w0 = _mm256_loadu_ps(r0 + t), w1 = _mm256_loadu_ps(r1 + t), w2 = _mm256_loadu_ps(r2 + t),
                     w3 = _mm256_loadu_ps(r3 + t);
        s0 = _mm256_fmadd_ps(va, w0, s0);
        s1 = _mm256_fmadd_ps(va, w1, s1);
        s2 = _mm256_fmadd_ps(va, w2, s2);
        s3 = _mm256_fmadd_ps(va, w3, s3);
        t0 = _mm256_fmadd_ps(vb, w0, t0);
        t1 = _mm256_fmadd_ps(vb, w1, t1);
        t2 = _mm256_fmadd_ps(vb, w2, t2);
        t3 = _mm256_fmadd_ps(vb, w3, t3);
      }
      float a[8] = {sum8(s0), sum8(s1), sum8(s2), sum8(s3), sum8(t0), sum8(t1), sum8(t2), sum8(t3)};
      for (long t = kv; t < k; ++t) {
        a[0] += xa[t] * r0[t]; a[1] += xa[t] * r1[t]; a[2] += xa[t] * r2[t]; a[3] += xa[t] * r3[t];
        a[4] += xb[t] * r0[t]; a[5] += xb[t] * r1[t]; a[6] += xb[t] * r2[t]; a[7] += xb[t] * r3[t];
      }
      std::memcpy(y + i * n + j, a, 4 * sizeof(float));
      std::memcpy(y + (i + 1) * n + j, a + 4, 4 * sizeof(float));
    }
    for (; i < m; ++i) {
      const float* xa = x + i * k;
      __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
      for (long t = 0; t < kv; t += 8) {
        const __m256 va = _mm256_loadu_ps(xa + t);
        s0 = _mm256_fmadd_ps(va, _mm256_loadu_ps(r0 + t), s0);
        s1 = _mm256_fmadd_ps(va, _mm256_loadu_ps(r1 + t), s1);
        s2 = _mm256_fmadd_ps(va, _mm256_loadu_ps(r2 + t), s2);
        s3 = _mm256_fmadd_ps(va, _mm256_loadu_ps(r3 + t), s3);
      }
      float a[4] = {sum8(s0), sum8(s1), sum8(s2), sum8(s3)};
      for (long t = kv; t < k; ++t) {
        a[0] += xa[t] * r0[t]; a[1] += xa[t] * r1[t]; a[2] += xa[t] * r2[t]; a[3] += xa[t] * r3[t];
      }
      std::memcpy(y + i * n + j, a, 4 * sizeof(float));
    }
  }
  for (; j < j1; ++j) {
    const float* r0 = w + j * k;
    for (long i = 0; i < m; ++i) {
      float a = 0.f;
      for (long t = 0; t < k; ++t) a += x[i * k + t] * r0[t];
      y[i * n + j] = a;
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// A small pool: the calling thread plus (threads - 1) workers that spin briefly between calls (a decode step makes
// ~50 calls a few microseconds apart), then sleep. If a second call arrives while the pool is busy (XLA may run
// independent thunks concurrently), or in a forked child that has no workers, the call runs on its own thread.

struct Task {
  void (*kernel)(const float*, const float*, float*, long, long, long, long, long);
  const float* x;
  const float* w;
  float* y;
  long m, k, n, align;
  int parts;

  void Run(int part) const {
    const long per = ((n + parts - 1) / parts + align - 1) / align * align;
    const long j0 = part * per, j1 = j0 + per < n ? j0 + per : n;
    if (j0 < j1) kernel(x, w, y, m, k, n, j0, j1);
  }
};

class Pool {
 public:
  explicit Pool(int threads) : threads_(threads), pid_(getpid()) {
    for (int t = 1; t < threads_; ++t) std::thread([this, t] { Work(t); }).detach();
  }

  void Run(const Task& task) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (!busy.owns_lock() || threads_ == 1 || getpid() != pid_) {
      Task alone = task;
      alone.parts = 1;
      alone.Run(0);
      return;
    }
    pending_.store(threads_ - 1, std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lock(mu_);
      task_ = &task;
      generation_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    task.Run(0);
    while (pending_.load(std::memory_order_acquire) != 0) _mm_pause();
  }

  int threads() const { return threads_; }

 private:
  void Work(int part) {
    unsigned long seen = 0;
    for (;;) {
      for (int spin = 0; spin < 20000 && generation_.load(std::memory_order_acquire) == seen; ++spin) _mm_pause();
      if (generation_.load(std::memory_order_acquire) == seen) {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
      }
      seen = generation_.load(std::memory_order_acquire);
      task_->Run(part);
      pending_.fetch_sub(1, std::memory_order_acq_rel);
    }
  }

  const int threads_;
  const pid_t pid_;
  std::mutex mu_, busy_;
  std::condition_variable cv_;
  std::atomic<unsigned long> generation_{0};
  std::atomic<int> pending_{0};
  const Task* task_ = nullptr;
};

Pool* pool = nullptr;  // created once by gpt2tf_register, never destroyed (its workers outlive main)

template <bool kTransposed>
void CustomCall(void* out, const void** in, const char* opaque, size_t opaque_len, void* /*status*/) {
  long dims[3] = {0, 0, 0};
  const char* p = opaque;
  const char* end = opaque + opaque_len;
  for (int d = 0; d < 3 && p < end; ++d) {
    char* next;
    dims[d] = std::strtol(p, &next, 10);
    p = next + 1;
  }
  Task task{kTransposed ? matmul_nt : matmul_nn, static_cast<const float*>(in[0]), static_cast<const float*>(in[1]),
            static_cast<float*>(out), dims[0], dims[1], dims[2], kTransposed ? 4 : 32, pool->threads()};
  pool->Run(task);
}

}  // namespace

extern "C" int gpt2tf_register(void* registry_global, void* registry_register, int threads) {
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return 1;
  if (pool == nullptr) pool = new Pool(threads < 1 ? 1 : threads);
  // xla::CustomCallTargetRegistry::Global() and its member Register(const std::string& symbol, void* address,
  // const std::string& platform), called through their addresses (Itanium C++ ABI: `this` comes first).
  void* registry = reinterpret_cast<void* (*)()>(registry_global)();
  auto add = reinterpret_cast<void (*)(void*, const std::string&, void*, const std::string&)>(registry_register);
  add(registry, "gpt2tf_matmul_nn", reinterpret_cast<void*>(&CustomCall<false>), "Host");
  add(registry, "gpt2tf_matmul_nt", reinterpret_cast<void*>(&CustomCall<true>), "Host");
  return 0;
}

#else  // not x86-64: nothing to register; gpt2tf falls back to XLA's own dot

extern "C" int gpt2tf_register(void*, void*, int) { return 1; }

#endif

// Multi-threaded float32 matrix products with few rows (the decode step: one row per sequence), registered as
// XLA CPU custom-call targets. XLA's own CPU dot runs a matrix-vector product on one core and, for a handful of
// rows, packs the weight matrix first; both leave memory bandwidth unused. Here every weight is read once, straight
// from memory, by all cores.
//
//   gpt2tf_matmul_nt: y[m, n] = x[m, k] @ w[n, k]^T    (w row-major: the model's projections, which it holds
//                                                        transposed, and the tied token embedding, for the logits)
//   gpt2tf_matmul_nt_i8:   y[m, n] = (x[m, k] @ q[n, k]^T) * scale[n]   (int8 weights, a float32 scale per row)
//   gpt2tf_matmul_nt_bf16: y[m, n] = x[m, k] @ w[n, k]^T                 (bfloat16 weights)
//   gpt2tf_attend:    one new token per sequence attending over the key/value cache (see attend_one)
//   gpt2tf_sort_descending: the rows of values[m, n] whose flag in needed[m] is nonzero, each sorted from largest
//                           to smallest (the others copied as they are): the sampling's top-p (see sort_row)
//
// Quantized weights are read as they are stored (1 or 2 bytes each) and turned into float32 in registers, once for
// up to eight rows of x (never a float32 copy of a matrix).
//
// The backend config (XLA's "opaque" string) is "m,k,n" for the products, "batch,heads,max_length,head_size" for
// attention, "m,n" for the sort. Built by gpt2tf/kernels/native.py with the system C++ compiler,
// loaded into the TensorFlow process, registered with XLA through `gpt2tf_register`. It links against nothing of
// TensorFlow: the registry's two entry points are passed in as addresses.

#include <algorithm>
#include <array>
#include <cmath>
#include <atomic>
#include <cstdint>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>
#include <unistd.h>

#if !defined(__GLIBCXX__)
#error "gpt2tf_register passes std::string to TensorFlow, which is built with libstdc++"
#endif

#if defined(__x86_64__)
#include <immintrin.h>
#define GPT2TF_AVX2 __attribute__((target("avx2,fma")))

namespace {

// ---------------------------------------------------------------------------------------------------------------
// Kernels. Each computes output columns [j0, j1) of its product.

GPT2TF_AVX2 inline float sum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// One row of x (batch 1 decoding): every weight is used once, so the speed is the speed of reading w. One row of w
// at a time makes one sequential stream; reading several rows at once (as matmul_nt does for several x rows, to
// reuse each weight) makes interleaved streams, which memory serves more slowly than one sequential stream.

// How each stored weight type becomes float32: eight at a time (load8) or one (at). int8 values are the integers
// themselves (the row's scale is applied to the finished output); bfloat16 is the top half of a float32.
struct F32W {
  using T = float;
  GPT2TF_AVX2 static __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
  static float at(const float* p) { return *p; }
};
struct I8W {
  using T = int8_t;
  GPT2TF_AVX2 static __m256 load8(const int8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  static float at(const int8_t* p) { return static_cast<float>(*p); }
};
struct BF16W {
  using T = uint16_t;
  GPT2TF_AVX2 static __m256 load8(const uint16_t* p) {
    return _mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
  }
  static float at(const uint16_t* p) {
    const uint32_t bits = static_cast<uint32_t>(*p) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
  }
};

// y[j] = x . w[j, :] for j in [j0, j1), w [n, k]: one row of w at a time, so one sequential stream.
// int8 weights are also prefetched four cache lines ahead as non-temporal: they then push less of x out of the
// first-level cache (x is up to 25 KB, for 1558M's 6400-wide projection), which made int8 products faster; float32
// and bfloat16 products did not change, so only int8's are prefetched (figures: docs/performance.md).
template <class W>
GPT2TF_AVX2 void dot_rows(const float* __restrict x, const typename W::T* __restrict w, float* __restrict y, long k,
                          long j0, long j1) {
  const long kv = k / 32 * 32;
  for (long j = j0; j < j1; ++j) {
    const typename W::T* wr = w + j * k;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (long t = 0; t < kv; t += 32) {
      if constexpr (std::is_same_v<W, I8W>)  // 32 bytes an iteration: the line 256 bytes ahead, twice
        _mm_prefetch(reinterpret_cast<const char*>(wr + t) + 256, _MM_HINT_NTA);
      a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + t), W::load8(wr + t), a0);
      a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + t + 8), W::load8(wr + t + 8), a1);
      a2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + t + 16), W::load8(wr + t + 16), a2);
      a3 = _mm256_fmadd_ps(_mm256_loadu_ps(x + t + 24), W::load8(wr + t + 24), a3);
    }
    float a = sum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (long t = kv; t < k; ++t) a += x[t] * W::at(wr + t);
    y[j] = a;
  }
}

// Up to eight rows of x against rows [j0, j1) of stored weights: each row of w is read once, as one sequential
// stream, and turned into float32 eight weights at a time in a register that all M rows of x use (x, M x k floats,
// stays in cache). y[i, j] = x[i] . w[j, :].
template <class W, int M>
GPT2TF_AVX2 void dot_rows_multi(const float* __restrict x, const typename W::T* __restrict w, float* __restrict y,
                                long k, long n, long j0, long j1) {
  const long kv = k / 8 * 8;
  for (long j = j0; j < j1; ++j) {
    const typename W::T* wr = w + j * k;
    __m256 a[M];
    for (int i = 0; i < M; ++i) a[i] = _mm256_setzero_ps();
    long t = 0;
    for (; t + 16 <= kv; t += 16) {  // two independent conversions in flight
      const __m256 v0 = W::load8(wr + t), v1 = W::load8(wr + t + 8);
      for (int i = 0; i < M; ++i) {
        a[i] = _mm256_fmadd_ps(_mm256_loadu_ps(x + i * k + t), v0, a[i]);
        a[i] = _mm256_fmadd_ps(_mm256_loadu_ps(x + i * k + t + 8), v1, a[i]);
      }
    }
    for (; t < kv; t += 8) {
      const __m256 v = W::load8(wr + t);
      for (int i = 0; i < M; ++i) a[i] = _mm256_fmadd_ps(_mm256_loadu_ps(x + i * k + t), v, a[i]);
    }
    for (int i = 0; i < M; ++i) {
      float r = sum8(a[i]);
      for (long t = kv; t < k; ++t) r += x[i * k + t] * W::at(wr + t);
      y[i * n + j] = r;
    }
  }
}

// The same for bfloat16 weights, sixteen at a time: interleaving them with zeros (an unpack, on the shuffle unit)
// makes the float32 values, in the order [0-3, 8-11] and [4-7, 12-15]; xp holds each row of x's first k16 values
// (k16 = k / 16 * 16) in that order, packed once per product. The values past k16 are taken as they are.
template <int M>
GPT2TF_AVX2 void dot_rows_multi_bf16(const float* __restrict x, const float* __restrict xp,
                                     const uint16_t* __restrict w, float* __restrict y, long k, long n, long j0,
                                     long j1) {
  const long k16 = k / 16 * 16;
  const __m256i zero = _mm256_setzero_si256();
  for (long j = j0; j < j1; ++j) {
    const uint16_t* wr = w + j * k;
    __m256 a[M];
    for (int i = 0; i < M; ++i) a[i] = _mm256_setzero_ps();
    for (long t = 0; t < k16; t += 16) {
      const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr + t));
      const __m256 lo = _mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, b));
      const __m256 hi = _mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, b));
      for (int i = 0; i < M; ++i) {
        a[i] = _mm256_fmadd_ps(_mm256_loadu_ps(xp + i * k16 + t), lo, a[i]);
        a[i] = _mm256_fmadd_ps(_mm256_loadu_ps(xp + i * k16 + t + 8), hi, a[i]);
      }
    }
    for (int i = 0; i < M; ++i) {
      float r = sum8(a[i]);
      for (long t = k16; t < k; ++t) r += x[i * k + t] * BF16W::at(wr + t);
      y[i * n + j] = r;
    }
  }
}

// xp for dot_rows_multi_bf16: each block of 16 values of a row of x as [0-3, 8-11, 4-7, 12-15].
inline void pack_for_bf16(const float* x, float* xp, long m, long k) {
  const long k16 = k / 16 * 16;
  static constexpr int kOrder[16] = {0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15};
  for (long i = 0; i < m; ++i)
    for (long t = 0; t < k16; t += 16)
      for (int u = 0; u < 16; ++u) xp[i * k16 + t + u] = x[i * k + t + kOrder[u]];
}


// y[i, j] = sum_k x[i, k] w[j, k] for float32 x of 9-16 rows (fewer: run_rows or matmul_nt_lanes, see
// one_stream): dot products of x rows with w rows, four w rows by two x rows at a time. Reading four rows of w at
// once makes four interleaved streams, which memory serves more slowly than run_rows' one stream: at 2-5 rows that
// is the slower path (figures: docs/performance.md).
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

// Two to eight rows of x (batch 6-8, and 2-5 where one_stream says x does not fit in L1), packed transposed into
// xt [k, 8] (lanes past m are zeros): each weight is broadcast and multiplied into the eight rows at once, eight
// rows of w at a time: no horizontal sums, and each weight loaded feeds eight lanes, where matmul_nt's dot products
// end in a horizontal sum per output and row.
constexpr long kLanes = 8;

GPT2TF_AVX2 void matmul_nt_lanes(const float* __restrict xt, const float* __restrict w, float* __restrict y, long m,
                                 long k, long n, long j0, long j1) {
  constexpr int kRows = 8;
  float out[kRows][kLanes];
  long j = j0;
  for (; j + kRows <= j1; j += kRows) {
    __m256 a[kRows];
    for (int r = 0; r < kRows; ++r) a[r] = _mm256_setzero_ps();
    const float* wr = w + j * k;
    for (long t = 0; t < k; ++t) {
      const __m256 v = _mm256_loadu_ps(xt + t * kLanes);
      for (int r = 0; r < kRows; ++r) a[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(wr + r * k + t), v, a[r]);
    }
    for (int r = 0; r < kRows; ++r) _mm256_storeu_ps(out[r], a[r]);
    for (long i = 0; i < m; ++i)
      for (int r = 0; r < kRows; ++r) y[i * n + j + r] = out[r][i];
  }
  for (; j < j1; ++j) {  // the last rows of a product whose n is not a multiple of 8
    __m256 a = _mm256_setzero_ps();
    for (long t = 0; t < k; ++t)
      a = _mm256_fmadd_ps(_mm256_broadcast_ss(w + j * k + t), _mm256_loadu_ps(xt + t * kLanes), a);
    _mm256_storeu_ps(out[0], a);
    for (long i = 0; i < m; ++i) y[i * n + j] = out[0][i];
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Attention of one new token per sequence over the key/value cache (the decode step), per (sequence, head):
//   scores_j = q . k_j for the cached slots j whose mask is 1, and for the token's own key if its mask is 1;
//   out = sum_j softmax(scores)_j v_j
// as the model's XLA code computes it with masked scores set to -1e10 (exactly 0 after the softmax). Only the slots
// up to the last unmasked one are read (XLA's dot reads the whole cache, future slots included).

struct Attend {
  const float *q, *keys, *values, *own_k, *own_v, *mask, *own_mask;  // [b,h,d] [b,h,L,d] x2 [b,h,d] x2 [b,L] [b]
  float* out;                                                           // [b, h, d]
  long b, h, L, d;
};

// exp(x) for x <= 0 to ~1 ulp: Cephes' expf (range reduction by ln 2, degree-6 polynomial), eight at a time.
GPT2TF_AVX2 inline __m256 exp8(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.3f));
  __m256 n = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_add_ps(_mm256_fmadd_ps(y, _mm256_mul_ps(x, x), x), _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

GPT2TF_AVX2 inline float dot(const float* a, const float* b, long d) {
  __m256 s0 = _mm256_setzero_ps(), s1 = s0;
  long t = 0;
  for (; t + 16 <= d; t += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + t), _mm256_loadu_ps(b + t), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + t + 8), _mm256_loadu_ps(b + t + 8), s1);
  }
  for (; t + 8 <= d; t += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + t), _mm256_loadu_ps(b + t), s0);
  float r = sum8(_mm256_add_ps(s0, s1));
  for (; t < d; ++t) r += a[t] * b[t];
  return r;
}

GPT2TF_AVX2 inline void axpy(float a, const float* x, float* y, long d) {  // y += a x
  const __m256 va = _mm256_set1_ps(a);
  long t = 0;
  for (; t + 8 <= d; t += 8)
    _mm256_storeu_ps(y + t, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + t), _mm256_loadu_ps(y + t)));
  for (; t < d; ++t) y[t] += a * x[t];
}

GPT2TF_AVX2 void attend_one(const Attend& a, long unit) {  // unit = sequence * h + head
  const long seq = unit / a.h, L = a.L, d = a.d;
  const float* q = a.q + unit * d;
  const float* keys = a.keys + unit * L * d;
  const float* values = a.values + unit * L * d;
  const float* mask = a.mask + seq * L;
  const bool own = a.own_mask[seq] != 0.f;
  float* out = a.out + unit * d;
  std::fill(out, out + d, 0.f);
  long limit = L;
  while (limit > 0 && mask[limit - 1] == 0.f) --limit;
  if (limit == 0 && !own) {  // every score masked: the softmax of equal scores, an average over all L + 1 slots
    const float w = 1.f / static_cast<float>(L + 1);
    for (long j = 0; j < L; ++j) axpy(w, values + j * d, out, d);
    axpy(w, a.own_v + unit * d, out, d);
    return;
  }
  thread_local std::vector<float> scores;
  if (static_cast<long>(scores.size()) < limit + 8) scores.resize(limit + 8);
  float top = own ? dot(q, a.own_k + unit * d, d) : -INFINITY;
  const float own_score = top;
  bool nan = std::isnan(top);
  for (long j = 0; j < limit; ++j) {
    scores[j] = mask[j] != 0.f ? dot(q, keys + j * d, d) : -INFINITY;
    nan |= std::isnan(scores[j]);
    top = std::max(top, scores[j]);
  }
  if (nan) {  // as XLA's softmax: a NaN score makes the whole output NaN (max and exp would hide it)
    std::fill(out, out + d, std::numeric_limits<float>::quiet_NaN());
    return;
  }
  const __m256 vtop = _mm256_set1_ps(top);
  __m256 vtotal = _mm256_setzero_ps();
  long j = 0;
  for (; j + 8 <= limit; j += 8) {  // exp(score - top), 0 where masked
    const __m256 e = _mm256_and_ps(exp8(_mm256_sub_ps(_mm256_loadu_ps(&scores[j]), vtop)),
                                   _mm256_cmp_ps(_mm256_loadu_ps(mask + j), _mm256_setzero_ps(), _CMP_NEQ_OQ));
    _mm256_storeu_ps(&scores[j], e);
    vtotal = _mm256_add_ps(vtotal, e);
  }
  float total = sum8(vtotal);
  for (; j < limit; ++j) {
    float e[8] = {scores[j] - top, 0, 0, 0, 0, 0, 0, 0};
    _mm256_storeu_ps(e, exp8(_mm256_loadu_ps(e)));
    scores[j] = mask[j] != 0.f ? e[0] : 0.f;
    total += scores[j];
  }
  float own_weight = 0.f;
  if (own) {
    float e[8] = {own_score - top, 0, 0, 0, 0, 0, 0, 0};
    _mm256_storeu_ps(e, exp8(_mm256_loadu_ps(e)));
    own_weight = e[0];
    total += own_weight;
  }
  const float inverse = 1.f / total;
  for (long i = 0; i < limit; ++i)
    if (scores[i] != 0.f) axpy(scores[i] * inverse, values + i * d, out, d);
  if (own) axpy(own_weight * inverse, a.own_v + unit * d, out, d);
}

// ---------------------------------------------------------------------------------------------------------------
// Work sharing. A product is cut into chunks of output columns (rows of w: each chunk streams one contiguous block
// of memory), by its shape alone. Threads claim chunks one at a time, so a thread the OS has descheduled holds up
// one chunk, not half of the product; and because each output is computed whole by one thread, in an order that
// does not depend on which thread or how many threads there are, the result is the same bits every time.

// One row of values sorted from largest to smallest: a least-significant-digit radix sort of the floats' bits, made
// to order as the floats do (negative floats' bits flipped whole, positive ones' sign bit set), then inverted so
// that ascending keys are descending values. Three passes of 11 bits; each is stable, so the result is the sorted
// sequence of values (+0 and -0 apart, which compare equal as floats). Much faster than TensorFlow's sort (figures:
// docs/performance.md).
struct SortRows {
  const float* values;  // [m, n]
  const float* needed;  // [m]: rows with a nonzero flag are sorted, the others copied
  float* out;           // [m, n]
  long m, n;
};

inline uint32_t descending_key(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  return ~(u & 0x80000000u ? ~u : u | 0x80000000u);
}

inline float key_value(uint32_t key) {
  uint32_t u = ~key;
  u = u & 0x80000000u ? u & 0x7fffffffu : ~u;
  float v;
  std::memcpy(&v, &u, 4);
  return v;
}

void sort_row(const SortRows& s, long row) {
  const float* in = s.values + row * s.n;
  float* out = s.out + row * s.n;
  if (s.needed[row] == 0.f) {
    std::memcpy(out, in, s.n * sizeof(float));
    return;
  }
  constexpr int kBits = 11, kBuckets = 1 << kBits, kPasses = 3;
  thread_local std::vector<uint32_t> a, b;
  a.resize(s.n);
  b.resize(s.n);
  std::array<std::array<uint32_t, kBuckets>, kPasses> counts{};
  for (long i = 0; i < s.n; ++i) {
    const uint32_t key = descending_key(in[i]);
    a[i] = key;
    for (int p = 0; p < kPasses; ++p) ++counts[p][(key >> (p * kBits)) & (kBuckets - 1)];
  }
  for (int p = 0; p < kPasses; ++p) {
    uint32_t total = 0;
    for (auto& c : counts[p]) {
      const uint32_t here = c;
      c = total;
      total += here;
    }
    for (long i = 0; i < s.n; ++i) b[counts[p][(a[i] >> (p * kBits)) & (kBuckets - 1)]++] = a[i];
    a.swap(b);
  }
  for (long i = 0; i < s.n; ++i) out[i] = key_value(a[i]);
}

constexpr long kMaxChunks = 0xffff;  // chunk counts and indices share one 64-bit word with a generation number

inline long round_up(long a, long b) { return (a + b - 1) / b * b; }

enum class Weights { kF32, kI8, kBF16 };

struct Task;
template <class W>
void run_rows(const Task& task, long j0, long j1);
// Float32 products of up to kOneStreamRows rows of x use run_rows while those rows fit in L1 beside the stream of w
// (at most 16 KiB: four rows at k = 768, two at k = 1600); past that (k = 3072, 6400) the transposed-lanes kernel,
// which reads x packed, is faster at 2-5 rows (figures: docs/performance.md).
constexpr long kOneStreamRows = 5, kOneStreamFloats = 4096;
inline bool one_stream(long m, long k) { return m == 1 || (m <= kOneStreamRows && m * k <= kOneStreamFloats); }

struct Task {
  const float* x = nullptr;
  const float* xt = nullptr;  // set: x packed for matmul_nt_lanes
  const float* xp = nullptr;  // set: x packed for dot_rows_multi_bf16
  const float* w = nullptr;
  const void* stored = nullptr;  // the weights as stored: float32, int8 or bfloat16 (see `weights`)
  const float* scale = nullptr;  // int8: one per row of w
  Weights weights = Weights::kF32;
  float* y = nullptr;
  long m = 0, k = 0, n = 0;
  long chunk = 0;  // output columns (or attention units) per chunk
  long chunks = 0;
  const Attend* attend = nullptr;  // set: chunk c is (sequence, head) c of an attention
  const SortRows* sort = nullptr;  // set: chunk c is rows [c * chunk, (c + 1) * chunk) of a sort

  explicit Task(const Attend* a) : attend(a) {  // chunks of whole (sequence, head) units
    chunk = (a->b * a->h + kMaxChunks - 1) / kMaxChunks;
    chunks = (a->b * a->h + chunk - 1) / chunk;
  }

  explicit Task(const SortRows* s) : sort(s) {  // chunks of whole rows
    chunk = (s->m + kMaxChunks - 1) / kMaxChunks;
    chunks = (s->m + chunk - 1) / chunk;
  }

  Task(const float* x_, const float* w_, float* y_, long m_, long k_, long n_, long bytes_per_weight = 4)
      : x(x_), w(w_), y(y_), m(m_), k(k_), n(n_) {
    // 64 float32 rows of w (192 KiB at k = 768; as many bytes for 1- or 2-byte weights): a 768-wide projection
    // makes 12 chunks, so two threads finish within a chunk of each other, and each chunk is one long stream
    // (a chunk's start costs a memory latency before the prefetchers catch up).
    const long rows = 64 * 4 / bytes_per_weight;
    chunk = round_up(std::max(rows, (n + kMaxChunks - 1) / kMaxChunks), 8);  // the kernels take 4 or 8 rows at a time
    chunks = (n + chunk - 1) / chunk;
  }

  // Stored weights' chunks are longer (as many bytes as float32's): make their number a multiple of the threads, so
  // that none of them waits for a last odd chunk (a 768-wide int8 projection would make 3 chunks for 2 threads).
  void Balance(long threads) {
    if (threads <= 1 || chunks >= kMaxChunks / 2) return;
    const long even = (chunks + threads - 1) / threads * threads;
    chunk = round_up((n + even - 1) / even, 8);
    chunks = (n + chunk - 1) / chunk;
  }

  void Run(long c) const {
    if (sort != nullptr) {
      for (long row = c * chunk; row < std::min((c + 1) * chunk, sort->m); ++row) sort_row(*sort, row);
    } else if (attend != nullptr) {
      for (long unit = c * chunk; unit < std::min((c + 1) * chunk, attend->b * attend->h); ++unit)
        attend_one(*attend, unit);
    } else if (weights == Weights::kI8) {
      run_rows<I8W>(*this, c * chunk, std::min((c + 1) * chunk, n));
    } else if (weights == Weights::kBF16) {
      run_rows<BF16W>(*this, c * chunk, std::min((c + 1) * chunk, n));
    } else if (xt != nullptr) {
      matmul_nt_lanes(xt, w, y, m, k, n, c * chunk, std::min((c + 1) * chunk, n));
    } else if (one_stream(m, k)) {
      run_rows<F32W>(*this, c * chunk, std::min((c + 1) * chunk, n));
    } else {
      matmul_nt(x, w, y, m, k, n, c * chunk, std::min((c + 1) * chunk, n));
    }
  }
};

// Output columns [j0, j1) of a product, each row of w read once, in one sequential stream (converted in registers
// if stored as int8 or bfloat16), for every row of x (up to eight at a time): int8 and bfloat16 weights at any
// number of rows, float32 where one_stream(m, k).

template <class W>
GPT2TF_AVX2 void run_rows(const Task& task, long j0, long j1) {
  const auto* w = static_cast<const typename W::T*>(task.stored);
  const long m = task.m, k = task.k, n = task.n;
  if (m == 1) {
    dot_rows<W>(task.x, w, task.y, k, j0, j1);
  } else {
    for (long i = 0; i < m; i += 8) {  // eight rows of x at a time
      const float* x = task.x + i * k;
      const float* xp = task.xp != nullptr ? task.xp + i * (k / 16 * 16) : nullptr;  // bf16 only
      float* y = task.y + i * n;
      switch (std::min(8L, m - i)) {
#define GPT2TF_ROWS(M)                                                                           \
  case M:                                                                                        \
    if constexpr (std::is_same_v<W, BF16W>) dot_rows_multi_bf16<M>(x, xp, w, y, k, n, j0, j1); \
    else dot_rows_multi<W, M>(x, w, y, k, n, j0, j1);                                            \
    break;
        GPT2TF_ROWS(1) GPT2TF_ROWS(2) GPT2TF_ROWS(3) GPT2TF_ROWS(4) GPT2TF_ROWS(5) GPT2TF_ROWS(6) GPT2TF_ROWS(7)
        default: GPT2TF_ROWS(8)
#undef GPT2TF_ROWS
      }
    }
  }
  if (task.scale != nullptr)
    for (long i = 0; i < m; ++i)
      for (long j = j0; j < j1; ++j) task.y[i * n + j] *= task.scale[j];
}

// The calling thread plus (threads - 1) workers, which spin briefly between products (a decode step makes ~50 of
// them, microseconds apart), then sleep. A product that arrives while the pool is busy (XLA may run independent
// thunks concurrently), or in a forked child that has no workers, runs all its chunks on its own thread.
class Pool {
 public:
  explicit Pool(int threads) : threads_(threads), pid_(getpid()) {
    for (int t = 1; t < threads_; ++t) std::thread([this] { Work(); }).detach();
  }

  long threads() const { return threads_; }

  void Run(const Task& task) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (!busy.owns_lock() || threads_ == 1 || task.chunks == 1 || getpid() != pid_) {
      for (long c = 0; c < task.chunks; ++c) task.Run(c);
      return;
    }
    task_ = &task;
    done_.store(0, std::memory_order_relaxed);
    const uint64_t generation = (state_.load(std::memory_order_relaxed) >> 32) + 1;
    state_.store(generation << 32 | static_cast<uint64_t>(task.chunks) << 16);  // chunk 0 is next; seq_cst
    if (sleepers_.load() > 0) {  // seq_cst against the worker's increment: a worker going to sleep sees the task
      std::lock_guard<std::mutex> lock(mu_);
      cv_.notify_all();
    }
    Claim();
    while (done_.load(std::memory_order_acquire) != task.chunks) _mm_pause();
  }

 private:
  // Runs chunks of the current task until none is left; returns the task's generation.
  uint64_t Claim() {
    uint64_t s = state_.load(std::memory_order_acquire);
    for (;;) {
      const long chunks = (s >> 16) & kMaxChunks, next = s & kMaxChunks;
      if (next >= chunks) return s >> 32;
      if (state_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel, std::memory_order_acquire)) {
        task_->Run(next);  // task_ stays valid: its caller waits for this chunk to be done
        done_.fetch_add(1, std::memory_order_release);
        s = state_.load(std::memory_order_acquire);
      }
    }
  }

  uint64_t Generation() const { return state_.load(std::memory_order_acquire) >> 32; }

  void Work() {
    uint64_t seen = 0;
    for (;;) {
      for (int spin = 0; spin < 20000 && Generation() == seen; ++spin) _mm_pause();
      if (Generation() == seen) {
        sleepers_.fetch_add(1);  // seq_cst: then either Run sees a sleeper, or the wait below sees the task
        {
          std::unique_lock<std::mutex> lock(mu_);
          cv_.wait(lock, [&] { return state_.load() >> 32 != seen; });
        }
        sleepers_.fetch_sub(1);
      }
      seen = Claim();
    }
  }

  const int threads_;
  const pid_t pid_;
  std::mutex mu_, busy_;
  std::condition_variable cv_;
  std::atomic<uint64_t> state_{0};  // generation << 32 | chunks << 16 | next chunk
  std::atomic<long> done_{0};
  std::atomic<int> sleepers_{0};
  const Task* task_ = nullptr;
};

Pool* pool = nullptr;  // created once by gpt2tf_register, never destroyed (its workers outlive main)

// The backend config "a,b,c,..." as numbers (missing ones stay 0).
template <int kCount>
std::array<long, kCount> parse_dims(const char* opaque, size_t opaque_len) {
  std::array<long, kCount> dims{};
  const char* p = opaque;
  const char* end = opaque + opaque_len;
  for (int i = 0; i < kCount && p < end; ++i) {
    char* next;
    dims[i] = std::strtol(p, &next, 10);
    p = next + 1;
  }
  return dims;
}

void RunMatmul(void* out, const void** in, const char* opaque, size_t opaque_len, Weights weights) {
  const auto dims = parse_dims<3>(opaque, opaque_len);
  const long m = dims[0], k = dims[1];
  const float* x = static_cast<const float*>(in[0]);
  const long bytes = weights == Weights::kF32 ? 4 : weights == Weights::kBF16 ? 2 : 1;
  Task task(x, static_cast<const float*>(in[1]), static_cast<float*>(out), m, k, dims[2], bytes);
  task.weights = weights;
  task.stored = in[1];
  if (weights != Weights::kF32) {
    task.Balance(pool->threads());
    task.w = nullptr;
    if (weights == Weights::kI8) task.scale = static_cast<const float*>(in[2]);
  }
  if (weights == Weights::kBF16 && m > 1) {  // x packed once for every chunk
    thread_local std::vector<float> xp;
    xp.resize(m * (k / 16 * 16) + 1);
    pack_for_bf16(x, xp.data(), m, k);
    task.xp = xp.data();
  } else if (weights == Weights::kF32 && !one_stream(m, k) && m <= kLanes) {  // x packed, transposed
    thread_local std::vector<float> xt;
    xt.resize(k * kLanes);
    for (long t = 0; t < k; ++t)  // written in order, lanes past m zeroed in the same pass
      for (long i = 0; i < kLanes; ++i) xt[t * kLanes + i] = i < m ? x[i * k + t] : 0.f;
    task.xt = xt.data();
  }
  pool->Run(task);
}

void MatmulCall(void* out, const void** in, const char* opaque, size_t opaque_len, void* /*status*/) {
  RunMatmul(out, in, opaque, opaque_len, Weights::kF32);
}

void MatmulI8Call(void* out, const void** in, const char* opaque, size_t opaque_len, void* /*status*/) {
  RunMatmul(out, in, opaque, opaque_len, Weights::kI8);
}

void MatmulBF16Call(void* out, const void** in, const char* opaque, size_t opaque_len, void* /*status*/) {
  RunMatmul(out, in, opaque, opaque_len, Weights::kBF16);
}

void AttendCall(void* out, const void** in, const char* opaque, size_t opaque_len, void* /*status*/) {
  const auto dims = parse_dims<4>(opaque, opaque_len);
  const auto f = [&](int i) { return static_cast<const float*>(in[i]); };
  const Attend a{f(0), f(1), f(2), f(3), f(4), f(5), f(6), static_cast<float*>(out), dims[0], dims[1], dims[2],
                 dims[3]};
  pool->Run(Task(&a));
}

void SortCall(void* out, const void** in, const char* opaque, size_t opaque_len, void* /*status*/) {
  const auto dims = parse_dims<2>(opaque, opaque_len);
  const SortRows s{static_cast<const float*>(in[0]), static_cast<const float*>(in[1]), static_cast<float*>(out),
                   dims[0], dims[1]};
  pool->Run(Task(&s));
}

}  // namespace

extern "C" int gpt2tf_register(void* registry_global, void* registry_register, int threads) {
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return 1;
  if (pool == nullptr) pool = new Pool(threads < 1 ? 1 : threads);
  // xla::CustomCallTargetRegistry::Global() and its member Register(const std::string& symbol, void* address,
  // const std::string& platform), called through their addresses (Itanium C++ ABI: `this` comes first).
  void* registry = reinterpret_cast<void* (*)()>(registry_global)();
  auto add = reinterpret_cast<void (*)(void*, const std::string&, void*, const std::string&)>(registry_register);
  add(registry, "gpt2tf_matmul_nt", reinterpret_cast<void*>(&MatmulCall), "Host");
  add(registry, "gpt2tf_matmul_nt_i8", reinterpret_cast<void*>(&MatmulI8Call), "Host");
  add(registry, "gpt2tf_matmul_nt_bf16", reinterpret_cast<void*>(&MatmulBF16Call), "Host");
  add(registry, "gpt2tf_attend", reinterpret_cast<void*>(&AttendCall), "Host");
  add(registry, "gpt2tf_sort_descending", reinterpret_cast<void*>(&SortCall), "Host");
  return 0;
}

#else  // not x86-64: nothing to register; gpt2tf falls back to XLA's own dot

extern "C" int gpt2tf_register(void*, void*, int) { return 1; }

#endif

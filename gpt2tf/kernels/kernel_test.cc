// Standalone tests of the native CPU kernels in native_matmul.cc, against plain scalar loops (double accumulation).
// Built and run by .ci/kernel-tests under AddressSanitizer and UndefinedBehaviorSanitizer:
//
//   c++ -std=c++17 -O1 -g -fsanitize=address,undefined -pthread gpt2tf/kernels/kernel_test.cc && ./a.out
//
// It includes the kernel source itself, so it calls the custom-call entry points (MatmulCall, MatmulI8Call,
// MatmulBF16Call, AttendCall, SortCall) exactly as XLA does: output buffer, array of input buffers, the "opaque"
// backend config string. Every buffer is allocated with exactly its elements (std::vector), so the sanitizer sees
// any read or write past an end; outputs start as NaN, so an output the kernel does not write fails the comparison.
// Every case runs on a pool of 1 thread and on a pool of 3 threads (more threads than this project's CI cores), and
// the two results must be the same bits (the kernels compute each output whole, by one thread, in a fixed order).
//
// Prints one line per group; exits 1 at the first mismatch, printing the case.

#include "native_matmul.cc"

#include <cfloat>
#include <chrono>
#include <cstdio>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#if !defined(__x86_64__)

int main() {
  std::puts("kernel_test: not x86-64, no native kernels to test: skipped");
  return 0;
}

#else

namespace test {

std::mt19937_64 rng(0x6770'7432'7466);  // fixed: the same cases every run

float uniform(float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(rng); }
long below(long n) { return std::uniform_int_distribution<long>(0, n - 1)(rng); }
bool chance(double p) { return std::bernoulli_distribution(p)(rng); }

template <class... Args>
std::string format(const char* f, Args... args) {
  char buffer[512];
  std::snprintf(buffer, sizeof buffer, f, args...);
  return buffer;
}

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "kernel_test: FAIL: %s\n", what.c_str());
  std::fflush(stderr);
  std::exit(1);
}

constexpr int kPools = 2;
constexpr int kThreads[kPools] = {1, 3};
Pool* pools[kPools];  // both live to the end; the 3-thread pool's workers never exit (as in the library)

using Call = void (*)(void*, const void**, const char*, size_t, void*);

// Runs one entry point on each pool; returns the output of each. The input pointer array has exactly the inputs the
// call takes, and the opaque string is passed as XLA passes it (its std::string's data and size).
std::vector<std::vector<float>> run_on_pools(Call call, const std::vector<const void*>& inputs, size_t out_size,
                                             const std::string& opaque) {
  std::vector<std::vector<float>> outs;
  for (int p = 0; p < kPools; ++p) {
    pool = pools[p];
    std::vector<float> out(out_size, std::numeric_limits<float>::quiet_NaN());
    std::vector<const void*> in(inputs);  // exactly inputs.size() pointers
    call(out.data(), in.data(), opaque.data(), opaque.size(), nullptr);
    outs.push_back(std::move(out));
  }
  return outs;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// ---------------------------------------------------------------------------------------------------------------
// Products: y[m, n] = x[m, k] @ w[n, k]^T, float32 / int8 (times scale[n]) / bfloat16 weights.

enum class Kind { kF32, kI8, kBF16 };
const char* kind_name(Kind kind) { return kind == Kind::kF32 ? "f32" : kind == Kind::kI8 ? "int8" : "bf16"; }

struct Stored {  // one weight matrix [n, k] in one format, each vector exactly its elements
  std::vector<float> f32;
  std::vector<int8_t> i8;
  std::vector<uint16_t> bf16;
  std::vector<float> scale;  // int8: [n]
  const void* data() const {
    return !f32.empty() ? static_cast<const void*>(f32.data())
           : !i8.empty() ? static_cast<const void*>(i8.data())
                         : static_cast<const void*>(bf16.data());
  }
  double at(long idx) const {  // the weight as the kernel must read it
    if (!f32.empty()) return f32[idx];
    if (!i8.empty()) return i8[idx];
    return from_bits(static_cast<uint32_t>(bf16[idx]) << 16);
  }
};

Stored make_weights(Kind kind, long n, long k) {
  Stored s;
  const size_t size = static_cast<size_t>(n) * k;
  if (kind == Kind::kF32) {
    s.f32.resize(size);
    for (auto& v : s.f32) v = uniform(-1.f, 1.f);
  } else if (kind == Kind::kI8) {
    s.i8.resize(size);
    for (auto& v : s.i8) v = static_cast<int8_t>(below(256) - 128);  // the full range, -128 included
    s.scale.resize(n);
    for (long j = 0; j < n; ++j) s.scale[j] = uniform(1e-3f, 2e-2f) * (chance(0.1) ? -1.f : 1.f);
    s.scale[n / 2] = 0.f;  // a zero scale row (e.g. an all-zero weight row): its outputs are exactly 0
    if (n > 2) s.scale[n - 1] = 0.f;
  } else {
    s.bf16.resize(size);
    for (auto& v : s.bf16) v = static_cast<uint16_t>(bits(uniform(-1.f, 1.f)) >> 16);
  }
  return s;
}

// Which code path native_matmul.cc takes for a product (RunMatmul, Task::Run, run_rows), as it decides it.
enum Path { kPathDotRows, kPathMulti, kPathMultiSplit, kPathLanes, kPathMatmulNt, kPaths };
const char* const kPathNames[kPaths] = {"dot_rows(m=1)", "dot_rows_multi(m=2-8)", "dot_rows_multi(m=9-16: 8+rest)",
                                        "lanes", "matmul_nt(m=9-16)"};

Path path_of(Kind kind, long m, long k) {
  if (m == 1) return kPathDotRows;
  if (kind == Kind::kF32) {
    if (one_stream(m, k)) return kPathMulti;
    return m <= kLanes ? kPathLanes : kPathMatmulNt;  // kLanes: the kernel's 8
  }
  return m <= 8 ? kPathMulti : kPathMultiSplit;
}

struct MatmulStats {
  long cases = 0, paths[kPaths] = {}, multi_chunk = 0, ragged_chunk = 0;
  double worst = 0;  // largest |got - want| / (sum of |x w| |scale|) seen
};

// The float32 tolerance: the kernels sum k products in float32 (in 8-32 partial sums, or one per lane), so the
// error is bounded by a small multiple of k * 2^-24 * sum_t |x_t w_t|, and in practice ~2^-24 * sum |x_t w_t|.
// 1e-5 of sum |x_t w_t| is ~40x the largest error seen (2.6e-7, printed as "worst error"), and below one term of
// the sum (~sum / k) up to k ~ 10^5, so a dropped or doubled term shows.
constexpr double kProductTolerance = 1e-5;

// The exact products of x [rows, k] with w [n, k] (double sums of the weights as the kernel must read them), and
// the sums of |x w| that scale the tolerance. Not instrumented: it only reads this driver's own buffers, and under
// the sanitizers it would be most of the run time.
struct Reference {
  long rows = 0;
  std::vector<float> x;              // [rows, k]
  std::vector<double> want, bound;  // [rows, n]
};

__attribute__((no_sanitize("address", "undefined"))) void dot_and_bound(const double* a, const double* b, long k,
                                                                          double* dot, double* bound) {
  double s0 = 0, s1 = 0, a0 = 0, a1 = 0;
  long t = 0;
  for (; t + 2 <= k; t += 2) {
    const double p0 = a[t] * b[t], p1 = a[t + 1] * b[t + 1];
    s0 += p0, s1 += p1;
    a0 += std::fabs(p0), a1 += std::fabs(p1);
  }
  if (t < k) s0 += a[t] * b[t], a0 += std::fabs(a[t] * b[t]);
  *dot = s0 + s1;
  *bound = a0 + a1;
}

Reference reference(Kind kind, const Stored& w, long rows, long k, long n) {
  Reference r;
  r.rows = rows;
  r.x.resize(static_cast<size_t>(rows) * k);
  for (auto& v : r.x) v = uniform(-1.f, 1.f);
  r.want.resize(static_cast<size_t>(rows) * n);
  r.bound.resize(r.want.size());
  std::vector<double> xd(r.x.begin(), r.x.end()), wr(k);
  for (long j = 0; j < n; ++j) {
    for (long t = 0; t < k; ++t) wr[t] = w.at(j * k + t);  // row j of w as the kernel must read it
    const double scale = kind == Kind::kI8 ? w.scale[j] : 1.0;
    for (long i = 0; i < rows; ++i) {
      double dot, bound;
      dot_and_bound(&xd[i * k], wr.data(), k, &dot, &bound);
      r.want[i * n + j] = dot * scale;
      r.bound[i * n + j] = bound * std::fabs(scale);
    }
  }
  return r;
}

// One product of the first m rows of the reference's x (a buffer of exactly m rows) on both pools.
void check_matmul(Kind kind, const Stored& w, const Reference& ref, long m, long k, long n, MatmulStats& stats) {
  std::vector<float> x(ref.x.begin(), ref.x.begin() + m * k);
  const std::vector<float> x_before = x;
  const double* want = ref.want.data();
  const double* bound = ref.bound.data();
  std::vector<const void*> in = {x.data(), w.data()};
  if (kind == Kind::kI8) in.push_back(w.scale.data());
  const Call call = kind == Kind::kF32 ? MatmulCall : kind == Kind::kI8 ? MatmulI8Call : MatmulBF16Call;
  const std::string opaque = format("%ld,%ld,%ld", m, k, n);
  const auto outs = run_on_pools(call, in, static_cast<size_t>(m) * n, opaque);
  const Path path = path_of(kind, m, k);
  const std::string what =
      format("%s product m=%ld k=%ld n=%ld (path %s)", kind_name(kind), m, k, n, kPathNames[path]);
  for (int p = 0; p < kPools; ++p)
    for (long i = 0; i < m; ++i)
      for (long j = 0; j < n; ++j) {
        const double got = outs[p][i * n + j], exact = want[i * n + j], tol = kProductTolerance * bound[i * n + j];
        const double err = std::fabs(got - exact);
        if (!(err <= tol))
          fail(what + format(", %d threads: y[%ld, %ld] = %.9g, want %.9g (|diff| %.3g > tolerance %.3g)",
                             kThreads[p], i, j, got, exact, err, tol));
        if (bound[i * n + j] > 0) stats.worst = std::max(stats.worst, err / bound[i * n + j]);
      }
  if (!same_bits(outs[0], outs[1])) fail(what + ": 1 and 3 threads give different bits");
  if (x != x_before) fail(what + ": x was modified");

  // The chunking the kernel uses on the 3-thread pool (for coverage counts only).
  Task task(nullptr, nullptr, nullptr, m, k, n, kind == Kind::kF32 ? 4 : kind == Kind::kBF16 ? 2 : 1);
  if (kind != Kind::kF32) task.Balance(kThreads[1]);
  ++stats.cases;
  ++stats.paths[path];
  if (task.chunks > 1) ++stats.multi_chunk;
  if (task.chunks > 1 && n % task.chunk != 0) ++stats.ragged_chunk;
}

// A weight matrix [n, k] and one x of max(rows) rows: each product takes x's first m rows, for m in rows.
void check_shape(Kind kind, long k, long n, const std::vector<long>& rows, MatmulStats& stats) {
  const Stored w = make_weights(kind, n, k);
  const Reference ref = reference(kind, w, *std::max_element(rows.begin(), rows.end()), k, n);
  for (long m : rows) check_matmul(kind, w, ref, m, k, n, stats);
}

void test_products(Kind kind) {
  const auto start = std::chrono::steady_clock::now();
  MatmulStats stats;
  // GPT-2 124M's decode shapes (k -> n): qkv, attention out, MLP up, MLP down; every row count the kernels take.
  const std::vector<std::pair<long, long>> gpt2 = {{768, 2304}, {768, 768}, {768, 3072}, {3072, 768}};
  const std::vector<long> rows = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 16};
  for (const auto& [k, n] : gpt2) check_shape(kind, k, n, rows, stats);
  // The tied head, 768 -> 50257 (odd n: the last chunk is ragged), once per path.
  check_shape(kind, 768, 50257, kind == Kind::kF32 ? std::vector<long>{1, 4, 8, 9} : std::vector<long>{1, 6, 9},
              stats);
  // Odd sizes: k around the kernels' 8/16/32-wide steps and not a multiple of any, n odd and small (fewer outputs
  // than threads, a 4- or 8-row block plus a tail), n just past a chunk (64 float32 rows) so chunks are ragged.
  const std::vector<long> ks = {1, 7, 8, 9, 15, 16, 17, 24, 31, 32, 33, 40, 100, 1601};
  const std::vector<long> ns = {1, 2, 3, 5, 17, 131};
  const std::vector<long> odd_rows = {1, 2, 3, 5, 6, 8, 9, 12, 13, 16};
  for (long k : ks)
    for (long n : ns) check_shape(kind, k, n, odd_rows, stats);
  // one_stream's threshold m * k <= 4096 (float32 2-5 rows: dot_rows_multi at or below it, lanes above).
  for (const auto& [m, k] : std::vector<std::pair<long, long>>{{2, 2048}, {2, 2049}, {4, 1024}, {4, 1025}, {5, 819},
                                                               {5, 820}, {3, 1600}}) {
    check_shape(kind, k, 67, {m}, stats);
  }
  for (int p = 0; p < kPaths; ++p) {  // every path of this weight format was taken
    const bool expected = kind == Kind::kF32 ? (p != kPathMultiSplit) : (p <= kPathMultiSplit);
    if (expected && stats.paths[p] == 0)
      fail(format("%s products: no case took path %s", kind_name(kind), kPathNames[p]));
  }
  std::string paths;
  for (int p = 0; p < kPaths; ++p)
    if (stats.paths[p] > 0) paths += format("%s%s %ld", paths.empty() ? "" : ", ", kPathNames[p], stats.paths[p]);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("%-5s products: %ld cases ok x {1, 3} threads (%s; %ld split in chunks, %ld with a ragged last chunk), "
              "worst error %.2g of sum|x w|, %.1f s\n",
              kind_name(kind), stats.cases, paths.c_str(), stats.multi_chunk, stats.ragged_chunk, stats.worst,
              seconds);
  std::fflush(stdout);
}

// ---------------------------------------------------------------------------------------------------------------
// Attention: one token per sequence over the cache. Inputs q [b,h,d], keys and values [rows,h,L,d] (rows >= b: the
// first b are read), own_k and own_v [b,h,d], mask [b,L] (float 0/1), own [b] (float 0/1); out [b,h,d].
// Reference: scores q.k_j where mask_j = 1, else -1e10 (own likewise), softmax over the L + 1, weighted sum of v.

struct AttendStats {
  long cases = 0, units = 0, fully_masked_own = 0, fully_masked_none = 0, holes = 0, own_off = 0, nan_units = 0;
  double worst = 0;
};

// Mask patterns for one sequence.
enum Pattern { kAll, kHoles, kHolesTail, kNone, kFirstOnly, kLastOnly, kPatterns };

// The attention tolerance: scores are float32 dot products (error ~2^-24 * sum |q_t k_t|, which shifts each softmax
// weight by about as much, relatively) and the exponentials are ~1 ulp; 2e-5 of (1 + the weighted sum of |v|)
// is ~30x the largest error seen (7.2e-7), and well below one slot's share of the output at L = 300.
constexpr double kAttendTolerance = 2e-5;

void check_attend(long b, long h, long L, long d, long cache_rows, float q_scale, bool with_nan, AttendStats& stats) {
  const long unit_size = h * d;
  std::vector<float> q(b * unit_size), own_k(b * unit_size), own_v(b * unit_size);
  std::vector<float> keys(cache_rows * h * L * d), values(cache_rows * h * L * d);
  std::vector<float> mask(b * L), own(b);
  for (auto& v : q) v = uniform(-1.f, 1.f) * q_scale;
  for (auto& v : own_k) v = uniform(-1.f, 1.f);
  for (auto& v : own_v) v = uniform(-1.f, 1.f);
  for (auto& v : keys) v = uniform(-1.f, 1.f);
  for (auto& v : values) v = uniform(-1.f, 1.f);
  for (long s = 0; s < b; ++s) {
    const int pattern = static_cast<int>((s + stats.cases) % kPatterns);
    float* row = &mask[s * L];
    for (long j = 0; j < L; ++j) {
      switch (pattern) {
        case kAll: row[j] = 1.f; break;
        case kHoles: row[j] = chance(0.6) ? 1.f : 0.f; break;
        case kHolesTail: row[j] = j < L * 2 / 3 && chance(0.7) ? 1.f : 0.f; break;  // and the future slots unset
        case kNone: row[j] = 0.f; break;
        case kFirstOnly: row[j] = j == 0 ? 1.f : 0.f; break;
        default: row[j] = j == L - 1 ? 1.f : 0.f; break;
      }
    }
    if (pattern == kHoles && L >= 3) row[L / 2] = 0.f, row[L - 1] = 1.f;  // a hole for sure, the last slot set
    own[s] = (s + stats.cases / kPatterns) % 3 == 2 ? 0.f : 1.f;
    if (pattern == kNone && b > 1) own[s] = s % 2 == 0 ? 0.f : 1.f;
  }
  // Masked slots' keys are large, so that reading one as unmasked would dominate its softmax.
  for (long s = 0; s < b; ++s)
    for (long hd = 0; hd < h; ++hd)
      for (long j = 0; j < L; ++j)
        if (mask[s * L + j] == 0.f)
          for (long t = 0; t < d; ++t) keys[((s * h + hd) * L + j) * d + t] = 50.f * (t % 2 == 0 ? 1.f : -1.f);
  // Cache rows past the batch are not read: NaN there would show.
  for (long r = b; r < cache_rows; ++r)
    for (long e = 0; e < h * L * d; ++e) keys[r * h * L * d + e] = values[r * h * L * d + e] = NAN;
  long nan_unit = -1;
  if (with_nan) {  // a NaN key in an unmasked slot: that (sequence, head)'s output is all NaN, as XLA's softmax
    for (long s = 0; s < b && nan_unit < 0; ++s)
      for (long j = 0; j < L && nan_unit < 0; ++j)
        if (mask[s * L + j] != 0.f) {
          nan_unit = s * h + (h - 1);
          keys[(nan_unit * L + j) * d + d / 2] = NAN;
        }
  }

  std::vector<double> want(b * unit_size), bound(b * unit_size);
  std::vector<bool> want_nan(b * h, false);
  std::vector<double> scores(L + 1);
  for (long unit = 0; unit < b * h; ++unit) {
    const long s = unit / h;
    const float* qu = &q[unit * d];
    const auto dot = [&](const float* k) {
      double r = 0;
      for (long t = 0; t < d; ++t) r += static_cast<double>(qu[t]) * k[t];
      return r;
    };
    bool any_nan = false;
    for (long j = 0; j < L; ++j) {
      scores[j] = mask[s * L + j] != 0.f ? dot(&keys[(unit * L + j) * d]) : -1e10;
      any_nan |= std::isnan(scores[j]);
    }
    scores[L] = own[s] != 0.f ? dot(&own_k[unit * d]) : -1e10;
    any_nan |= std::isnan(scores[L]);
    if (any_nan) {
      want_nan[unit] = true;
      continue;
    }
    const double top = *std::max_element(scores.begin(), scores.end());
    double total = 0;
    for (auto& v : scores) total += v = std::exp(v - top);
    for (long t = 0; t < d; ++t) {
      double o = 0, a = 0;
      for (long j = 0; j <= L; ++j) {
        const double v = j < L ? values[(unit * L + j) * d + t] : own_v[unit * d + t];
        o += scores[j] / total * v;
        a += scores[j] / total * std::fabs(v);
      }
      want[unit * d + t] = o;
      bound[unit * d + t] = a;
    }
  }

  const std::vector<const void*> in = {q.data(),     keys.data(),  values.data(), own_k.data(),
                                       own_v.data(), mask.data(),  own.data()};
  const std::string opaque = format("%ld,%ld,%ld,%ld", b, h, L, d);
  const auto outs = run_on_pools(AttendCall, in, b * unit_size, opaque);
  const std::string what = format("attend batch=%ld heads=%ld max_length=%ld head_size=%ld (cache rows %ld, q scale "
                                  "%g%s)",
                                  b, h, L, d, cache_rows, q_scale, with_nan ? ", a NaN key" : "");
  for (int p = 0; p < kPools; ++p)
    for (long unit = 0; unit < b * h; ++unit) {
      const long s = unit / h;
      long set = 0;
      for (long j = 0; j < L; ++j) set += mask[s * L + j] != 0.f;
      const std::string where = format(", %d threads: sequence %ld head %ld (%ld of %ld slots set, own %g)",
                                       kThreads[p], s, unit % h, set, L, own[s]);
      for (long t = 0; t < d; ++t) {
        const double got = outs[p][unit * d + t];
        if (want_nan[unit]) {
          if (!std::isnan(got)) fail(what + where + format(": out[%ld] = %.9g, want NaN", t, got));
          continue;
        }
        const double exact = want[unit * d + t], tol = kAttendTolerance * (1 + bound[unit * d + t]);
        const double err = std::fabs(got - exact);
        if (!(err <= tol))
          fail(what + where + format(": out[%ld] = %.9g, want %.9g (|diff| %.3g > tolerance %.3g)", t, got, exact,
                                     err, tol));
        stats.worst = std::max(stats.worst, err / (1 + bound[unit * d + t]));
      }
    }
  if (!same_bits(outs[0], outs[1])) fail(what + ": 1 and 3 threads give different bits");

  ++stats.cases;
  stats.units += b * h;
  stats.nan_units += nan_unit >= 0;
  for (long s = 0; s < b; ++s) {
    long set = 0, last = -1;
    for (long j = 0; j < L; ++j)
      if (mask[s * L + j] != 0.f) ++set, last = j;
    if (set == 0) ++(own[s] != 0.f ? stats.fully_masked_own : stats.fully_masked_none);
    if (set > 0 && set < last + 1) ++stats.holes;
    if (own[s] == 0.f) ++stats.own_off;
  }
}

void test_attend() {
  const auto start = std::chrono::steady_clock::now();
  AttendStats stats;
  const std::vector<long> batches = {1, 2, 3, 5, 8}, heads = {1, 3, 12}, sizes = {64, 8, 24, 40, 1, 7, 17},
                          lengths = {1, 2, 7, 8, 9, 16, 17, 64, 300};
  for (long b : batches)
    for (long h : heads)
      for (long d : sizes)
        for (long L : lengths) {
          // Skip most of the big products of sizes (the small ones cover the code paths; keep it quick).
          if (b * h * L * d > 200000 && !(d == 64 && (b == 8 || b == 1))) continue;
          const float q_scale = (b + h + d + L) % 3 == 0 ? 0.125f : (b + h + d + L) % 3 == 1 ? 1.f : 4.f;
          check_attend(b, h, L, d, b, q_scale, false, stats);
        }
  // Cache with more rows than the batch (as the engine's cache can be): only the first rows are read.
  check_attend(2, 12, 300, 64, 5, 1.f, false, stats);
  check_attend(3, 2, 17, 40, 4, 1.f, false, stats);
  // A NaN score, and a peaked softmax (large scores).
  check_attend(3, 4, 33, 24, 3, 1.f, true, stats);
  check_attend(4, 2, 300, 64, 4, 16.f, false, stats);
  if (stats.fully_masked_own == 0 || stats.fully_masked_none == 0 || stats.holes == 0 || stats.own_off == 0)
    fail("attend: a mask pattern was not covered");
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("attend: %ld cases ok x {1, 3} threads (%ld (sequence, head) units; sequences: %ld with mask holes, "
              "%ld own flag 0, %ld fully masked with own 1, %ld fully masked with own 0; %ld NaN unit), "
              "worst error %.2g of 1 + sum p|v|, %.1f s\n",
              stats.cases, stats.units, stats.holes, stats.own_off, stats.fully_masked_own,
              stats.fully_masked_none, stats.nan_units, stats.worst, seconds);
  std::fflush(stdout);
}

// ---------------------------------------------------------------------------------------------------------------
// Sort: values [m, n], needed [m]; rows with a nonzero flag sorted descending, the others copied bit for bit.

struct SortStats {
  long cases = 0, rows_sorted = 0, rows_copied = 0, values = 0;
};

float special_value() {
  static const float specials[] = {0.f,      -0.f,     -1e10f,   1e10f,    INFINITY, -INFINITY, 1e-40f,   -1e-40f,
                                   1e-45f,   -1e-45f,  FLT_MIN,  -FLT_MIN, FLT_MAX,  -FLT_MAX,  1.f,      -1.f,
                                   0.5f,     -0.5f,    3.f,      2.f};
  return specials[below(sizeof specials / sizeof specials[0])];
}

enum RowKind { kRandom, kTies, kSpecials, kWide, kRowKinds };

void fill_row(float* row, long n, int kind) {
  for (long i = 0; i < n; ++i) {
    switch (kind) {
      case kRandom: row[i] = uniform(-20.f, 20.f); break;                          // logits-like
      case kTies: row[i] = static_cast<float>(below(5)) - 2.f; break;               // many equal values
      case kSpecials: row[i] = chance(0.5) ? special_value() : uniform(-3.f, 3.f); break;
      default: row[i] = from_bits(static_cast<uint32_t>(rng())); break;  // any bits (NaNs replaced below)
    }
    if (std::isnan(row[i])) row[i] = -0.f;
  }
}

void check_sort(long m, long n, SortStats& stats) {
  std::vector<float> values(m * n), needed(m);
  for (long r = 0; r < m; ++r) {
    fill_row(&values[r * n], n, static_cast<int>((r + stats.cases) % kRowKinds));
    const long which = (r + stats.cases) % 5;  // flags: 1, 0, another nonzero, -0 (== 0: not needed)
    needed[r] = which == 0 || which == 3 ? 1.f : which == 1 ? 0.f : which == 2 ? -2.5f : -0.f;
  }
  if (m > 1) needed[m - 1] = 0.f;  // a row not needed, for sure...
  if (m > 1) {                     // ...holding NaNs (with payloads) that must come back bit for bit
    values[(m - 1) * n] = from_bits(0x7fc01234u);
    values[(m - 1) * n + n / 2] = from_bits(0xffa00001u);
  }
  needed[0] = 1.f;
  const std::vector<float> before = values;

  const std::vector<const void*> in = {values.data(), needed.data()};
  const std::string opaque = format("%ld,%ld", m, n);
  const auto outs = run_on_pools(SortCall, in, m * n, opaque);
  const std::string what = format("sort m=%ld n=%ld", m, n);
  if (!same_bits(values, before)) fail(what + ": the input was modified");
  std::vector<float> want(n);
  std::vector<uint32_t> in_bits(n), out_bits(n);
  for (int p = 0; p < kPools; ++p)
    for (long r = 0; r < m; ++r) {
      const float* row = &values[r * n];
      const float* got = &outs[p][r * n];
      const std::string where = format(", %d threads, row %ld (flag %g)", kThreads[p], r, needed[r]);
      if (needed[r] == 0.f) {
        if (std::memcmp(row, got, n * sizeof(float)) != 0) fail(what + where + ": a row not needed was changed");
        continue;
      }
      want.assign(row, row + n);
      std::sort(want.begin(), want.end(), std::greater<float>());
      for (long i = 0; i < n; ++i)
        if (!(got[i] == want[i]))
          fail(what + where + format(": out[%ld] = %.9g (bits %08x), want %.9g", i, got[i], bits(got[i]), want[i]));
      // The same values, bit for bit (e.g. a -0 stays -0): the multisets of bit patterns are equal.
      for (long i = 0; i < n; ++i) in_bits[i] = bits(row[i]), out_bits[i] = bits(got[i]);
      std::sort(in_bits.begin(), in_bits.end());
      std::sort(out_bits.begin(), out_bits.end());
      if (in_bits != out_bits) fail(what + where + ": the output is not a permutation of the row's bits");
    }
  if (!same_bits(outs[0], outs[1])) fail(what + ": 1 and 3 threads give different bits");
  ++stats.cases;
  for (long r = 0; r < m; ++r) ++(needed[r] != 0.f ? stats.rows_sorted : stats.rows_copied);
  stats.values += m * n;
}

void test_sort() {
  const auto start = std::chrono::steady_clock::now();
  SortStats stats;
  for (long m : {1, 2, 3, 5, 8})
    for (long n : {1, 2, 7, 50, 2047, 2048, 2049, 50257}) {
      if (m * n > 200000) continue;
      check_sort(m, n, stats);
    }
  check_sort(8, 50257, stats);
  for (int i = 0; i < 8; ++i) check_sort(2 + i % 3, 50257, stats);  // every row kind at the vocabulary size
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("sort:  %ld cases ok x {1, 3} threads (%ld rows sorted, %ld rows copied, %ld values), %.1f s\n",
              stats.cases, stats.rows_sorted, stats.rows_copied, stats.values, seconds);
  std::fflush(stdout);
}

}  // namespace test

int main() {
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) {
    std::puts("kernel_test: this CPU lacks AVX2 or FMA, which the kernels need: skipped");
    return 0;
  }
  const auto start = std::chrono::steady_clock::now();
  for (int p = 0; p < test::kPools; ++p) test::pools[p] = new Pool(test::kThreads[p]);
  test::test_sort();
  test::test_attend();
  test::test_products(test::Kind::kF32);
  test::test_products(test::Kind::kI8);
  test::test_products(test::Kind::kBF16);
  // The 1-thread pool has no workers: delete it. The 3-thread pool's workers wait on it for ever (as in the
  // library, where it is never destroyed): it stays, reachable through `pool`, so it is no leak.
  pool = test::pools[1];
  delete test::pools[0];
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("kernel_test: all ok, %.1f s\n", seconds);
  return 0;
}

#endif

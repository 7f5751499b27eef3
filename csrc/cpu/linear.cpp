// Linear layer for decode: y[m, n] = sum_k x[m, k] w[n, k] + b[n] with few rows m (1 to 16).
//
// At decode time a linear layer reads its whole weight matrix for a handful of input rows, so its cost
// is the weight traffic. A general GEMM packs weight tiles into a scratch layout first, which for M <= 16
// doubles that traffic and leaves the FMA units idle (MKL/oneDNN reach a third of the memory bandwidth
// at M = 8 on this kind of CPU). Here each weight row is streamed once, straight from memory, and meets
// every input row while it is in registers: R weight rows x M input rows of 16-float accumulators, with
// the M input rows (at most 16 x K floats) served from L1/L2. Threads take contiguous ranges of
// output rows from a shared counter, so each streams its own part of the matrix. fp32 throughout; compiled for AVX-512,
// AVX2 and the baseline (target_clones), picked at run time.
#include "linear.h"
#include "simd.h"

#include <string>

namespace genai_fast {
namespace {

// Output rows [n0, n0 + R) for input rows [m0, m0 + M): M and R are compile-time so the R x M
// accumulators live in registers.
template <int M, int R>
GF_INLINE void block(const SkinnyLinearArgs& a, int64_t m0, int64_t n0) {
  v16 acc[R][M] = {};
  const int64_t K = a.K, k16 = K / 16 * 16;
  const float* w[R];
  for (int r = 0; r < R; ++r) w[r] = a.weight + (n0 + r) * K;
  const float* x[M];
  for (int m = 0; m < M; ++m) x[m] = a.x + (m0 + m) * a.x_row_stride;
  // The next block's rows start right after this block's (the matrix is contiguous): fetching them now
  // overlaps the memory traffic with this block's FMAs, which the hardware prefetcher alone does not.
  const int64_t ahead = (n0 + 2 * R <= a.N ? R : 0) * K;
  for (int64_t k = 0; k < k16; k += 16) {
    v16 wv[R];
    for (int r = 0; r < R; ++r) {
      __builtin_prefetch(w[r] + k + ahead, 0, 3);  // read, keep in all cache levels
      wv[r] = load16(w[r] + k);
    }
    for (int m = 0; m < M; ++m) {
      const v16 xv = load16(x[m] + k);
      for (int r = 0; r < R; ++r) acc[r][m] += wv[r] * xv;
    }
  }
  for (int r = 0; r < R; ++r) {
    const float b = a.bias != nullptr ? a.bias[n0 + r] : 0.0f;
    for (int m = 0; m < M; ++m) {
      float total = hsum(acc[r][m]);
      for (int64_t k = k16; k < K; ++k) total += w[r][k] * x[m][k];
      a.out[(m0 + m) * a.N + n0 + r] = total + b;
    }
  }
}

// All output rows in [n_begin, n_end) for M input rows starting at m0: blocks of R rows, then single rows.
template <int M>
GF_INLINE void rows(const SkinnyLinearArgs& a, int64_t m0, int64_t n_begin, int64_t n_end) {
  constexpr int R = M <= 4 ? 4 : 3;  // R * M <= 24 accumulators (of 32 AVX-512 registers)
  int64_t n = n_begin;
  for (; n + R <= n_end; n += R) block<M, R>(a, m0, n);
  for (; n < n_end; ++n) block<M, 1>(a, m0, n);
}

GF_CLONES void range(const SkinnyLinearArgs& a, int64_t n_begin, int64_t n_end) {
  // Up to 8 input rows per pass over the weights (16 rows: two passes, still far fewer bytes than a GEMM).
  for (int64_t m0 = 0; m0 < a.M; m0 += 8) {
    switch (std::min<int64_t>(8, a.M - m0)) {
      case 1: rows<1>(a, m0, n_begin, n_end); break;
      case 2: rows<2>(a, m0, n_begin, n_end); break;
      case 3: rows<3>(a, m0, n_begin, n_end); break;
      case 4: rows<4>(a, m0, n_begin, n_end); break;
      case 5: rows<5>(a, m0, n_begin, n_end); break;
      case 6: rows<6>(a, m0, n_begin, n_end); break;
      case 7: rows<7>(a, m0, n_begin, n_end); break;
      default: rows<8>(a, m0, n_begin, n_end); break;
    }
  }
}

}  // namespace

void validate(const SkinnyLinearArgs& a) {
  require(a.x != nullptr && a.weight != nullptr && a.out != nullptr, "x, weight, out: expected non-null addresses");
  require(a.M >= 1 && a.M <= kSkinnyMaxRows,
          "x: expected 1 to " + std::to_string(kSkinnyMaxRows) + " rows, got " + std::to_string(a.M));
  require(a.K >= 1 && a.N >= 1, "weight: expected a non-empty [N, K] matrix");
  require(a.x_row_stride >= a.K, "x: row stride " + std::to_string(a.x_row_stride) + " is below K=" +
                                     std::to_string(a.K));
  require(a.x_numel >= checked_span({a.M}, {a.x_row_stride}, a.K, "x"),
          "x: buffer of " + std::to_string(a.x_numel) + " elements is smaller than [M, K] at its row stride");
  const int64_t weight_numel = checked_mul(a.N, a.K, "weight");
  require(a.weight_numel == weight_numel, "weight: expected " + std::to_string(weight_numel) + " elements, got " +
                                              std::to_string(a.weight_numel));
  require(a.bias == nullptr || a.bias_numel == a.N, "bias: expected " + std::to_string(a.N) + " elements, got " +
                                                        std::to_string(a.bias_numel));
  const int64_t out_numel = checked_mul(a.M, a.N, "out");
  require(a.out_numel == out_numel, "out: expected " + std::to_string(out_numel) + " elements, got " +
                                        std::to_string(a.out_numel));
  require(a.num_threads >= 1, "num_threads: expected >= 1");
}

void skinny_linear_forward(const SkinnyLinearArgs& a) {
  // Threads only where each gets enough of the matrix to amortise waking it (about 256 KB).
  const int64_t bytes = a.N * a.K * 4;
  const int workers = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(a.num_threads, bytes >> 18)));
  constexpr int64_t kRowsPerTask = 48;  // whole blocks of 3 and of 4 rows
  parallel_for((a.N + kRowsPerTask - 1) / kRowsPerTask, workers, [&](int64_t task) {
    range(a, task * kRowsPerTask, std::min(a.N, (task + 1) * kRowsPerTask));
  });
}

}  // namespace genai_fast

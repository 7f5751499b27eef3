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
//
// The blocks depend on the register file. With AVX-512 a 16-float accumulator is one of 32 registers. Without it,
// GCC keeps 64-byte vectors in memory between iterations (an AVX2-only host ran 8 rows at 4x the time of one and
// 2-3x BLAS's), so those blocks hold each accumulator as two 8-float halves, in at most 4 input rows per pass: the
// same lanes summed in the same order, so every output element is the same bits either way.
#include "linear.h"
#include "simd.h"

#include <string>

namespace genai_fast {
namespace {

// One block's weight rows [n0, n0 + R) and input rows [m0, m0 + M), and the store of its outputs.
template <int M, int R>
struct BlockRows {
  const SkinnyLinearArgs& a;
  int64_t m0, n0, k16;
  const float* w[R];
  const float* x[M];
  // The next block's rows start right after this block's (the matrix is contiguous): fetching them now
  // overlaps the memory traffic with this block's FMAs, which the hardware prefetcher alone does not.
  int64_t ahead;

  GF_INLINE BlockRows(const SkinnyLinearArgs& args, int64_t first_row, int64_t first_out)
      : a(args), m0(first_row), n0(first_out), k16(args.K / 16 * 16) {
    for (int r = 0; r < R; ++r) w[r] = a.weight + (n0 + r) * a.K;
    for (int m = 0; m < M; ++m) x[m] = a.x + (m0 + m) * a.x_row_stride;
    ahead = (n0 + 2 * R <= a.N ? R : 0) * a.K;
  }

  // out[m0 + m, n0 + r]: the sum of the vector part, then the scalar tail past k16, then the bias.
  GF_INLINE void store(int m, int r, float vector_sum) const {
    float total = vector_sum;
    for (int64_t k = k16; k < a.K; ++k) total += w[r][k] * x[m][k];
    a.out[(m0 + m) * a.N + n0 + r] = total + (a.bias != nullptr ? a.bias[n0 + r] : 0.0f);
  }
};

// Output rows [n0, n0 + R) for input rows [m0, m0 + M): M and R are compile-time so the R x M
// accumulators live in registers.
template <int M, int R>
GF_INLINE void block(const SkinnyLinearArgs& a, int64_t m0, int64_t n0) {
  const BlockRows<M, R> b(a, m0, n0);
  v16 acc[R][M] = {};
  for (int64_t k = 0; k < b.k16; k += 16) {
    v16 wv[R];
    for (int r = 0; r < R; ++r) {
      __builtin_prefetch(b.w[r] + k + b.ahead, 0, 3);  // read, keep in all cache levels
      wv[r] = load16(b.w[r] + k);
    }
    for (int m = 0; m < M; ++m) {
      const v16 xv = load16(b.x[m] + k);
      for (int r = 0; r < R; ++r) acc[r][m] += wv[r] * xv;
    }
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) b.store(m, r, hsum(acc[r][m]));
}

GF_INLINE v8 load8(const float* p) {
  v8 v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}

// block() with each 16-lane accumulator as two native 8-lane halves (lo: lanes 0-7, hi: 8-15), for AVX2; the
// final sum folds them as hsum folds a 16-lane vector.
template <int M, int R>
GF_INLINE void block_halves(const SkinnyLinearArgs& a, int64_t m0, int64_t n0) {
  const BlockRows<M, R> b(a, m0, n0);
  v8 lo[R][M] = {}, hi[R][M] = {};
  for (int64_t k = 0; k < b.k16; k += 16) {
    v8 wl[R], wh[R];
    for (int r = 0; r < R; ++r) {
      __builtin_prefetch(b.w[r] + k + b.ahead, 0, 3);
      wl[r] = load8(b.w[r] + k);
      wh[r] = load8(b.w[r] + k + 8);
    }
    for (int m = 0; m < M; ++m) {
      const v8 xl = load8(b.x[m] + k), xh = load8(b.x[m] + k + 8);
      for (int r = 0; r < R; ++r) {
        lo[r][m] += wl[r] * xl;
        hi[r][m] += wh[r] * xh;
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) {
      const v8 folded = lo[r][m] + hi[r][m];
      const v4 half = __builtin_shufflevector(folded, folded, 0, 1, 2, 3) +
                      __builtin_shufflevector(folded, folded, 4, 5, 6, 7);
      b.store(m, r, (half[0] + half[2]) + (half[1] + half[3]));
    }
}

// All output rows in [n_begin, n_end) for M input rows starting at m0: blocks of R rows, then single rows.
template <int M, int R>
GF_INLINE void rows(const SkinnyLinearArgs& a, int64_t m0, int64_t n_begin, int64_t n_end) {
  int64_t n = n_begin;
  for (; n + R <= n_end; n += R) block<M, R>(a, m0, n);
  for (; n < n_end; ++n) block<M, 1>(a, m0, n);
}

template <int M, int R>
GF_INLINE void rows_halves(const SkinnyLinearArgs& a, int64_t m0, int64_t n_begin, int64_t n_end) {
  int64_t n = n_begin;
  for (; n + R <= n_end; n += R) block_halves<M, R>(a, m0, n);
  for (; n < n_end; ++n) block_halves<M, 1>(a, m0, n);
}

// AVX-512: R * M <= 24 accumulators of 32 registers; up to 8 input rows per pass over the weights (16 rows: two
// passes, still far fewer bytes than a GEMM).
GF_CLONES void range_wide(const SkinnyLinearArgs& a, int64_t n_begin, int64_t n_end) {
  for (int64_t m0 = 0; m0 < a.M; m0 += 8) {
    switch (std::min<int64_t>(8, a.M - m0)) {
      case 1: rows<1, 4>(a, m0, n_begin, n_end); break;
      case 2: rows<2, 4>(a, m0, n_begin, n_end); break;
      case 3: rows<3, 4>(a, m0, n_begin, n_end); break;
      case 4: rows<4, 4>(a, m0, n_begin, n_end); break;
      case 5: rows<5, 3>(a, m0, n_begin, n_end); break;
      case 6: rows<6, 3>(a, m0, n_begin, n_end); break;
      case 7: rows<7, 3>(a, m0, n_begin, n_end); break;
      default: rows<8, 3>(a, m0, n_begin, n_end); break;
    }
  }
}

// AVX2 (16 registers of 8 floats): 2 R M accumulator halves + 2 R weight halves + 2 input halves <= 16, so up to
// 4 input rows per pass.
GF_CLONES void range_narrow(const SkinnyLinearArgs& a, int64_t n_begin, int64_t n_end) {
  for (int64_t m0 = 0; m0 < a.M; m0 += 4) {
    switch (std::min<int64_t>(4, a.M - m0)) {
      case 1: rows_halves<1, 3>(a, m0, n_begin, n_end); break;
      case 2: rows_halves<2, 2>(a, m0, n_begin, n_end); break;
      case 3: rows_halves<3, 1>(a, m0, n_begin, n_end); break;
      default: rows_halves<4, 1>(a, m0, n_begin, n_end); break;
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
  constexpr int64_t kRowsPerTask = 48;  // whole blocks of 1 to 4 rows
  const bool wide = avx512_allowed();  // the wide blocks fit AVX-512's registers
  parallel_for((a.N + kRowsPerTask - 1) / kRowsPerTask, workers, [&](int64_t task) {
    const int64_t begin = task * kRowsPerTask, end = std::min(a.N, (task + 1) * kRowsPerTask);
    wide ? range_wide(a, begin, end) : range_narrow(a, begin, end);
  });
}

}  // namespace genai_fast

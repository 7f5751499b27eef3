// Linear layer for decode over weights kept in GGUF's block formats: y[m, n] = sum_k x[m, k] w[n, k] + b[n].
//
// A GGUF model (the offline SmolLM2 is Q4_1 with a Q8_0 embedding) stores each run of 32 weights of a row
// as a block: an fp16 scale d (Q4_1: also an fp16 minimum m) and 32 small integers q. Loaders such as
// transformers expand every block to fp32 once, w = d * q (+ m), and decode then streams 32 bits per
// weight from memory. This kernel streams the blocks themselves (5 bits per weight for Q4_1, 8.5 for
// Q8_0) and expands them in registers to the same fp32 numbers, bit for bit:
//   * d * q is exact in fp32 (an 11-bit fp16 significand times a 4- or 8-bit integer fits in 24 bits),
//     so Q4_0/Q8_0 weights are exact whatever the compiler does, and Q4_1's d * q + m rounds once, at the
//     addition, with or without FMA contraction: the same fp32 value the gguf package computes in numpy;
//   * each expanded vector then meets every input row as in linear.cpp (R weight rows x M input rows of
//     16-float accumulators; the next rows prefetched one block of rows ahead; threads take ranges of
//     output rows from a shared counter).
// Only the summation order differs from F.linear over the expanded matrix, as any two GEMMs differ.
#include "gguf_linear.h"
#include "simd.h"

#include <cstdlib>
#include <string>

#include <immintrin.h>

namespace genai_fast {

typedef uint8_t u8x16 __attribute__((vector_size(16)));
typedef int8_t i8x16 __attribute__((vector_size(16)));
typedef int32_t i32x16 __attribute__((vector_size(64)));

namespace portable {
// A Q4_1 block's d and m, converted one by one and broadcast (F16C instructions where the caller's build
// has them, a software conversion otherwise).
GF_INLINE void scale_and_min(const uint8_t* b, v16& d, v16& m) {
  _Float16 h[2];
  __builtin_memcpy(h, b, 4);
  d = v16{} + static_cast<float>(h[0]);
  m = v16{} + static_cast<float>(h[1]);
}
}  // namespace portable

// The kernel in three builds. The byte -> int32 widening is the one step written per instruction set:
// GCC 12 compiles __builtin_convertvector from 16 bytes to 16 scalar inserts, which would make the
// expansion, not the memory, the bottleneck.
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi2")
namespace avx512 {
GF_INLINE i32x16 widen_u8(u8x16 q) { return (i32x16)_mm512_cvtepu8_epi32((__m128i)q); }
GF_INLINE i32x16 widen_i8(i8x16 q) { return (i32x16)_mm512_cvtepi8_epi32((__m128i)q); }
// d and m are adjacent: broadcast the pair (a load, no shuffle), convert 16 halves d, m, d, m, ... at once,
// then duplicate the even / odd lanes. Half the shuffle work of converting and broadcasting each alone.
GF_INLINE void scale_and_min(const uint8_t* b, v16& d, v16& m) {
  int32_t pair;
  __builtin_memcpy(&pair, b, 4);
  const __m512 dm = _mm512_cvtph_ps(_mm256_set1_epi32(pair));
  d = (v16)_mm512_moveldup_ps(dm);
  m = (v16)_mm512_movehdup_ps(dm);
}
#include "gguf_linear_kernel.h"
}  // namespace avx512
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace avx2 {
GF_INLINE i32x16 halves(__m256i lo, __m256i hi) {
  i32x16 r;
  __builtin_memcpy(&r, &lo, 32);
  __builtin_memcpy(reinterpret_cast<char*>(&r) + 32, &hi, 32);
  return r;
}
GF_INLINE i32x16 widen_u8(u8x16 q) {
  const __m128i v = (__m128i)q;
  return halves(_mm256_cvtepu8_epi32(v), _mm256_cvtepu8_epi32(_mm_srli_si128(v, 8)));
}
GF_INLINE i32x16 widen_i8(i8x16 q) {
  const __m128i v = (__m128i)q;
  return halves(_mm256_cvtepi8_epi32(v), _mm256_cvtepi8_epi32(_mm_srli_si128(v, 8)));
}
using portable::scale_and_min;
#include "gguf_linear_kernel.h"
}  // namespace avx2
#pragma GCC pop_options

namespace baseline {
GF_INLINE i32x16 widen_u8(u8x16 q) { return __builtin_convertvector(q, i32x16); }
GF_INLINE i32x16 widen_i8(i8x16 q) { return __builtin_convertvector(q, i32x16); }
using portable::scale_and_min;
#include "gguf_linear_kernel.h"
}  // namespace baseline

namespace {

enum class Isa { kAvx512, kAvx2, kBaseline };

// The best instruction set this CPU has, capped by GENAI_FAST_CPU_ISA ("avx2" or "baseline") so that tests
// can run the other builds on an AVX-512 machine.
Isa detect_isa() {
  __builtin_cpu_init();
  Isa best = Isa::kBaseline;
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    best = Isa::kAvx512;
  } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
    best = Isa::kAvx2;
  }
  const char* cap = std::getenv("GENAI_FAST_CPU_ISA");
  if (cap != nullptr && std::string(cap) == "baseline") return Isa::kBaseline;
  if (cap != nullptr && std::string(cap) == "avx2" && best == Isa::kAvx512) return Isa::kAvx2;
  return best;
}

const Isa kIsa = detect_isa();

void range(const GgufLinearArgs& a, int64_t n_begin, int64_t n_end) {
  switch (kIsa) {
    case Isa::kAvx512: avx512::range(a, n_begin, n_end); break;
    case Isa::kAvx2: avx2::range(a, n_begin, n_end); break;
    default: baseline::range(a, n_begin, n_end); break;
  }
}

void expand_range(const GgufLinearArgs& a, int64_t n_begin, int64_t n_end) {
  switch (kIsa) {
    case Isa::kAvx512: avx512::expand_range(a, n_begin, n_end); break;
    case Isa::kAvx2: avx2::expand_range(a, n_begin, n_end); break;
    default: baseline::expand_range(a, n_begin, n_end); break;
  }
}

void validate_blocks(const GgufLinearArgs& a) {
  require(a.blocks != nullptr && a.out != nullptr, "blocks, out: expected non-null addresses");
  require(a.N >= 1 && a.K >= 1, "blocks: expected a non-empty [N, K] matrix");
  require(a.K % kGgufBlockWeights == 0,
          "blocks: expected K to be a multiple of 32 (whole blocks), got K=" + std::to_string(a.K));
  const int64_t expected = checked_product({a.N, a.K / kGgufBlockWeights, gguf_block_bytes(a.kind)}, "blocks");
  require(a.blocks_bytes == expected, "blocks: expected " + std::to_string(expected) + " bytes for [" +
                                          std::to_string(a.N) + ", " + std::to_string(a.K) + "], got " +
                                          std::to_string(a.blocks_bytes));
  require(a.num_threads >= 1, "num_threads: expected >= 1");
}

}  // namespace

void validate(const GgufLinearArgs& a) {
  validate_blocks(a);
  require(a.x != nullptr, "x: expected a non-null address");
  require(a.M >= 1 && a.M <= kGgufMaxRows,
          "x: expected 1 to " + std::to_string(kGgufMaxRows) + " rows, got " + std::to_string(a.M));
  require(a.x_row_stride >= a.K, "x: row stride " + std::to_string(a.x_row_stride) + " is below K=" +
                                     std::to_string(a.K));
  require(a.x_numel >= checked_span({a.M}, {a.x_row_stride}, a.K, "x"),
          "x: buffer of " + std::to_string(a.x_numel) + " elements is smaller than [M, K] at its row stride");
  require(a.bias == nullptr || a.bias_numel == a.N, "bias: expected " + std::to_string(a.N) + " elements, got " +
                                                        std::to_string(a.bias_numel));
  const int64_t out_numel = checked_mul(a.M, a.N, "out");
  require(a.out_numel == out_numel, "out: expected " + std::to_string(out_numel) + " elements, got " +
                                        std::to_string(a.out_numel));
}

void gguf_linear_forward(const GgufLinearArgs& a) {
  // Threads only where each gets enough of the matrix to amortise waking it (about 64 KB of blocks).
  const int64_t bytes = a.blocks_bytes;
  const int workers = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(a.num_threads, bytes >> 16)));
  constexpr int64_t kRowsPerTask = 48;  // whole blocks of 2 and of 4 rows
  parallel_for((a.N + kRowsPerTask - 1) / kRowsPerTask, workers, [&](int64_t task) {
    range(a, task * kRowsPerTask, std::min(a.N, (task + 1) * kRowsPerTask));
  });
}

const char* gguf_linear_isa() {
  switch (kIsa) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "baseline";
  }
}

void gguf_dequantize(const GgufLinearArgs& a) {
  validate_blocks(a);
  const int64_t out_numel = checked_mul(a.N, a.K, "out");
  require(a.out_numel == out_numel, "out: expected " + std::to_string(out_numel) + " elements, got " +
                                        std::to_string(a.out_numel));
  parallel_for(a.N, a.num_threads, [&](int64_t n) { expand_range(a, n, n + 1); });
}

}  // namespace genai_fast

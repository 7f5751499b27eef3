// 16-float vectors for the CPU kernels (GCC vector extension: one zmm with AVX-512, two ymm with AVX2,
// four xmm otherwise), and the function-multiversioning attribute the kernels' hot loops are compiled
// with (AVX-512, AVX2 and the baseline, picked at run time).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>

#define GF_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define GF_INLINE inline __attribute__((always_inline))

namespace genai_fast {

// Whether the AVX-512 code paths may run: the CPU has AVX-512F and GENAI_FAST_CPU_ISA does not cap the choice at
// "avx2" or "baseline" (so that the tests can run the other paths on an AVX-512 machine).
inline bool avx512_allowed() {
  static const bool allowed = [] {
    const char* cap = std::getenv("GENAI_FAST_CPU_ISA");
    const bool capped = cap != nullptr && (std::string(cap) == "avx2" || std::string(cap) == "baseline");
    return __builtin_cpu_supports("avx512f") && !capped;
  }();
  return allowed;
}

typedef float v16 __attribute__((vector_size(64)));
typedef float v8 __attribute__((vector_size(32)));
typedef float v4 __attribute__((vector_size(16)));
typedef int v16i __attribute__((vector_size(64)));

GF_INLINE v16 load16(const float* p) {
  v16 v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}

GF_INLINE void store16(float* p, v16 v) { __builtin_memcpy(p, &v, sizeof(v)); }

// Up to 16 floats into a zero-padded vector, and back: the tail of a row goes through the same arithmetic
// as its full vectors (so every element of a result is computed alike).
GF_INLINE v16 load_part(const float* p, int64_t count) {
  if (count == 16) return load16(p);
  float buffer[16] = {};
  for (int64_t j = 0; j < count; ++j) buffer[j] = p[j];
  return load16(buffer);
}

GF_INLINE void store_part(float* p, v16 v, int64_t count) {
  if (count == 16) return store16(p, v);
  for (int64_t j = 0; j < count; ++j) p[j] = v[j];
}

// Lane j of the result is the sum of the 16 lanes of v[j]: 16 horizontal sums at once, by folding pairs of
// vectors in halves (15 folds of two shuffles and an add, against about 7 instructions per hsum).
GF_INLINE v16 hsum16x16(const v16 (&v)[16]) {
  v16 t[8], u[4], w[2];
  for (int k = 0; k < 8; ++k) {  // t[k]: lanes 0-7 fold v[2k], lanes 8-15 fold v[2k+1]
    t[k] = __builtin_shufflevector(v[2 * k], v[2 * k + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
           __builtin_shufflevector(v[2 * k], v[2 * k + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29,
                                   30, 31);
  }
  for (int k = 0; k < 4; ++k) {  // u[k]: four lanes for each of v[4k .. 4k+3]
    u[k] = __builtin_shufflevector(t[2 * k], t[2 * k + 1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
           __builtin_shufflevector(t[2 * k], t[2 * k + 1], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30,
                                   31);
  }
  for (int k = 0; k < 2; ++k) {  // w[k]: two lanes for each of v[8k .. 8k+7]
    w[k] = __builtin_shufflevector(u[2 * k], u[2 * k + 1], 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29) +
           __builtin_shufflevector(u[2 * k], u[2 * k + 1], 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30,
                                   31);
  }
  return __builtin_shufflevector(w[0], w[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30) +
         __builtin_shufflevector(w[0], w[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
}

// 4-float steps for the elementwise tails of rows whose length is not a multiple of 16 (d = 100, 300).
GF_INLINE v4 load4(const float* p) {
  v4 v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}

GF_INLINE void store4(float* p, v4 v) { __builtin_memcpy(p, &v, sizeof(v)); }

// Sum of the 16 lanes, in a fixed order (so results do not depend on the caller).
GF_INLINE float hsum(v16 v) {
  const v8 a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
               __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  const v4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
  return (b[0] + b[2]) + (b[1] + b[3]);
}

// Largest of the 16 lanes. With NaN lanes the result is unspecified: callers that care check for NaN apart.
GF_INLINE float hmax(v16 v) {
  const v8 a0 = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7);
  const v8 a1 = __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  const v8 a = a0 > a1 ? a0 : a1;
  const v4 b0 = __builtin_shufflevector(a, a, 0, 1, 2, 3), b1 = __builtin_shufflevector(a, a, 4, 5, 6, 7);
  const v4 b = b0 > b1 ? b0 : b1;
  return std::max(std::max(b[0], b[1]), std::max(b[2], b[3]));
}

// exp of 16 floats, the same arithmetic as common.h's fast_exp (about 2 ulp; inputs clamped to [-87, 88]),
// written on vectors so that it vectorises inside target_clones functions, where the scalar one is a call.
GF_INLINE v16 exp16(v16 x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const v16 rounded = x * 1.44269504088896341f + 12582912.0f;  // 1.5 * 2^23 rounds x / ln 2 to an integer
  const v16 n = rounded - 12582912.0f;
  const v16i n_int = (v16i)rounded - 0x4b400000;
  const v16 r = (x - n * 0.693145751953125f) - n * 1.428606765330187045e-06f;  // x - n ln 2
  v16 p = r * (1.0f / 720.0f) + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  return (v16)((v16i)p + (n_int << 23));
}

// The largest of row[0, seen) (row padded to `width`, a multiple of 16; -inf when seen is 0), and whether one of
// those scores is NaN or +inf (the reference's softmax row is then NaN). The padding is never read as a score.
struct ScoreScan {
  float top;
  bool poisoned;
};

GF_INLINE ScoreScan scan_scores(const float* row, int64_t seen, int64_t width) {
  const v16i lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  const int limit = static_cast<int>(seen);
  v16 vtop = {}, vraw = {};
  vtop -= INFINITY;
  for (int64_t j = 0; j < width; j += 16) {
    const v16i valid = lane + static_cast<int>(j) < limit;
    const v16 x = valid ? load16(row + j) : -INFINITY;
    vtop = x > vtop ? x : vtop;
    vraw += valid ? x : 0.0f;
  }
  const float top = hmax(vtop);
  return {top, std::isnan(hsum(vraw)) || top == INFINITY};
}

// row[j] = exp(row[j] - top) for j < seen and 0 for the padding up to `width` (a multiple of 16); returns the
// sum of the exps.
GF_INLINE float exponentiate_shifted(float* row, int64_t seen, int64_t width, float top) {
  const v16i lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  const int limit = static_cast<int>(seen);
  v16 vsum = {};
  for (int64_t j = 0; j < width; j += 16) {
    const v16i valid = lane + static_cast<int>(j) < limit;
    const v16 e = valid ? exp16(load16(row + j) - top) : 0.0f;
    store16(row + j, e);
    vsum += e;
  }
  return hsum(vsum);
}

// Softmax weights of a row padded to `width` (a multiple of 16) whose first `seen` entries are scores: turns
// them into exp(score - max) in place, with the padding masked out of the maximum and sum and written as zeros,
// and returns the max and the sum of the exps. exp16 does not carry NaN through, so a NaN or +inf score (whose
// reference row is NaN) gives a NaN sum; a row whose scores are all -inf gets zero weights and a zero sum (torch
// returns a zero row for it, its fully-masked rule).
GF_INLINE void exponentiate_padded(float* row, int64_t seen, int64_t width, float& top, float& total) {
  const ScoreScan scan = scan_scores(row, seen, width);
  top = scan.top;
  const bool poisoned = scan.poisoned;
  if (top == -INFINITY && !poisoned) {
    for (int64_t j = 0; j < width; j += 16) store16(row + j, v16{});
    total = 0.0f;
    return;
  }
  const float sum = exponentiate_shifted(row, seen, width, top);
  total = poisoned ? NAN : sum;
}

// erf of 16 floats to about 1.2e-7 absolute (2 ulp near 1), without a division. |x| < 0.875: x P(x^2);
// up to 4: 1 - exp(-x^2 + L(|x|)), where L fits log(erfc(x)) + x^2; beyond 4 erf is 1 in fp32. P and L
// are least-squares fits made for this file (degree 5 in x^2, of relative error; degree 8 in |x|).
GF_INLINE v16 erf16(v16 x) {
  const v16 a = x < 0.0f ? -x : x;
  const v16 u = a * a;
  v16 p = u * -6.199346688e-04f + 5.031426385e-03f;
  p = p * u - 2.679095131e-02f;
  p = p * u + 1.128244112e-01f;
  p = p * u - 3.761254908e-01f;
  p = p * u + 1.128379157e+00f;
  const v16 near = a * p;
  v16 l = a * 1.605422671e-06f - 4.541485934e-05f;
  l = l * a + 5.912438535e-04f;
  l = l * a - 4.732859136e-03f;
  l = l * a + 2.634315968e-02f;
  l = l * a - 1.099391354e-01f;
  l = l * a + 3.680200772e-01f;
  l = l * a - 1.130140850e+00f;
  l = l * a + 2.966602600e-04f;
  v16 far = 1.0f - exp16(l - u);
  far = a < 4.0f ? far : 1.0f;
  const v16 magnitude = a < 0.875f ? near : far;
  const v16 signed_value = x < 0.0f ? -magnitude : magnitude;
  return x == x ? signed_value : x;  // NaN stays NaN
}

}  // namespace genai_fast

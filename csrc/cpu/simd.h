// 16-float vectors for the CPU kernels (GCC vector extension: one zmm with AVX-512, two ymm with AVX2,
// four xmm otherwise), and the function-multiversioning attribute the kernels' hot loops are compiled
// with (AVX-512, AVX2 and the baseline, picked at run time).
#pragma once

#define GF_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define GF_INLINE inline __attribute__((always_inline))

namespace genai_fast {

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

}  // namespace genai_fast

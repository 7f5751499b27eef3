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

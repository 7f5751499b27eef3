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

}  // namespace genai_fast

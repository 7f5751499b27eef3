#pragma once
#include <cstdint>

#include "common.h"

namespace genai_fast {

// The element-wise passes of the normalisation kernels. x and y hold `dtype` values (fp32, or raw
// fp16/bf16 bits); counts and offsets are in elements. fp16/bf16 values are widened to fp32 as they are
// loaded and rounded to nearest even as they are stored, so no float copy of a tensor is ever made.

inline int64_t dtype_bytes(DType dtype) { return dtype == DType::Float32 ? 4 : 2; }
inline const void* element_at(const void* p, DType dtype, int64_t i) {
  return static_cast<const char*>(p) + i * dtype_bytes(dtype);
}
inline void* element_at(void* p, DType dtype, int64_t i) { return static_cast<char*>(p) + i * dtype_bytes(dtype); }

// Sum of x[0:n], and sum of (x[i] - mean)^2 with the sum of x[i] - mean in *deviation: fp32 lanes, totalled in
// double. The deviations of a mean taken from fp32 sums add up to n times its rounding error, which the caller
// takes back out (the corrected two-pass algorithm): mean + deviation / n, m2 - deviation^2 / n.
double sum_values(const void* x, DType dtype, int64_t n);
double sum_squared_deviation(const void* x, DType dtype, int64_t n, float mean, double* deviation);

// Per-channel moments of `rows` channels-last rows of C values: adds each channel's sum into mean[c], divides
// it by `rows`, then adds each channel's sum of squared deviations from that mean into m2[c] and of the
// deviations themselves into deviation[c], corrects m2 by the latter and leaves in deviation[c] the mean
// deviation (the corrected two-pass: a channel of one repeated value gets that value and 0). The channel's mean
// is mean[c] + deviation[c], to be added in double: in fp32 the correction would round at mean[c]'s ulp.
// mean, m2 and deviation come in zeroed.
void channel_moments(const void* x, DType dtype, int64_t rows, int64_t C, float* mean, float* m2, float* deviation);

// y[i] = act((x[i] - center) * scale + shift), act = SiLU or identity; x and y may alias.
// Centring first keeps a normalisation exact where x's spread is small against its mean: x - center is exact for
// x near center (a mean), and shift stays near the bias; x * scale + (bias - mean * scale) would round the shift
// at |mean * scale|'s ulp, which a scale of up to 1 / sqrt(eps) makes large.
// streaming: y is final output that will not be re-read soon, so non-temporal stores may be used (fp32).
// prefetch: optional n values of the same dtype to pull into L2 meanwhile (the next piece of work), so the
// memory reads of the next piece overlap this piece's arithmetic and writes.
void scale_shift(const void* x, void* y, DType dtype, int64_t n, float center, float scale, float shift, bool silu,
                 bool streaming, const void* prefetch = nullptr);

// y[r, c] = act((x[r, c] - center[c]) * scale[c] + shift[c]) over `rows` channels-last rows of C values.
void scale_shift_rows(const void* x, void* y, DType dtype, int64_t rows, int64_t C, const float* center,
                      const float* scale, const float* shift, bool silu, bool streaming);

// Makes earlier non-temporal stores of this thread visible before it hands work back.
void store_fence();

}  // namespace genai_fast

// Shared helpers for the CPU kernels: a parallel-for (thread_pool.h: torch's OpenMP threads), element
// conversions for the dtypes the Python side passes (fp32, fp16, bf16), a vectorisable exp, and argument checks that
// throw std::invalid_argument (pybind11 turns it into ValueError) before any memory is touched.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "thread_pool.h"

namespace genai_fast {

enum class DType : int { Float32 = 0, Float16 = 1, BFloat16 = 2 };

inline DType dtype_from_code(int code) {
  if (code < 0 || code > 2) throw std::invalid_argument("dtype code: expected 0 (fp32), 1 (fp16) or 2 (bf16)");
  return static_cast<DType>(code);
}

inline void require(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument(message);
}

// a * b and a + b over sizes, strides and element counts, throwing std::invalid_argument that names `what` when
// the result leaves int64: sizes whose product wraps around could otherwise equal a small element count and pass
// the extent checks, and the kernel would then index far past the buffer.
inline int64_t checked_mul(int64_t a, int64_t b, const char* what) {
  int64_t result;
  if (__builtin_mul_overflow(a, b, &result)) {
    throw std::invalid_argument(std::string(what) + ": sizes too large (an element count overflows int64)");
  }
  return result;
}

inline int64_t checked_add(int64_t a, int64_t b, const char* what) {
  int64_t result;
  if (__builtin_add_overflow(a, b, &result)) {
    throw std::invalid_argument(std::string(what) + ": sizes too large (an element count overflows int64)");
  }
  return result;
}

// The product of `sizes` (an element count), checked as above.
inline int64_t checked_product(std::initializer_list<int64_t> sizes, const char* what) {
  int64_t result = 1;
  for (int64_t size : sizes) result = checked_mul(result, size, what);
  return result;
}

// Elements a view spans from its first element to one past its last: rows of `row` unit-stride elements at
// `strides` over `sizes` (each >= 1, strides >= 0), that is sum (size_i - 1) * stride_i + row, checked as above.
inline int64_t checked_span(std::initializer_list<int64_t> sizes, std::initializer_list<int64_t> strides, int64_t row,
                            const char* what) {
  int64_t span = row;
  const int64_t* stride = strides.begin();
  for (int64_t size : sizes) span = checked_add(span, checked_mul(size - 1, *stride++, what), what);
  return span;
}

// Runs fn(task) for task in [0, num_tasks) on up to num_threads threads (the caller's and pooled ones,
// see thread_pool.h). Tasks are grouped into contiguous blocks, a few per thread, so each thread streams
// through neighbouring memory and a late thread's blocks are taken by the others.
template <typename Fn>
void parallel_for(int64_t num_tasks, int num_threads, Fn fn) {
  if (num_tasks <= 0) return;
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(num_threads, num_tasks));
  const int64_t blocks = std::min<int64_t>(num_tasks, workers * 4);
  const std::function<void(int64_t)> run_block = [&](int64_t b) {
    const int64_t begin = num_tasks * b / blocks, end = num_tasks * (b + 1) / blocks;
    for (int64_t t = begin; t < end; ++t) fn(t);
  };
  pool_run(blocks, static_cast<int>(workers), run_block);
}

// ---- element conversions (bit-exact round-to-nearest-even, like torch) ----
inline float bf16_to_float(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t float_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);  // quiet NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

// _Float16 conversions compile to F16C instructions in the AVX2/AVX-512 clones and to a software
// routine in the baseline one; both round to nearest even.
inline float fp16_to_float(uint16_t h) {
  _Float16 v;
  std::memcpy(&v, &h, 2);
  return static_cast<float>(v);
}

inline uint16_t float_to_fp16(float f) {
  _Float16 v = static_cast<_Float16>(f);
  uint16_t h;
  std::memcpy(&h, &v, 2);
  return h;
}

// exp(x) to about 2 ulp, written without calls or branches so the compiler vectorises loops using it.
inline float fast_exp(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float t = x * 1.44269504088896341f;                   // x / ln 2
  const float shifter = 12582912.0f;                          // 1.5 * 2^23: rounds t to an integer
  const float rounded = t + shifter;
  const float n = rounded - shifter;
  int32_t n_int;
  std::memcpy(&n_int, &rounded, 4);
  n_int -= 0x4b400000;                                        // integer part of the shifted value
  const float r = (x - n * 0.693145751953125f) - n * 1.428606765330187045e-06f;  // x - n ln 2
  // 2^f on [-0.5, 0.5] as e^r, degree-6 Taylor/minimax hybrid: rel. error < 2e-7.
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  int32_t bits;
  std::memcpy(&bits, &p, 4);
  bits += n_int << 23;
  float result;
  std::memcpy(&result, &bits, 4);
  return result;
}

// 1/d for d in [1, 2^116] without a divide (dividers are the bottleneck of a vectorised SiLU): a
// bit-trick first guess within 12%, then three Newton steps (12% -> 1.5% -> 2e-4 -> 5e-8).
inline float fast_reciprocal(float d) {
  int32_t bits;
  std::memcpy(&bits, &d, 4);
  bits = 0x7EF311C7 - bits;
  float r;
  std::memcpy(&r, &bits, 4);
  r = r * (2.0f - d * r);
  r = r * (2.0f - d * r);
  r = r * (2.0f - d * r);
  return r;
}

// SiLU(y) = y * sigmoid(y). exp(-y) is clamped at e^80 so the reciprocal stays a normal float; below
// y = -80 the result is y * 1.8e-35, zero for every purpose.
inline float silu(float y) { return y * fast_reciprocal(1.0f + fast_exp(std::min(-y, 80.0f))); }

}  // namespace genai_fast

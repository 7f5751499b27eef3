// Element-wise passes (sums, channel moments, centre + scale + shift + SiLU) shared by the CPU normalisation kernels.
//
// Two implementations: AVX-512 intrinsics (picked at run time when the CPU has AVX-512F), and a
// portable loop that the compiler vectorises for AVX2 or SSE. The AVX-512 loops widen fp16/bf16 in
// registers as they load and round as they store, so a half-precision pass moves half the bytes of an fp32
// one; the portable loops convert pieces of at most kPiece values through a stack buffer that stays in L1.
// The AVX-512 SiLU avoids the divider (rcp14 + one Newton step) and uses scalef for 2^n, about half the
// instructions of the portable exp; its stores are non-temporal for large fp32 final outputs, which saves
// the read-for-ownership traffic of a normal store (a third of the bytes moved by a normalise-and-write
// pass).
#include "elementwise.h"

#include <cstdlib>

#include "common.h"
#include "simd.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define GF_HAVE_X86 1
#endif

namespace genai_fast {
namespace {

constexpr int kLanes = 16;       // independent accumulators: lets the compiler vectorise fp32 sums
constexpr int64_t kPiece = 512;  // fp16/bf16 values converted at a time by the portable loops (2 KB of floats)

// ---- portable fp32 loops ----

GF_CLONES double sum_floats(const float* x, int64_t n) {
  float acc[kLanes] = {0};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) acc[j] += x[i + j];
  double total = 0.0;
  for (int j = 0; j < kLanes; ++j) total += acc[j];
  for (; i < n; ++i) total += x[i];
  return total;
}

GF_CLONES double sum_squared_deviation_floats(const float* x, int64_t n, float mean, double* deviation) {
  float acc[kLanes] = {0}, dev[kLanes] = {0};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) {
      const float d = x[i + j] - mean;
      acc[j] += d * d;
      dev[j] += d;
    }
  double total = 0.0, dev_total = 0.0;
  for (int j = 0; j < kLanes; ++j) total += acc[j], dev_total += dev[j];
  for (; i < n; ++i) {
    total += static_cast<double>(x[i] - mean) * (x[i] - mean);
    dev_total += x[i] - mean;
  }
  *deviation += dev_total;
  return total;
}

GF_CLONES void add_into(float* __restrict acc, const float* __restrict x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) acc[i] += x[i];
}

GF_CLONES void add_squared_deviation_into(float* __restrict m2, float* __restrict deviation,
                                          const float* __restrict x, const float* __restrict mean, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float d = x[i] - mean[i];
    m2[i] += d * d;
    deviation[i] += d;
  }
}

// The corrected two-pass step of channel_moments: each channel's deviation sum becomes its mean deviation (the
// correction to its mean), and m2 loses what that correction accounts for (never below 0). The correction is left
// apart from the fp32 mean: added into it, it would round away at the mean's ulp.
void correct_channel_moments(int64_t rows, int64_t C, float* m2, float* deviation) {
  const float inv_rows = 1.0f / static_cast<float>(rows);
  for (int64_t c = 0; c < C; ++c) {
    const float correction = deviation[c] * inv_rows;
    m2[c] = std::max(0.0f, m2[c] - deviation[c] * correction);
    deviation[c] = correction;
  }
}

GF_CLONES void scale_shift_portable(const float* x, float* y, int64_t n, float center, float scale, float shift,
                                    bool act) {
  if (act) {
    for (int64_t i = 0; i < n; ++i) y[i] = silu((x[i] - center) * scale + shift);
  } else {
    for (int64_t i = 0; i < n; ++i) y[i] = (x[i] - center) * scale + shift;
  }
}

GF_CLONES void scale_shift_channels_portable(const float* x, float* y, int64_t n, const float* center,
                                             const float* scale, const float* shift, bool act) {
  if (act) {
    for (int64_t c = 0; c < n; ++c) y[c] = silu((x[c] - center[c]) * scale[c] + shift[c]);
  } else {
    for (int64_t c = 0; c < n; ++c) y[c] = (x[c] - center[c]) * scale[c] + shift[c];
  }
}

GF_CLONES void halves_to_floats(const uint16_t* src, float* dst, int64_t n, bool is_bf16) {
  if (is_bf16) {
    for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_float(src[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = fp16_to_float(src[i]);
  }
}

GF_CLONES void floats_to_halves(const float* src, uint16_t* dst, int64_t n, bool is_bf16) {
  if (is_bf16) {
    for (int64_t i = 0; i < n; ++i) dst[i] = float_to_bf16(src[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = float_to_fp16(src[i]);
  }
}

// Calls f(values, count, first) over x[0:n] as floats, kPiece at a time: fp32 in place, fp16/bf16 converted.
template <class F>
void for_float_pieces(const void* x, DType dtype, int64_t n, F&& f) {
  if (dtype == DType::Float32) {
    // The same pieces as the converted types': a sum then rounds the same way whatever the input's dtype, so an
    // fp16/bf16 input gives bit for bit the fp32 result on its widened values (without AVX-512 too).
    for (int64_t i = 0; i < n; i += kPiece) f(static_cast<const float*>(x) + i, std::min(kPiece, n - i), i);
    return;
  }
  float buffer[kPiece];
  for (int64_t i = 0; i < n; i += kPiece) {
    const int64_t count = std::min(kPiece, n - i);
    halves_to_floats(static_cast<const uint16_t*>(x) + i, buffer, count, dtype == DType::BFloat16);
    f(static_cast<const float*>(buffer), count, i);
  }
}

// Writes `count` floats as y's dtype at element `first`.
void store_floats(const float* values, void* y, DType dtype, int64_t first, int64_t count) {
  if (dtype == DType::Float32) {
    std::memcpy(static_cast<float*>(y) + first, values, count * sizeof(float));
  } else {
    floats_to_halves(values, static_cast<uint16_t*>(y) + first, count, dtype == DType::BFloat16);
  }
}

// ---- portable typed passes ----

double sum_values_portable(const void* x, DType dtype, int64_t n) {
  double total = 0.0;
  for_float_pieces(x, dtype, n, [&](const float* v, int64_t count, int64_t) { total += sum_floats(v, count); });
  return total;
}

double sum_squared_deviation_portable(const void* x, DType dtype, int64_t n, float mean, double* deviation) {
  double total = 0.0;
  for_float_pieces(x, dtype, n, [&](const float* v, int64_t count, int64_t) {
    total += sum_squared_deviation_floats(v, count, mean, deviation);
  });
  return total;
}

void channel_moments_portable(const void* x, DType dtype, int64_t rows, int64_t C, float* mean, float* m2,
                              float* deviation) {
  for (int64_t r = 0; r < rows; ++r)
    for_float_pieces(element_at(x, dtype, r * C), dtype, C,
                     [&](const float* v, int64_t count, int64_t c0) { add_into(mean + c0, v, count); });
  const float inv_rows = 1.0f / static_cast<float>(rows);
  for (int64_t c = 0; c < C; ++c) mean[c] *= inv_rows;
  for (int64_t r = 0; r < rows; ++r)
    for_float_pieces(element_at(x, dtype, r * C), dtype, C, [&](const float* v, int64_t count, int64_t c0) {
      add_squared_deviation_into(m2 + c0, deviation + c0, v, mean + c0, count);
    });
  correct_channel_moments(rows, C, m2, deviation);
}

void scale_shift_typed_portable(const void* x, void* y, DType dtype, int64_t n, float center, float scale,
                                float shift, bool act) {
  if (dtype == DType::Float32) {
    return scale_shift_portable(static_cast<const float*>(x), static_cast<float*>(y), n, center, scale, shift, act);
  }
  float out[kPiece];
  for_float_pieces(x, dtype, n, [&](const float* v, int64_t count, int64_t first) {
    scale_shift_portable(v, out, count, center, scale, shift, act);
    store_floats(out, y, dtype, first, count);
  });
}

void scale_shift_rows_portable(const void* x, void* y, DType dtype, int64_t rows, int64_t C, const float* center,
                               const float* scale, const float* shift, bool act) {
  float out[kPiece];
  for (int64_t r = 0; r < rows; ++r) {
    void* row_out = element_at(y, dtype, r * C);
    for_float_pieces(element_at(x, dtype, r * C), dtype, C, [&](const float* v, int64_t count, int64_t c0) {
      if (dtype == DType::Float32) {  // write the output row directly
        return scale_shift_channels_portable(v, static_cast<float*>(row_out) + c0, count, center + c0, scale + c0,
                                             shift + c0, act);
      }
      scale_shift_channels_portable(v, out, count, center + c0, scale + c0, shift + c0, act);
      store_floats(out, row_out, dtype, c0, count);
    });
  }
}

#ifdef GF_HAVE_X86
#define GF_AVX512 __attribute__((target("avx512f")))

// SiLU(y) = y / (1 + 2^t), t = -y log2(e) clamped at 115 so the reciprocal stays normal (below
// y = -79.7 the result is y * 2^-115: zero for every purpose). 2^f on [-0.5, 0.5] is the degree-6
// Taylor series of e^(f ln 2) (relative error < 1.3e-7).
GF_AVX512 inline __m512 silu16(__m512 y) {
  __m512 t = _mm512_mul_ps(y, _mm512_set1_ps(-1.44269504088896341f));
  t = _mm512_min_ps(_mm512_set1_ps(115.0f), t);  // NaN in t stays NaN (min returns the 2nd operand)
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, n);
  __m512 p = _mm512_set1_ps(1.5403530393381606e-04f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3333558146428443e-03f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291076284772e-03f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504108664821580e-02f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022650695910071e-01f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718055994531e-01f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  const __m512 d = _mm512_add_ps(_mm512_scalef_ps(p, n), _mm512_set1_ps(1.0f));
  __m512 r = _mm512_rcp14_ps(d);
  r = _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.0f)));  // Newton: 14 -> 28 bits
  return _mm512_mul_ps(y, r);
}

GF_AVX512 inline __m512 maybe_silu(__m512 v, bool act) { return act ? silu16(v) : v; }

// 16 values of dtype T at element i of p, as floats.
template <DType T>
GF_AVX512 inline __m512 load16(const void* p, int64_t i) {
  if constexpr (T == DType::Float32) {
    return _mm512_loadu_ps(static_cast<const float*>(p) + i);
  } else {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(p) + i));
    if constexpr (T == DType::Float16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));  // bf16: the high half of fp32
  }
}

// The first `count` (< 16) values at element i, the other lanes zero.
template <DType T>
GF_AVX512 inline __m512 load_tail(const void* p, int64_t i, int64_t count) {
  const __mmask16 m = static_cast<__mmask16>((1u << count) - 1);
  if constexpr (T == DType::Float32) return _mm512_maskz_loadu_ps(m, static_cast<const float*>(p) + i);
  uint16_t buffer[16] = {};
  std::memcpy(buffer, static_cast<const uint16_t*>(p) + i, count * sizeof(uint16_t));
  return load16<T>(buffer, 0);
}

// fp32 to bf16 bits, rounding to nearest even; a NaN stays a (quiet) NaN with its sign.
GF_AVX512 inline __m256i floats_to_bf16_16(__m512 v) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i rounded = _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)));
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  rounded = _mm512_mask_mov_epi32(rounded, nan, _mm512_or_si512(bits, _mm512_set1_epi32(0x00400000)));
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(rounded, 16));
}

template <DType T>
GF_AVX512 inline __m256i to_halves16(__m512 v) {
  if constexpr (T == DType::Float16) return _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return floats_to_bf16_16(v);
}

// Stores 16 floats as dtype T at element i of p; fp32 may stream (p + i 64-byte aligned).
template <DType T>
GF_AVX512 inline void store16(void* p, int64_t i, __m512 v, bool streaming) {
  if constexpr (T == DType::Float32) {
    float* y = static_cast<float*>(p) + i;
    if (streaming) {
      _mm512_stream_ps(y, v);
    } else {
      _mm512_storeu_ps(y, v);
    }
  } else {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint16_t*>(p) + i), to_halves16<T>(v));
  }
}

template <DType T>
GF_AVX512 inline void store_tail(void* p, int64_t i, __m512 v, int64_t count) {
  const __mmask16 m = static_cast<__mmask16>((1u << count) - 1);
  if constexpr (T == DType::Float32) return _mm512_mask_storeu_ps(static_cast<float*>(p) + i, m, v);
  uint16_t buffer[16];
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(buffer), to_halves16<T>(v));
  std::memcpy(static_cast<uint16_t*>(p) + i, buffer, count * sizeof(uint16_t));
}

// The 16 lanes of acc totalled in double, in a fixed order.
GF_AVX512 inline double lanes_total(__m512 acc) {
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, acc);
  double total = 0.0;
  for (float lane : lanes) total += lane;
  return total;
}

template <DType T>
GF_AVX512 double sum_avx512(const void* x, int64_t n) {
  __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
  int64_t i = 0;
  for (; i + 64 <= n; i += 64)  // four chains, so the adds' latency does not bind
    for (int k = 0; k < 4; ++k) acc[k] = _mm512_add_ps(acc[k], load16<T>(x, i + 16 * k));
  for (; i + 16 <= n; i += 16) acc[0] = _mm512_add_ps(acc[0], load16<T>(x, i));
  if (i < n) acc[1] = _mm512_add_ps(acc[1], load_tail<T>(x, i, n - i));
  return lanes_total(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
}

template <DType T>
GF_AVX512 double sum_squared_deviation_avx512(const void* x, int64_t n, float mean, double* deviation) {
  const __m512 m = _mm512_set1_ps(mean);
  __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
  __m512 dev[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
  int64_t i = 0;
  for (; i + 64 <= n; i += 64)
    for (int k = 0; k < 4; ++k) {
      const __m512 d = _mm512_sub_ps(load16<T>(x, i + 16 * k), m);
      acc[k] = _mm512_fmadd_ps(d, d, acc[k]);
      dev[k] = _mm512_add_ps(dev[k], d);
    }
  for (; i + 16 <= n; i += 16) {
    const __m512 d = _mm512_sub_ps(load16<T>(x, i), m);
    acc[0] = _mm512_fmadd_ps(d, d, acc[0]);
    dev[0] = _mm512_add_ps(dev[0], d);
  }
  if (i < n) {  // lanes past the end are zeroed after the subtraction, not before
    const __mmask16 valid = static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m512 d = _mm512_maskz_sub_ps(valid, load_tail<T>(x, i, n - i), m);
    acc[1] = _mm512_fmadd_ps(d, d, acc[1]);
    dev[1] = _mm512_add_ps(dev[1], d);
  }
  *deviation += lanes_total(_mm512_add_ps(_mm512_add_ps(dev[0], dev[1]), _mm512_add_ps(dev[2], dev[3])));
  return lanes_total(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
}

// One pass of channel_moments over the rows: adds x (first pass) or (x - mean)^2 (second) into acc, and in the
// second x - mean into dev.
template <DType T, bool kDeviation>
GF_AVX512 void accumulate_channels(const void* x, int64_t rows, int64_t C, const float* mean, float* acc,
                                   float* dev) {
  const int64_t tail = C % 16;
  const __mmask16 tail_mask = static_cast<__mmask16>((1u << tail) - 1);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t row = r * C;
    int64_t c = 0;
    for (; c + 16 <= C; c += 16) {
      __m512 v = load16<T>(x, row + c);
      if constexpr (kDeviation) {
        v = _mm512_sub_ps(v, _mm512_loadu_ps(mean + c));
        _mm512_storeu_ps(dev + c, _mm512_add_ps(_mm512_loadu_ps(dev + c), v));
        v = _mm512_mul_ps(v, v);
      }
      _mm512_storeu_ps(acc + c, _mm512_add_ps(_mm512_loadu_ps(acc + c), v));
    }
    if (tail) {
      __m512 v = load_tail<T>(x, row + c, tail);
      if constexpr (kDeviation) {
        v = _mm512_sub_ps(v, _mm512_maskz_loadu_ps(tail_mask, mean + c));
        _mm512_mask_storeu_ps(dev + c, tail_mask, _mm512_add_ps(_mm512_maskz_loadu_ps(tail_mask, dev + c), v));
        v = _mm512_mul_ps(v, v);
      }
      _mm512_mask_storeu_ps(acc + c, tail_mask, _mm512_add_ps(_mm512_maskz_loadu_ps(tail_mask, acc + c), v));
    }
  }
}

template <DType T>
GF_AVX512 void channel_moments_avx512(const void* x, int64_t rows, int64_t C, float* mean, float* m2,
                                      float* deviation) {
  accumulate_channels<T, false>(x, rows, C, nullptr, mean, nullptr);
  const float inv_rows = 1.0f / static_cast<float>(rows);
  for (int64_t c = 0; c < C; ++c) mean[c] *= inv_rows;
  accumulate_channels<T, true>(x, rows, C, mean, m2, deviation);
  correct_channel_moments(rows, C, m2, deviation);
}

template <DType T>
GF_AVX512 void scale_shift_avx512(const void* x, void* y, int64_t n, float center, float scale, float shift,
                                  bool act, bool streaming, const void* prefetch) {
  const __m512 m = _mm512_set1_ps(center), s = _mm512_set1_ps(scale), b = _mm512_set1_ps(shift);
  int64_t i = 0;
  if constexpr (T == DType::Float32) {
    // Scalar head up to a 64-byte boundary of y, so the streaming stores are aligned.
    const auto address = reinterpret_cast<uintptr_t>(y);
    streaming = streaming && (address & 3) == 0;
    if (streaming) {
      i = std::min<int64_t>(n, ((64 - (address & 63)) & 63) / 4);
      scale_shift_portable(static_cast<const float*>(x), static_cast<float*>(y), i, center, scale, shift, act);
    }
  } else {
    streaming = false;
  }
  for (; i + 16 <= n; i += 16) {
    if (prefetch) _mm_prefetch(static_cast<const char*>(element_at(prefetch, T, i)), _MM_HINT_T1);
    store16<T>(y, i, maybe_silu(_mm512_fmadd_ps(_mm512_sub_ps(load16<T>(x, i), m), s, b), act), streaming);
  }
  if (i < n) {
    const __m512 v = _mm512_fmadd_ps(_mm512_sub_ps(load_tail<T>(x, i, n - i), m), s, b);
    store_tail<T>(y, i, maybe_silu(v, act), n - i);
  }
}

template <DType T>
GF_AVX512 void scale_shift_rows_avx512(const void* x, void* y, int64_t rows, int64_t C, const float* center,
                                       const float* scale, const float* shift, bool act, bool streaming) {
  // Streaming stores need every row start 64-byte aligned: the output start and C a multiple of 16.
  streaming = T == DType::Float32 && streaming && (reinterpret_cast<uintptr_t>(y) & 63) == 0 && C % 16 == 0;
  const int64_t tail = C % 16;
  const __mmask16 tail_mask = static_cast<__mmask16>((1u << tail) - 1);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t row = r * C;
    int64_t c = 0;
    for (; c + 16 <= C; c += 16) {
      const __m512 centred = _mm512_sub_ps(load16<T>(x, row + c), _mm512_loadu_ps(center + c));
      const __m512 v = _mm512_fmadd_ps(centred, _mm512_loadu_ps(scale + c), _mm512_loadu_ps(shift + c));
      store16<T>(y, row + c, maybe_silu(v, act), streaming);
    }
    if (tail) {
      const __m512 centred =
          _mm512_sub_ps(load_tail<T>(x, row + c, tail), _mm512_maskz_loadu_ps(tail_mask, center + c));
      const __m512 v = _mm512_fmadd_ps(centred, _mm512_maskz_loadu_ps(tail_mask, scale + c),
                                       _mm512_maskz_loadu_ps(tail_mask, shift + c));
      store_tail<T>(y, row + c, maybe_silu(v, act), tail);
    }
  }
}

// GENAI_FAST_CPU_ISA=avx2 or =baseline turns the AVX-512 loops off (as for the GGUF kernels), so that the
// tests can run the portable ones on an AVX-512 machine.
bool use_avx512() { return avx512_allowed(); }

// Returns the AVX-512 instantiation of `fn` for dtype from the calling function where those loops run.
#define GF_AVX512_DISPATCH(dtype, fn, ...)                                      \
  do {                                                                          \
    if (use_avx512()) {                                                         \
      switch (dtype) {                                                          \
        case DType::Float32: return fn<DType::Float32>(__VA_ARGS__);            \
        case DType::Float16: return fn<DType::Float16>(__VA_ARGS__);            \
        case DType::BFloat16: return fn<DType::BFloat16>(__VA_ARGS__);          \
      }                                                                         \
    }                                                                           \
  } while (0)
#else
#define GF_AVX512_DISPATCH(dtype, fn, ...) (void)0
#endif

}  // namespace

double sum_values(const void* x, DType dtype, int64_t n) {
  GF_AVX512_DISPATCH(dtype, sum_avx512, x, n);
  return sum_values_portable(x, dtype, n);
}

double sum_squared_deviation(const void* x, DType dtype, int64_t n, float mean, double* deviation) {
  GF_AVX512_DISPATCH(dtype, sum_squared_deviation_avx512, x, n, mean, deviation);
  return sum_squared_deviation_portable(x, dtype, n, mean, deviation);
}

void channel_moments(const void* x, DType dtype, int64_t rows, int64_t C, float* mean, float* m2, float* deviation) {
  GF_AVX512_DISPATCH(dtype, channel_moments_avx512, x, rows, C, mean, m2, deviation);
  channel_moments_portable(x, dtype, rows, C, mean, m2, deviation);
}

void scale_shift(const void* x, void* y, DType dtype, int64_t n, float center, float scale, float shift, bool act,
                 bool streaming, const void* prefetch) {
  GF_AVX512_DISPATCH(dtype, scale_shift_avx512, x, y, n, center, scale, shift, act, streaming && n >= 1024, prefetch);
  (void)streaming, (void)prefetch;
  scale_shift_typed_portable(x, y, dtype, n, center, scale, shift, act);
}

void scale_shift_rows(const void* x, void* y, DType dtype, int64_t rows, int64_t C, const float* center,
                      const float* scale, const float* shift, bool act, bool streaming) {
  GF_AVX512_DISPATCH(dtype, scale_shift_rows_avx512, x, y, rows, C, center, scale, shift, act, streaming);
  (void)streaming;
  scale_shift_rows_portable(x, y, dtype, rows, C, center, scale, shift, act);
}

void store_fence() {
#ifdef GF_HAVE_X86
  _mm_sfence();
#endif
}

}  // namespace genai_fast

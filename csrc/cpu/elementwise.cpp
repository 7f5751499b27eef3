// Element-wise epilogues (scale, shift, SiLU) shared by the CPU kernels.
//
// Two implementations: AVX-512 intrinsics (picked at run time when the CPU has AVX-512F), and a
// portable loop that the compiler vectorises for AVX2 or SSE. The AVX-512 SiLU avoids the divider
// (rcp14 + one Newton step) and uses scalef for 2^n, about half the instructions of the portable
// exp; its stores are non-temporal for large final outputs, which saves the read-for-ownership
// traffic of a normal store (a third of the bytes moved by a normalise-and-write pass).
#include "elementwise.h"

#include "common.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define GF_HAVE_X86 1
#endif

namespace genai_fast {
namespace {

#define GF_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))

GF_CLONES void scale_shift_portable(const float* x, float* y, int64_t n, float scale, float shift, bool act) {
  if (act) {
    for (int64_t i = 0; i < n; ++i) y[i] = silu(x[i] * scale + shift);
  } else {
    for (int64_t i = 0; i < n; ++i) y[i] = x[i] * scale + shift;
  }
}

GF_CLONES void scale_shift_rows_portable(const float* x, float* y, int64_t rows, int64_t C, const float* scale,
                                         const float* shift, bool act) {
  for (int64_t r = 0; r < rows; ++r, x += C, y += C) {
    if (act) {
      for (int64_t c = 0; c < C; ++c) y[c] = silu(x[c] * scale[c] + shift[c]);
    } else {
      for (int64_t c = 0; c < C; ++c) y[c] = x[c] * scale[c] + shift[c];
    }
  }
}

GF_CLONES void halves_to_floats_portable(const uint16_t* src, float* dst, int64_t n, bool is_bf16) {
  if (is_bf16) {
    for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_float(src[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = fp16_to_float(src[i]);
  }
}

GF_CLONES void floats_to_halves_portable(const float* src, uint16_t* dst, int64_t n, bool is_bf16) {
  if (is_bf16) {
    for (int64_t i = 0; i < n; ++i) dst[i] = float_to_bf16(src[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = float_to_fp16(src[i]);
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

GF_AVX512 inline void store16(float* y, __m512 v, bool streaming) {
  if (streaming) {
    _mm512_stream_ps(y, v);
  } else {
    _mm512_storeu_ps(y, v);
  }
}

GF_AVX512 void scale_shift_avx512(const float* x, float* y, int64_t n, float scale, float shift, bool act,
                                  bool streaming, const float* prefetch) {
  const __m512 s = _mm512_set1_ps(scale), b = _mm512_set1_ps(shift);
  int64_t i = 0;
  // Scalar head up to a 64-byte boundary of y, so the streaming stores are aligned.
  const int64_t head = std::min<int64_t>(n, ((64 - (reinterpret_cast<uintptr_t>(y) & 63)) & 63) / 4);
  const bool aligned_ok = (reinterpret_cast<uintptr_t>(y) & 3) == 0;
  streaming = streaming && aligned_ok;
  if (streaming) {
    scale_shift_portable(x, y, head, scale, shift, act);
    i = head;
  }
  for (; i + 16 <= n; i += 16) {
    if (prefetch) _mm_prefetch(reinterpret_cast<const char*>(prefetch + i), _MM_HINT_T1);
    __m512 v = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), s, b);
    if (act) v = silu16(v);
    store16(y + i, v, streaming);
  }
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    __m512 v = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x + i), s, b);
    if (act) v = silu16(v);
    _mm512_mask_storeu_ps(y + i, m, v);
  }
}

GF_AVX512 void scale_shift_rows_avx512(const float* x, float* y, int64_t rows, int64_t C, const float* scale,
                                       const float* shift, bool act, bool streaming) {
  // Streaming stores need every row start 64-byte aligned: the output start and C a multiple of 16.
  streaming = streaming && (reinterpret_cast<uintptr_t>(y) & 63) == 0 && C % 16 == 0;
  const __mmask16 tail = static_cast<__mmask16>((1u << (C % 16)) - 1);
  for (int64_t r = 0; r < rows; ++r, x += C, y += C) {
    int64_t c = 0;
    for (; c + 16 <= C; c += 16) {
      __m512 v = _mm512_fmadd_ps(_mm512_loadu_ps(x + c), _mm512_loadu_ps(scale + c), _mm512_loadu_ps(shift + c));
      if (act) v = silu16(v);
      store16(y + c, v, streaming);
    }
    if (c < C) {
      __m512 v = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, x + c), _mm512_maskz_loadu_ps(tail, scale + c),
                                 _mm512_maskz_loadu_ps(tail, shift + c));
      if (act) v = silu16(v);
      _mm512_mask_storeu_ps(y + c, tail, v);
    }
  }
}

// fp16 <-> fp32 with the AVX-512F conversion instructions (the compiler does not vectorise _Float16
// conversions); bf16 vectorises in the portable loops.
GF_AVX512 void fp16_to_floats_avx512(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i))));
  for (; i < n; ++i) dst[i] = fp16_to_float(src[i]);
}

GF_AVX512 void floats_to_fp16_avx512(const float* src, uint16_t* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i),
                        _mm512_cvtps_ph(_mm512_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  for (; i < n; ++i) dst[i] = float_to_fp16(src[i]);
}

bool cpu_has_avx512() {
  static const bool has = __builtin_cpu_supports("avx512f");
  return has;
}
#endif

}  // namespace

void scale_shift(const float* x, float* y, int64_t n, float scale, float shift, bool act, bool streaming,
                 const float* prefetch) {
#ifdef GF_HAVE_X86
  if (cpu_has_avx512()) return scale_shift_avx512(x, y, n, scale, shift, act, streaming && n >= 1024, prefetch);
#endif
  (void)streaming, (void)prefetch;
  scale_shift_portable(x, y, n, scale, shift, act);
}

void scale_shift_rows(const float* x, float* y, int64_t rows, int64_t C, const float* scale, const float* shift,
                      bool act, bool streaming) {
#ifdef GF_HAVE_X86
  if (cpu_has_avx512()) return scale_shift_rows_avx512(x, y, rows, C, scale, shift, act, streaming);
#endif
  (void)streaming;
  scale_shift_rows_portable(x, y, rows, C, scale, shift, act);
}

void halves_to_floats(const uint16_t* src, float* dst, int64_t n, bool is_bf16) {
#ifdef GF_HAVE_X86
  if (!is_bf16 && cpu_has_avx512()) return fp16_to_floats_avx512(src, dst, n);
#endif
  halves_to_floats_portable(src, dst, n, is_bf16);
}

void floats_to_halves(const float* src, uint16_t* dst, int64_t n, bool is_bf16) {
#ifdef GF_HAVE_X86
  if (!is_bf16 && cpu_has_avx512()) return floats_to_fp16_avx512(src, dst, n);
#endif
  floats_to_halves_portable(src, dst, n, is_bf16);
}

void store_fence() {
#ifdef GF_HAVE_X86
  _mm_sfence();
#endif
}

}  // namespace genai_fast

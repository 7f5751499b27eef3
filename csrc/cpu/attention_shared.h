// What the CPU attention forward (attention.cpp) and backward (attention_backward.cpp) share: the mask
// (AttentionMask, attention.h), its checks and its application to a row of scores, the product of a few
// query rows with a panel of 64 keys stored transposed, and logit soft-capping and the causal sliding window
// (the decode kernel, decode_attention.cpp, uses these two as well).
#pragma once

#include <cmath>
#include <cstdint>
#include <string>

#include "attention.h"
#include "simd.h"

namespace genai_fast {

constexpr int64_t kPanel = 64;  // keys per panel: Kt [depth, 64], contiguous

GF_INLINE int64_t round16(int64_t n) { return (n + 15) / 16 * 16; }

// out[i * out_ld + 16 t + l] = sum_c rows[i * ld + c] * panel[c * kPanel + 16 t + l] for RB rows and NV vectors of
// keys (a panel, or a part of one from its first key on), over `depth` channels: RB x NV independent
// multiply-add chains, each loaded key vector used RB times.
template <int RB, int NV>
GF_INLINE void panel_product(const float* rows, int64_t ld, const float* panel, int64_t depth, float* out,
                             int64_t out_ld) {
  v16 acc[RB][NV] = {};
  for (int64_t c = 0; c < depth; ++c) {
    v16 keys[NV];
    for (int t = 0; t < NV; ++t) keys[t] = load16(panel + c * kPanel + 16 * t);
    for (int i = 0; i < RB; ++i) {
      const float x = rows[i * ld + c];
      for (int t = 0; t < NV; ++t) acc[i][t] += x * keys[t];
    }
  }
  for (int i = 0; i < RB; ++i)
    for (int t = 0; t < NV; ++t) store16(out + i * out_ld + 16 * t, acc[i][t]);
}

// acc_i = acc_i * rescale_i + sum_j w[i * w_ld + j] rows_j over rows [0, n) (each `ld` floats, padded to whole
// vectors) for RB weight rows, on vectors [t0, t0 + G) of each (acc_i at acc + i * ld): each row vector is loaded
// once for the RB weight rows, whose G vectors of sums stay in registers. The forward's value sums (weights P,
// rows V, rescaled by the online softmax) and the backward's dQ (weights dS, rows K, rescale 1).
template <int G, int RB>
GF_INLINE void weighted_rows(const float* w, int64_t w_ld, const float (&rescale)[RB], const float* rows, int64_t ld,
                             int64_t n, int64_t t0, float* acc) {
  v16 sums[RB][G];
  for (int i = 0; i < RB; ++i)
    for (int t = 0; t < G; ++t) sums[i][t] = load16(acc + i * ld + 16 * (t0 + t)) * rescale[i];
  for (int64_t j = 0; j < n; ++j) {
    v16 row[G];
    for (int t = 0; t < G; ++t) row[t] = load16(rows + j * ld + 16 * (t0 + t));
    for (int i = 0; i < RB; ++i) {
      const float weight = w[i * w_ld + j];
      for (int t = 0; t < G; ++t) sums[i][t] += weight * row[t];
    }
  }
  for (int i = 0; i < RB; ++i)
    for (int t = 0; t < G; ++t) store16(acc + i * ld + 16 * (t0 + t), sums[i][t]);
}

// Throws std::invalid_argument when the mask's strides reach past its buffer for [B, Hq, Sq, Sk].
inline void validate_mask(const AttentionMask& m, int64_t B, int64_t Hq, int64_t Sq, int64_t Sk) {
  if (!m.present()) return;
  require(m.add == nullptr || m.keep == nullptr, "mask: expected additive values or booleans, not both");
  int64_t last = 0;
  const int64_t sizes[4] = {B, Hq, Sq, Sk};
  for (int i = 0; i < 4; ++i) {
    require(m.strides[i] >= 0, "mask: expected strides >= 0");
    last = checked_add(last, checked_mul(sizes[i] - 1, m.strides[i], "mask"), "mask");
  }
  require(last < m.extent, "mask: its shape [B, Hq, Sq, Sk] and strides reach past its buffer");
}

// Applies the mask to scores row[0, valid) of query row r of head h of sequence b, keys j0 onwards: adds the
// additive values, or sets the removed scores to -inf. Unit key strides (the common case) go 16 keys at a time.
GF_INLINE void mask_row(const AttentionMask& m, int64_t b, int64_t h, int64_t r, int64_t j0, int64_t valid,
                        float* row) {
  const int64_t* ms = m.strides;
  const int64_t base = b * ms[0] + h * ms[1] + r * ms[2] + j0 * ms[3];
  int64_t j = 0;
  if (ms[3] == 1 && m.add != nullptr) {
    for (; j + 16 <= valid; j += 16) store16(row + j, load16(row + j) + load16(m.add + base + j));
  } else if (ms[3] == 1) {
    for (; j + 16 <= valid; j += 16) {
      v16i keep;
      for (int t = 0; t < 16; ++t) keep[t] = m.keep[base + j + t];
      store16(row + j, keep != 0 ? load16(row + j) : -INFINITY);
    }
  }
  for (; j < valid; ++j) {
    const int64_t at = base + j * ms[3];
    if (m.add != nullptr) {
      row[j] += m.add[at];
    } else if (m.keep[at] == 0) {
      row[j] = -INFINITY;
    }
  }
}

// ---- logit soft-capping and the causal sliding window (AttentionArgs::softcap and ::window)

// Throws std::invalid_argument unless softcap is finite and >= 0 and window >= 0, and a window comes with causal
// (it counts back from each query's causal position).
inline void validate_softcap_window(float softcap, int64_t window, bool causal) {
  require(std::isfinite(softcap) && softcap >= 0.0f,
          "softcap: expected a finite value >= 0 (0 for none), got " + std::to_string(softcap));
  require(window >= 0, "window: expected >= 0 (0 for none), got " + std::to_string(window));
  require(window == 0 || causal, "window: a sliding window needs causal=True (got window=" + std::to_string(window) +
                                     " with causal=False)");
}

// The first key that query `position` sees under a window of `window` keys ending at its own (0: no window):
// keys j with position - window < j. Written so that no window size overflows.
GF_INLINE int64_t window_start(int64_t position, int64_t window) {
  return window > 0 && position >= window ? position - window + 1 : 0;
}

// tanh of 16 floats, within about 2e-7 relative: x + x^3 P(x^2) for |x| < 0.625 (P a minimax fit of the relative
// error, made for this file), else 1 - 2 / (exp(2|x|) + 1) with x's sign (exp16 clamps, so +-inf give +-1). NaN
// stays NaN.
GF_INLINE v16 tanh16(v16 x) {
  const v16 a = x < 0.0f ? -x : x;
  const v16 u = x * x;
  v16 p = u * -5.704988725e-03f + 2.063908987e-02f;
  p = p * u - 5.373971537e-02f;
  p = p * u + 1.333144158e-01f;
  p = p * u - 3.333328068e-01f;
  const v16 near = x + x * u * p;
  const v16 far = 1.0f - 2.0f / (exp16(a + a) + 1.0f);
  const v16 value = a < 0.625f ? near : (x < 0.0f ? -far : far);
  return x == x ? value : x;
}

// x[0, n) = cap * tanh(x / cap): soft-capped scores (cap > 0). A tail shorter than a vector goes through a
// zero-padded one, so every score is capped by the same arithmetic.
GF_INLINE void softcap_scores(float* x, int64_t n, float cap) {
  const float inverse = 1.0f / cap;
  for (int64_t j = 0; j < n; j += 16) {
    const int64_t count = std::min<int64_t>(16, n - j);
    store_part(x + j, cap * tanh16(load_part(x + j, count) * inverse), count);
  }
}

// The backward's form of softcap_scores for n a multiple of 16: also slope[j] = d capped / d score = 1 - tanh^2.
GF_INLINE void softcap_scores_and_slopes(float* x, float* slope, int64_t n, float cap) {
  const float inverse = 1.0f / cap;
  for (int64_t j = 0; j < n; j += 16) {
    const v16 t = tanh16(load16(x + j) * inverse);
    store16(x + j, cap * t);
    store16(slope + j, 1.0f - t * t);
  }
}

// Which keys of a block each of RB consecutive query rows (the first `first_row`) sees, for the forward's
// schemes: [lo[i], hi[i]), counted from the block's first key j0, of the block's n. Scores are computed over
// [from, widest): `from` is the lowest lo of the rows that see a key here, rounded down to whole vectors, so that
// under a window keys below every row's window are skipped. A row that sees none gets lo = hi >= from; `any`
// says whether some row sees a key. Without a window lo and from are 0 (and no more is computed).
template <int RB>
struct RowBands {
  int64_t lo[RB], hi[RB], from = 0, widest = 0;
  bool any = false;
};

// The window's part of row_bands: each row's lo, then `from` and `any`.
template <int RB>
GF_INLINE void narrow_to_windows(const AttentionArgs& a, int64_t first_row, int64_t j0, int64_t n, RowBands<RB>& band) {
  int64_t lowest = n;
  band.any = false;
  for (int i = 0; i < RB; ++i) {
    band.lo[i] = std::clamp<int64_t>(window_start(first_row + i, a.window) - j0, 0, band.hi[i]);
    if (band.lo[i] < band.hi[i]) lowest = std::min(lowest, band.lo[i]), band.any = true;
  }
  band.from = std::min(lowest, band.widest) / 16 * 16;
  for (int i = 0; i < RB; ++i) {  // rows that see nothing: an empty range at or past `from`
    band.lo[i] = std::max(band.lo[i], band.from);
    band.hi[i] = std::max(band.hi[i], band.lo[i]);
  }
}

template <int RB>
GF_INLINE RowBands<RB> row_bands(const AttentionArgs& a, int64_t first_row, int64_t j0, int64_t n) {
  RowBands<RB> band;
  for (int i = 0; i < RB; ++i) {
    const int64_t row = first_row + i;  // causal, top-left: row i sees keys j <= i
    band.hi[i] = std::clamp<int64_t>((a.causal ? std::min(a.Sk, row + 1) : a.Sk) - j0, 0, n);
    band.lo[i] = 0;
    band.widest = std::max(band.widest, band.hi[i]);
  }
  band.any = band.widest > 0;
  if (a.window > 0) narrow_to_windows(a, first_row, j0, n, band);
  return band;
}

}  // namespace genai_fast

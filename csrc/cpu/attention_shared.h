// What the CPU attention forward (attention.cpp) and backward (attention_backward.cpp) share: the mask
// (AttentionMask, attention.h), its checks and its application to a row of scores, and the product of a few
// query rows with a panel of 64 keys stored transposed.
#pragma once

#include <cmath>
#include <cstdint>

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

}  // namespace genai_fast

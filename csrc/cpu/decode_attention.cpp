// Decode attention on the CPU: each of a few new queries per sequence attends over that sequence's own
// number of cached positions, fp32.
//
// At decode time a query row meets at most a few thousand cached keys of a few dozen floats, so the work
// per (sequence, head) is tiny and torch's SDPA call costs more in setup than in arithmetic; a ragged batch
// also needs one torch call per sequence. Here one call covers the batch: every (sequence, query head,
// query) row computes its scores over its visible positions (exact two-pass softmax in fp32: the maximum,
// then exp and sum), then the weighted sum of values. Query heads of a GQA group read their shared K/V
// head in place. Rows with no visible position give zeros, as the reference's safe softmax does.
#include "decode_attention.h"
#include "simd.h"

#include <string>
#include <vector>

namespace genai_fast {
namespace {

GF_INLINE float dot(const float* a, const float* b, int64_t n) {
  const int64_t n16 = n / 16 * 16;
  v16 acc = {};
  for (int64_t i = 0; i < n16; i += 16) acc += load16(a + i) * load16(b + i);
  float total = hsum(acc);
  for (int64_t i = n16; i < n; ++i) total += a[i] * b[i];
  return total;
}

GF_INLINE void axpy(float alpha, const float* x, float* y, int64_t n) {
  const int64_t n16 = n / 16 * 16;
  for (int64_t i = 0; i < n16; i += 16) store16(y + i, load16(y + i) + alpha * load16(x + i));
  for (int64_t i = n16; i < n; ++i) y[i] += alpha * x[i];
}

// One query row: q [D] against positions [0, visible) of one K/V head -> out [Dv]. scores: scratch.
GF_CLONES void attend_row(const DecodeAttentionArgs& a, const float* q, const float* k, const float* v,
                          int64_t visible, float* out, std::vector<float>& scores) {
  for (int64_t j = 0; j < a.Dv; ++j) out[j] = 0.0f;
  if (visible <= 0) return;
  scores.resize(static_cast<size_t>(visible));
  float top = -INFINITY;
  for (int64_t s = 0; s < visible; ++s) {
    scores[s] = dot(q, k + s * a.k_strides[2], a.D) * a.scale;
    top = std::max(top, scores[s]);
  }
  float total = 0.0f;
  for (int64_t s = 0; s < visible; ++s) {
    scores[s] = std::exp(scores[s] - top);
    total += scores[s];
  }
  for (int64_t s = 0; s < visible; ++s) axpy(scores[s], v + s * a.v_strides[2], out, a.Dv);
  const float inv = 1.0f / total;
  for (int64_t j = 0; j < a.Dv; ++j) out[j] *= inv;
}

}  // namespace

void validate(const DecodeAttentionArgs& a) {
  require(a.q != nullptr && a.k_cache != nullptr && a.v_cache != nullptr && a.out != nullptr &&
              a.lengths != nullptr, "q, k_cache, v_cache, out, lengths: expected non-null addresses");
  require(a.B >= 1 && a.Hq >= 1 && a.Hkv >= 1 && a.Sq >= 1 && a.D >= 1 && a.Dv >= 1 && a.S_max >= 0,
          "q, k_cache, v_cache: expected non-empty shapes");
  require(a.Hq % a.Hkv == 0, "q: expected a head count " + std::to_string(a.Hq) + " divisible by the cache's " +
                                 std::to_string(a.Hkv));
  for (int64_t b = 0; b < a.B; ++b) {
    require(a.lengths[b] >= 0 && a.lengths[b] <= a.S_max,
            "lengths: sequence " + std::to_string(b) + " has " + std::to_string(a.lengths[b]) +
                " positions, expected 0 to S_max=" + std::to_string(a.S_max));
  }
  auto last = [](const int64_t* strides, int64_t n0, int64_t n1, int64_t n2, int64_t d) {
    return (n0 - 1) * strides[0] + (n1 - 1) * strides[1] + (n2 - 1) * strides[2] + d;
  };
  for (int i = 0; i < 3; ++i) {
    require(a.q_strides[i] >= 0 && a.k_strides[i] >= 0 && a.v_strides[i] >= 0, "strides: expected >= 0");
  }
  require(last(a.q_strides, a.B, a.Hq, a.Sq, a.D) <= a.q_extent, "q: its shape and strides reach past its buffer");
  const int64_t s_rows = std::max<int64_t>(a.S_max, 1);
  require(last(a.k_strides, a.B, a.Hkv, s_rows, a.D) <= a.k_extent,
          "k_cache: its shape and strides reach past its buffer");
  require(last(a.v_strides, a.B, a.Hkv, s_rows, a.Dv) <= a.v_extent,
          "v_cache: its shape and strides reach past its buffer");
  require(a.out_numel == a.B * a.Hq * a.Sq * a.Dv,
          "out: expected " + std::to_string(a.B * a.Hq * a.Sq * a.Dv) + " elements, got " +
              std::to_string(a.out_numel));
  require(a.num_threads >= 1, "num_threads: expected >= 1");
}

void decode_attention_forward(const DecodeAttentionArgs& a) {
  const int64_t rows = a.B * a.Hq * a.Sq, group = a.Hq / a.Hkv;
  int64_t work = 0;  // multiply-adds, to decide whether waking threads pays
  for (int64_t b = 0; b < a.B; ++b) work += a.lengths[b] * a.Hq * a.Sq * (a.D + a.Dv);
  const int workers = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(a.num_threads, work >> 18)));
  parallel_for(rows, workers, [&](int64_t row) {
    thread_local std::vector<float> scores;
    const int64_t i = row % a.Sq, h = row / a.Sq % a.Hq, b = row / (a.Sq * a.Hq);
    const int64_t length = a.lengths[b];
    const int64_t visible = a.causal ? std::min(length, length - a.Sq + i + 1) : length;
    const float* q = a.q + b * a.q_strides[0] + h * a.q_strides[1] + i * a.q_strides[2];
    const float* k = a.k_cache + b * a.k_strides[0] + (h / group) * a.k_strides[1];
    const float* v = a.v_cache + b * a.v_strides[0] + (h / group) * a.v_strides[1];
    attend_row(a, q, k, v, visible, a.out + row * a.Dv, scores);
  });
}

}  // namespace genai_fast

// GEGLU for the feed-forward of diffusers' transformer blocks: the projection's output row holds the
// value half and the gate half; out = value * GELU(gate), fp32.
//
// torch runs it as two passes over a strided half (F.gelu on the gate view, then the product), which on
// a CPU also leaves the vectorised path because the halves are not contiguous. Here one pass reads both
// halves of a row and writes the product. GELU is torch's: exact, x/2 (1 + erf(x / sqrt 2)), or the
// tanh approximation, written as x sigmoid(2u) with u = sqrt(2/pi) (x + 0.044715 x^3), which is the
// same function (1 + tanh u = 2 sigmoid(2u)) without the cancellation of 1 + tanh for negative u.
#include "geglu.h"
#include "simd.h"

#include <string>

namespace genai_fast {
namespace {

constexpr float kSqrtHalf = 0.70710678118654752f;
constexpr float kTanhScale = 1.5957691216057308f;  // 2 sqrt(2 / pi)

GF_INLINE v16 gelu16(v16 g, bool tanh) {
  if (tanh) {
    const v16 u = kTanhScale * (g + 0.044715f * g * g * g);
    const v16 y = g / (1.0f + exp16(-u));
    return g == -INFINITY ? NAN : y;  // torch: -inf * (1 + tanh(-inf)) / 2 = NaN
  }
  return g * 0.5f * (1.0f + erf16(g * kSqrtHalf));
}

GF_CLONES void geglu_rows(const GegluArgs& a, int64_t begin, int64_t end) {
  const int64_t H = a.H, h16 = H / 16 * 16;
  for (int64_t r = begin; r < end; ++r) {
    const float* value = a.x + r * a.x_row_stride;
    const float* gate = value + H;
    float* out = a.out + r * H;
    for (int64_t j = 0; j < h16; j += 16) store16(out + j, load16(value + j) * gelu16(load16(gate + j), a.tanh));
    if (h16 < H) {  // the tail through one zero-padded vector, so every element takes the same arithmetic
      const int64_t tail = H - h16;
      store_part(out + h16, load_part(value + h16, tail) * gelu16(load_part(gate + h16, tail), a.tanh), tail);
    }
  }
}

}  // namespace

void validate(const GegluArgs& a) {
  require(a.x != nullptr && a.out != nullptr, "x, out: expected non-null addresses");
  require(a.rows >= 1 && a.H >= 1, "x: expected a non-empty [rows, 2H] tensor");
  const int64_t row = checked_mul(2, a.H, "x");
  require(a.x_row_stride >= row, "x: row stride " + std::to_string(a.x_row_stride) + " is below 2H=" +
                                     std::to_string(row));
  require(a.x_numel >= checked_span({a.rows}, {a.x_row_stride}, row, "x"),
          "x: buffer of " + std::to_string(a.x_numel) + " elements is smaller than [rows, 2H] at its row stride");
  const int64_t out_numel = checked_mul(a.rows, a.H, "out");
  require(a.out_numel == out_numel,
          "out: expected " + std::to_string(out_numel) + " elements, got " + std::to_string(a.out_numel));
  require(a.num_threads >= 1, "num_threads: expected >= 1");
}

void geglu_forward(const GegluArgs& a) {
  // A second thread pays from about 8k outputs each (about 6 us of work; waking one costs a few).
  const int64_t work = a.rows * a.H;
  const int workers = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(a.num_threads, work >> 13)));
  const int64_t rows_per_task = std::max<int64_t>(1, 4096 / a.H);
  parallel_for((a.rows + rows_per_task - 1) / rows_per_task, workers, [&](int64_t task) {
    geglu_rows(a, task * rows_per_task, std::min(a.rows, (task + 1) * rows_per_task));
  });
}

}  // namespace genai_fast

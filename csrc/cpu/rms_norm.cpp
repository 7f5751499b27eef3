// RMSNorm for the LLM decode step: out[r] = weight * (x[r] * rsqrt(mean(x[r]^2) + eps)), fp32.
//
// At decode time each call normalises a few rows of a few hundred floats, and torch's composite rms_norm
// (about eight ops) costs 20-130 us per call on this class of CPU, against a few microseconds of work.
// One pass sums the squares in 16 fp32 lanes (a fixed order, so a row's result does not depend on the
// batch or the thread count), a second writes the output in HF's order of operations: x times the
// reciprocal square root, then times the weight.
#include "rms_norm.h"
#include "simd.h"

#include <string>

namespace genai_fast {
namespace {

GF_CLONES void normalise_rows(const RmsNormArgs& a, int64_t begin, int64_t end) {
  const int64_t D = a.D, d16 = D / 16 * 16;
  for (int64_t r = begin; r < end; ++r) {
    const float* x = a.x + r * a.x_row_stride;
    float* out = a.out + r * D;
    v16 acc = {};
    for (int64_t k = 0; k < d16; k += 16) {
      const v16 v = load16(x + k);
      acc += v * v;
    }
    float squares = hsum(acc);
    for (int64_t k = d16; k < D; ++k) squares += x[k] * x[k];
    const float inv = 1.0f / std::sqrt(squares / static_cast<float>(D) + static_cast<float>(a.eps));
    if (a.weight == nullptr) {
      for (int64_t k = 0; k < D; ++k) out[k] = x[k] * inv;
    } else {
      for (int64_t k = 0; k < D; ++k) out[k] = a.weight[k] * (x[k] * inv);
    }
  }
}

}  // namespace

void validate(const RmsNormArgs& a) {
  require(a.x != nullptr && a.out != nullptr, "x, out: expected non-null addresses");
  require(a.rows >= 1 && a.D >= 1, "x: expected a non-empty [rows, D] tensor");
  require(a.x_row_stride >= a.D, "x: row stride " + std::to_string(a.x_row_stride) + " is below D=" +
                                     std::to_string(a.D));
  require(a.x_numel >= checked_span({a.rows}, {a.x_row_stride}, a.D, "x"),
          "x: buffer of " + std::to_string(a.x_numel) + " elements is smaller than [rows, D] at its row stride");
  require(a.weight == nullptr || a.weight_numel == a.D,
          "weight: expected " + std::to_string(a.D) + " elements, got " + std::to_string(a.weight_numel));
  const int64_t out_numel = checked_mul(a.rows, a.D, "out");
  require(a.out_numel == out_numel,
          "out: expected " + std::to_string(out_numel) + " elements, got " + std::to_string(a.out_numel));
  require(a.eps >= 0, "eps: expected >= 0");
  require(a.num_threads >= 1, "num_threads: expected >= 1");
}

void rms_norm_forward(const RmsNormArgs& a) {
  // Threads only for big inputs (prefill-sized): waking one costs more than a decode step's rows.
  const int64_t work = a.rows * a.D;
  const int workers = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(a.num_threads, work >> 16)));
  constexpr int64_t kRowsPerTask = 16;
  parallel_for((a.rows + kRowsPerTask - 1) / kRowsPerTask, workers, [&](int64_t task) {
    normalise_rows(a, task * kRowsPerTask, std::min(a.rows, (task + 1) * kRowsPerTask));
  });
}

}  // namespace genai_fast

// RMSNorm over the last dimension, fp32: out = weight * (x * rsqrt(mean(x^2) + eps)). See rms_norm.cpp.
#pragma once

#include <cstdint>

#include "common.h"

namespace genai_fast {

struct RmsNormArgs {
  const float* x = nullptr;       // [rows, D], rows x_row_stride apart, unit stride inside a row
  const float* weight = nullptr;  // [D] or nullptr (no scale)
  float* out = nullptr;           // [rows, D] contiguous
  int64_t rows = 0, D = 0, x_row_stride = 0;
  int64_t x_numel = 0, weight_numel = 0, out_numel = 0;  // extents of the buffers, checked
  double eps = 1e-6;
  int num_threads = 1;
};

// Throws std::invalid_argument when a size or extent is inconsistent (before any memory is touched).
void validate(const RmsNormArgs& args);

void rms_norm_forward(const RmsNormArgs& args);

}  // namespace genai_fast

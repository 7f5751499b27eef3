// y = x W^T + b for a few rows of x (decode batches): see linear.cpp.
#pragma once

#include <cstdint>

#include "common.h"

namespace genai_fast {

// Largest row count the kernel takes; beyond it a blocked BLAS GEMM reuses each weight tile enough.
constexpr int64_t kSkinnyMaxRows = 16;

struct SkinnyLinearArgs {
  const float* x = nullptr;       // [M, K], rows x_row_stride apart, unit stride inside a row
  const float* weight = nullptr;  // [N, K] contiguous
  const float* bias = nullptr;    // [N] or nullptr
  float* out = nullptr;           // [M, N] contiguous
  int64_t M = 0, K = 0, N = 0;
  int64_t x_row_stride = 0;
  int64_t x_numel = 0, weight_numel = 0, bias_numel = 0, out_numel = 0;  // extents of the buffers, checked
  int num_threads = 1;
};

// Throws std::invalid_argument when a size or extent is inconsistent (before any memory is touched).
void validate(const SkinnyLinearArgs& args);

void skinny_linear_forward(const SkinnyLinearArgs& args);

}  // namespace genai_fast

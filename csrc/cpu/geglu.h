// GEGLU, fp32: out[r, j] = x[r, j] * GELU(x[r, H + j]) for the two halves of each row. See geglu.cpp.
#pragma once

#include <cstdint>

#include "common.h"

namespace genai_fast {

struct GegluArgs {
  const float* x = nullptr;  // [rows, 2H], rows x_row_stride apart, unit stride inside a row
  float* out = nullptr;      // [rows, H] contiguous
  int64_t rows = 0, H = 0, x_row_stride = 0;
  int64_t x_numel = 0, out_numel = 0;  // extents of the buffers, checked
  bool tanh = false;                   // GELU's tanh approximation instead of the exact (erf) one
  int num_threads = 1;
};

// Throws std::invalid_argument when a size or extent is inconsistent (before any memory is touched).
void validate(const GegluArgs& args);

void geglu_forward(const GegluArgs& args);

}  // namespace genai_fast

#pragma once
#include <cstdint>

#include "common.h"

namespace genai_fast {

// Arguments of one GroupNorm call over an [N, C, S] tensor (S = product of spatial sizes).
// weight/bias are fp32 [C] or null (identity); x and out share dtype and layout.
struct GroupNormArgs {
  const void* x = nullptr;
  void* out = nullptr;
  const float* weight = nullptr;
  const float* bias = nullptr;
  DType dtype = DType::Float32;
  int64_t N = 0, C = 0, S = 0, G = 1;
  int64_t x_numel = 0, out_numel = 0;  // element counts of the buffers, checked against N*C*S
  int64_t weight_numel = 0, bias_numel = 0;  // checked against C when weight / bias is given
  bool channels_last = false;
  double eps = 1e-5;
  bool silu = false;
  int num_threads = 1;
};

// Throws std::invalid_argument (ValueError in Python) naming the bad argument.
void validate(const GroupNormArgs& args);
void group_norm_forward(const GroupNormArgs& args);

}  // namespace genai_fast

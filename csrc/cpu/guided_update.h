// One diffusion sampler update with classifier-free guidance, fp32, in one pass. See guided_update.cpp.
#pragma once

#include <cstdint>

#include "common.h"

namespace genai_fast {

// The coefficients of out = c_x x + c_x0 x0 + c_m m + c_change (x0 - previous_x0) + c_noise noise, where
// m = uncond + guidance (cond - uncond) (m = uncond without guidance) and
// x0 = clamp(x0_from_x x + x0_from_m m, -clip, clip). A term whose coefficient is 0 is left out.
struct GuidedUpdateArgs {
  const float* x = nullptr;            // [n]
  const float* model_output = nullptr;  // [2n] (uncond then cond) when guided, else [n]
  const float* previous_x0 = nullptr;  // [n] or null
  const float* noise = nullptr;        // [n] or null
  float* out = nullptr;                // [n]
  float* x0_out = nullptr;             // [n] or null: where to keep x0
  int64_t n = 0;
  int64_t x_numel = 0, model_numel = 0, previous_numel = 0, noise_numel = 0, out_numel = 0, x0_numel = 0;
  bool guided = false;
  float guidance = 1.0f;
  float x0_from_x = 0.0f, x0_from_m = 0.0f, clip = INFINITY;
  float c_x = 0.0f, c_x0 = 0.0f, c_m = 0.0f, c_change = 0.0f, c_noise = 0.0f;
  int num_threads = 1;
};

// Throws std::invalid_argument when a size, extent or pointer is inconsistent (before memory is touched).
void validate(const GuidedUpdateArgs& args);

void guided_update_forward(const GuidedUpdateArgs& args);

}  // namespace genai_fast

// 3x3 stride-1 convolutions by Winograd's minimal filtering F(2x2, 3x3), fp32, channels-last. See
// winograd.cpp. The 16 products in between are one batched GEMM, run by the caller (torch.bmm).
#pragma once

#include <cstdint>

#include "common.h"

namespace genai_fast {

// Tiles: the output is cut into 2x2 tiles, tiles_h = ceil(H / 2) by tiles_w = ceil(W / 2) per image,
// P = N * tiles_h * tiles_w in all, tile p = (n * tiles_h + ty) * tiles_w + tx.
struct WinogradShape {
  int64_t N = 0, H = 0, W = 0, C = 0, C_out = 0;
  int64_t tiles_h() const { return (H + 1) / 2; }
  int64_t tiles_w() const { return (W + 1) / 2; }
  int64_t tiles() const { return N * tiles_h() * tiles_w(); }
};

// x [N, H, W, C] dense (channels-last), zero padding 1 -> V [16, P, C]: B^T d B of each tile's 4x4 window.
struct WinogradInputArgs {
  WinogradShape shape;
  const float* x = nullptr;
  float* V = nullptr;
  int64_t x_numel = 0, V_numel = 0;
  int num_threads = 1;
};

// weight element (o, c, i, j) at o * strides[0] + c * strides[1] + i * strides[2] + j * strides[3]
// -> U [16, C_out, C]: G g G^T of each 3x3 filter (input channels innermost, as channels-last weights
// store them; the GEMM reads U[k] transposed).
struct WinogradWeightArgs {
  WinogradShape shape;
  const float* weight = nullptr;
  int64_t strides[4] = {0, 0, 0, 0};
  int64_t weight_extent = 0;  // elements the strided weight spans
  float* U = nullptr;
  int64_t U_numel = 0;
  int num_threads = 1;
};

// M [16, P, C_out] (the products V[k] @ U[k]^T) -> out [N, H, W, C_out] dense: A^T m A per tile, then the
// epilogue (act(y + bias) + residual) * output_scale. bias: null, [C_out], or [N, C_out] (per_sample);
// residual: null or [N, H, W, C_out] dense.
struct WinogradOutputArgs {
  WinogradShape shape;
  const float* M = nullptr;
  const float* bias = nullptr;
  const float* residual = nullptr;
  float* out = nullptr;
  int64_t M_numel = 0, bias_numel = 0, residual_numel = 0, out_numel = 0;
  bool per_sample_bias = false, silu = false;
  float output_scale = 1.0f;
  int num_threads = 1;
};

// Each throws std::invalid_argument when a size, extent or pointer is inconsistent (before memory is touched).
void validate(const WinogradInputArgs& args);
void validate(const WinogradWeightArgs& args);
void validate(const WinogradOutputArgs& args);

void winograd_input_transform(const WinogradInputArgs& args);
void winograd_weight_transform(const WinogradWeightArgs& args);
void winograd_output_transform(const WinogradOutputArgs& args);

}  // namespace genai_fast

// y = x W^T + b with W kept in GGUF's block formats (Q4_0, Q4_1, Q8_0) for a few rows of x: see
// gguf_linear.cpp.
#pragma once

#include <cstdint>

#include "common.h"

namespace genai_fast {

// GGUF block formats the kernel reads; every block holds 32 consecutive weights of one row.
enum class GgufBlock : int { Q4_0 = 0, Q4_1 = 1, Q8_0 = 2 };
constexpr int64_t kGgufBlockWeights = 32;
constexpr int64_t kGgufMaxRows = 16;

// Bytes of one block: fp16 scale (+ fp16 minimum for Q4_1) and the 32 quants.
inline int64_t gguf_block_bytes(GgufBlock kind) {
  switch (kind) {
    case GgufBlock::Q4_0: return 18;
    case GgufBlock::Q4_1: return 20;
    default: return 34;
  }
}

inline GgufBlock gguf_block_from_code(int code) {
  if (code < 0 || code > 2) throw std::invalid_argument("block_type code: expected 0 (Q4_0), 1 (Q4_1) or 2 (Q8_0)");
  return static_cast<GgufBlock>(code);
}

struct GgufLinearArgs {
  const float* x = nullptr;        // [M, K], rows x_row_stride apart, unit stride inside a row
  const uint8_t* blocks = nullptr;  // [N, K / 32] blocks, row after row, no padding
  const float* bias = nullptr;     // [N] or nullptr
  float* out = nullptr;            // [M, N] contiguous
  GgufBlock kind = GgufBlock::Q8_0;
  int64_t M = 0, K = 0, N = 0;
  int64_t x_row_stride = 0;
  int64_t x_numel = 0, blocks_bytes = 0, bias_numel = 0, out_numel = 0;  // extents of the buffers, checked
  int num_threads = 1;
};

// Throws std::invalid_argument when a size or extent is inconsistent (before any memory is touched).
void validate(const GgufLinearArgs& args);

void gguf_linear_forward(const GgufLinearArgs& args);

// The fp32 weights the blocks hold, [N, K] into out (out_numel == N * K): the kernel's own expansion,
// for tests that compare it bit for bit with the gguf package's.
void gguf_dequantize(const GgufLinearArgs& args);

// The instruction set the kernel runs with: "avx512", "avx2" or "baseline" (see GENAI_FAST_CPU_ISA).
const char* gguf_linear_isa();

}  // namespace genai_fast

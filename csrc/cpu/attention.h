// scaled_dot_product_attention's forward and backward on the CPU, fp32: see attention.cpp and attention_backward.cpp.
#pragma once

#include <cstdint>

#include "common.h"

namespace genai_fast {

// Optional mask over [B, Hq, Sq, Sk] at element strides (0 along broadcast dimensions): additive fp32 values (add)
// or booleans as bytes (keep; 0 removes the score). At most one of the two.
struct AttentionMask {
  const float* add = nullptr;
  const uint8_t* keep = nullptr;
  int64_t strides[4] = {0, 0, 0, 0};
  int64_t extent = 0;  // elements reachable from the mask's address
  bool present() const { return add != nullptr || keep != nullptr; }
};

struct AttentionArgs {
  const float* q = nullptr;  // [B, Hq, Sq, D]
  const float* k = nullptr;  // [B, Hkv, Sk, D]
  const float* v = nullptr;  // [B, Hkv, Sk, Dv]
  float* out = nullptr;      // [B, Hq, Sq, Dv] contiguous
  float* lse = nullptr;      // optional [B, Hq, Sq] contiguous: each row's natural-log log-sum-exp of its scores
  int64_t B = 0, Hq = 0, Hkv = 0, Sq = 0, Sk = 0, D = 0, Dv = 0;
  int64_t q_strides[3] = {0, 0, 0};  // element strides of dims 0-2 (the last dimension is unit-stride)
  int64_t k_strides[3] = {0, 0, 0};
  int64_t v_strides[3] = {0, 0, 0};
  int64_t q_extent = 0, k_extent = 0, v_extent = 0;  // elements reachable from each address
  int64_t out_numel = 0, lse_numel = 0;
  float scale = 1.0f;
  bool causal = false;  // top-left, as torch: query i sees keys j <= i
  int num_threads = 1;
  // Which forward scheme runs: -1 picks by size, 0 the short-sequence one, 1 the streamed (key-blocked) one.
  int streamed = -1;
  AttentionMask mask;  // the streamed scheme reads it
  // Logit soft-capping (FlashAttention's softcap): each scaled score s becomes softcap * tanh(s / softcap) before
  // the mask and the softmax; 0 for none.
  float softcap = 0.0f;
  // Causal sliding window: query i sees keys j with i - window < j <= i; 0 for none (causal only).
  int64_t window = 0;
};

// The largest Dv the kernel serves (its output row is held in 16 vector registers).
constexpr int64_t kAttentionMaxDv = 256;

// Throws std::invalid_argument when a size, stride or extent is inconsistent (before memory is touched).
void validate(const AttentionArgs& args);

void attention_forward(const AttentionArgs& args);

// The gradients of attention_forward from its inputs, output and lse (all contiguous): dq, dk, dv.
struct AttentionBackwardArgs {
  const float* q = nullptr;         // [B, Hq, Sq, D]
  const float* k = nullptr;         // [B, Hkv, Sk, D]
  const float* v = nullptr;         // [B, Hkv, Sk, Dv]
  const float* out = nullptr;       // [B, Hq, Sq, Dv]
  const float* grad_out = nullptr;  // [B, Hq, Sq, Dv]
  const float* lse = nullptr;       // [B, Hq, Sq]
  float* dq = nullptr;              // [B, Hq, Sq, D]
  float* dk = nullptr;              // [B, Hkv, Sk, D]
  float* dv = nullptr;              // [B, Hkv, Sk, Dv]
  int64_t B = 0, Hq = 0, Hkv = 0, Sq = 0, Sk = 0, D = 0, Dv = 0;
  // Element counts of the buffers in the order above, checked against the shapes.
  int64_t q_numel = 0, k_numel = 0, v_numel = 0, out_numel = 0, grad_out_numel = 0, lse_numel = 0;
  int64_t dq_numel = 0, dk_numel = 0, dv_numel = 0;
  float scale = 1.0f;
  bool causal = false;
  int num_threads = 1;
  AttentionMask mask;  // the forward's mask (its own gradient is not computed)
  float softcap = 0.0f;  // the forward's (AttentionArgs)
  int64_t window = 0;    // the forward's (AttentionArgs)
};

void validate(const AttentionBackwardArgs& args);

void attention_backward(const AttentionBackwardArgs& args);

}  // namespace genai_fast

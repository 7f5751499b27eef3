// Attention of a few new queries per sequence against a KV cache with per-sequence lengths (decode),
// fp32: see decode_attention.cpp.
#pragma once

#include <cstdint>

#include "common.h"

namespace genai_fast {

struct DecodeAttentionArgs {
  const float* q = nullptr;        // [B, Hq, Sq, D]
  const float* k_cache = nullptr;  // [B, Hkv, S_max, D]
  const float* v_cache = nullptr;  // [B, Hkv, S_max, Dv]
  const int64_t* lengths = nullptr;  // [B] valid cache positions of each sequence (new tokens included)
  float* out = nullptr;            // [B, Hq, Sq, Dv] at out_strides
  float* lse = nullptr;            // optional [B, Hq, Sq] contiguous: each row's log-sum-exp of its scores
  int64_t B = 0, Hq = 0, Hkv = 0, Sq = 0, S_max = 0, D = 0, Dv = 0;
  int64_t q_strides[3] = {0, 0, 0};  // element strides of dims 0-2 (the last dimension is unit-stride)
  int64_t k_strides[3] = {0, 0, 0};
  int64_t v_strides[3] = {0, 0, 0};
  int64_t out_strides[3] = {0, 0, 0};
  int64_t q_extent = 0, k_extent = 0, v_extent = 0, out_extent = 0;  // elements reachable from each address
  int64_t lse_numel = 0;  // B * Hq * Sq when lse is given
  float scale = 1.0f;
  bool causal = true;  // bottom-right: query i sees positions <= length - Sq + i
  int num_threads = 1;
  float softcap = 0.0f;  // scores become softcap * tanh(score / softcap) before the softmax; 0 for none
  int64_t window = 0;    // causal sliding window: query i sees positions p with length - Sq + i - p < window
  const float* sinks = nullptr;  // optional [Hq] contiguous: one more logit in each row's softmax (GPT-OSS's s_aux)
  int64_t sinks_numel = 0;       // Hq when sinks is given
};

// Throws std::invalid_argument when a size, length or extent is inconsistent (before memory is touched).
void validate(const DecodeAttentionArgs& args);

void decode_attention_forward(const DecodeAttentionArgs& args);

}  // namespace genai_fast

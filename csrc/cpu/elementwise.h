#pragma once
#include <cstdint>

namespace genai_fast {

// y[i] = act(x[i] * scale + shift), act = SiLU or identity; x and y may alias.
// streaming: y is final output that will not be re-read soon, so non-temporal stores may be used.
// prefetch: optional n floats to pull into L2 meanwhile (the next piece of work), so the memory reads
// of the next piece overlap this piece's arithmetic and writes.
void scale_shift(const float* x, float* y, int64_t n, float scale, float shift, bool silu, bool streaming,
                 const float* prefetch = nullptr);

// y[r, c] = act(x[r, c] * scale[c] + shift[c]) over `rows` channels-last rows of C values.
void scale_shift_rows(const float* x, float* y, int64_t rows, int64_t C, const float* scale, const float* shift,
                      bool silu, bool streaming);

// fp16 or bf16 (as raw 16-bit values) to fp32 and back, rounding to nearest even like torch.
void halves_to_floats(const uint16_t* src, float* dst, int64_t n, bool is_bf16);
void floats_to_halves(const float* src, uint16_t* dst, int64_t n, bool is_bf16);

// Makes earlier non-temporal stores of this thread visible before it hands work back.
void store_fence();

}  // namespace genai_fast

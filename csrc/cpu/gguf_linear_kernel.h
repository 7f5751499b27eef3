// The gguf_linear kernel body, compiled once per instruction set: gguf_linear.cpp includes this file
// inside a namespace (avx512, avx2, baseline) under a matching `#pragma GCC target`, after defining with
// that set's instructions widen_u8 / widen_i8 (16 bytes -> 16 int32 lanes) and scale_and_min (a Q4_1
// block's fp16 d and m -> two vectors of 16 copies). Not a standalone header.

GF_INLINE v16 to_float(i32x16 q) { return __builtin_convertvector(q, v16); }

// Inlined, so the AVX2/AVX-512 versions convert with one F16C instruction (common.h's fp16_to_float is an
// out-of-line call to the baseline's software conversion).
GF_INLINE float load_fp16(const uint8_t* p) {
  _Float16 h;
  __builtin_memcpy(&h, p, 2);
  return static_cast<float>(h);
}

// One block -> its 32 weights as two 16-float vectors (weights 0-15 and 16-31).
// Q4 blocks keep weight j in the low nibble of quant byte j and weight j + 16 in its high nibble.
template <GgufBlock kKind>
struct Block;

template <>
struct Block<GgufBlock::Q4_0> {
  static constexpr int64_t kBytes = 18;
  static GF_INLINE void expand(const uint8_t* b, v16& lo, v16& hi) {
    const float d = load_fp16(b);
    u8x16 q;
    __builtin_memcpy(&q, b + 2, 16);
    const i32x16 q32 = widen_u8(q);
    lo = to_float((q32 & 15) - 8) * d;
    hi = to_float((q32 >> 4) - 8) * d;
  }
};

template <>
struct Block<GgufBlock::Q4_1> {
  static constexpr int64_t kBytes = 20;
  static GF_INLINE void expand(const uint8_t* b, v16& lo, v16& hi) {
    v16 d, m;
    scale_and_min(b, d, m);
    u8x16 q;
    __builtin_memcpy(&q, b + 4, 16);
    const i32x16 q32 = widen_u8(q);
    lo = to_float(q32 & 15) * d + m;
    hi = to_float(q32 >> 4) * d + m;
  }
};

template <>
struct Block<GgufBlock::Q8_0> {
  static constexpr int64_t kBytes = 34;
  static GF_INLINE void expand(const uint8_t* b, v16& lo, v16& hi) {
    const float d = load_fp16(b);
    i8x16 q0, q1;
    __builtin_memcpy(&q0, b + 2, 16);
    __builtin_memcpy(&q1, b + 18, 16);
    lo = to_float(widen_i8(q0)) * d;
    hi = to_float(widen_i8(q1)) * d;
  }
};

// Output rows [n0, n0 + R) for input rows [m0, m0 + M); compile-time M and R keep the accumulators in
// registers.
template <GgufBlock kKind, int M, int R>
GF_INLINE void block_rows(const GgufLinearArgs& a, int64_t m0, int64_t n0) {
  using B = Block<kKind>;
  const int64_t nb = a.K / kGgufBlockWeights, row_bytes = nb * B::kBytes;
  v16 acc[R][M] = {};
  const uint8_t* w[R];
  for (int r = 0; r < R; ++r) w[r] = a.blocks + (n0 + r) * row_bytes;
  const float* x[M];
  for (int m = 0; m < M; ++m) x[m] = a.x + (m0 + m) * a.x_row_stride;
  const int64_t ahead = (n0 + 2 * R <= a.N ? R : 0) * row_bytes;  // the next R rows (contiguous)
  for (int64_t b = 0; b < nb; ++b) {
    v16 lo[R], hi[R];
    for (int r = 0; r < R; ++r) {
      const uint8_t* blk = w[r] + b * B::kBytes;
      __builtin_prefetch(blk + ahead, 0, 3);
      B::expand(blk, lo[r], hi[r]);
    }
    for (int m = 0; m < M; ++m) {
      const v16 x0 = load16(x[m] + b * kGgufBlockWeights), x1 = load16(x[m] + b * kGgufBlockWeights + 16);
      for (int r = 0; r < R; ++r) {
        acc[r][m] += lo[r] * x0;
        acc[r][m] += hi[r] * x1;
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    const float bias = a.bias != nullptr ? a.bias[n0 + r] : 0.0f;
    for (int m = 0; m < M; ++m) a.out[(m0 + m) * a.N + n0 + r] = hsum(acc[r][m]) + bias;
  }
}

template <GgufBlock kKind, int M>
GF_INLINE void rows(const GgufLinearArgs& a, int64_t m0, int64_t n_begin, int64_t n_end) {
  constexpr int R = M <= 4 ? 4 : 2;  // R * M accumulators + 2R expanded vectors within 32 registers
  int64_t n = n_begin;
  for (; n + R <= n_end; n += R) block_rows<kKind, M, R>(a, m0, n);
  for (; n < n_end; ++n) block_rows<kKind, M, 1>(a, m0, n);
}

template <GgufBlock kKind>
GF_INLINE void range_of(const GgufLinearArgs& a, int64_t n_begin, int64_t n_end) {
  // Up to 8 input rows per pass over the blocks (more rows: another pass, from cache when it fits).
  for (int64_t m0 = 0; m0 < a.M; m0 += 8) {
    switch (std::min<int64_t>(8, a.M - m0)) {
      case 1: rows<kKind, 1>(a, m0, n_begin, n_end); break;
      case 2: rows<kKind, 2>(a, m0, n_begin, n_end); break;
      case 3: rows<kKind, 3>(a, m0, n_begin, n_end); break;
      case 4: rows<kKind, 4>(a, m0, n_begin, n_end); break;
      case 5: rows<kKind, 5>(a, m0, n_begin, n_end); break;
      case 6: rows<kKind, 6>(a, m0, n_begin, n_end); break;
      case 7: rows<kKind, 7>(a, m0, n_begin, n_end); break;
      default: rows<kKind, 8>(a, m0, n_begin, n_end); break;
    }
  }
}

void range(const GgufLinearArgs& a, int64_t n_begin, int64_t n_end) {
  switch (a.kind) {
    case GgufBlock::Q4_0: range_of<GgufBlock::Q4_0>(a, n_begin, n_end); break;
    case GgufBlock::Q4_1: range_of<GgufBlock::Q4_1>(a, n_begin, n_end); break;
    default: range_of<GgufBlock::Q8_0>(a, n_begin, n_end); break;
  }
}

template <GgufBlock kKind>
GF_INLINE void expand_rows(const GgufLinearArgs& a, int64_t n_begin, int64_t n_end) {
  using B = Block<kKind>;
  const int64_t nb = a.K / kGgufBlockWeights;
  for (int64_t n = n_begin; n < n_end; ++n) {
    for (int64_t b = 0; b < nb; ++b) {
      v16 lo, hi;
      B::expand(a.blocks + (n * nb + b) * B::kBytes, lo, hi);
      store16(a.out + n * a.K + b * kGgufBlockWeights, lo);
      store16(a.out + n * a.K + b * kGgufBlockWeights + 16, hi);
    }
  }
}

void expand_range(const GgufLinearArgs& a, int64_t n_begin, int64_t n_end) {
  switch (a.kind) {
    case GgufBlock::Q4_0: expand_rows<GgufBlock::Q4_0>(a, n_begin, n_end); break;
    case GgufBlock::Q4_1: expand_rows<GgufBlock::Q4_1>(a, n_begin, n_end); break;
    default: expand_rows<GgufBlock::Q8_0>(a, n_begin, n_end); break;
  }
}

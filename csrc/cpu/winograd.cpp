// Winograd F(2x2, 3x3) for 3x3, stride-1, padding-1 convolutions of channels-last fp32 activations.
//
// Each 2x2 block of outputs is Y = A^T [ (G g G^T) . (B^T d B) ] A, with d the 4x4 input window around
// it and g the 3x3 filter: 16 products per input/output channel pair instead of 36, so the GEMM work
// is 2.25x smaller than a direct convolution's. The transforms are additions (and halvings in G), so
// fp32 rounding grows little (the tests hold it to the float64 reference). The 16 GEMMs
// M[k] = V[k] @ U[k]^T ([P, C] @ [C, C_out]) run in between as one torch.bmm; these three passes produce
// V and U, and turn M into the output with the conv epilogue (bias, SiLU, residual, scale) applied while
// each output element is in a register.
//
//   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]   G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1]
//   A^T = [1 1 1 0; 0 1 -1 -1]
#include "winograd.h"
#include "simd.h"

#include <string>
#include <vector>

namespace genai_fast {
namespace {

// t = B^T d for one column of the window (d0..d3 top to bottom), or d B for one row (left to right).
GF_INLINE void bt4(v16 d0, v16 d1, v16 d2, v16 d3, v16& t0, v16& t1, v16& t2, v16& t3) {
  t0 = d0 - d2;
  t1 = d1 + d2;
  t2 = d2 - d1;
  t3 = d1 - d3;
}

// One tile's 16 window rows (src, a zero row where the window leaves the image) -> its 16 V rows.
GF_INLINE void input_block(const float* const (&src)[16], float* const (&dst)[16], int64_t c, int64_t count) {
  v16 d[16], t[16];
  for (int k = 0; k < 16; ++k) d[k] = load_part(src[k] + c, count);
  for (int j = 0; j < 4; ++j) bt4(d[j], d[4 + j], d[8 + j], d[12 + j], t[j], t[4 + j], t[8 + j], t[12 + j]);
  for (int i = 0; i < 4; ++i) {
    v16 v0, v1, v2, v3;
    bt4(t[4 * i], t[4 * i + 1], t[4 * i + 2], t[4 * i + 3], v0, v1, v2, v3);
    store_part(dst[4 * i] + c, v0, count);
    store_part(dst[4 * i + 1] + c, v1, count);
    store_part(dst[4 * i + 2] + c, v2, count);
    store_part(dst[4 * i + 3] + c, v3, count);
  }
}

GF_CLONES void input_tiles(const WinogradInputArgs& a, const float* zeros, int64_t begin, int64_t end) {
  const WinogradShape& s = a.shape;
  const int64_t th = s.tiles_h(), tw = s.tiles_w(), P = s.tiles(), C = s.C;
  for (int64_t p = begin; p < end; ++p) {
    const int64_t n = p / (th * tw), ty = p / tw % th, tx = p % tw;
    const float* src[16];
    float* dst[16];
    for (int i = 0; i < 4; ++i) {
      for (int j = 0; j < 4; ++j) {
        const int64_t h = 2 * ty - 1 + i, w = 2 * tx - 1 + j;
        const bool inside = h >= 0 && h < s.H && w >= 0 && w < s.W;
        src[4 * i + j] = inside ? a.x + ((n * s.H + h) * s.W + w) * C : zeros;
        dst[4 * i + j] = a.V + ((4 * i + j) * P + p) * C;
      }
    }
    for (int64_t c = 0; c < C; c += 16) input_block(src, dst, c, std::min<int64_t>(16, C - c));
  }
}

// m: the 16 M values of one tile and output channel block (row-major 4x4) -> the 2x2 outputs y0..y3.
GF_INLINE void output_block(const v16 (&m)[16], v16 (&y)[4]) {
  v16 r[8];  // A^T m: 2 rows of 4
  for (int j = 0; j < 4; ++j) {
    r[j] = m[j] + m[4 + j] + m[8 + j];
    r[4 + j] = m[4 + j] - m[8 + j] - m[12 + j];
  }
  for (int i = 0; i < 2; ++i) {
    y[2 * i] = r[4 * i] + r[4 * i + 1] + r[4 * i + 2];
    y[2 * i + 1] = r[4 * i + 1] - r[4 * i + 2] - r[4 * i + 3];
  }
}

GF_INLINE v16 silu16(v16 y) { return y / (1.0f + exp16(-y)); }

GF_CLONES void output_tiles(const WinogradOutputArgs& a, const float* zeros, float* discard, int64_t begin,
                            int64_t end) {
  const WinogradShape& s = a.shape;
  const int64_t th = s.tiles_h(), tw = s.tiles_w(), P = s.tiles(), Co = s.C_out;
  for (int64_t p = begin; p < end; ++p) {
    const int64_t n = p / (th * tw), ty = p / tw % th, tx = p % tw;
    const float* src[16];
    for (int k = 0; k < 16; ++k) src[k] = a.M + (k * P + p) * Co;
    float* dst[4];
    const float* res[4];
    for (int k = 0; k < 4; ++k) {  // outputs past an odd H or W are computed, then dropped
      const int64_t h = 2 * ty + k / 2, w = 2 * tx + k % 2;
      const bool inside = h < s.H && w < s.W;
      const int64_t offset = ((n * s.H + h) * s.W + w) * Co;
      dst[k] = inside ? a.out + offset : discard;
      res[k] = a.residual != nullptr && inside ? a.residual + offset : zeros;
    }
    const float* bias = a.bias == nullptr ? zeros : a.bias + (a.per_sample_bias ? n * Co : 0);
    for (int64_t o = 0; o < Co; o += 16) {
      const int64_t count = std::min<int64_t>(16, Co - o);
      v16 m[16], y[4];
      for (int k = 0; k < 16; ++k) m[k] = load_part(src[k] + o, count);
      output_block(m, y);
      const v16 b = load_part(bias + o, count);
      for (int k = 0; k < 4; ++k) {
        v16 v = y[k] + b;
        if (a.silu) v = silu16(v);
        if (a.residual != nullptr) v = v + load_part(res[k] + o, count);
        if (a.output_scale != 1.0f) v = v * a.output_scale;
        store_part(dst[k] + o, v, count);
      }
    }
  }
}

// Values c .. c+count-1 of filter tap (o, i, j) into a vector: a plain load for channels-last weights
// (input channels contiguous), a gather otherwise.
GF_INLINE v16 load_taps(const WinogradWeightArgs& a, const float* tap, int64_t count) {
  if (a.strides[1] == 1) return load_part(tap, count);
  float buffer[16] = {};
  for (int64_t j = 0; j < count; ++j) buffer[j] = tap[j * a.strides[1]];
  return load16(buffer);
}

// U[k, o, :] = (G g G^T)[k] for the filters [o_begin, o_end), 16 input channels at a time.
GF_CLONES void weight_rows(const WinogradWeightArgs& a, int64_t o_begin, int64_t o_end) {
  const int64_t C = a.shape.C, Co = a.shape.C_out;
  for (int64_t o = o_begin; o < o_end; ++o) {
    for (int64_t c = 0; c < C; c += 16) {
      const int64_t count = std::min<int64_t>(16, C - c);
      const float* g = a.weight + o * a.strides[0] + c * a.strides[1];
      v16 k[3][3], t[4][3];
      for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) k[i][j] = load_taps(a, g + i * a.strides[2] + j * a.strides[3], count);
      for (int j = 0; j < 3; ++j) {  // t = G g
        t[0][j] = k[0][j];
        t[1][j] = 0.5f * (k[0][j] + k[1][j] + k[2][j]);
        t[2][j] = 0.5f * (k[0][j] - k[1][j] + k[2][j]);
        t[3][j] = k[2][j];
      }
      for (int i = 0; i < 4; ++i) {  // U = t G^T
        const v16 u[4] = {t[i][0], 0.5f * (t[i][0] + t[i][1] + t[i][2]), 0.5f * (t[i][0] - t[i][1] + t[i][2]),
                          t[i][2]};
        for (int j = 0; j < 4; ++j) store_part(a.U + ((4 * i + j) * Co + o) * C + c, u[j], count);
      }
    }
  }
}

std::string count(int64_t n) { return std::to_string(n); }

void validate_shape(const WinogradShape& s) {
  require(s.N >= 1 && s.H >= 1 && s.W >= 1 && s.C >= 1 && s.C_out >= 1,
          "winograd: expected N, H, W, C, C_out >= 1, got " + count(s.N) + ", " + count(s.H) + ", " + count(s.W) +
              ", " + count(s.C) + ", " + count(s.C_out));
  // Every element count the checks below compare (N*H*W*C, 16*P*C, 16*C*C_out, ...) is at most this product,
  // so once it fits in int64 none of them wraps around.
  checked_product({16, s.N, checked_add(s.H, 1, "winograd"), checked_add(s.W, 1, "winograd"), s.C, s.C_out},
                  "winograd: N, H, W, C, C_out");
}

// Work split: about 64 tiles per task keeps a task's V/M rows in cache and the tasks plentiful.
constexpr int64_t kTilesPerTask = 64;

int workers_for(int64_t work, int num_threads) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads, work >> 15)));
}

}  // namespace

void validate(const WinogradInputArgs& a) {
  validate_shape(a.shape);
  const WinogradShape& s = a.shape;
  require(a.x != nullptr && a.V != nullptr, "x, V: expected non-null addresses");
  require(a.x_numel == s.N * s.H * s.W * s.C, "x: expected N*H*W*C=" + count(s.N * s.H * s.W * s.C) +
                                                  " elements, got " + count(a.x_numel));
  require(a.V_numel == 16 * s.tiles() * s.C, "V: expected 16*P*C=" + count(16 * s.tiles() * s.C) +
                                                 " elements, got " + count(a.V_numel));
  require(a.num_threads >= 1, "num_threads: expected >= 1");
}

void validate(const WinogradWeightArgs& a) {
  validate_shape(a.shape);
  const WinogradShape& s = a.shape;
  require(a.weight != nullptr && a.U != nullptr, "weight, U: expected non-null addresses");
  for (int64_t stride : a.strides) require(stride >= 0, "weight: expected non-negative strides");
  const int64_t last = checked_span({s.C_out, s.C, 3, 3}, {a.strides[0], a.strides[1], a.strides[2], a.strides[3]},
                                    0, "weight");
  require(last < a.weight_extent, "weight: its strides reach element " + count(last) + " of a buffer of " +
                                      count(a.weight_extent));
  require(a.U_numel == 16 * s.C * s.C_out, "U: expected 16*C*C_out=" + count(16 * s.C * s.C_out) +
                                               " elements, got " + count(a.U_numel));
  require(a.num_threads >= 1, "num_threads: expected >= 1");
}

void validate(const WinogradOutputArgs& a) {
  validate_shape(a.shape);
  const WinogradShape& s = a.shape;
  const int64_t out = s.N * s.H * s.W * s.C_out;
  require(a.M != nullptr && a.out != nullptr, "M, out: expected non-null addresses");
  require(a.M_numel == 16 * s.tiles() * s.C_out, "M: expected 16*P*C_out=" + count(16 * s.tiles() * s.C_out) +
                                                     " elements, got " + count(a.M_numel));
  require(a.out_numel == out, "out: expected N*H*W*C_out=" + count(out) + " elements, got " + count(a.out_numel));
  if (a.bias != nullptr) {
    const int64_t want = a.per_sample_bias ? s.N * s.C_out : s.C_out;
    require(a.bias_numel == want, "bias: expected " + count(want) + " elements, got " + count(a.bias_numel));
  }
  if (a.residual != nullptr)
    require(a.residual_numel == out, "residual: expected " + count(out) + " elements, got " + count(a.residual_numel));
  require(a.num_threads >= 1, "num_threads: expected >= 1");
}

void winograd_input_transform(const WinogradInputArgs& a) {
  const std::vector<float> zeros(a.shape.C, 0.0f);
  const int64_t P = a.shape.tiles();
  parallel_for((P + kTilesPerTask - 1) / kTilesPerTask, workers_for(16 * P * a.shape.C, a.num_threads),
               [&](int64_t task) {
                 input_tiles(a, zeros.data(), task * kTilesPerTask, std::min(P, (task + 1) * kTilesPerTask));
               });
}

void winograd_weight_transform(const WinogradWeightArgs& a) {
  parallel_for(a.shape.C_out, workers_for(16 * a.shape.C * a.shape.C_out, a.num_threads),
               [&](int64_t o) { weight_rows(a, o, o + 1); });
}

void winograd_output_transform(const WinogradOutputArgs& a) {
  const int64_t P = a.shape.tiles(), Co = a.shape.C_out;
  const std::vector<float> zeros(Co, 0.0f);
  parallel_for((P + kTilesPerTask - 1) / kTilesPerTask, workers_for(16 * P * Co, a.num_threads), [&](int64_t task) {
    std::vector<float> discard(Co);  // this task's sink for the outputs past an odd H or W
    output_tiles(a, zeros.data(), discard.data(), task * kTilesPerTask, std::min(P, (task + 1) * kTilesPerTask));
  });
}

}  // namespace genai_fast

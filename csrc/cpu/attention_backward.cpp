// scaled_dot_product_attention's backward on the CPU, fp32: dq, dk and dv from the forward's inputs, output and
// row log-sum-exps (P is recomputed, never stored).
//
// FlashAttention-2's order. A task takes one (sequence, K/V head) pair, or a share of its key blocks when there
// are fewer pairs than threads, and visits its keys 64 at a time. Each key block is packed three ways: keys
// transposed (Kt [D, 64]) for the scores, keys as rows (Kr [64, D16]) for dQ, values transposed (Vt [Dv, 64])
// for dP. Then every query row of the group's heads that sees the block passes over it, 16 rows at a time:
//   S = scale Q Kt (+ mask), P = exp(S - lse), dP = dO Vt, dS = scale P (dP - rowsum(dO * O)),
//   dV^T += dO^T P, dK^T += Q^T dS, dQ += dS Kr.
// The block's dK^T and dV^T [channels, 64] stay in L1/L2 until the last row has passed, then are written out
// once; dQ sums are the task's own (one scratch row per query row, written out at the end). Each product runs
// as register tiles of 4 rows (or channels) x 64 keys, 16 independent multiply-add chains, each loaded vector
// used four times: on one AVX-512 core that is about as fast as the forward's score loop.
//
// Rows the forward made NaN (a NaN or +inf score: lse NaN) give NaN weights on the keys they see, so NaN
// reaches every gradient those keys touch; rows whose scores were all -inf (lse -inf) have zero weights, as
// the forward's zero row has no gradient.
//
// Soft-capping (softcap c) recomputes the capped scores c tanh(S / c), as the forward's lse saw them, and takes
// dS through the cap: dS = scale P (dP - delta) (1 - tanh^2). A sliding window (window) passes over a key block
// only the query rows whose windows reach it, so a long sequence costs O(Sq * (window + 64)).

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "attention.h"
#include "attention_shared.h"
#include "simd.h"

namespace genai_fast {
namespace {

constexpr int64_t kKeys = kPanel;  // keys per block: one panel of four vectors
constexpr int64_t kRows = 16;  // query rows per pass over a block (the depth of the dK and dV updates)
constexpr int kTileRows = 4;   // rows (or channels) per register tile

// One thread's scratch: a packed key block and its gradient sums, one pass's P and dS rows, the task's dQ sums
// and rowsum(dO * O) per query row, and zero-padded copies of query and grad_out rows past the last one.
struct Scratch {
  std::vector<float> kt, vt, kr, dkt, dvt, p, ds, dq, delta, tail_q, tail_g;
  int64_t d16 = 0, rows_per_head = 0;  // dq row stride, and rows per head in dq (Sq plus a pass's overhang)
};

// What one task does: pair (b, kv), key blocks first, first + stride, ... (a round robin, so that causal shares
// get as many late, short blocks as early, long ones); dq goes to dq_out (the gradient itself, or a partial
// sum to be added to it).
struct Share {
  int64_t b = 0, kv = 0, first = 0, stride = 1;
  float* dq_out = nullptr;
};

void pack_key_block(const AttentionBackwardArgs& a, const Share& task, int64_t j0, int64_t n, Scratch& w) {
  std::fill(w.kt.begin(), w.kt.end(), 0.0f);
  std::fill(w.vt.begin(), w.vt.end(), 0.0f);
  std::fill(w.kr.begin(), w.kr.end(), 0.0f);
  const float* keys = a.k + ((task.b * a.Hkv + task.kv) * a.Sk + j0) * a.D;
  const float* values = a.v + ((task.b * a.Hkv + task.kv) * a.Sk + j0) * a.Dv;
  for (int64_t j = 0; j < n; ++j) {
    for (int64_t d = 0; d < a.D; ++d) w.kt[d * kKeys + j] = keys[j * a.D + d];
    std::copy(keys + j * a.D, keys + (j + 1) * a.D, w.kr.begin() + j * w.d16);
    for (int64_t e = 0; e < a.Dv; ++e) w.vt[e * kKeys + j] = values[j * a.Dv + e];
  }
}

// Rows [r, r + 4) of `src` (rows of `width` floats, `valid` of them real): the rows themselves, or a zero-padded
// copy in `tail` when the tile runs past the last row (never reading past the buffer).
GF_INLINE const float* tile_rows(const float* src, int64_t r, int64_t valid, int64_t width, std::vector<float>& tail) {
  if (r + kTileRows <= valid) return src + r * width;
  std::fill(tail.begin(), tail.end(), 0.0f);
  std::copy(src + r * width, src + valid * width, tail.begin());
  return tail.data();
}

// P and dS for one query row (global row index `row`, query row `i` of its head) from its scaled (and capped)
// scores (already in p) and dP (already in ds), against keys [j0, j0 + 16 NV) of which [lo, hi) are visible;
// slope: d capped / d score per key under softcap, else null. Without kExtras (no softcap, no window) lo is 0
// and slope null, and the loop is the one plain attention had.
template <int NV, bool kExtras>
GF_INLINE void row_weights(const AttentionBackwardArgs& a, int64_t b, int64_t h, int64_t i, int64_t row, int64_t j0,
                           int64_t lo, int64_t hi, const float* slope, float delta, float* p, float* ds) {
  const float lse = a.lse[row];
  if (lo >= hi || lse == -INFINITY) {  // every score -inf: the forward's row was 0 and has no gradient
    std::fill(p, p + 16 * NV, 0.0f);
    std::fill(ds, ds + 16 * NV, 0.0f);
    return;
  }
  if (a.mask.present()) mask_row(a.mask, b, h, i, j0 + lo, hi - lo, p + lo);
  const v16i lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  const bool poisoned = std::isnan(lse);  // a NaN or +inf score: NaN weights (exp16 would not carry NaN)
  for (int t = 0; t < NV; ++t) {
    const v16 s = load16(p + 16 * t);
    const v16i key = lane + static_cast<int>(16 * t);
    const v16i visible = kExtras ? (key >= static_cast<int>(lo)) & (key < static_cast<int>(hi))
                                 : key < static_cast<int>(hi);
    v16 weight = (visible & (s != -INFINITY)) ? exp16(s - lse) : 0.0f;
    if (poisoned) weight = visible ? v16{} + NAN : weight;
    store16(p + 16 * t, weight);
    v16 grad = weight * (load16(ds + 16 * t) - delta) * a.scale;
    if (kExtras && slope != nullptr) grad *= load16(slope + 16 * t);  // through the cap
    store16(ds + 16 * t, grad);
  }
}

// acc[(c0 + c) * kKeys + ...] += sum_r coef[r * ld + c0 + c] * w[r * kKeys + ...] for C channels and NV
// vectors of keys over `rows` rows: a block's dV^T (coef dO, w P) or dK^T (coef Q, w dS) update.
template <int C, int NV>
GF_INLINE void channel_tile(float* acc, int64_t c0, const float* coef, int64_t ld, const float* w, int64_t rows) {
  v16 sums[C][NV];
  for (int c = 0; c < C; ++c)
    for (int t = 0; t < NV; ++t) sums[c][t] = load16(acc + (c0 + c) * kKeys + 16 * t);
  for (int64_t r = 0; r < rows; ++r) {
    v16 wr[NV];
    for (int t = 0; t < NV; ++t) wr[t] = load16(w + r * kKeys + 16 * t);
    for (int c = 0; c < C; ++c) {
      const float x = coef[r * ld + c0 + c];
      for (int t = 0; t < NV; ++t) sums[c][t] += x * wr[t];
    }
  }
  for (int c = 0; c < C; ++c)
    for (int t = 0; t < NV; ++t) store16(acc + (c0 + c) * kKeys + 16 * t, sums[c][t]);
}

template <int NV>
GF_INLINE void accumulate_channels(float* acc, int64_t channels, const float* coef, int64_t ld, const float* w,
                                   int64_t rows) {
  int64_t c = 0;
  for (; c + kTileRows <= channels; c += kTileRows) channel_tile<kTileRows, NV>(acc, c, coef, ld, w, rows);
  switch (channels - c) {
    case 3: return channel_tile<3, NV>(acc, c, coef, ld, w, rows);
    case 2: return channel_tile<2, NV>(acc, c, coef, ld, w, rows);
    case 1: return channel_tile<1, NV>(acc, c, coef, ld, w, rows);
    default: return;
  }
}

// dq_i += sum_j ds[i * kKeys + j] kr_j for 4 rows over keys [0, n), 4 vectors of head channels at a time.
GF_INLINE void accumulate_queries(float* dq, int64_t d16, const float* ds, const float* kr, int64_t n) {
  constexpr float kOnes[kTileRows] = {1.0f, 1.0f, 1.0f, 1.0f};
  const int64_t vectors = d16 / 16;
  int64_t t = 0;
  for (; t + 4 <= vectors; t += 4) weighted_rows<4, kTileRows>(ds, kKeys, kOnes, kr, d16, n, t, dq);
  switch (vectors - t) {
    case 3: return weighted_rows<3, kTileRows>(ds, kKeys, kOnes, kr, d16, n, t, dq);
    case 2: return weighted_rows<2, kTileRows>(ds, kKeys, kOnes, kr, d16, n, t, dq);
    case 1: return weighted_rows<1, kTileRows>(ds, kKeys, kOnes, kr, d16, n, t, dq);
    default: return;
  }
}

// Query rows [r0, r0 + rows) of head h (the task's hh-th) against the packed block of keys [j0, j0 + n),
// n <= 16 NV; kExtras: softcap or window in use (row_weights).
template <int NV, bool kExtras>
GF_INLINE void pass_rows(const AttentionBackwardArgs& a, const Share& task, int64_t h, int64_t hh, int64_t r0,
                         int64_t rows, int64_t j0, int64_t n, Scratch& w) {
  const int64_t head_row = (task.b * a.Hq + h) * a.Sq;  // global index of the head's first query row
  const float* q = a.q + head_row * a.D;
  const float* g = a.grad_out + head_row * a.Dv;
  for (int64_t i = 0; i < rows; i += kTileRows) {
    float* p = w.p.data() + i * kKeys;
    float* ds = w.ds.data() + i * kKeys;
    panel_product<kTileRows, NV>(tile_rows(q, r0 + i, a.Sq, a.D, w.tail_q), a.D, w.kt.data(), a.D, p, kKeys);
    panel_product<kTileRows, NV>(tile_rows(g, r0 + i, a.Sq, a.Dv, w.tail_g), a.Dv, w.vt.data(), a.Dv, ds, kKeys);
    for (int r = 0; r < kTileRows; ++r) {
      const int64_t row = r0 + i + r;
      float* pr = p + r * kKeys;
      float* dsr = ds + r * kKeys;
      if (row >= r0 + rows) {  // past the pass's rows: zero weights (the dQ tile still reads them)
        std::fill(pr, pr + 16 * NV, 0.0f);
        std::fill(dsr, dsr + 16 * NV, 0.0f);
        continue;
      }
      for (int t = 0; t < NV; ++t) store16(pr + 16 * t, load16(pr + 16 * t) * a.scale);
      float slope[16 * NV];
      const bool capped = kExtras && a.softcap > 0.0f;
      if (capped) softcap_scores_and_slopes(pr, slope, 16 * NV, a.softcap);
      const int64_t hi = a.causal ? std::clamp<int64_t>(row - j0 + 1, 0, n) : n;
      const int64_t lo = kExtras ? std::clamp<int64_t>(window_start(row, a.window) - j0, 0, hi) : 0;
      row_weights<NV, kExtras>(a, task.b, h, row, head_row + row, j0, lo, hi, capped ? slope : nullptr,
                               w.delta[hh * a.Sq + row], pr, dsr);
    }
    accumulate_queries(w.dq.data() + (hh * w.rows_per_head + r0 + i) * w.d16, w.d16, ds, w.kr.data(), n);
  }
  accumulate_channels<NV>(w.dvt.data(), a.Dv, g + r0 * a.Dv, a.Dv, w.p.data(), rows);
  accumulate_channels<NV>(w.dkt.data(), a.D, q + r0 * a.D, a.D, w.ds.data(), rows);
}

void write_key_gradients(const AttentionBackwardArgs& a, const Share& task, int64_t j0, int64_t n, const Scratch& w) {
  float* dk = a.dk + ((task.b * a.Hkv + task.kv) * a.Sk + j0) * a.D;
  float* dv = a.dv + ((task.b * a.Hkv + task.kv) * a.Sk + j0) * a.Dv;
  for (int64_t j = 0; j < n; ++j) {
    for (int64_t d = 0; d < a.D; ++d) dk[j * a.D + d] = w.dkt[d * kKeys + j];
    for (int64_t e = 0; e < a.Dv; ++e) dv[j * a.Dv + e] = w.dvt[e * kKeys + j];
  }
}

// delta[hh * Sq + i] = rowsum(dO * O) of query row i of the task's hh-th head.
void row_deltas(const AttentionBackwardArgs& a, const Share& task, std::vector<float>& delta) {
  const int64_t group = a.Hq / a.Hkv;
  delta.resize(static_cast<size_t>(group * a.Sq));
  const int64_t first_row = (task.b * a.Hq + task.kv * group) * a.Sq;  // the group's heads are consecutive
  for (int64_t i = 0; i < group * a.Sq; ++i) {
    const float* g = a.grad_out + (first_row + i) * a.Dv;
    const float* o = a.out + (first_row + i) * a.Dv;
    float sum = 0.0f;
    for (int64_t e = 0; e < a.Dv; ++e) sum += g[e] * o[e];
    delta[i] = sum;
  }
}

// One task's share of the gradients; kExtras: softcap or window in use (compiled apart, so that plain attention
// runs the loops it had without them).
template <bool kExtras>
GF_CLONES void backward_share(const AttentionBackwardArgs& a, const Share& task, Scratch& w) {
  const int64_t group = a.Hq / a.Hkv, blocks = (a.Sk + kKeys - 1) / kKeys;
  w.d16 = round16(a.D);
  w.rows_per_head = a.Sq + kRows;
  w.kt.resize(static_cast<size_t>(a.D * kKeys)), w.kr.resize(static_cast<size_t>(kKeys * w.d16));
  w.vt.resize(static_cast<size_t>(a.Dv * kKeys));
  w.dkt.resize(w.kt.size()), w.dvt.resize(w.vt.size());
  w.p.resize(static_cast<size_t>(kRows * kKeys)), w.ds.resize(w.p.size());
  w.tail_q.resize(static_cast<size_t>(kTileRows * a.D)), w.tail_g.resize(static_cast<size_t>(kTileRows * a.Dv));
  w.dq.assign(static_cast<size_t>(group * w.rows_per_head * w.d16), 0.0f);
  row_deltas(a, task, w.delta);
  for (int64_t block = task.first; block < blocks; block += task.stride) {
    const int64_t j0 = block * kKeys, n = std::min(kKeys, a.Sk - j0);
    pack_key_block(a, task, j0, n, w);
    std::fill(w.dkt.begin(), w.dkt.end(), 0.0f);
    std::fill(w.dvt.begin(), w.dvt.end(), 0.0f);
    const int64_t first_row = a.causal ? j0 : 0;  // causal (top-left): row i sees keys j <= i
    // Under a window rows past j0 + n - 1 + window - 1 see none of the block.
    const int64_t end_row = a.window > 0 && a.window < a.Sq ? std::min(a.Sq, j0 + n - 1 + a.window) : a.Sq;
    for (int64_t hh = 0; hh < group; ++hh) {
      const int64_t h = task.kv * group + hh;
      for (int64_t r0 = first_row; r0 < end_row; r0 += kRows) {
        const int64_t rows = std::min(kRows, end_row - r0);
        switch ((n + 15) / 16) {  // the block's key vectors: fewer than four only at the end of the keys
          case 1: pass_rows<1, kExtras>(a, task, h, hh, r0, rows, j0, n, w); break;
          case 2: pass_rows<2, kExtras>(a, task, h, hh, r0, rows, j0, n, w); break;
          case 3: pass_rows<3, kExtras>(a, task, h, hh, r0, rows, j0, n, w); break;
          default: pass_rows<4, kExtras>(a, task, h, hh, r0, rows, j0, n, w); break;
        }
      }
    }
    write_key_gradients(a, task, j0, n, w);
  }
  for (int64_t hh = 0; hh < group; ++hh) {
    const int64_t head_row = (task.b * a.Hq + task.kv * group + hh) * a.Sq;
    for (int64_t i = 0; i < a.Sq; ++i) {
      const float* sums = w.dq.data() + (hh * w.rows_per_head + i) * w.d16;
      std::copy(sums, sums + a.D, task.dq_out + (head_row + i) * a.D);
    }
  }
}

}  // namespace

void validate(const AttentionBackwardArgs& a) {
  require(a.q && a.k && a.v && a.out && a.grad_out && a.lse && a.dq && a.dk && a.dv,
          "q, k, v, out, grad_out, lse, dq, dk, dv: expected non-null addresses");
  require(a.B >= 1 && a.Hq >= 1 && a.Hkv >= 1 && a.Sq >= 1 && a.Sk >= 1 && a.D >= 1 && a.Dv >= 1,
          "q, k, v: expected non-empty shapes");
  require(a.Hq % a.Hkv == 0, "q: expected a head count " + std::to_string(a.Hq) + " divisible by k's " +
                                 std::to_string(a.Hkv));
  auto check = [](int64_t got, int64_t want, const char* name) {
    require(got == want, std::string(name) + ": expected " + std::to_string(want) + " elements, got " +
                             std::to_string(got));
  };
  const int64_t q_rows = checked_product({a.B, a.Hq, a.Sq}, "q"), kv_rows = checked_product({a.B, a.Hkv, a.Sk}, "k");
  const int64_t q_numel = checked_mul(q_rows, a.D, "q"), out_numel = checked_mul(q_rows, a.Dv, "out");
  const int64_t k_numel = checked_mul(kv_rows, a.D, "k"), v_numel = checked_mul(kv_rows, a.Dv, "v");
  check(a.q_numel, q_numel, "q");
  check(a.k_numel, k_numel, "k");
  check(a.v_numel, v_numel, "v");
  check(a.out_numel, out_numel, "out");
  check(a.grad_out_numel, out_numel, "grad_out");
  check(a.lse_numel, q_rows, "lse");
  check(a.dq_numel, q_numel, "dq");
  check(a.dk_numel, k_numel, "dk");
  check(a.dv_numel, v_numel, "dv");
  require(std::isfinite(a.scale), "scale: expected a finite value");
  require(a.num_threads >= 1, "num_threads: expected >= 1");
  validate_softcap_window(a.softcap, a.window, a.causal);
  validate_mask(a.mask, a.B, a.Hq, a.Sq, a.Sk);
}

void attention_backward(const AttentionBackwardArgs& a) {
  const int64_t keys = a.window > 0 ? std::min(a.Sk, a.window) : a.Sk;  // the most keys a row sees
  const int64_t work = a.B * a.Hq * a.Sq * keys * (3 * a.D + 2 * a.Dv);  // multiply-adds (causal: about half)
  // Waking a thread costs a few microseconds: below ~32K multiply-adds per thread one thread is faster.
  const int workers = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(a.num_threads, work >> 15)));
  const int64_t pairs = a.B * a.Hkv, blocks = (a.Sk + kKeys - 1) / kKeys;
  // Fewer pairs than threads: split each pair's key blocks into shares, whose dQ sums are added up after.
  const int64_t shares = pairs >= workers ? 1 : std::min(blocks, (workers + pairs - 1) / pairs);
  const int64_t dq_size = a.B * a.Hq * a.Sq * a.D;
  std::unique_ptr<float[]> partial(shares > 1 ? new float[static_cast<size_t>((shares - 1) * dq_size)] : nullptr);
  parallel_for(pairs * shares, workers, [&](int64_t index) {
    thread_local Scratch w;
    Share task;
    task.b = index / shares / a.Hkv, task.kv = index / shares % a.Hkv;
    task.first = index % shares, task.stride = shares;
    task.dq_out = task.first == 0 ? a.dq : partial.get() + (task.first - 1) * dq_size;
    if (a.softcap > 0.0f || a.window > 0) {
      backward_share<true>(a, task, w);
    } else {
      backward_share<false>(a, task, w);
    }
  });
  if (shares == 1) return;
  // Each share wrote only its pairs' rows of its buffer, and every share covers every pair's rows.
  const int64_t rows = a.B * a.Hq * a.Sq, rows_per_task = 256;
  parallel_for((rows + rows_per_task - 1) / rows_per_task, workers, [&](int64_t task) {
    const int64_t begin = task * rows_per_task * a.D, end = std::min(rows, (task + 1) * rows_per_task) * a.D;
    for (int64_t s = 1; s < shares; ++s) {
      const float* part = partial.get() + (s - 1) * dq_size;
      for (int64_t x = begin; x < end; ++x) a.dq[x] += part[x];
    }
  });
}

}  // namespace genai_fast

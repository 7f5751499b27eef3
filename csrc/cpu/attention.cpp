// scaled_dot_product_attention's forward on the CPU, fp32 (the backward is in attention_backward.cpp).
//
// torch's CPU SDPA multiplies blocks with BLAS: a fixed cost per block, a softmax vectorised along rows that is
// slow when a row has a handful of keys, and on long sequences a pass through memory for every product. The
// forward has two schemes, chosen by size (use_streamed):
// - short: for calls with few query rows per head (a U-Net's cross-attention over 7 to 77 text tokens, a text
//   encoder's). Each task takes one (batch, query head) pair and up to 32 of its query rows; it packs the keys
//   those rows see, transposed (Kt [D, ld], so that scores come 16 keys at a time from D multiply-adds), and
//   the values zero-padded to whole vectors (Vp [n, Dv16]). Then, for blocks of up to 4 rows (each packed
//   vector loaded once per block): the scores, an exact two-pass softmax in fp32 per row, and the weighted sums
//   of value rows held in vector registers.
// - streamed: everything longer, and every call with a mask; keys packed once per call and visited in L2-sized
//   blocks with an online softmax (described above its code).
// Rows with a NaN or +inf score give NaN, as the math reference's do (torch's fused CPU kernel can keep such a
// row finite); rows whose scores are all -inf give zeros, as torch's do.
//
// Both schemes take logit soft-capping (softcap: scores capped before the mask and the softmax) and a causal
// sliding window (window: query i sees keys i - window < j <= i). Under a window, keys below every row's window
// are never touched: the short scheme packs only the keys its rows' windows cover, the streamed one starts each
// task at the first key block its first row sees, and both compute a block of rows' scores from the lowest key
// any of them sees (to a whole vector); keys of that span below a row's own window are removed as by a mask.

#include "attention.h"

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "attention_shared.h"
#include "simd.h"

namespace genai_fast {
namespace {

constexpr int64_t kRowsPerTask = 32;  // query rows that share one packing of K and V

// Scratch of one task: the packed keys and values, and a block of scaled query rows with their scores.
struct Packed {
  std::vector<float> kt, vp, query, scores;
  int64_t ld = 0, dv16 = 0;  // Kt row length (keys rounded up to 16, plus 16), Dv rounded up to 16
  int64_t first = 0, n = 0;  // the packed keys: first, first + 1, ..., first + n - 1
};

// Keys [first, end) of pair (b, kv): Kt [D, ld] and Vp [n, dv16], zero past n = end - first and past Dv.
void pack(const AttentionArgs& a, int64_t b, int64_t kv, int64_t first, int64_t end, Packed& p) {
  const int64_t n = end - first;
  // ld is one vector longer than the keys need, so Kt rows a multiple of 4 KB apart (n = 1024) do not all
  // fall in one L1 set.
  p.ld = round16(n) + 16, p.dv16 = round16(a.Dv), p.first = first, p.n = n;
  p.kt.assign(static_cast<size_t>(a.D * p.ld), 0.0f);
  p.vp.assign(static_cast<size_t>(n * p.dv16), 0.0f);
  const float* k = a.k + b * a.k_strides[0] + kv * a.k_strides[1] + first * a.k_strides[2];
  const float* v = a.v + b * a.v_strides[0] + kv * a.v_strides[1] + first * a.v_strides[2];
  for (int64_t j = 0; j < n; ++j) {
    const float* key = k + j * a.k_strides[2];
    for (int64_t d = 0; d < a.D; ++d) p.kt[d * p.ld + j] = key[d];
    std::copy(v + j * a.v_strides[2], v + j * a.v_strides[2] + a.Dv, p.vp.begin() + j * p.dv16);
  }
}

// scores[i * ld + j] = query_i . key_j for RB query rows (RB x D, scaled) and packed keys [from, width) (both
// multiples of 16): each packed key vector is loaded once for the RB rows, and RB x 4 independent multiply-add
// chains keep the FMA units busy.
template <int RB>
GF_INLINE void block_scores(const float* queries, const Packed& p, int64_t D, int64_t from, int64_t width,
                            float* scores) {
  int64_t j = from;
  for (; j + 64 <= width; j += 64) {
    v16 s[RB][4] = {};
    for (int64_t d = 0; d < D; ++d) {
      const float* kt = p.kt.data() + d * p.ld + j;
      const v16 k0 = load16(kt), k1 = load16(kt + 16), k2 = load16(kt + 32), k3 = load16(kt + 48);
      for (int i = 0; i < RB; ++i) {
        const float qd = queries[i * D + d];
        s[i][0] += qd * k0, s[i][1] += qd * k1, s[i][2] += qd * k2, s[i][3] += qd * k3;
      }
    }
    for (int i = 0; i < RB; ++i)
      for (int t = 0; t < 4; ++t) store16(scores + i * p.ld + j + 16 * t, s[i][t]);
  }
  for (; j < width; j += 16) {
    v16 s[RB] = {};
    for (int64_t d = 0; d < D; ++d) {
      const v16 k = load16(p.kt.data() + d * p.ld + j);
      for (int i = 0; i < RB; ++i) s[i] += queries[i * D + d] * k;
    }
    for (int i = 0; i < RB; ++i) store16(scores + i * p.ld + j, s[i]);
  }
}

// acc_i = sum_j w_i[j] Vp[j] over packed keys [from, n) for RB rows of weights (row i at w + i * ld): each
// value row is loaded once for the RB rows, whose NB-vector output rows stay in registers.
template <int NB, int RB>
GF_INLINE void block_values(const float* w, const Packed& p, int64_t from, int64_t n, v16 (&acc)[RB][NB]) {
  for (int64_t j = from; j < n; ++j) {
    const float* row = p.vp.data() + j * p.dv16;
    v16 values[NB];
    for (int t = 0; t < NB; ++t) values[t] = load16(row + 16 * t);
    for (int i = 0; i < RB; ++i) {
      const float weight = w[i * p.ld + j];
      for (int t = 0; t < NB; ++t) acc[i][t] += weight * values[t];
    }
  }
}

// Query rows [r0, r0 + RB) of head h of sequence b, against keys packed in p.
template <int NB, int RB>
GF_INLINE void attend_block(const AttentionArgs& a, int64_t b, int64_t h, int64_t r0, Packed& p) {
  for (int i = 0; i < RB; ++i) {
    const float* q = a.q + b * a.q_strides[0] + h * a.q_strides[1] + (r0 + i) * a.q_strides[2];
    for (int64_t d = 0; d < a.D; ++d) p.query[i * a.D + d] = q[d] * a.scale;
  }
  const RowBands<RB> band = row_bands<RB>(a, r0, p.first, p.n);
  const int64_t from = band.from, width = round16(band.widest);
  block_scores<RB>(p.query.data(), p, a.D, from, width, p.scores.data());
  float top[RB], total[RB];
  for (int i = 0; i < RB; ++i) {
    float* row = p.scores.data() + i * p.ld;
    if (a.softcap > 0.0f) softcap_scores(row + from, width - from, a.softcap);
    const bool below = band.lo[i] > from;  // keys of the span below the row's window
    if (below) std::fill(row + from, row + band.lo[i], -INFINITY);
    exponentiate_padded(row + from, band.hi[i] - from, width - from, top[i], total[i]);
    if (below) std::fill(row + from, row + band.lo[i], 0.0f);  // no weight (exp16 floors at e^-87)
  }
  v16 acc[RB][NB] = {};
  block_values<NB, RB>(p.scores.data(), p, from, band.widest, acc);
  for (int i = 0; i < RB; ++i) {
    const int64_t row = (b * a.Hq + h) * a.Sq + r0 + i;
    float* out = a.out + row * a.Dv;
    const bool poisoned = std::isnan(total[i]);  // a NaN or +inf score: the row is NaN, as the reference's
    const bool empty = total[i] == 0.0f;         // every score -inf: the row is 0 (and lse -inf), as torch's
    for (int t = 0; t < NB; ++t) {
      const v16 value = poisoned ? acc[i][t] * NAN : (empty ? v16{} : acc[i][t] * (1.0f / total[i]));
      store_part(out + 16 * t, value, std::min<int64_t>(16, a.Dv - 16 * t));
    }
    if (a.lse != nullptr) a.lse[row] = poisoned ? NAN : (empty ? -INFINITY : top[i] + std::log(total[i]));
  }
}

// Rows [r, r1) in blocks of RB, then what is left in blocks of RB / 2, and so on down to one.
template <int NB, int RB>
GF_INLINE void attend_blocks(const AttentionArgs& a, int64_t b, int64_t h, int64_t r, int64_t r1, Packed& p) {
  for (; r + RB <= r1; r += RB) attend_block<NB, RB>(a, b, h, r, p);
  if constexpr (RB > 1) attend_blocks<NB, RB / 2>(a, b, h, r, r1, p);
}

// Rows per block: as many as keep the block's output rows (RB x NB vectors) within about 24 of the 32
// vector registers, at most 4 (the scores then hold 16).
constexpr int rows_per_block(int NB) { return NB <= 6 ? 4 : (NB <= 12 ? 2 : 1); }

// Query rows [r0, r1) of head h of sequence b, against keys packed in p; Dv rounds up to NB vectors.
template <int NB>
GF_CLONES void attend_rows(const AttentionArgs& a, int64_t b, int64_t h, int64_t r0, int64_t r1, Packed& p) {
  constexpr int RB = rows_per_block(NB);
  p.query.resize(static_cast<size_t>(RB * a.D));
  p.scores.resize(static_cast<size_t>(RB * p.ld));
  attend_blocks<NB, RB>(a, b, h, r0, r1, p);
}

using RowsFn = void (*)(const AttentionArgs&, int64_t, int64_t, int64_t, int64_t, Packed&);

template <int NB>
RowsFn rows_routine_at_least(int64_t nb) {
  if constexpr (NB < kAttentionMaxDv / 16) {
    if (nb > NB) return rows_routine_at_least<NB + 1>(nb);
  }
  return attend_rows<NB>;
}

// The row routine whose register row covers Dv (1 to 16 vectors).
RowsFn rows_routine(int64_t Dv) { return rows_routine_at_least<1>(round16(Dv) / 16); }

// ---- forward over long key sequences
//
// The scheme above packs a head's keys and values again for every 32 rows, and past a few hundred keys they
// outgrow L2 (at 4096 keys of head dim 40 it took 1.8x the time of what follows). Here each K/V head is packed
// once per call: its keys transposed in panels of 64 (Kt panel [D, 64], contiguous, so that the scores' inner
// loop streams one panel), its values as rows padded to whole vectors. Each task then takes up to 128 query
// rows of one head through the keys a block of 256 at a time with FlashAttention's online softmax (running max,
// sum and output rows in fp32, rescaled when the max grows): the block in use stays in L2 while the task's rows,
// 4 at a time, pass over it.

constexpr int64_t kKeyBlock = 256;  // a multiple of kPanel
constexpr int64_t kStreamRows = 128;
constexpr int kStreamRowBlock = 4;  // query rows per pass over a block's panels
constexpr int64_t kStreamedFromRows = 64;
constexpr int64_t kStreamedFromKeys = 32;
constexpr int64_t kStreamedFromBytes = 256 * 1024;
// Heads are packed and attended in groups whose packed size stays under this many floats (64 MB).
constexpr int64_t kPackBudgetFloats = int64_t{16} << 20;

// One packed K/V head: Kt panels (n_pad x D floats), then value rows (n_pad x dv16), zero past Sk and Dv.
struct PanelLayout {
  int64_t n_pad = 0, dv16 = 0;
  int64_t floats(int64_t D) const { return n_pad * (D + dv16); }
};

void pack_panels(const AttentionArgs& a, int64_t b, int64_t kv, const PanelLayout& layout, float* dst) {
  std::fill(dst, dst + layout.floats(a.D), 0.0f);
  const float* k = a.k + b * a.k_strides[0] + kv * a.k_strides[1];
  const float* v = a.v + b * a.v_strides[0] + kv * a.v_strides[1];
  float* values = dst + layout.n_pad * a.D;
  for (int64_t j = 0; j < a.Sk; ++j) {
    const float* key = k + j * a.k_strides[2];
    float* panel = dst + (j / kPanel) * a.D * kPanel + j % kPanel;
    for (int64_t d = 0; d < a.D; ++d) panel[d * kPanel] = key[d];
    std::copy(v + j * a.v_strides[2], v + j * a.v_strides[2] + a.Dv, values + j * layout.dv16);
  }
}

// scores[i * kKeyBlock + j] = query_i . key_j for RB scaled query rows and keys [from, width) of the panels that
// start at `panels` (from and width multiples of 16): 16 keys at a time up to a panel boundary, whole panels
// (64 keys) at a time, then 16 keys at a time.
template <int RB>
GF_INLINE void panel_scores(const float* queries, const float* panels, int64_t D, int64_t from, int64_t width,
                            float* scores) {
  auto sixteen = [&](int64_t j) {  // key j's vector: panel j / 64, keys from j % 64
    panel_product<RB, 1>(queries, D, panels + (j - j % kPanel) * D + j % kPanel, D, scores + j, kKeyBlock);
  };
  int64_t j = from;
  for (; j < width && j % kPanel != 0; j += 16) sixteen(j);
  for (; j + kPanel <= width; j += kPanel) panel_product<RB, 4>(queries, D, panels + j * D, D, scores + j, kKeyBlock);
  for (; j < width; j += 16) sixteen(j);
}

// A row's running softmax: the largest score so far, the sum of exp(score - top), and whether a NaN or +inf
// score made the row NaN (as the reference's).
struct RowState {
  float top = -INFINITY, total = 0.0f;
  bool poisoned = false;
};

// Folds one key block into a row's running softmax. row[0, valid) holds the block's scores for the row, the
// rest up to width is padding; both become weights exp(score - top) (zeros for padding). Returns the factor
// by which the row's output sum so far must be rescaled.
GF_INLINE float fold_block(float* row, int64_t valid, int64_t width, RowState& state) {
  const ScoreScan scan = scan_scores(row, valid, width);
  state.poisoned = state.poisoned || scan.poisoned;
  const float top = std::max(state.top, scan.top);
  if (valid == 0 || top == -INFINITY || state.poisoned) {  // nothing to add (or the row is NaN already)
    for (int64_t j = 0; j < width; j += 16) store16(row + j, v16{});
    return 1.0f;
  }
  const float rescale = std::exp(state.top - top);  // 0 while the row had seen only -inf scores
  state.total = state.total * rescale + exponentiate_shifted(row, valid, width, top);
  state.top = top;
  return rescale;
}

// Scratch of one streamed task: its scaled query rows, output sums, softmax states, and one block of scores.
struct StreamScratch {
  std::vector<float> query, acc, scores;
  std::vector<RowState> rows;
  int64_t b = 0, h = 0;  // the task's sequence and query head
};

// Output vectors per pass over a block's values: RB x G sums in registers, within about 24 of the 32.
constexpr int kValueGroup = 4;

// Rows [i0, i0 + RB) of a task whose first row is query row r0, against keys [j0, j0 + block_n) (kt: their
// panels, vp: their value rows); the rows' output sums cover NB vectors.
template <int NB, int RB>
GF_INLINE void stream_rows(const AttentionArgs& a, int64_t r0, int64_t i0, int64_t j0, int64_t block_n,
                           const float* kt, const float* vp, int64_t dv16, StreamScratch& s) {
  const RowBands<RB> band = row_bands<RB>(a, r0 + i0, j0, block_n);
  if (!band.any) return;  // causal: the block lies past these rows (or, under a window, before them)
  const int64_t from = band.from, width = round16(band.widest);
  panel_scores<RB>(s.query.data() + i0 * a.D, kt, a.D, from, width, s.scores.data());
  float rescale[RB];
  for (int i = 0; i < RB; ++i) {
    float* row = s.scores.data() + i * kKeyBlock;
    if (a.softcap > 0.0f) softcap_scores(row + from, width - from, a.softcap);
    if (a.mask.present()) {
      mask_row(a.mask, s.b, s.h, r0 + i0 + i, j0 + band.lo[i], band.hi[i] - band.lo[i], row + band.lo[i]);
    }
    const bool below = band.lo[i] > from;  // keys of the span below the row's window
    if (below) std::fill(row + from, row + band.lo[i], -INFINITY);
    rescale[i] = fold_block(row + from, band.hi[i] - from, width - from, s.rows[i0 + i]);
    if (below) std::fill(row + from, row + band.lo[i], 0.0f);  // no weight (exp16 floors at e^-87)
  }
  // The rows' weights and the value rows from key `from` on.
  const float* w = s.scores.data() + from;
  const int64_t n = band.widest - from;
  vp += from * dv16;
  float* acc = s.acc.data() + i0 * dv16;
  if constexpr (NB <= 6) {
    weighted_rows<NB, RB>(w, kKeyBlock, rescale, vp, dv16, n, 0, acc);
  } else {
    constexpr int full = NB / kValueGroup * kValueGroup;
    for (int t0 = 0; t0 < full; t0 += kValueGroup)
      weighted_rows<kValueGroup, RB>(w, kKeyBlock, rescale, vp, dv16, n, t0, acc);
    if constexpr (NB % kValueGroup != 0)
      weighted_rows<NB % kValueGroup, RB>(w, kKeyBlock, rescale, vp, dv16, n, full, acc);
  }
}

// Rows [i, i1) in blocks of RB, then what is left in blocks of RB / 2, and so on down to one.
template <int NB, int RB>
GF_INLINE void stream_row_blocks(const AttentionArgs& a, int64_t r0, int64_t i, int64_t i1, int64_t j0,
                                 int64_t block_n, const float* kt, const float* vp, int64_t dv16, StreamScratch& s) {
  for (; i + RB <= i1; i += RB) stream_rows<NB, RB>(a, r0, i, j0, block_n, kt, vp, dv16, s);
  if constexpr (RB > 1) stream_row_blocks<NB, RB / 2>(a, r0, i, i1, j0, block_n, kt, vp, dv16, s);
}

// Query rows [r0, r1) of head h of sequence b against the packed K/V head `head`.
template <int NB>
GF_CLONES void stream_task(const AttentionArgs& a, const float* head, const PanelLayout& layout, int64_t b,
                           int64_t h, int64_t r0, int64_t r1, StreamScratch& s) {
  constexpr int RB = kStreamRowBlock;
  const int64_t rows = r1 - r0, dv16 = layout.dv16;
  s.query.resize(static_cast<size_t>(rows * a.D));
  s.acc.assign(static_cast<size_t>(rows * dv16), 0.0f);
  s.scores.resize(static_cast<size_t>(RB * kKeyBlock));
  s.rows.assign(static_cast<size_t>(rows), RowState{});
  s.b = b, s.h = h;
  for (int64_t i = 0; i < rows; ++i) {
    const float* q = a.q + b * a.q_strides[0] + h * a.q_strides[1] + (r0 + i) * a.q_strides[2];
    for (int64_t d = 0; d < a.D; ++d) s.query[i * a.D + d] = q[d] * a.scale;
  }
  const int64_t n = a.causal ? std::min(a.Sk, r1) : a.Sk;  // the furthest key any row of the task sees
  const float* values = head + layout.n_pad * a.D;
  // Under a window the blocks start at the panel of the first row's first key: those below are never read.
  const int64_t start = window_start(r0, a.window) / kPanel * kPanel;
  for (int64_t j0 = start; j0 < n; j0 += kKeyBlock) {
    stream_row_blocks<NB, RB>(a, r0, 0, rows, j0, std::min(kKeyBlock, n - j0), head + j0 * a.D,
                              values + j0 * dv16, dv16, s);
  }
  for (int64_t i = 0; i < rows; ++i) {
    const RowState& state = s.rows[i];
    const int64_t row = (b * a.Hq + h) * a.Sq + r0 + i;
    float* out = a.out + row * a.Dv;
    const bool empty = state.total == 0.0f;  // every score -inf: the row is 0 (and lse -inf), as torch's
    for (int64_t t = 0; t < NB; ++t) {
      const v16 sum = load16(s.acc.data() + i * dv16 + 16 * t);
      const v16 value = state.poisoned ? sum * NAN : (empty ? v16{} : sum * (1.0f / state.total));
      store_part(out + 16 * t, value, std::min<int64_t>(16, a.Dv - 16 * t));
    }
    if (a.lse != nullptr) {
      a.lse[row] = state.poisoned ? NAN : (empty ? -INFINITY : state.top + std::log(state.total));
    }
  }
}

using StreamFn = void (*)(const AttentionArgs&, const float*, const PanelLayout&, int64_t, int64_t, int64_t, int64_t,
                          StreamScratch&);

template <int NB>
StreamFn stream_routine_at_least(int64_t nb) {
  if constexpr (NB < kAttentionMaxDv / 16) {
    if (nb > NB) return stream_routine_at_least<NB + 1>(nb);
  }
  return stream_task<NB>;
}

// Whether automatic choice streams. The streamed scheme measured 1.0-2.2x the short one from 64 query rows per
// head and 32 keys (AVX-512 VM; below, its separate packing pass and part-filled panels cost 3-13% more), and
// pays at any size once a head's packed keys and values outgrow about a quarter of L2.
bool use_streamed(const AttentionArgs& a) {
  return (a.Sq >= kStreamedFromRows && a.Sk >= kStreamedFromKeys) ||
         a.Sk * (a.D + round16(a.Dv)) * int64_t{sizeof(float)} > kStreamedFromBytes;
}

void attention_forward_streamed(const AttentionArgs& a, int workers) {
  PanelLayout layout;
  layout.n_pad = (a.Sk + kPanel - 1) / kPanel * kPanel;
  layout.dv16 = round16(a.Dv);
  const int64_t per_head = layout.floats(a.D), pairs = a.B * a.Hkv, group = a.Hq / a.Hkv;
  const int64_t heads_at_once = std::clamp<int64_t>(kPackBudgetFloats / per_head, 1, pairs);
  // pack_panels writes every float of a head (zeros included), so the buffer starts uninitialised.
  const std::unique_ptr<float[]> packed(new float[static_cast<size_t>(heads_at_once * per_head)]);
  // Enough tasks per head for every worker to get several, but no fewer than 16 rows each.
  const int64_t wanted = (4 * workers + heads_at_once * group - 1) / (heads_at_once * group);
  const int64_t chunk = std::max<int64_t>(16, std::min(kStreamRows, round16((a.Sq + wanted - 1) / wanted)));
  const int64_t chunks = (a.Sq + chunk - 1) / chunk;
  const StreamFn attend = stream_routine_at_least<1>(layout.dv16 / 16);
  for (int64_t first = 0; first < pairs; first += heads_at_once) {
    const int64_t count = std::min(heads_at_once, pairs - first);
    parallel_for(count, workers, [&](int64_t i) {
      const int64_t pair = first + i;
      pack_panels(a, pair / a.Hkv, pair % a.Hkv, layout, packed.get() + i * per_head);
    });
    parallel_for(count * group * chunks, workers, [&](int64_t task) {
      thread_local StreamScratch scratch;
      const int64_t head = task / chunks, i = head / group, pair = first + i;
      const int64_t b = pair / a.Hkv, h = (pair % a.Hkv) * group + head % group;
      const int64_t r0 = (task % chunks) * chunk, r1 = std::min(a.Sq, r0 + chunk);
      attend(a, packed.get() + i * per_head, layout, b, h, r0, r1, scratch);
    });
  }
}

}  // namespace

void validate(const AttentionArgs& a) {
  require(a.q != nullptr && a.k != nullptr && a.v != nullptr && a.out != nullptr,
          "q, k, v, out: expected non-null addresses");
  require(a.B >= 1 && a.Hq >= 1 && a.Hkv >= 1 && a.Sq >= 1 && a.Sk >= 1 && a.D >= 1 && a.Dv >= 1,
          "q, k, v: expected non-empty shapes");
  require(a.Dv <= kAttentionMaxDv, "v: expected a head dim of at most " + std::to_string(kAttentionMaxDv) + ", got " +
                                       std::to_string(a.Dv));
  require(a.Hq % a.Hkv == 0, "q: expected a head count " + std::to_string(a.Hq) + " divisible by k's " +
                                 std::to_string(a.Hkv));
  for (int i = 0; i < 3; ++i) {
    require(a.q_strides[i] >= 0 && a.k_strides[i] >= 0 && a.v_strides[i] >= 0, "strides: expected >= 0");
  }
  auto last = [](const int64_t* strides, int64_t n0, int64_t n1, int64_t n2, int64_t d, const char* name) {
    return checked_span({n0, n1, n2}, {strides[0], strides[1], strides[2]}, d, name);
  };
  require(last(a.q_strides, a.B, a.Hq, a.Sq, a.D, "q") <= a.q_extent,
          "q: its shape and strides reach past its buffer");
  require(last(a.k_strides, a.B, a.Hkv, a.Sk, a.D, "k") <= a.k_extent,
          "k: its shape and strides reach past its buffer");
  require(last(a.v_strides, a.B, a.Hkv, a.Sk, a.Dv, "v") <= a.v_extent,
          "v: its shape and strides reach past its buffer");
  const int64_t rows = checked_product({a.B, a.Hq, a.Sq}, "q"), out_numel = checked_mul(rows, a.Dv, "out");
  require(a.out_numel == out_numel,
          "out: expected " + std::to_string(out_numel) + " elements, got " + std::to_string(a.out_numel));
  require(a.lse == nullptr || a.lse_numel == rows,
          "lse: expected " + std::to_string(rows) + " elements, got " + std::to_string(a.lse_numel));
  require(std::isfinite(a.scale), "scale: expected a finite value");
  require(a.num_threads >= 1, "num_threads: expected >= 1");
  require(a.streamed >= -1 && a.streamed <= 1, "streamed: expected -1 (by size), 0 or 1");
  validate_softcap_window(a.softcap, a.window, a.causal);
  if (a.mask.present()) {
    require(a.streamed != 0, "mask: the short-sequence scheme takes no mask (streamed must be -1 or 1)");
    validate_mask(a.mask, a.B, a.Hq, a.Sq, a.Sk);
  }
}

void attention_forward(const AttentionArgs& a) {
  const int64_t blocks = (a.Sq + kRowsPerTask - 1) / kRowsPerTask, tasks = a.B * a.Hq * blocks;
  const int64_t keys = a.window > 0 ? std::min(a.Sk, a.window) : a.Sk;  // the most keys a row sees
  const int64_t work = a.B * a.Hq * a.Sq * keys * (a.D + a.Dv);  // multiply-adds (causal: about half)
  // Waking a thread costs a few microseconds: below ~32K multiply-adds per thread one thread is faster.
  const int workers = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(a.num_threads, work >> 15)));
  if (a.mask.present() || a.streamed == 1 || (a.streamed == -1 && use_streamed(a))) {
    return attention_forward_streamed(a, workers);
  }
  const RowsFn attend = rows_routine(a.Dv);
  parallel_for(tasks, workers, [&](int64_t task) {
    thread_local Packed p;
    const int64_t pair = task / blocks, b = pair / a.Hq, h = pair % a.Hq;
    const int64_t r0 = (task % blocks) * kRowsPerTask, r1 = std::min(a.Sq, r0 + kRowsPerTask);
    const int64_t n = a.causal ? std::min(a.Sk, r1) : a.Sk;  // the furthest key any row of the block sees
    // Under a window only the keys from the first row's window on.
    pack(a, b, h / (a.Hq / a.Hkv), std::min(n, window_start(r0, a.window)), n, p);
    attend(a, b, h, r0, r1, p);
  });
}

}  // namespace genai_fast

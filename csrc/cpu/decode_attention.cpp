// Decode attention on the CPU: each of a few new queries per sequence attends over that sequence's own
// number of cached positions, fp32.
//
// At decode time a query row meets at most a few thousand cached keys of a few dozen floats, so the work
// per (sequence, head) is tiny and torch's SDPA call costs more in setup than in arithmetic; a ragged batch
// also needs one torch call per sequence. Here one call covers the batch. The work is cut by K/V head:
// the query heads of a GQA group (and all their new queries) are served together, in blocks of rows whose
// accumulators fit in vector registers, so each cached row is read once per block rather than once per
// query row. When there are fewer (sequence, K/V head) pairs
// than threads can share, each sequence's positions are cut into chunks (split-K, as flash-decoding does
// on a GPU) and the chunks' partial softmax sums are combined with their maxima. Within a chunk the
// softmax is exact and two-pass in fp32: scores and their maximum, then exp, sum and the weighted sum of
// values. Rows with no visible position give zeros, as the reference's safe softmax does.
//
// Soft-capping (softcap) caps each chunk's scores before its softmax. A sliding window (window) starts each
// sequence's chunks at the first position its first query sees, and each block of rows reads the chunk from the
// lowest position any of them sees: positions below every window are never read.
#include "decode_attention.h"
#include "attention_shared.h"
#include "simd.h"

#include <algorithm>
#include <string>
#include <vector>

namespace genai_fast {
namespace {

GF_INLINE float dot(const float* a, const float* b, int64_t n) {
  const int64_t n16 = n / 16 * 16;
  v16 acc = {};
  for (int64_t i = 0; i < n16; i += 16) acc += load16(a + i) * load16(b + i);
  float total = hsum(acc);
  for (int64_t i = n16; i < n; ++i) total += a[i] * b[i];
  return total;
}

GF_INLINE void axpy(float alpha, const float* x, float* y, int64_t n) {
  const int64_t n16 = n / 16 * 16;
  for (int64_t i = 0; i < n16; i += 16) store16(y + i, load16(y + i) + alpha * load16(x + i));
  for (int64_t i = n16; i < n; ++i) y[i] += alpha * x[i];
}

// A piece of work: the query rows of one (sequence, K/V head) pair against cache positions [begin, end).
struct Chunk {
  int64_t b, kv, begin, end;
};

// What a chunk leaves for the combine step, per query row r of its group: the maximum score m[r], the sum
// l[r] of exp(score - m[r]) and acc[r] = the same weights times the value rows (not yet divided by l).
struct Partials {
  std::vector<float> m, l, acc;
};

// The query rows served with K/V head `kv` of sequence b: row r = g * Sq + i is query i of head
// kv * group + g.
GF_INLINE const float* query_row(const DecodeAttentionArgs& a, int64_t b, int64_t kv, int64_t r) {
  const int64_t group = a.Hq / a.Hkv, h = kv * group + r / a.Sq, i = r % a.Sq;
  return a.q + b * a.q_strides[0] + h * a.q_strides[1] + i * a.q_strides[2];
}

// Positions [0, visible) of the cache that query i of sequence b sees (causal: aligned bottom-right).
GF_INLINE int64_t visible_positions(const DecodeAttentionArgs& a, int64_t b, int64_t i) {
  const int64_t length = a.lengths[b];
  return a.causal ? std::max<int64_t>(0, std::min(length, length - a.Sq + i + 1)) : length;
}

// The first position query i of sequence b sees: 0, or under a window the first within `window` of its own.
GF_INLINE int64_t first_position(const DecodeAttentionArgs& a, int64_t b, int64_t i) {
  return window_start(a.lengths[b] - a.Sq + i, a.window);
}

// scores[i * n + j] = q_i . key_j for RB query rows q (already scaled, RB x D contiguous) and the n key rows
// from k. NB > 0: D = 16 NB, the queries held in registers and each key row loaded once for all RB rows;
// NB = 0: any D, one row (RB = 1).
template <int NB, int RB>
GF_INLINE void block_scores(const float* q, const float* k, int64_t stride, int64_t n, int64_t D, float* scores) {
  if constexpr (NB == 0) {
    for (int64_t j = 0; j < n; ++j) scores[j] = dot(q, k + j * stride, D);
  } else {
    v16 qv[RB][NB];
    for (int i = 0; i < RB; ++i)
      for (int b = 0; b < NB; ++b) qv[i][b] = load16(q + i * D + 16 * b);
    auto product = [&](int i, int64_t j) {  // its lane sum is q_i . key_j
      const float* key = k + j * stride;
      v16 acc = qv[i][0] * load16(key);
      for (int b = 1; b < NB; ++b) acc += qv[i][b] * load16(key + 16 * b);
      return acc;
    };
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {  // 16 keys (4 KB at D 64: they stay in L1 across the RB rows)
      for (int i = 0; i < RB; ++i) {
        v16 acc[16];
        for (int t = 0; t < 16; ++t) acc[t] = product(i, j + t);
        store16(scores + i * n + j, hsum16x16(acc));
      }
    }
    for (; j < n; ++j)
      for (int i = 0; i < RB; ++i) scores[i * n + j] = hsum(product(i, j));
  }
}

// out[i] = sum_j p[i * n + j] value_j (Dv floats each) for RB rows of weights and the n value rows from v.
// NB > 0: Dv = 16 NB, the RB outputs held in registers and each value row loaded once; NB = 0: any Dv,
// one row.
template <int NB, int RB>
GF_INLINE void block_values(const float* p, const float* v, int64_t stride, int64_t n, int64_t Dv, float* out) {
  if constexpr (NB == 0) {
    std::fill(out, out + Dv, 0.0f);
    for (int64_t j = 0; j < n; ++j) axpy(p[j], v + j * stride, out, Dv);
  } else {
    v16 acc[RB][NB] = {};
    for (int64_t j = 0; j < n; ++j) {
      v16 value[NB];
      for (int b = 0; b < NB; ++b) value[b] = load16(v + j * stride + 16 * b);
      for (int i = 0; i < RB; ++i)
        for (int b = 0; b < NB; ++b) acc[i][b] += p[i * n + j] * value[b];
    }
    for (int i = 0; i < RB; ++i)
      for (int b = 0; b < NB; ++b) store16(out + i * Dv + 16 * b, acc[i][b]);
  }
}

// A row whose scores are all -inf has no weight anywhere: torch returns a zero row for it (its fully masked
// rule), which the combine step makes from a zero sum (with the max left at -inf).
GF_INLINE void every_score_minus_inf(float* row, int64_t n, float& total) {
  std::fill(row, row + n, 0.0f);
  total = 0.0f;
}

// Turns the row's n scores into exp(score - max) in place; returns the max and the sum of the exps.
// fast_exp does not carry NaN through, so a NaN or +inf score (whose reference row is NaN) gives a NaN
// sum here, and the combine step then fills the row with NaN.
GF_INLINE void exponentiate(float* row, int64_t n, float& top, float& total) {
  const int64_t n16 = n / 16 * 16;
  v16 vtop = {}, vraw = {};
  vtop -= INFINITY;
  for (int64_t j = 0; j < n16; j += 16) {
    const v16 x = load16(row + j);
    vtop = x > vtop ? x : vtop;
    vraw += x;
  }
  top = -INFINITY;
  float raw = hsum(vraw);
  for (int i = 0; i < 16; ++i) top = std::max(top, vtop[i]);
  for (int64_t j = n16; j < n; ++j) top = std::max(top, row[j]), raw += row[j];
  if (top == -INFINITY && !std::isnan(raw)) return every_score_minus_inf(row, n, total);
  v16 vsum = {};
  for (int64_t j = 0; j < n16; j += 16) {
    const v16 e = exp16(load16(row + j) - top);
    store16(row + j, e);
    vsum += e;
  }
  total = hsum(vsum);
  for (int64_t j = n16; j < n; ++j) total += (row[j] = fast_exp(row[j] - top));
  if (std::isnan(raw) || top == INFINITY) total = NAN;
}

// The positions of a chunk that each of query rows [r0, r0 + RB) sees: [first[i], seen[i]) counted from the
// chunk's position `skip` (the lowest any of them sees: under a window the positions below are not read), and
// the furthest seen. A row that sees none gets an empty [0, 0).
template <int RB>
struct Visible {
  int64_t first[RB], seen[RB], skip = 0, furthest = 0;
};

// When no row sees any position, their statistics and sums are set to "nothing visible" (m -inf, l 0, acc 0)
// and furthest is 0.
template <int RB>
GF_INLINE Visible<RB> visible_in_chunk(const DecodeAttentionArgs& a, const Chunk& c, int64_t r0, float* m, float* l,
                                       float* acc) {
  Visible<RB> s;
  int64_t lowest = c.end - c.begin;
  for (int i = 0; i < RB; ++i) {
    const int64_t query = (r0 + i) % a.Sq;
    s.first[i] = std::max(first_position(a, c.b, query), c.begin) - c.begin;
    s.seen[i] = std::min(visible_positions(a, c.b, query), c.end) - c.begin;
    if (s.first[i] < s.seen[i]) lowest = std::min(lowest, s.first[i]), s.furthest = std::max(s.furthest, s.seen[i]);
  }
  if (s.furthest == 0) {
    for (int i = 0; i < RB; ++i) m[i] = -INFINITY, l[i] = 0.0f;
    std::fill(acc, acc + RB * a.Dv, 0.0f);
    return s;
  }
  s.skip = lowest, s.furthest -= lowest;
  for (int i = 0; i < RB; ++i) {
    const bool sees = s.first[i] < s.seen[i];
    s.first[i] = sees ? s.first[i] - lowest : 0;
    s.seen[i] = sees ? s.seen[i] - lowest : 0;
  }
  return s;
}

// Query rows [r0, r0 + RB) times the scale, RB x D contiguous in `queries`.
template <int RB>
GF_INLINE void scaled_queries(const DecodeAttentionArgs& a, const Chunk& c, int64_t r0, std::vector<float>& queries) {
  queries.resize(static_cast<size_t>(RB * a.D));
  for (int i = 0; i < RB; ++i) {
    const float* q = query_row(a, c.b, c.kv, r0 + i);
    for (int64_t d = 0; d < a.D; ++d) queries[i * a.D + d] = q[d] * a.scale;
  }
}

// Query rows [r0, r0 + RB) of a chunk: scores against the chunk's keys over the span any of them sees
// (softcapped), then per row its softmax statistics over its own visible keys (weights outside them zeroed),
// then the weighted value sums; m, l, acc point at row r0's entries.
template <int NB, int RB>
GF_INLINE void attend_rows(const DecodeAttentionArgs& a, const Chunk& c, int64_t r0, float* m, float* l, float* acc) {
  thread_local std::vector<float> queries, scores;
  const Visible<RB> s = visible_in_chunk<RB>(a, c, r0, m, l, acc);
  const int64_t furthest = s.furthest;
  if (furthest == 0) return;
  scaled_queries<RB>(a, c, r0, queries);
  scores.resize(static_cast<size_t>(RB * furthest));
  // Keys and values of the span all lie below the chunk's end, inside the sequence's length.
  const int64_t start = c.begin + s.skip;
  const float* k = a.k_cache + c.b * a.k_strides[0] + c.kv * a.k_strides[1] + start * a.k_strides[2];
  const float* v = a.v_cache + c.b * a.v_strides[0] + c.kv * a.v_strides[1] + start * a.v_strides[2];
  block_scores<NB, RB>(queries.data(), k, a.k_strides[2], furthest, a.D, scores.data());
  if (a.softcap > 0.0f) softcap_scores(scores.data(), RB * furthest, a.softcap);
  for (int i = 0; i < RB; ++i) {
    float* row = scores.data() + i * furthest;
    m[i] = -INFINITY, l[i] = 0.0f;
    if (s.seen[i] > 0) exponentiate(row + s.first[i], s.seen[i] - s.first[i], m[i], l[i]);
    std::fill(row, row + s.first[i], 0.0f);
    std::fill(row + s.seen[i], row + furthest, 0.0f);
  }
  block_values<NB, RB>(scores.data(), v, a.v_strides[2], furthest, a.Dv, acc);
}

// Rows [r, R) of a chunk in blocks of RB, then what is left in blocks of RB - 1, and so on down to one.
template <int NB, int RB>
GF_INLINE void attend_blocks(const DecodeAttentionArgs& a, const Chunk& c, int64_t r, int64_t R, float* m, float* l,
                             float* acc) {
  for (; r + RB <= R; r += RB) attend_rows<NB, RB>(a, c, r, m + r, l + r, acc + r * a.Dv);
  if constexpr (RB > 1) attend_blocks<NB, RB - 1>(a, c, r, R, m, l, acc);
}

// One chunk: its R query rows in blocks of up to RB (each key and value row read once per block);
// writes m, l, acc (R, R and R x Dv floats).
template <int NB, int RB>
GF_CLONES void attend_chunk(const DecodeAttentionArgs& a, const Chunk& c, float* m, float* l, float* acc) {
  attend_blocks<NB, RB>(a, c, 0, a.Hq / a.Hkv * a.Sq, m, l, acc);
}

// Head dims the register blocks do not cover (under 16, or not a multiple of 16: 8, 40, 80, ...) when a
// chunk serves several query rows: the chunk's keys and values are transposed once, into kt [D, ld] and
// vt [Dv16, ld] (positions rounded up to 16 and heads up to 16, zero padded; ld = that count plus 16, so
// that rows a multiple of 4 KB apart do not all fall in one L1 set), so that every product runs along 16
// positions at a time whatever D is. For a single row the transposition would cost more than the
// products it speeds up; such chunks take the generic loops.
template <int RB>
GF_INLINE void transposed_rows(const DecodeAttentionArgs& a, const Chunk& c, int64_t r0, const float* kt,
                               const float* vt, int64_t ld, float* m, float* l, float* acc) {
  thread_local std::vector<float> queries, scores;
  const Visible<RB> s = visible_in_chunk<RB>(a, c, r0, m, l, acc);
  if (s.furthest == 0) return;
  const int64_t width = (s.furthest + 15) / 16 * 16;  // the position blocks any of the rows sees
  // From the span's first position: [skip, skip + width) stays inside kt's and vt's (zero-padded) rows.
  kt += s.skip, vt += s.skip;
  scaled_queries<RB>(a, c, r0, queries);
  scores.resize(static_cast<size_t>(RB * width));
  for (int64_t j = 0; j < width; j += 16) {
    v16 sums[RB] = {};
    for (int64_t d = 0; d < a.D; ++d) {
      const v16 key = load16(kt + d * ld + j);
      for (int i = 0; i < RB; ++i) sums[i] += queries[i * a.D + d] * key;
    }
    for (int i = 0; i < RB; ++i) store16(scores.data() + i * width + j, sums[i]);
  }
  if (a.softcap > 0.0f) softcap_scores(scores.data(), RB * width, a.softcap);
  for (int i = 0; i < RB; ++i) {
    float* row = scores.data() + i * width;
    m[i] = -INFINITY, l[i] = 0.0f;
    if (s.seen[i] > 0) {
      std::fill(row, row + s.first[i], -INFINITY);  // below the row's window
      exponentiate_padded(row, s.seen[i], width, m[i], l[i]);
      std::fill(row, row + s.first[i], 0.0f);  // no weight at all (exp16 floors -inf at e^-87)
    } else {
      std::fill(row, row + width, 0.0f);
    }
    for (int64_t e0 = 0; e0 < a.Dv; e0 += 16) {  // 16 output columns at a time, one lane sum each
      v16 sums[16] = {};
      for (int64_t j = 0; j < width; j += 16) {
        const v16 weights = load16(row + j);
        for (int t = 0; t < 16; ++t) sums[t] += weights * load16(vt + (e0 + t) * ld + j);
      }
      store_part(acc + i * a.Dv + e0, hsum16x16(sums), std::min<int64_t>(16, a.Dv - e0));
    }
  }
}

template <int RB>
GF_INLINE void transposed_blocks(const DecodeAttentionArgs& a, const Chunk& c, int64_t r, int64_t R, const float* kt,
                                 const float* vt, int64_t ld, float* m, float* l, float* acc) {
  for (; r + RB <= R; r += RB) transposed_rows<RB>(a, c, r, kt, vt, ld, m + r, l + r, acc + r * a.Dv);
  if constexpr (RB > 1) transposed_blocks<RB / 2>(a, c, r, R, kt, vt, ld, m, l, acc);
}

GF_CLONES void attend_chunk_transposed(const DecodeAttentionArgs& a, const Chunk& c, float* m, float* l, float* acc) {
  thread_local std::vector<float> kt, vt;
  const int64_t n = c.end - c.begin, ld = (n + 15) / 16 * 16 + 16, dv16 = (a.Dv + 15) / 16 * 16;
  kt.assign(static_cast<size_t>(a.D * ld), 0.0f);
  vt.assign(static_cast<size_t>(dv16 * ld), 0.0f);
  // Rows [begin, end) lie inside the sequence's length (make_chunks), so nothing past it is read.
  const float* k = a.k_cache + c.b * a.k_strides[0] + c.kv * a.k_strides[1] + c.begin * a.k_strides[2];
  const float* v = a.v_cache + c.b * a.v_strides[0] + c.kv * a.v_strides[1] + c.begin * a.v_strides[2];
  for (int64_t j = 0; j < n; ++j) {
    for (int64_t d = 0; d < a.D; ++d) kt[d * ld + j] = k[j * a.k_strides[2] + d];
    for (int64_t e = 0; e < a.Dv; ++e) vt[e * ld + j] = v[j * a.v_strides[2] + e];
  }
  transposed_blocks<8>(a, c, 0, a.Hq / a.Hkv * a.Sq, kt.data(), vt.data(), ld, m, l, acc);
}

using ChunkFn = void (*)(const DecodeAttentionArgs&, const Chunk&, float*, float*, float*);

// Rows per chunk from which transposing the chunk's keys and values pays: it costs about D + Dv scalar moves
// per position, against a horizontal sum per position and row in the generic loops.
constexpr int64_t kTransposeMinRows = 4;

// The chunk routine for these head dims and R query rows per chunk: for multiples of 16 up to 256 (D and
// Dv alike) rows held in registers, as many per block as keep the block's accumulators within the 32
// vector registers; other head dims transposed when there are rows to share the transposition; the
// generic loops, one row at a time, otherwise.
ChunkFn chunk_routine(int64_t D, int64_t Dv, int64_t R) {
  const ChunkFn other = R >= kTransposeMinRows ? attend_chunk_transposed : attend_chunk<0, 1>;
  if (D != Dv || D % 16 != 0) return other;
  switch (D / 16) {
    case 2: return attend_chunk<2, 8>;
    case 4: return attend_chunk<4, 4>;
    case 5: return attend_chunk<5, 2>;
    case 6: return attend_chunk<6, 2>;
    case 8: return attend_chunk<8, 2>;
    case 16: return attend_chunk<16, 1>;
    default: return other;
  }
}

// Positions per chunk: whole sequences when the (sequence, K/V head) pairs already give every worker
// a few pieces, else short enough for about four pieces per worker, but never under 256 positions
// (below that a chunk's fixed costs and the combine outweigh the parallelism).
int64_t chunk_length(const DecodeAttentionArgs& a, int workers) {
  const int64_t pairs = a.B * a.Hkv;
  int64_t longest = 0;  // the most positions a sequence's queries see together
  for (int64_t b = 0; b < a.B; ++b) longest = std::max(longest, a.lengths[b] - first_position(a, b, 0));
  if (workers <= 1 || pairs >= 4 * workers) return std::max<int64_t>(longest, 1);
  const int64_t splits = (4 * workers + pairs - 1) / pairs;
  return std::max<int64_t>(256, (longest + splits - 1) / splits);
}

std::vector<Chunk> make_chunks(const DecodeAttentionArgs& a, int64_t length) {
  std::vector<Chunk> chunks;
  for (int64_t b = 0; b < a.B; ++b) {
    for (int64_t kv = 0; kv < a.Hkv; ++kv) {
      int64_t begin = first_position(a, b, 0);  // positions below every query's window are never read
      do {  // at least one chunk, so rows of an empty sequence still get their zeros
        const int64_t end = std::min(a.lengths[b], begin + length);
        chunks.push_back({b, kv, begin, end});
        begin = end;
      } while (begin < a.lengths[b]);
    }
  }
  return chunks;
}

// out rows of one (sequence, K/V head) pair from its chunks' partials [first, first + count).
void combine(const DecodeAttentionArgs& a, const Partials& p, int64_t first, int64_t count, int64_t b,
             int64_t kv) {
  const int64_t R = a.Hq / a.Hkv * a.Sq;
  for (int64_t r = 0; r < R; ++r) {
    const int64_t h = kv * (a.Hq / a.Hkv) + r / a.Sq, i = r % a.Sq;
    float* out = a.out + b * a.out_strides[0] + h * a.out_strides[1] + i * a.out_strides[2];
    float* lse = a.lse != nullptr ? a.lse + (b * a.Hq + h) * a.Sq + i : nullptr;
    // A sink is one more logit in the softmax, of a key whose value is zero: in the maximum and the sum only.
    const float sink = a.sinks != nullptr ? a.sinks[h] : -INFINITY;
    float top = sink, total = 0.0f;
    bool poisoned = std::isnan(sink);
    for (int64_t c = first; c < first + count; ++c) {
      top = std::max(top, p.m[c * R + r]);
      poisoned |= std::isnan(p.l[c * R + r]);
    }
    std::fill(out, out + a.Dv, poisoned ? NAN : 0.0f);
    if (lse != nullptr) *lse = poisoned ? NAN : -INFINITY;
    if (poisoned || top == -INFINITY) continue;  // a NaN score: NaN; nothing visible: zeros
    if (a.sinks != nullptr) total = std::exp(sink - top);
    for (int64_t c = first; c < first + count; ++c) {
      if (p.l[c * R + r] == 0.0f) continue;
      const float weight = std::exp(p.m[c * R + r] - top);
      total += weight * p.l[c * R + r];
      axpy(weight, p.acc.data() + (c * R + r) * a.Dv, out, a.Dv);
    }
    const float inv = 1.0f / total;
    for (int64_t j = 0; j < a.Dv; ++j) out[j] *= inv;
    if (lse != nullptr) *lse = top + std::log(total);
  }
}

}  // namespace

void validate(const DecodeAttentionArgs& a) {
  require(a.q != nullptr && a.k_cache != nullptr && a.v_cache != nullptr && a.out != nullptr &&
              a.lengths != nullptr, "q, k_cache, v_cache, out, lengths: expected non-null addresses");
  require(a.B >= 1 && a.Hq >= 1 && a.Hkv >= 1 && a.Sq >= 1 && a.D >= 1 && a.Dv >= 1 && a.S_max >= 0,
          "q, k_cache, v_cache: expected non-empty shapes");
  require(a.Hq % a.Hkv == 0, "q: expected a head count " + std::to_string(a.Hq) + " divisible by the cache's " +
                                 std::to_string(a.Hkv));
  for (int64_t b = 0; b < a.B; ++b) {
    require(a.lengths[b] >= 0 && a.lengths[b] <= a.S_max,
            "lengths: sequence " + std::to_string(b) + " has " + std::to_string(a.lengths[b]) +
                " positions, expected 0 to S_max=" + std::to_string(a.S_max));
  }
  auto last = [](const int64_t* strides, int64_t n0, int64_t n1, int64_t n2, int64_t d, const char* name) {
    return checked_span({n0, n1, n2}, {strides[0], strides[1], strides[2]}, d, name);
  };
  for (int i = 0; i < 3; ++i) {
    require(a.q_strides[i] >= 0 && a.k_strides[i] >= 0 && a.v_strides[i] >= 0, "strides: expected >= 0");
  }
  require(last(a.q_strides, a.B, a.Hq, a.Sq, a.D, "q") <= a.q_extent,
          "q: its shape and strides reach past its buffer");
  const int64_t s_rows = std::max<int64_t>(a.S_max, 1);
  require(last(a.k_strides, a.B, a.Hkv, s_rows, a.D, "k_cache") <= a.k_extent,
          "k_cache: its shape and strides reach past its buffer");
  require(last(a.v_strides, a.B, a.Hkv, s_rows, a.Dv, "v_cache") <= a.v_extent,
          "v_cache: its shape and strides reach past its buffer");
  for (int i = 0; i < 3; ++i) require(a.out_strides[i] >= 0, "out strides: expected >= 0");
  require(last(a.out_strides, a.B, a.Hq, a.Sq, a.Dv, "out") <= a.out_extent,
          "out: its shape and strides reach past its buffer");
  const int64_t rows = checked_product({a.B, a.Hq, a.Sq}, "q");
  require(a.lse == nullptr || a.lse_numel == rows,
          "lse: expected " + std::to_string(rows) + " elements, got " + std::to_string(a.lse_numel));
  require(a.num_threads >= 1, "num_threads: expected >= 1");
  require(a.sinks == nullptr || a.sinks_numel == a.Hq,
          "sinks: expected " + std::to_string(a.Hq) + " elements (one per query head), got " +
              std::to_string(a.sinks_numel));
  validate_softcap_window(a.softcap, a.window, a.causal);
}

void decode_attention_forward(const DecodeAttentionArgs& a) {
  const int64_t R = a.Hq / a.Hkv * a.Sq;
  int64_t work = 0;  // multiply-adds, to decide whether waking threads pays
  for (int64_t b = 0; b < a.B; ++b) work += (a.lengths[b] - first_position(a, b, 0)) * a.Hq * a.Sq * (a.D + a.Dv);
  const int workers = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(a.num_threads, work >> 18)));
  const std::vector<Chunk> chunks = make_chunks(a, chunk_length(a, workers));
  const int64_t count = static_cast<int64_t>(chunks.size());
  const ChunkFn attend_chunk = chunk_routine(a.D, a.Dv, R);
  if (count == a.B * a.Hkv) {  // one chunk per (sequence, K/V head) pair: each finishes its own rows
    parallel_for(count, workers, [&](int64_t c) {
      thread_local Partials p;
      p.m.resize(static_cast<size_t>(R)), p.l.resize(p.m.size()), p.acc.resize(p.m.size() * a.Dv);
      attend_chunk(a, chunks[c], p.m.data(), p.l.data(), p.acc.data());
      combine(a, p, 0, 1, chunks[c].b, chunks[c].kv);
    });
    return;
  }
  Partials p;
  p.m.resize(static_cast<size_t>(count * R)), p.l.resize(p.m.size()), p.acc.resize(p.m.size() * a.Dv);
  parallel_for(count, workers, [&](int64_t c) {
    attend_chunk(a, chunks[c], p.m.data() + c * R, p.l.data() + c * R, p.acc.data() + c * R * a.Dv);
  });
  for (int64_t first = 0; first < count;) {  // chunks of one (sequence, K/V head) pair are neighbours
    int64_t last = first + 1;
    while (last < count && chunks[last].b == chunks[first].b && chunks[last].kv == chunks[first].kv) ++last;
    combine(a, p, first, last - first, chunks[first].b, chunks[first].kv);
    first = last;
  }
}

}  // namespace genai_fast

// Word2vec SGNS training (skip-gram, CBOW) on Hogwild threads (thread_pool.h). See word2vec.h for the contract.
//
// Per centre word the work is a handful of dot products and axpys over rows of `dim` floats; they are
// written with independent accumulators so the compiler vectorises them, and the whole per-thread loop
// is compiled for AVX-512, AVX2 and the baseline (target_clones), picked at run time.
//
// Randomness: each thread owns a splitmix64 stream seeded from (seed, thread index), so one thread and
// one seed give bit-identical results on every run. Noise words are drawn with the alias method (two
// table reads, no search), exactly from the distribution the Python side tabulated.
#include "word2vec.h"
#include "simd.h"

#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace genai_fast {
namespace {

constexpr int64_t kMaxNegative = 1000;
constexpr int64_t kMaxWindow = 100000;

GF_INLINE float dot(const float* a, const float* b, int64_t n) {
  v16 acc = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) acc += load16(a + i) * load16(b + i);
  float total = hsum(acc);
  for (; i < n; ++i) total += a[i] * b[i];
  return total;
}

// dot(a, b_j) for four rows b_0..b_3 at once (four independent chains); each result is bit-identical to dot().
GF_INLINE void dot4(const float* a, const float* b0, const float* b1, const float* b2, const float* b3, int64_t n,
                    float* out) {
  v16 acc0 = {}, acc1 = {}, acc2 = {}, acc3 = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const v16 x = load16(a + i);
    acc0 += x * load16(b0 + i);
    acc1 += x * load16(b1 + i);
    acc2 += x * load16(b2 + i);
    acc3 += x * load16(b3 + i);
  }
  float t0 = hsum(acc0), t1 = hsum(acc1), t2 = hsum(acc2), t3 = hsum(acc3);
  for (; i < n; ++i) {
    t0 += a[i] * b0[i];
    t1 += a[i] * b1[i];
    t2 += a[i] * b2[i];
    t3 += a[i] * b3[i];
  }
  out[0] = t0, out[1] = t1, out[2] = t2, out[3] = t3;
}

GF_INLINE void axpy(float g, const float* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) store16(y + i, load16(y + i) + g * load16(x + i));
  for (; i + 4 <= n; i += 4) store4(y + i, load4(y + i) + g * load4(x + i));
  for (; i < n; ++i) y[i] += g * x[i];
}

GF_INLINE void scale(float s, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] *= s;
}

GF_INLINE void zero(float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = 0.0f;
}

GF_INLINE void prefetch_row(const float* row, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) __builtin_prefetch(row + i, 1, 3);
}

GF_INLINE float sigmoid(float x) { return 1.0f / (1.0f + fast_exp(-x)); }

// -log sigmoid(x) for a positive pair (sign = +1) or -log sigmoid(-x) for a negative one (sign = -1).
GF_INLINE double pair_loss(float x, float sign) { return std::log1p(static_cast<double>(fast_exp(-sign * x))); }

struct Rng {
  uint64_t state;
  GF_INLINE uint64_t next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n) from the high 32 bits (multiply-shift, no division).
  GF_INLINE uint64_t below(uint64_t n) { return ((next() >> 32) * n) >> 32; }
  GF_INLINE float uniform() { return static_cast<float>(next() >> 40) * (1.0f / 16777216.0f); }
};

uint64_t mix_seed(uint64_t seed, uint64_t stream) {
  Rng r{seed ^ (0xD1B54A32D192ED03ull * (stream + 1))};
  r.next();
  return r.next();
}

struct Sampler {
  const float* prob;
  const int32_t* alias;
  uint64_t n;
  GF_INLINE int32_t draw(Rng& rng) const {
    const uint64_t r = rng.next();
    const uint64_t idx = ((r & 0xffffffffull) * n) >> 32;
    const float u = static_cast<float>(r >> 40) * (1.0f / 16777216.0f);
    return u < prob[idx] ? static_cast<int32_t>(idx) : alias[idx];
  }
};

// ---- the three per-centre updates (shared by word2vec_train and word2vec_step) ----

// syn0's row w += its lock factor (gensim's vectors_lockf[w % len]) x err. Without factors this is the
// plain add (the default path does no extra work); a factor 0 leaves the row bit for bit as it was.
GF_INLINE void add_input_error(const W2VTables& t, int32_t w, const float* err) {
  float* row = t.syn0 + static_cast<int64_t>(w) * t.dim;
  if (t.lockf == nullptr) {
    axpy(1.0f, err, row, t.dim);
    return;
  }
  const int64_t n = t.lockf_numel;
  const float factor = t.lockf[w < n ? w : w % n];  // skip the division when the table covers every word
  if (factor != 0.0f) axpy(factor, err, row, t.dim);
}

// One (context, centre) pair with its own negatives, gensim order. targets[0] = centre (label 1),
// targets[1..K] negatives (label 0; a negative equal to the centre is skipped).
GF_INLINE double update_sg_pair(const W2VTables& t, int32_t context, const int32_t* targets, int64_t K1, float alpha,
                                float* neu1e, bool compute_loss) {
  const int64_t d = t.dim;
  float* in = t.syn0 + context * d;
  zero(neu1e, d);
  double loss = 0.0;
  for (int64_t k = 0; k < K1; ++k) {
    if (k > 0 && targets[k] == targets[0]) continue;
    float* out = t.syn1neg + static_cast<int64_t>(targets[k]) * d;
    const float f = dot(in, out, d);
    const float label = k == 0 ? 1.0f : 0.0f;
    const float g = (label - sigmoid(f)) * alpha;
    if (compute_loss) loss += pair_loss(f, k == 0 ? 1.0f : -1.0f);
    axpy(g, out, neu1e, d);
    axpy(g, in, out, d);
  }
  add_input_error(t, context, neu1e);
  return loss;
}

// Input errors e_c = sum_k g[c][k] out_k (old outputs) into neu1e [C, d], 16 floats at a time in
// registers, four contexts at once: they share each output load, and four independent FMA chains hide
// the FMA latency. Every e_c sums over k in the same order as one context alone would.
GF_INLINE void shared_input_errors(const W2VTables& t, const float* table, int64_t C, const int32_t* rows, int64_t K,
                                   const float* g, float* neu1e) {
  const int64_t d = t.dim;
  int64_t i0 = 0;
  for (; i0 + 16 <= d; i0 += 16) {
    int64_t c = 0;
    for (; c + 4 <= C; c += 4) {
      v16 e0 = {}, e1 = {}, e2 = {}, e3 = {};
      for (int64_t k = 0; k < K; ++k) {
        const v16 out = load16(table + static_cast<int64_t>(rows[k]) * d + i0);
        e0 += g[c * K + k] * out;
        e1 += g[(c + 1) * K + k] * out;
        e2 += g[(c + 2) * K + k] * out;
        e3 += g[(c + 3) * K + k] * out;
      }
      store16(neu1e + c * d + i0, e0);
      store16(neu1e + (c + 1) * d + i0, e1);
      store16(neu1e + (c + 2) * d + i0, e2);
      store16(neu1e + (c + 3) * d + i0, e3);
    }
    for (; c < C; ++c) {
      v16 e = {};
      for (int64_t k = 0; k < K; ++k) e += g[c * K + k] * load16(table + static_cast<int64_t>(rows[k]) * d + i0);
      store16(neu1e + c * d + i0, e);
    }
  }
  for (; i0 + 4 <= d; i0 += 4)
    for (int64_t c = 0; c < C; ++c) {
      v4 e = {};
      for (int64_t k = 0; k < K; ++k) e += g[c * K + k] * load4(table + static_cast<int64_t>(rows[k]) * d + i0);
      store4(neu1e + c * d + i0, e);
    }
  for (int64_t c = 0; c < C; ++c)
    for (int64_t i = i0; i < d; ++i) {
      float e = 0.0f;
      for (int64_t k = 0; k < K; ++k) e += g[c * K + k] * table[static_cast<int64_t>(rows[k]) * d + i];
      neu1e[c * d + i] = e;
    }
}

// out_k += sum_c g[c][k] in_c for one output row (old inputs).
GF_INLINE void shared_output_row(const W2VTables& t, float* out, const int32_t* contexts, int64_t C, const float* g,
                                 int64_t K, int64_t k) {
  const int64_t d = t.dim;
  int64_t i = 0;
  for (; i + 16 <= d; i += 16) {
    v16 o = load16(out + i);
    for (int64_t c = 0; c < C; ++c) o += g[c * K + k] * load16(t.syn0 + static_cast<int64_t>(contexts[c]) * d + i);
    store16(out + i, o);
  }
  for (; i + 4 <= d; i += 4) {
    v4 o = load4(out + i);
    for (int64_t c = 0; c < C; ++c) o += g[c * K + k] * load4(t.syn0 + static_cast<int64_t>(contexts[c]) * d + i);
    store4(out + i, o);
  }
  for (; i < d; ++i) {
    float o = out[i];
    for (int64_t c = 0; c < C; ++c) o += g[c * K + k] * t.syn0[static_cast<int64_t>(contexts[c]) * d + i];
    out[i] = o;
  }
}

// Outputs out_k += sum_c g[c][k] in_c; a row left out (label < 0) is not written. Four rows at once
// share each input load, when they are four distinct rows all updated (a repeated row must see the
// previous update, so such a group goes row by row); each row sums over c in the same order either way.
GF_INLINE void shared_output_updates(const W2VTables& t, float* table, const int32_t* contexts, int64_t C,
                                     const int32_t* rows, const float* labels, int64_t K, const float* g) {
  const int64_t d = t.dim;
  int64_t k = 0;
  for (; k + 4 <= K; k += 4) {
    const int32_t* r = rows + k;
    const bool distinct = r[0] != r[1] && r[0] != r[2] && r[0] != r[3] && r[1] != r[2] && r[1] != r[3] &&
                          r[2] != r[3];
    if (!distinct || labels[k] < 0.0f || labels[k + 1] < 0.0f || labels[k + 2] < 0.0f || labels[k + 3] < 0.0f) {
      for (int64_t j = k; j < k + 4; ++j)
        if (labels[j] >= 0.0f) shared_output_row(t, table + static_cast<int64_t>(rows[j]) * d, contexts, C, g, K, j);
      continue;
    }
    float* o_ptr[4];
    for (int j = 0; j < 4; ++j) o_ptr[j] = table + static_cast<int64_t>(r[j]) * d;
    int64_t i = 0;
    for (; i + 16 <= d; i += 16) {
      v16 o0 = load16(o_ptr[0] + i), o1 = load16(o_ptr[1] + i), o2 = load16(o_ptr[2] + i), o3 = load16(o_ptr[3] + i);
      for (int64_t c = 0; c < C; ++c) {
        const v16 in = load16(t.syn0 + static_cast<int64_t>(contexts[c]) * d + i);
        const float* gc = g + c * K + k;
        o0 += gc[0] * in;
        o1 += gc[1] * in;
        o2 += gc[2] * in;
        o3 += gc[3] * in;
      }
      store16(o_ptr[0] + i, o0);
      store16(o_ptr[1] + i, o1);
      store16(o_ptr[2] + i, o2);
      store16(o_ptr[3] + i, o3);
    }
    for (; i + 4 <= d; i += 4)
      for (int j = 0; j < 4; ++j) {
        v4 o = load4(o_ptr[j] + i);
        for (int64_t c = 0; c < C; ++c) o += g[c * K + k + j] * load4(t.syn0 + static_cast<int64_t>(contexts[c]) * d + i);
        store4(o_ptr[j] + i, o);
      }
    for (; i < d; ++i)
      for (int j = 0; j < 4; ++j) {
        float o = o_ptr[j][i];
        for (int64_t c = 0; c < C; ++c) o += g[c * K + k + j] * t.syn0[static_cast<int64_t>(contexts[c]) * d + i];
        o_ptr[j][i] = o;
      }
  }
  for (; k < K; ++k)
    if (labels[k] >= 0.0f) shared_output_row(t, table + static_cast<int64_t>(rows[k]) * d, contexts, C, g, K, k);
}

// All contexts of one centre against one shared set of output rows of `table` (pWord2Vec): scores
// [C, K] from the current vectors, then input errors (g @ out), then output updates (g^T @ in), then
// inputs += errors. labels[k] is row k's target (1 or 0); a negative label leaves row k out. Negative
// sampling's rows are the centre and its negatives; hierarchical softmax's the centre's Huffman path.
GF_INLINE double update_shared(const W2VTables& t, float* table, const int32_t* contexts, int64_t C,
                               const int32_t* rows, const float* labels, int64_t K, float alpha, float* neu1e,
                               float* g, bool compute_loss) {
  const int64_t d = t.dim;
  double loss = 0.0;
  for (int64_t c = 0; c < C; ++c) {
    const float* in = t.syn0 + static_cast<int64_t>(contexts[c]) * d;
    float* f = g + c * K;  // the scores, turned into gradients in place
    int64_t k = 0;
    for (; k + 4 <= K; k += 4) {
      const float* out = table;
      dot4(in, out + static_cast<int64_t>(rows[k]) * d, out + static_cast<int64_t>(rows[k + 1]) * d,
           out + static_cast<int64_t>(rows[k + 2]) * d, out + static_cast<int64_t>(rows[k + 3]) * d, d, f + k);
    }
    for (; k < K; ++k) f[k] = dot(in, table + static_cast<int64_t>(rows[k]) * d, d);
    for (k = 0; k < K; ++k) {
      if (labels[k] < 0.0f) {
        f[k] = 0.0f;
        continue;
      }
      if (compute_loss) loss += pair_loss(f[k], labels[k] > 0.5f ? 1.0f : -1.0f);
      f[k] = (labels[k] - sigmoid(f[k])) * alpha;
    }
  }
  shared_input_errors(t, table, C, rows, K, g, neu1e);
  shared_output_updates(t, table, contexts, C, rows, labels, K, g);
  for (int64_t c = 0; c < C; ++c) add_input_error(t, contexts[c], neu1e + c * d);
  return loss;
}

// Skip-gram with shared negatives: targets[0] = centre (label 1), targets[1..K1) negatives (label 0; one
// equal to the centre is left out).
GF_INLINE double update_sg_shared(const W2VTables& t, const int32_t* contexts, int64_t C, const int32_t* targets,
                                  int64_t K1, float alpha, float* neu1e, float* g, float* labels, bool compute_loss) {
  labels[0] = 1.0f;
  for (int64_t k = 1; k < K1; ++k) labels[k] = targets[k] == targets[0] ? -1.0f : 0.0f;
  return update_shared(t, t.syn1neg, contexts, C, targets, labels, K1, alpha, neu1e, g, compute_loss);
}

// CBOW input: h = sum (or mean) of the context vectors.
GF_INLINE void cbow_input(const W2VTables& t, const int32_t* contexts, int64_t C, bool cbow_mean, float* h) {
  const int64_t d = t.dim;
  zero(h, d);
  for (int64_t c = 0; c < C; ++c) axpy(1.0f, t.syn0 + static_cast<int64_t>(contexts[c]) * d, h, d);
  if (cbow_mean) scale(1.0f / static_cast<float>(C), h, d);
}

// Adds the error of h to every context; gensim's rule: with a sum it is divided by the context count,
// with a mean it is not.
GF_INLINE void cbow_apply_error(const W2VTables& t, const int32_t* contexts, int64_t C, bool cbow_mean,
                                float* neu1e) {
  const int64_t d = t.dim;
  if (!cbow_mean) scale(1.0f / static_cast<float>(C), neu1e, d);
  for (int64_t c = 0; c < C; ++c) add_input_error(t, contexts[c], neu1e);
}

// CBOW: h predicts targets[0] against the negatives.
GF_INLINE double update_cbow(const W2VTables& t, const int32_t* contexts, int64_t C, const int32_t* targets,
                             int64_t K1, float alpha, bool cbow_mean, float* h, float* neu1e, bool compute_loss) {
  const int64_t d = t.dim;
  if (C == 0) return 0.0;
  cbow_input(t, contexts, C, cbow_mean, h);
  zero(neu1e, d);
  double loss = 0.0;
  for (int64_t k = 0; k < K1; ++k) {
    if (k > 0 && targets[k] == targets[0]) continue;
    float* out = t.syn1neg + static_cast<int64_t>(targets[k]) * d;
    const float f = dot(h, out, d);
    const float label = k == 0 ? 1.0f : 0.0f;
    const float g = (label - sigmoid(f)) * alpha;
    if (compute_loss) loss += pair_loss(f, k == 0 ? 1.0f : -1.0f);
    axpy(g, out, neu1e, d);
    axpy(g, h, out, d);
  }
  cbow_apply_error(t, contexts, C, cbow_mean, neu1e);
  return loss;
}

// ---- hierarchical softmax

// `in` predicts `word` by the binary choice at each inner node of its Huffman path (label 1 - code).
// Adds the input error to neu1e and updates the nodes' vectors. A path never repeats a node and `in`
// is fixed meanwhile, so all scores are taken first (independent dot products, `g` holds them), then
// each node is read once for both its error term and its update: the same arithmetic as node by node.
GF_INLINE double hs_path(const W2VTables& t, const float* in, int32_t word, float alpha, float* neu1e, float* g,
                         bool compute_loss) {
  const W2VTree& tree = t.hs;
  const int64_t d = t.dim, n = tree.lengths[word];
  const int32_t* points = tree.points + static_cast<int64_t>(word) * tree.depth;
  const uint8_t* codes = tree.codes + static_cast<int64_t>(word) * tree.depth;
  for (int64_t b = 0; b < n; ++b) g[b] = dot(in, tree.syn1 + static_cast<int64_t>(points[b]) * d, d);
  double loss = 0.0;
  for (int64_t b = 0; b < n; ++b) {
    if (compute_loss) loss += pair_loss(g[b], codes[b] ? -1.0f : 1.0f);
    g[b] = (1.0f - static_cast<float>(codes[b]) - sigmoid(g[b])) * alpha;
  }
  for (int64_t b = 0; b < n; ++b) {
    float* node = tree.syn1 + static_cast<int64_t>(points[b]) * d;
    const float gb = g[b];
    int64_t i = 0;
    for (; i + 16 <= d; i += 16) {
      const v16 old = load16(node + i);
      store16(neu1e + i, load16(neu1e + i) + gb * old);
      store16(node + i, old + gb * load16(in + i));
    }
    for (; i + 4 <= d; i += 4) {
      const v4 old = load4(node + i);
      store4(neu1e + i, load4(neu1e + i) + gb * old);
      store4(node + i, old + gb * load4(in + i));
    }
    for (; i < d; ++i) {
      const float old = node[i];
      neu1e[i] += gb * old;
      node[i] = old + gb * in[i];
    }
  }
  return loss;
}

// Skip-gram: one context word predicts the centre's path.
GF_INLINE double update_sg_hs(const W2VTables& t, int32_t context, int32_t centre, float alpha, float* neu1e,
                              float* g, bool compute_loss) {
  float* in = t.syn0 + static_cast<int64_t>(context) * t.dim;
  zero(neu1e, t.dim);
  const double loss = hs_path(t, in, centre, alpha, neu1e, g, compute_loss);
  add_input_error(t, context, neu1e);
  return loss;
}

// Skip-gram, batched: all contexts predict the centre's path at once (update_shared over the path's
// nodes), scores from the current vectors as with shared negatives.
GF_INLINE double update_sg_hs_shared(const W2VTables& t, const int32_t* contexts, int64_t C, int32_t centre,
                                     float alpha, float* neu1e, float* g, float* labels, bool compute_loss) {
  const W2VTree& tree = t.hs;
  const int64_t n = tree.lengths[centre];
  const int32_t* points = tree.points + static_cast<int64_t>(centre) * tree.depth;
  const uint8_t* codes = tree.codes + static_cast<int64_t>(centre) * tree.depth;
  for (int64_t b = 0; b < n; ++b) labels[b] = 1.0f - static_cast<float>(codes[b]);
  return update_shared(t, tree.syn1, contexts, C, points, labels, n, alpha, neu1e, g, compute_loss);
}

// CBOW: the (mean or sum of the) contexts predicts the centre's path.
GF_INLINE double update_cbow_hs(const W2VTables& t, const int32_t* contexts, int64_t C, int32_t centre, float alpha,
                                bool cbow_mean, float* h, float* neu1e, float* g, bool compute_loss) {
  if (C == 0) return 0.0;
  cbow_input(t, contexts, C, cbow_mean, h);
  zero(neu1e, t.dim);
  const double loss = hs_path(t, h, centre, alpha, neu1e, g, compute_loss);
  cbow_apply_error(t, contexts, C, cbow_mean, neu1e);
  return loss;
}

// ---- one centre: hierarchical softmax (when on), then negative sampling (when `ns`), as gensim orders them

struct Scratch {
  std::vector<float> neu1e, h, g, labels;
  // max_targets: rows scored per context, the most of K1 (negative sampling) and the tree depth.
  Scratch(int64_t max_contexts, int64_t max_targets, int64_t d)
      : neu1e((max_contexts + 1) * d), h(d), g(std::max<int64_t>(max_contexts, 1) * max_targets),
        labels(max_targets) {}
};

// targets[0] must hold the centre; SgShared and Cbow read the negatives already in targets[1..K1);
// SgPair calls pair_negatives(c, targets) to fill them for context c.
template <typename PairNegatives>
GF_INLINE double train_centre(const W2VTables& t, W2VMode mode, const int32_t* contexts, int64_t C, int32_t* targets,
                              int64_t K1, bool ns, float alpha, bool cbow_mean, Scratch& s, bool compute_loss,
                              PairNegatives&& pair_negatives) {
  const bool hs = t.hs.enabled();
  double loss = 0.0;
  if (mode == W2VMode::SgPair) {
    for (int64_t c = 0; c < C; ++c) {
      if (hs) loss += update_sg_hs(t, contexts[c], targets[0], alpha, s.neu1e.data(), s.g.data(), compute_loss);
      if (!ns) continue;
      pair_negatives(c, targets);
      loss += update_sg_pair(t, contexts[c], targets, K1, alpha, s.neu1e.data(), compute_loss);
    }
  } else if (mode == W2VMode::SgShared) {
    if (hs)
      loss += update_sg_hs_shared(t, contexts, C, targets[0], alpha, s.neu1e.data(), s.g.data(), s.labels.data(),
                                  compute_loss);
    if (ns)
      loss += update_sg_shared(t, contexts, C, targets, K1, alpha, s.neu1e.data(), s.g.data(), s.labels.data(),
                               compute_loss);
  } else {
    if (hs)
      loss += update_cbow_hs(t, contexts, C, targets[0], alpha, cbow_mean, s.h.data(), s.neu1e.data(), s.g.data(),
                             compute_loss);
    if (ns)
      loss += update_cbow(t, contexts, C, targets, K1, alpha, cbow_mean, s.h.data(), s.neu1e.data(), compute_loss);
  }
  return loss;
}

// ---- one thread's share of a chunk: tokens [begin, end) ----

GF_CLONES W2VResult train_range(const W2VTrainArgs& a, int64_t begin, int64_t end, uint64_t stream) {
  W2VResult result;
  if (begin >= end) return result;
  const W2VTables& t = a.tables;
  const int64_t d = t.dim, window = a.window, K1 = a.negative + 1;
  const bool ns = a.negative > 0;
  Rng rng{mix_seed(a.seed, stream)};
  const Sampler sampler{a.alias_prob, a.alias_index, static_cast<uint64_t>(a.alias_numel)};
  std::vector<int32_t> sentence, contexts(2 * window), targets(K1), next_negatives(K1);
  for (int64_t k = 1; k < K1; ++k) next_negatives[k] = sampler.draw(rng);
  Scratch scratch(2 * window, std::max(K1, t.hs.depth), d);
  const auto draw_pair_negatives = [&](int64_t, int32_t* out) {
    for (int64_t k = 1; k < K1; ++k) out[k] = sampler.draw(rng);
  };
  const double span = static_cast<double>(end - begin);
  const double alpha_step = (a.alpha_end - a.alpha_start) / span;

  // First sentence that ends after `begin`.
  int64_t s = std::upper_bound(a.offsets, a.offsets + a.num_offsets, begin) - a.offsets - 1;
  double loss = 0.0;
  for (; s + 1 < a.num_offsets && a.offsets[s] < end; ++s) {
    const int64_t lo_tok = std::max(a.offsets[s], begin), hi_tok = std::min(a.offsets[s + 1], end);
    if (hi_tok <= lo_tok) continue;
    sentence.clear();
    for (int64_t p = lo_tok; p < hi_tok; ++p) {
      const int32_t w = a.tokens[p];
      if (a.keep_prob != nullptr) {
        const float keep = a.keep_prob[w];
        if (keep < 1.0f && !(rng.uniform() < keep)) continue;
      }
      sentence.push_back(w);
    }
    result.raw_words += hi_tok - lo_tok;
    const int64_t n = static_cast<int64_t>(sentence.size());
    result.effective_words += n;
    const double sentence_step = n > 0 ? static_cast<double>(hi_tok - lo_tok) / n : 0.0;
    for (int64_t i = 0; i < n; ++i) {
      const double position = static_cast<double>(lo_tok - begin) + sentence_step * i;
      const float alpha = static_cast<float>(a.alpha_start + alpha_step * position);
      const int64_t b = a.shrink_windows ? static_cast<int64_t>(rng.below(static_cast<uint64_t>(window))) : 0;
      const int64_t j0 = std::max<int64_t>(0, i - window + b), j1 = std::min<int64_t>(n, i + window + 1 - b);
      int64_t C = 0;
      for (int64_t j = j0; j < j1; ++j)
        if (j != i) contexts[C++] = sentence[j];
      if (C == 0) continue;
      targets[0] = sentence[i];
      if (ns && a.mode != W2VMode::SgPair) {
        // Negatives are drawn one centre ahead and their rows prefetched, so the random reads of the
        // output table overlap this centre's arithmetic.
        for (int64_t k = 1; k < K1; ++k) targets[k] = next_negatives[k];
        for (int64_t k = 1; k < K1; ++k) {
          next_negatives[k] = sampler.draw(rng);
          prefetch_row(t.syn1neg + static_cast<int64_t>(next_negatives[k]) * d, d);
        }
        if (i + 1 < n) prefetch_row(t.syn1neg + static_cast<int64_t>(sentence[i + 1]) * d, d);
      }
      if (a.mode != W2VMode::SgPair && i + window + 1 < n)
        prefetch_row(t.syn0 + static_cast<int64_t>(sentence[i + window + 1]) * d, d);
      loss += train_centre(t, a.mode, contexts.data(), C, targets.data(), K1, ns, alpha, a.cbow_mean, scratch,
                           a.compute_loss, draw_pair_negatives);
    }
  }
  result.loss = loss;
  return result;
}

GF_CLONES void step_rows(const W2VStepArgs& a) {
  const W2VTables& t = a.tables;
  const int64_t d = t.dim, C = a.num_contexts, K1 = a.negative + 1;
  // Without a tree negative 0 still trains the positive pairs; with one it means hs alone.
  const bool ns = !t.hs.enabled() || a.negative > 0;
  std::vector<int32_t> contexts(std::max<int64_t>(C, 1)), columns(std::max<int64_t>(C, 1)), targets(K1);
  Scratch scratch(C, std::max(K1, t.hs.depth), d);
  const float alpha = static_cast<float>(a.alpha);
  for (int64_t r = 0; r < a.batch; ++r) {
    int64_t n = 0;
    for (int64_t c = 0; c < C; ++c)
      if (a.contexts[r * C + c] >= 0) {
        columns[n] = static_cast<int32_t>(c);
        contexts[n++] = a.contexts[r * C + c];
      }
    targets[0] = a.centers[r];
    if (a.mode != W2VMode::SgPair)
      for (int64_t k = 1; k < K1; ++k) targets[k] = a.negatives[r * a.negative + k - 1];
    const auto pair_negatives = [&](int64_t c, int32_t* out) {
      const int32_t* row = a.negatives + (r * C + columns[c]) * a.negative;
      for (int64_t k = 1; k < K1; ++k) out[k] = row[k - 1];
    };
    const double loss = n == 0 ? 0.0
                               : train_centre(t, a.mode, contexts.data(), n, targets.data(), K1, ns, alpha,
                                              a.cbow_mean, scratch, a.loss != nullptr, pair_negatives);
    if (a.loss != nullptr) a.loss[r] = loss;
  }
}

std::string str(int64_t v) { return std::to_string(v); }

constexpr int64_t kMaxTreeDepth = 255;

void validate_tree(const W2VTables& t);

// syn1neg is needed unless hierarchical softmax does all the work (negative 0 with a tree).
void validate_tables(const W2VTables& t, bool needs_syn1neg) {
  require(t.vocab >= 1, "vocab_size: expected >= 1, got " + str(t.vocab));
  require(t.vocab <= std::numeric_limits<int32_t>::max(), "vocab_size: expected < 2^31, got " + str(t.vocab));
  require(t.dim >= 1, "dim: expected >= 1, got " + str(t.dim));
  const int64_t numel = checked_mul(t.vocab, t.dim, "syn0 (vocab_size*dim)");
  require(t.syn0_numel == numel, "syn0: expected vocab_size*dim=" + str(numel) + " elements, got " + str(t.syn0_numel));
  require(t.syn0 != nullptr, "syn0: null data pointer");
  if (needs_syn1neg || t.syn1neg != nullptr) {
    require(t.syn1neg_numel == numel,
            "syn1neg: expected vocab_size*dim=" + str(numel) + " elements, got " + str(t.syn1neg_numel));
    require(t.syn1neg != nullptr, "syn1neg: null data pointer");
  }
  if (t.hs.enabled()) validate_tree(t);
  if (t.lockf != nullptr || t.lockf_numel != 0) {
    require(t.lockf_numel >= 1, "lockf: expected at least one lock factor, got " + str(t.lockf_numel));
    require(t.lockf != nullptr, "lockf: null data pointer");
  }
}

// First index i with ids[i] outside [lo, vocab), or -1. Vectorisable: no early exit in the hot loop.
int64_t first_bad_id(const int32_t* ids, int64_t n, int32_t lo, int64_t vocab) {
  constexpr int64_t kBlock = 4096;
  const int32_t hi = static_cast<int32_t>(vocab);
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t e = std::min(n, b + kBlock);
    int bad = 0;
    for (int64_t i = b; i < e; ++i) bad |= (ids[i] < lo) | (ids[i] >= hi);
    if (bad)
      for (int64_t i = b; i < e; ++i)
        if (ids[i] < lo || ids[i] >= hi) return i;
  }
  return -1;
}

void require_ids(const char* name, const int32_t* ids, int64_t n, int32_t lo, int64_t vocab,
                 const char* bound = "vocab_size") {
  require(n == 0 || ids != nullptr, std::string(name) + ": null data pointer");
  const int64_t bad = first_bad_id(ids, n, lo, vocab);
  require(bad < 0, std::string(name) + ": id " + (bad < 0 ? std::string() : str(ids[bad])) + " at index " + str(bad) +
                       " is outside [" + str(lo) + ", " + bound + "=" + str(vocab) + ")");
}

void validate_tree(const W2VTables& t) {
  const W2VTree& h = t.hs;
  const int64_t V = t.vocab;
  require(h.syn1_numel == V * t.dim,  // validate_tables checked that V * dim fits
          "syn1: expected vocab_size*dim=" + str(V * t.dim) + " elements, got " + str(h.syn1_numel));
  require(h.depth >= 0 && h.depth <= kMaxTreeDepth,
          "tree depth: expected 0.." + str(kMaxTreeDepth) + ", got " + str(h.depth));
  require(h.points_numel == V * h.depth && h.codes_numel == V * h.depth,
          "tree points/codes: expected vocab_size*depth=" + str(V * h.depth) + " elements, got " +
              str(h.points_numel) + " and " + str(h.codes_numel));
  require(h.lengths_numel == V, "tree lengths: expected vocab_size=" + str(V) + " elements, got " +
                                    str(h.lengths_numel));
  require(h.lengths != nullptr && (h.depth == 0 || (h.points != nullptr && h.codes != nullptr)),
          "tree: null data pointer");
  require_ids("tree lengths", h.lengths, V, 0, h.depth + 1, "depth+1");
  require_ids("tree points", h.points, h.points_numel, 0, std::max<int64_t>(V - 1, 1), "vocab_size-1");
  uint8_t any_bits = 0;  // OR of all codes (vectorises); only a bad table is searched for its first bad code
  for (int64_t i = 0; i < h.codes_numel; ++i) any_bits |= h.codes[i];
  if (any_bits > 1) {
    int64_t bad = 0;
    while (h.codes[bad] <= 1) ++bad;
    require(false, "tree codes: expected 0 or 1, got " + str(h.codes[bad]) + " at index " + str(bad));
  }
}

}  // namespace

void validate(const W2VTrainArgs& a) {
  validate_tables(a.tables, a.negative > 0);
  const int64_t V = a.tables.vocab;
  require(a.num_tokens >= 0, "tokens: expected a non-negative length, got " + str(a.num_tokens));
  require_ids("tokens", a.tokens, a.num_tokens, 0, V);
  require(a.num_offsets >= 1 && a.offsets != nullptr, "offsets: expected at least one element (offsets[0] = 0)");
  require(a.offsets[0] == 0, "offsets: expected offsets[0] = 0, got " + str(a.offsets[0]));
  require(a.offsets[a.num_offsets - 1] == a.num_tokens,
          "offsets: expected the last offset to equal the token count " + str(a.num_tokens) + ", got " +
              str(a.offsets[a.num_offsets - 1]));
  for (int64_t i = 1; i < a.num_offsets; ++i)
    require(a.offsets[i] >= a.offsets[i - 1], "offsets: expected non-decreasing values, offsets[" + str(i) +
                                                  "]=" + str(a.offsets[i]) + " < offsets[" + str(i - 1) +
                                                  "]=" + str(a.offsets[i - 1]));
  require(a.keep_numel == 0 || a.keep_numel == V,
          "keep_prob: expected 0 or vocab_size=" + str(V) + " elements, got " + str(a.keep_numel));
  require(a.keep_numel == 0 || a.keep_prob != nullptr, "keep_prob: null data pointer");
  require(a.alias_numel == V, "alias_prob/alias_index: expected vocab_size=" + str(V) + " elements, got " +
                                  str(a.alias_numel));
  require(a.alias_prob != nullptr, "alias_prob: null data pointer");
  require_ids("alias_index", a.alias_index, a.alias_numel, 0, V);
  require(std::isfinite(a.alpha_start) && a.alpha_start >= 0, "alpha_start: expected a finite value >= 0");
  require(std::isfinite(a.alpha_end) && a.alpha_end >= 0, "alpha_end: expected a finite value >= 0");
  require(a.window >= 1 && a.window <= kMaxWindow, "window: expected 1.." + str(kMaxWindow) + ", got " + str(a.window));
  require(a.negative >= 0 && a.negative <= kMaxNegative,
          "negative: expected 0.." + str(kMaxNegative) + ", got " + str(a.negative));
  require(a.negative >= 1 || a.tables.hs.enabled(),
          "negative: expected >= 1 without hierarchical softmax (a tree), got 0");
  require(a.num_threads >= 1, "num_threads: expected >= 1, got " + str(a.num_threads));
  const int m = static_cast<int>(a.mode);
  require(m >= 0 && m <= 2, "mode: expected 0 (sg pair), 1 (sg shared) or 2 (cbow), got " + str(m));
}

void validate(const W2VStepArgs& a) {
  validate_tables(a.tables, !a.tables.hs.enabled() || a.negative > 0);
  const int64_t V = a.tables.vocab;
  require(a.batch >= 0, "batch: expected >= 0, got " + str(a.batch));
  require(a.num_contexts >= 0, "num_contexts: expected >= 0, got " + str(a.num_contexts));
  require(a.negative >= 0 && a.negative <= kMaxNegative,
          "negative: expected 0.." + str(kMaxNegative) + ", got " + str(a.negative));
  require(a.centers_numel == a.batch, "centers: expected batch=" + str(a.batch) + " elements, got " +
                                          str(a.centers_numel));
  const int64_t contexts = checked_mul(a.batch, a.num_contexts, "contexts (batch*num_contexts)");
  require(a.contexts_numel == contexts, "contexts: expected batch*num_contexts=" + str(contexts) +
                                            " elements, got " + str(a.contexts_numel));
  const int64_t neg = checked_mul(a.mode == W2VMode::SgPair ? contexts : a.batch, a.negative, "negatives");
  require(a.negatives_numel == neg,
          "negatives: expected " + str(neg) + " elements, got " + str(a.negatives_numel));
  require(a.loss == nullptr || a.loss_numel == a.batch,
          "loss: expected batch=" + str(a.batch) + " elements, got " + str(a.loss_numel));
  require_ids("centers", a.centers, a.centers_numel, 0, V);
  require_ids("contexts", a.contexts, a.contexts_numel, -1, V);
  require_ids("negatives", a.negatives, a.negatives_numel, 0, V);
  require(std::isfinite(a.alpha), "alpha: expected a finite value");
  const int m = static_cast<int>(a.mode);
  require(m >= 0 && m <= 2, "mode: expected 0 (sg pair), 1 (sg shared) or 2 (cbow), got " + str(m));
}

W2VResult word2vec_train(const W2VTrainArgs& args) {
  validate(args);
  W2VResult total;
  if (args.num_tokens == 0) return total;
  // Below a few thousand tokens per thread, starting threads costs more than it saves.
  const int64_t workers =
      std::max<int64_t>(1, std::min<int64_t>(args.num_threads, args.num_tokens / 4096));
  std::vector<W2VResult> parts(workers);
  parallel_for(workers, static_cast<int>(workers), [&](int64_t w) {
    const int64_t begin = args.num_tokens * w / workers, end = args.num_tokens * (w + 1) / workers;
    parts[w] = train_range(args, begin, end, static_cast<uint64_t>(w));
  });
  for (const auto& p : parts) {
    total.raw_words += p.raw_words;
    total.effective_words += p.effective_words;
    total.loss += p.loss;
  }
  return total;
}

void word2vec_step(const W2VStepArgs& args) {
  validate(args);
  if (args.batch == 0) return;
  step_rows(args);
}

}  // namespace genai_fast

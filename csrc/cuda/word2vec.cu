// word2vec training (skip-gram shared/pair, CBOW; negative sampling and/or hierarchical softmax) on the GPU:
// Hogwild over sentence slices, one warp per slice. The host plan (genai_fast/ops/word2vec_ops.py: plan_chunk) has already subsampled the chunk,
// compacted the kept tokens, given each its learning rate, and cut sentences into slices:
//   bounds[4 * s + 0 .. 3] = slice lo, slice hi, sentence lo, sentence hi (indices into tokens).
//
// A warp walks the centres of its slice in order. Per centre it stages the context rows and the
// K + 1 target rows in its shared-memory area (coalesced row loads), computes the C x (K + 1) scores
// one pair per lane, then the input errors and the output updates from the staged (old) rows, each lane
// owning columns d = lane, lane + 32, ... and adding into global memory in program order, so a
// repeated id accumulates exactly inside the warp; other warps race (Hogwild, as in word2vec.c).
// Hierarchical softmax stages the centre's Huffman path instead (rows of the inner-node table, labels
// 1 - code) and runs the same update before the negative-sampling one, as the Triton and C++ trainers do.
//
// Lock factors (gensim's vectors_lockf): with lockf non-null, every update of input row w is scaled by
// lockf[w % lockf_len] and a row whose factor is 0 is not written; output rows are never scaled. A null
// lockf (the default) takes the unscaled adds, one warp-uniform branch per context row.
//
// Randomness: Philox 4x32-10 on 64-bit counters, key = seed, the same stream as Triton's randint4x
// (kernels/word2vec.py): centre i (kept index) uses counters i * draw_stride + slot; slot 0 gives the
// window shrink, slot 1 + set * K + k the k-th noise word of a set (set = window slot for pairs, else 0).
// Compiled at run time by NVRTC through CuPy (genai_fast/backends/cuda): no #include, own integer types.
#define W2V_WARPS 4  // warps per block (the launcher's WARPS)

namespace {

typedef unsigned int u32;
typedef unsigned long long u64;

constexpr unsigned kFull = 0xffffffffu;

struct Philox {
  u32 c0, c1, c2, c3;
};

__device__ __forceinline__ Philox philox4x32_10(u64 counter, u64 seed) {
  u32 c0 = static_cast<u32>(counter), c1 = static_cast<u32>(counter >> 32), c2 = 0, c3 = 0;
  u32 k0 = static_cast<u32>(seed), k1 = static_cast<u32>(seed >> 32);
#pragma unroll
  for (int r = 0; r < 10; ++r) {
    const u32 a0 = c0, a2 = c2;
    c0 = __umulhi(0xCD9E8D57u, a2) ^ c1 ^ k0;
    c2 = __umulhi(0xD2511F53u, a0) ^ c3 ^ k1;
    c1 = 0xCD9E8D57u * a2;
    c3 = 0xD2511F53u * a0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return {c0, c1, c2, c3};
}

__device__ __forceinline__ int noise_word(u64 counter, u64 seed, const float* __restrict__ prob,
                                          const int* __restrict__ alias, long long vocab) {
  const Philox r = philox4x32_10(counter, seed);
  const int idx = static_cast<int>((static_cast<u64>(r.c0) * static_cast<u64>(vocab)) >> 32);
  const float u = static_cast<float>(r.c1 >> 8) * (1.0f / 16777216.0f);
  return u < prob[idx] ? idx : alias[idx];
}

__device__ __forceinline__ int window_shrink(u64 counter, u64 seed, int window) {
  const Philox r = philox4x32_10(counter, seed);
  return static_cast<int>((static_cast<u64>(r.c0) * static_cast<u64>(window)) >> 32);
}

__device__ __forceinline__ float softplus(float x) { return fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x))); }

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// Table reads and read-modify-writes go through L2 only (ld.global.cg): other SMs update the rows all
// the time, and a copy kept in this SM's L1 would keep serving stale values.
__device__ __forceinline__ void add_to(float* p, float v) { __stcg(p, __ldcg(p) + v); }

// syn0's element p (of input row w) += e scaled by the row's lock factor lockf[w % lockf_len]; without factors
// (lockf null) the plain add; a factor 0 leaves the element unwritten. lockf is read-only: a plain load.
__device__ __forceinline__ void add_input(float* p, float e, const float* __restrict__ lockf, long long lockf_len,
                                          int w) {
  if (lockf == nullptr) {
    add_to(p, e);
    return;
  }
  const float factor = lockf[w % lockf_len];
  if (factor != 0.0f) add_to(p, e * factor);
}

// One warp's staging area: rows of the contexts and targets, the errors g, the targets' labels, and the
// ids. T = max(negative + 1, the path depth with hierarchical softmax) target slots.
struct WarpArea {
  float* in;      // [max_ctx, D]
  float* out;     // [T, D]
  float* g;       // [max_ctx, T]
  float* h;       // [D] (CBOW)
  float* labels;  // [T] 1 for the centre (or a path node with code 0), else 0
  int* ctx;       // [max_ctx]
  int* targets;   // [T], -1 = skipped (a negative equal to the centre)
};

__device__ __forceinline__ void stage_rows(float* dst, const float* __restrict__ table, const int* ids, int n,
                                           int D, int lane) {
  for (int r = 0; r < n; ++r) {
    const int id = ids[r];
    const float* src = table + static_cast<long long>(id < 0 ? 0 : id) * D;
    for (int d = lane; d < D; d += 32) dst[r * D + d] = id < 0 ? 0.0f : __ldcg(src + d);
  }
}

// Skip-gram: C contexts against one target set of K1 rows of syn1 (the noise table, or the inner-node table
// for a Huffman path). Returns this lane's share of the loss.
__device__ double sg_update(float* syn0, float* syn1, const WarpArea& w, int C, int K1, int D, float alpha,
                            bool compute_loss, const float* __restrict__ lockf, long long lockf_len, int lane) {
  stage_rows(w.in, syn0, w.ctx, C, D, lane);
  stage_rows(w.out, syn1, w.targets, K1, D, lane);
  __syncwarp();
  double loss = 0.0;
  for (int p = lane; p < C * K1; p += 32) {
    const int c = p / K1, k = p - c * K1;
    float g = 0.0f;
    if (w.targets[k] >= 0) {
      const float* a = w.in + c * D;
      const float* b = w.out + k * D;
      float f = 0.0f;
      for (int d = 0; d < D; ++d) f = fmaf(a[d], b[d], f);
      g = (w.labels[k] - sigmoid(f)) * alpha;
      if (compute_loss) loss += softplus(w.labels[k] > 0.5f ? -f : f);
    }
    w.g[p] = g;
  }
  __syncwarp();
  for (int d = lane; d < D; d += 32) {
    for (int c = 0; c < C; ++c) {  // input errors from the old outputs
      float e = 0.0f;
      for (int k = 0; k < K1; ++k) e = fmaf(w.g[c * K1 + k], w.out[k * D + d], e);
      add_input(syn0 + static_cast<long long>(w.ctx[c]) * D + d, e, lockf, lockf_len, w.ctx[c]);
    }
    for (int k = 0; k < K1; ++k) {  // output updates from the old inputs
      if (w.targets[k] < 0) continue;
      float o = 0.0f;
      for (int c = 0; c < C; ++c) o = fmaf(w.g[c * K1 + k], w.in[c * D + d], o);
      add_to(syn1 + static_cast<long long>(w.targets[k]) * D + d, o);
    }
  }
  __syncwarp();
  return loss;
}

// CBOW: h = sum (or mean) of the C context rows predicts the centre (against K1 rows of syn1, as above).
__device__ double cbow_update(float* syn0, float* syn1, const WarpArea& w, int C, int K1, int D, float alpha,
                              bool cbow_mean, bool compute_loss, const float* __restrict__ lockf, long long lockf_len,
                              int lane) {
  const float inv_count = 1.0f / static_cast<float>(C);
  for (int d = lane; d < D; d += 32) {
    float h = 0.0f;
    for (int c = 0; c < C; ++c) h += __ldcg(syn0 + static_cast<long long>(w.ctx[c]) * D + d);
    w.h[d] = cbow_mean ? h * inv_count : h;
  }
  stage_rows(w.out, syn1, w.targets, K1, D, lane);
  __syncwarp();
  double loss = 0.0;
  for (int k = lane; k < K1; k += 32) {
    float g = 0.0f;
    if (w.targets[k] >= 0) {
      float f = 0.0f;
      for (int d = 0; d < D; ++d) f = fmaf(w.h[d], w.out[k * D + d], f);
      g = (w.labels[k] - sigmoid(f)) * alpha;
      if (compute_loss) loss += softplus(w.labels[k] > 0.5f ? -f : f);
    }
    w.g[k] = g;
  }
  __syncwarp();
  for (int d = lane; d < D; d += 32) {
    float e = 0.0f;
    for (int k = 0; k < K1; ++k) e = fmaf(w.g[k], w.out[k * D + d], e);
    if (!cbow_mean) e *= inv_count;
    for (int k = 0; k < K1; ++k)
      if (w.targets[k] >= 0) add_to(syn1 + static_cast<long long>(w.targets[k]) * D + d, w.g[k] * w.h[d]);
    for (int c = 0; c < C; ++c)
      add_input(syn0 + static_cast<long long>(w.ctx[c]) * D + d, e, lockf, lockf_len, w.ctx[c]);
  }
  __syncwarp();
  return loss;
}

// Lanes draw targets k = lane, lane + 32, ... <= negative (k = 0: the centre) for noise set `set`; a
// negative equal to the centre becomes -1 (skipped).
__device__ __forceinline__ void draw_targets(const WarpArea& w, int centre, u64 base, int set, int negative,
                                             u64 seed, const float* prob, const int* alias, long long vocab,
                                             int lane) {
  for (int k = lane; k <= negative; k += 32) {
    int t = centre;
    if (k > 0) {
      t = noise_word(base + 1 + static_cast<u64>(set) * negative + (k - 1), seed, prob, alias, vocab);
      if (t == centre) t = -1;
    }
    w.targets[k] = t;
    w.labels[k] = k == 0 ? 1.0f : 0.0f;
  }
}

// Lanes stage the centre's Huffman path: targets = its inner nodes, labels = 1 - code. Returns its length.
__device__ __forceinline__ int load_path(const WarpArea& w, int centre, const int* __restrict__ points,
                                         const unsigned char* __restrict__ codes,
                                         const int* __restrict__ path_lengths, int depth, int lane) {
  const int length = path_lengths[centre];
  const long long row = static_cast<long long>(centre) * depth;
  for (int k = lane; k < length; k += 32) {
    w.targets[k] = points[row + k];
    w.labels[k] = 1.0f - static_cast<float>(codes[row + k]);
  }
  return length;
}

}  // namespace

// Shared memory: W2V_WARPS staging areas of warp_area_bytes() each (genai_fast/backends/cuda/word2vec.py).
extern "C" __global__ void __launch_bounds__(32 * W2V_WARPS) word2vec_train(
    float* __restrict__ syn0, float* __restrict__ syn1, const int* __restrict__ tokens,
    const float* __restrict__ alphas, const int* __restrict__ bounds, const float* __restrict__ prob,
    const int* __restrict__ alias, double* __restrict__ loss_out, float* __restrict__ syn1hs,
    const int* __restrict__ points, const unsigned char* __restrict__ codes, const int* __restrict__ path_lengths,
    long long num_slices, long long vocab, int D, long long seed_bits, int window, int negative,
    long long draw_stride, int mode, int cbow_mean, int shrink, int compute_loss, int depth, int hs,
    const float* __restrict__ lockf, long long lockf_len) {
  extern __shared__ float smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const long long slice = static_cast<long long>(blockIdx.x) * W2V_WARPS + warp;
  if (slice >= num_slices) return;
  const u64 seed = static_cast<u64>(seed_bits);
  const int K1 = negative + 1;
  const int T = hs && depth > K1 ? depth : K1;     // target slots: noise sets and Huffman paths
  const int max_ctx = mode == 0 ? 1 : 2 * window;  // rows staged at once (pairs: one context at a time)
  const int floats = max_ctx * D + T * D + max_ctx * T + D + T;
  const int per_warp = floats + max_ctx + T;
  WarpArea w;
  w.in = smem + static_cast<long long>(warp) * per_warp;
  w.out = w.in + max_ctx * D;
  w.g = w.out + T * D;
  w.h = w.g + max_ctx * T;
  w.labels = w.h + D;
  w.ctx = reinterpret_cast<int*>(w.labels + T);
  w.targets = w.ctx + max_ctx;

  const int lo = bounds[4 * slice], hi = bounds[4 * slice + 1];
  const int sent_lo = bounds[4 * slice + 2], sent_hi = bounds[4 * slice + 3];
  double loss = 0.0;
  for (int i = lo; i < hi; ++i) {
    const int centre = tokens[i];
    const float alpha = alphas[i];
    const u64 base = static_cast<u64>(i) * static_cast<u64>(draw_stride);
    const int b = shrink ? window_shrink(base, seed, window) : 0;
    const int j0 = max(sent_lo, i - window + b), j1 = min(sent_hi, i + window + 1 - b);
    if (mode == 0) {  // gensim's order: every context along the path, then every context's noise set
      const int length = hs ? load_path(w, centre, points, codes, path_lengths, depth, lane) : 0;
      for (int t = 0; hs && t < 2 * window; ++t) {
        const int j = i - window + t + (t >= window ? 1 : 0);
        if (j < j0 || j >= j1) continue;
        if (lane == 0) w.ctx[0] = tokens[j];
        __syncwarp();
        loss += sg_update(syn0, syn1hs, w, 1, length, D, alpha, compute_loss != 0, lockf, lockf_len, lane);
      }
      for (int t = 0; negative > 0 && t < 2 * window; ++t) {
        const int j = i - window + t + (t >= window ? 1 : 0);
        if (j < j0 || j >= j1) continue;
        if (lane == 0) w.ctx[0] = tokens[j];
        draw_targets(w, centre, base, t, negative, seed, prob, alias, vocab, lane);
        __syncwarp();
        loss += sg_update(syn0, syn1, w, 1, K1, D, alpha, compute_loss != 0, lockf, lockf_len, lane);
      }
      continue;
    }
    // Contexts in window order, compacted with a ballot over the 2 * window slots.
    int C = 0;
    for (int t0 = 0; t0 < 2 * window; t0 += 32) {
      const int t = t0 + lane;
      const int j = i - window + t + (t >= window ? 1 : 0);
      const bool valid = t < 2 * window && j >= j0 && j < j1;
      const unsigned mask = __ballot_sync(kFull, valid);
      if (valid) w.ctx[C + __popc(mask & ((1u << lane) - 1u))] = tokens[j];
      C += __popc(mask);
    }
    __syncwarp();
    if (C == 0) continue;
    if (hs) {  // the centre's path first, then its noise set
      const int length = load_path(w, centre, points, codes, path_lengths, depth, lane);
      __syncwarp();
      loss += mode == 1 ? sg_update(syn0, syn1hs, w, C, length, D, alpha, compute_loss != 0, lockf, lockf_len, lane)
                        : cbow_update(syn0, syn1hs, w, C, length, D, alpha, cbow_mean != 0, compute_loss != 0, lockf,
                                      lockf_len, lane);
    }
    if (negative == 0) continue;
    draw_targets(w, centre, base, 0, negative, seed, prob, alias, vocab, lane);
    __syncwarp();
    if (mode == 1) {
      loss += sg_update(syn0, syn1, w, C, K1, D, alpha, compute_loss != 0, lockf, lockf_len, lane);
    } else {
      loss += cbow_update(syn0, syn1, w, C, K1, D, alpha, cbow_mean != 0, compute_loss != 0, lockf, lockf_len,
                          lane);
    }
  }
  for (int s = 16; s > 0; s >>= 1) loss += __shfl_xor_sync(kFull, loss, s);
  if (lane == 0) loss_out[slice] = loss;
}

// The draws of centres 0..n-1 (tests): shrink [n] and noise [n, sets, negative], one thread per centre.
extern "C" __global__ void word2vec_draws(int* __restrict__ shrink_out, int* __restrict__ noise_out,
                                          const float* __restrict__ prob, const int* __restrict__ alias,
                                          long long n, long long vocab, long long seed_bits, int window,
                                          long long draw_stride, int sets, int negative) {
  const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const u64 seed = static_cast<u64>(seed_bits);
  const u64 base = static_cast<u64>(i) * static_cast<u64>(draw_stride);
  shrink_out[i] = window_shrink(base, seed, window);
  for (int s = 0; s < sets; ++s)
    for (int k = 0; k < negative; ++k)
      noise_out[(i * sets + s) * negative + k] =
          noise_word(base + 1 + static_cast<u64>(s) * negative + k, seed, prob, alias, vocab);
}

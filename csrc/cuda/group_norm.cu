// GroupNorm (+ optional SiLU) forward on the GPU for [N, C, S] tensors in two layouts:
//   channels-first (contiguous NCHW): element (n, c, s) at (n * C + c) * S + s;
//   channels-last  (NHWC):            element (n, c, s) at (n * S + s) * C + c.
//
// Compiled at run time by NVRTC through CuPy (genai_fast/backends/cuda); no host code, no #include
// (NVRTC's include paths vary), fp16/bf16 are handled as raw 16-bit patterns with inline PTX
// conversions (bf16 stores need sm_80).
//
// Three launches, so that batch 1 still fills the GPU:
//   1. group_norm_stats_{cf,cl}_<dt>: grid (N * num_chunks, ceil(C / block_c)), 256 threads. Each
//      block reduces rows [k * chunk_len, min(S, (k + 1) * chunk_len)) of the spatial axis for
//      block_c channels and writes per-(n, chunk, c) fp32 partial (mean, M2) to the workspace,
//      index (n * num_chunks + k) * C + c. Welford per thread, Chan's merge across threads.
//   2. group_norm_finalize: grid N * G, 256 threads. Merges a group's num_chunks * C/G partials in
//      double (two passes over the partials: mean, then M2 by Chan's formula) and writes per-(n, c)
//      fp32 scale = rstd * w[c] and shift = b[c] - mean * scale, in double for the fp32 scale and rounded
//      once (w, b: fp32, fp16 or bf16, or null for the identity).
//   3. group_norm_apply_{cf,cl}_<dt>: grid-stride over the tensor from its end back to its start (so that on
//      tensors larger than L2 the part the stats pass read last is read again from L2), y = x * scale +
//      shift, then SiLU if asked, stored in the input dtype with evict-first hints.
// Every reduction has a fixed order, so results are bit-for-bit reproducible run to run.
//
// `vec` != 0 selects 16-byte vector loads and stores (4 fp32 or 8 fp16/bf16 elements). The host
// passes it only when the innermost dimension (S for channels-first, C for channels-last) is a
// multiple of that width, x and y are 16-byte aligned, and (channels-first) chunk_len is a multiple
// of the width too; the scale/shift buffers must then be 16-byte aligned as well.
// Sizes are 64-bit throughout. Every kernel is launched with GN_THREADS (256) threads per block.
//
// Entry points (<dt> = f32 | f16 | bf16, T = float | unsigned short):
//   group_norm_stats_cf_<dt>(const T* x, float* ws_mean, float* ws_m2, i64 C, i64 S, i64 num_chunks,
//                            i64 chunk_len, i64 block_c, int vec)            block_c: channels per block
//   group_norm_stats_cl_<dt>(same parameters)          block_c / (vec ? width : 1): a power of two <= 256
//   group_norm_finalize(const float* ws_mean, const float* ws_m2, const void* weight, int weight_dtype,
//                       const void* bias, int bias_dtype, float* scale, float* shift, i64 C, i64 S,
//                       i64 G, i64 num_chunks, i64 chunk_len, double eps)    dtype codes: 0 fp32, 1 fp16, 2 bf16
//   group_norm_apply_cf_<dt>(const T* x, T* y, const float* scale, const float* shift, i64 total,
//                            i64 C, i64 S, int silu, int vec)                total = N * C * S
//   group_norm_apply_cl_<dt>(same parameters)

typedef long long i64;

#define GN_THREADS 256
#define GN_UNROLL 4
#define GN_STATS_MIN_BLOCKS 4  // resident stats blocks per SM the register budget is sized for

// ------------------------------------------------------------------ element types

// Without __CUDA_ARCH__ (tests/cuda_emulator/block_emulator.cpp builds this file for the CPU) the conversions
// are the same IEEE round-to-nearest-even ones in portable C++.
__device__ __forceinline__ float gn_half_to_float(unsigned short h) {
#if defined(__CUDA_ARCH__)
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
#else
  _Float16 f;
  __builtin_memcpy(&f, &h, 2);
  return static_cast<float>(f);
#endif
}

__device__ __forceinline__ unsigned short gn_float_to_half(float f) {
#if defined(__CUDA_ARCH__)
  unsigned short h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
#else
  const _Float16 v = static_cast<_Float16>(f);
  unsigned short h;
  __builtin_memcpy(&h, &v, 2);
  return h;
#endif
}

__device__ __forceinline__ float gn_bf16_to_float(unsigned short b) {
  return __uint_as_float(static_cast<unsigned int>(b) << 16);
}

__device__ __forceinline__ unsigned short gn_float_to_bf16(float f) {
#if defined(__CUDA_ARCH__)
  unsigned short b;
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(b) : "f"(f));
  return b;
#else
  unsigned int u;
  __builtin_memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<unsigned short>((u >> 16) | 0x0040u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
  return static_cast<unsigned short>(u >> 16);
#endif
}

// 16-byte loads and stores marked evict-first (ld/st.global.cs): the apply pass reads x for the last time and
// writes y, which nothing in this call reads again; the hint keeps L2 for the part of x still to be read.
__device__ __forceinline__ uint4 gn_load_last_use(const void* p) {
#if defined(__CUDA_ARCH__)
  uint4 v;
  asm("ld.global.cs.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
#else
  return *static_cast<const uint4*>(p);
#endif
}

__device__ __forceinline__ void gn_store_streaming(void* p, const uint4& v) {
#if defined(__CUDA_ARCH__)
  asm volatile("st.global.cs.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w)
               : "memory");
#else
  *static_cast<uint4*>(p) = v;
#endif
}

struct GnF32 {
  typedef float T;
  static constexpr int kVec = 4;  // 16 bytes
  static __device__ __forceinline__ float to_float(T v) { return v; }
  static __device__ __forceinline__ T from_float(float v) { return v; }
};

struct GnF16 {
  typedef unsigned short T;
  static constexpr int kVec = 8;
  static __device__ __forceinline__ float to_float(T v) { return gn_half_to_float(v); }
  static __device__ __forceinline__ T from_float(float v) { return gn_float_to_half(v); }
};

struct GnBF16 {
  typedef unsigned short T;
  static constexpr int kVec = 8;
  static __device__ __forceinline__ float to_float(T v) { return gn_bf16_to_float(v); }
  static __device__ __forceinline__ T from_float(float v) { return gn_float_to_bf16(v); }
};

// Loads and stores of VEC consecutive elements as floats. VEC > 1 is one 16-byte access
// (VEC * sizeof(T) == 16) and needs p 16-byte aligned; VEC == 1 is the scalar fallback.
// (Class specialisations rather than `if constexpr`, so the file also compiles as C++14.)
template <class Tr, int VEC>
struct GnVec {
  typedef typename Tr::T T;
  static_assert(VEC * sizeof(T) == 16, "vector width must be 16 bytes");
  union Pack {
    uint4 u;
    T e[VEC];
  };

  typedef uint4 Raw;  // loaded bits, converted to floats only when used (fewer live registers)

  static __device__ __forceinline__ Raw load_raw(const T* __restrict__ p) {
    return *reinterpret_cast<const uint4*>(p);
  }

  static __device__ __forceinline__ void unpack(const Raw& raw, float (&v)[VEC]) {
    Pack pack;
    pack.u = raw;
#pragma unroll
    for (int i = 0; i < VEC; ++i) v[i] = Tr::to_float(pack.e[i]);
  }

  static __device__ __forceinline__ void load(const T* __restrict__ p, float (&v)[VEC]) { unpack(load_raw(p), v); }

  static __device__ __forceinline__ void store(T* __restrict__ p, const float (&v)[VEC]) {
    Pack pack;
#pragma unroll
    for (int i = 0; i < VEC; ++i) pack.e[i] = Tr::from_float(v[i]);
    *reinterpret_cast<uint4*>(p) = pack.u;
  }

  // The apply pass's accesses: x read for the last time, y streamed out (gn_load_last_use, gn_store_streaming).
  static __device__ __forceinline__ void load_last_use(const T* __restrict__ p, float (&v)[VEC]) {
    unpack(gn_load_last_use(p), v);
  }

  static __device__ __forceinline__ void store_streaming(T* __restrict__ p, const float (&v)[VEC]) {
    Pack pack;
#pragma unroll
    for (int i = 0; i < VEC; ++i) pack.e[i] = Tr::from_float(v[i]);
    gn_store_streaming(p, pack.u);
  }

  // VEC consecutive fp32 parameters (VEC is 4 or 8 here; p 16-byte aligned).
  static __device__ __forceinline__ void load_params(const float* __restrict__ p, float (&v)[VEC]) {
#pragma unroll
    for (int i = 0; i < VEC; i += 4) {
      const float4 q = *reinterpret_cast<const float4*>(p + i);
      v[i] = q.x;
      v[i + 1] = q.y;
      v[i + 2] = q.z;
      v[i + 3] = q.w;
    }
  }
};

template <class Tr>
struct GnVec<Tr, 1> {
  typedef typename Tr::T T;
  typedef T Raw;
  static __device__ __forceinline__ Raw load_raw(const T* __restrict__ p) { return p[0]; }
  static __device__ __forceinline__ void unpack(const Raw& raw, float (&v)[1]) { v[0] = Tr::to_float(raw); }
  static __device__ __forceinline__ void load(const T* __restrict__ p, float (&v)[1]) { v[0] = Tr::to_float(p[0]); }
  static __device__ __forceinline__ void store(T* __restrict__ p, const float (&v)[1]) { p[0] = Tr::from_float(v[0]); }
  static __device__ __forceinline__ void load_last_use(const T* __restrict__ p, float (&v)[1]) { load(p, v); }
  static __device__ __forceinline__ void store_streaming(T* __restrict__ p, const float (&v)[1]) { store(p, v); }
  static __device__ __forceinline__ void load_params(const float* __restrict__ p, float (&v)[1]) { v[0] = p[0]; }
};

__device__ __forceinline__ float gn_silu(float y) {
  // y * sigmoid(y); for y < -88 the exponential is inf and __fdividef returns 0 (the limit).
  return __fdividef(y, 1.0f + __expf(-y));
}

// ------------------------------------------------------------------ statistics helpers

// Merge (n_b, mean_b, m2_b) into (n_a, mean_a, m2_a) by Chan's formula; either side may be empty.
__device__ __forceinline__ void gn_chan_merge(float& n_a, float& mean_a, float& m2_a, float n_b, float mean_b,
                                              float m2_b) {
  if (n_b == 0.0f) return;
  const float n = n_a + n_b;
  const float r = n_b / n;
  const float delta = mean_b - mean_a;
  mean_a += delta * r;
  m2_a += m2_b + delta * delta * n_a * r;
  n_a = n;
}

// Add VEC values of one channel (channels-first) to a running (n, mean, M2): the batch's own mean and
// M2 by two passes in registers, then one Chan merge; VEC == 1 is a plain Welford step.
template <int VEC>
struct GnBatch {
  static __device__ __forceinline__ void add(float& n_a, float& mean_a, float& m2_a, const float (&v)[VEC]) {
    float sum = 0.0f;
#pragma unroll
    for (int i = 0; i < VEC; ++i) sum += v[i];
    const float mean_b = sum * (1.0f / VEC);
    float m2_b = 0.0f;
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      const float d = v[i] - mean_b;
      m2_b += d * d;
    }
    gn_chan_merge(n_a, mean_a, m2_a, static_cast<float>(VEC), mean_b, m2_b);
  }
};

template <>
struct GnBatch<1> {
  static __device__ __forceinline__ void add(float& n_a, float& mean_a, float& m2_a, const float (&v)[1]) {
    n_a += 1.0f;
    const float d = v[0] - mean_a;
    mean_a += d * __frcp_rn(n_a);
    m2_a += d * (v[0] - mean_a);
  }
};

// ------------------------------------------------------------------ pass 1: per-chunk statistics

// Channels-first: each warp owns one channel at a time; its lanes stride over the chunk's contiguous
// rows (VEC elements per lane per load), then merge across the warp with shuffles.
template <class Tr, int VEC>
__device__ __forceinline__ void gn_stats_channels_first(const typename Tr::T* __restrict__ x,
                                                        float* __restrict__ ws_mean, float* __restrict__ ws_m2,
                                                        i64 C, i64 S, i64 num_chunks, i64 chunk_len,
                                                        i64 block_c) {
  const i64 task = blockIdx.x;  // n * num_chunks + k
  const i64 n = task / num_chunks;
  const i64 k = task - n * num_chunks;
  const i64 s_begin = k * chunk_len;
  const i64 s_end = min(S, s_begin + chunk_len);
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int num_warps = blockDim.x >> 5;
  const i64 c_begin = static_cast<i64>(blockIdx.y) * block_c;
  const i64 c_end = min(C, c_begin + block_c);
  constexpr int kStride = 32 * VEC;

  for (i64 c = c_begin + warp; c < c_end; c += num_warps) {
    const typename Tr::T* row = x + (n * C + c) * S;
    float cnt = 0.0f, mean = 0.0f, m2 = 0.0f;
    for (i64 s = s_begin + static_cast<i64>(lane) * VEC; s < s_end; s += static_cast<i64>(GN_UNROLL) * kStride) {
      typename GnVec<Tr, VEC>::Raw raw[GN_UNROLL];
#pragma unroll
      for (int u = 0; u < GN_UNROLL; ++u) {
        const i64 su = s + static_cast<i64>(u) * kStride;
        if (su < s_end) raw[u] = GnVec<Tr, VEC>::load_raw(row + su);
      }
#pragma unroll
      for (int u = 0; u < GN_UNROLL; ++u) {
        const i64 su = s + static_cast<i64>(u) * kStride;
        if (su < s_end) {
          float v[VEC];
          GnVec<Tr, VEC>::unpack(raw[u], v);
          GnBatch<VEC>::add(cnt, mean, m2, v);
        }
      }
    }
#pragma unroll
    for (int offset = 16; offset >= 1; offset >>= 1) {
      const float n_b = __shfl_xor_sync(0xffffffffu, cnt, offset);
      const float mean_b = __shfl_xor_sync(0xffffffffu, mean, offset);
      const float m2_b = __shfl_xor_sync(0xffffffffu, m2, offset);
      gn_chan_merge(cnt, mean, m2, n_b, mean_b, m2_b);
    }
    if (lane == 0) {
      ws_mean[task * C + c] = mean;
      ws_m2[task * C + c] = m2;
    }
  }
}

// Channels-last: the block is a (rows_step x threads_c) grid of threads; thread (ty, tx) owns channels
// [c, c + VEC) and rows s_begin + ty, + rows_step, ...; each row load is contiguous across tx.
// Per-thread Welford, then a tree of Chan merges across ty through shared memory.
// block_c = threads_c * VEC, threads_c a power of two dividing blockDim.x.
template <class Tr, int VEC>
__device__ __forceinline__ void gn_stats_channels_last(const typename Tr::T* __restrict__ x,
                                                       float* __restrict__ ws_mean, float* __restrict__ ws_m2,
                                                       i64 C, i64 S, i64 num_chunks, i64 chunk_len, i64 block_c,
                                                       float* smem) {
  const i64 task = blockIdx.x;  // n * num_chunks + k
  const i64 n = task / num_chunks;
  const i64 k = task - n * num_chunks;
  const i64 s_begin = k * chunk_len;
  const i64 s_end = min(S, s_begin + chunk_len);
  const int threads_c = static_cast<int>(block_c / VEC);
  const int rows_step = blockDim.x / threads_c;
  const int tx = threadIdx.x % threads_c;
  const int ty = threadIdx.x / threads_c;
  const i64 c = static_cast<i64>(blockIdx.y) * block_c + static_cast<i64>(tx) * VEC;
  const bool active = c < C;  // VEC > 1: C % VEC == 0, so the whole vector is in range

  float cnt = 0.0f, mean[VEC], m2[VEC];
#pragma unroll
  for (int i = 0; i < VEC; ++i) {
    mean[i] = 0.0f;
    m2[i] = 0.0f;
  }
  if (active) {
    const typename Tr::T* base = x + n * S * C + c;
    for (i64 s = s_begin + ty; s < s_end; s += static_cast<i64>(GN_UNROLL) * rows_step) {
      typename GnVec<Tr, VEC>::Raw raw[GN_UNROLL];
#pragma unroll
      for (int u = 0; u < GN_UNROLL; ++u) {
        const i64 su = s + static_cast<i64>(u) * rows_step;
        if (su < s_end) raw[u] = GnVec<Tr, VEC>::load_raw(base + su * C);
      }
#pragma unroll
      for (int u = 0; u < GN_UNROLL; ++u) {
        const i64 su = s + static_cast<i64>(u) * rows_step;
        if (su < s_end) {
          float v[VEC];
          GnVec<Tr, VEC>::unpack(raw[u], v);
          cnt += 1.0f;
          const float r = __frcp_rn(cnt);
#pragma unroll
          for (int i = 0; i < VEC; ++i) {
            const float d = v[i] - mean[i];
            mean[i] += d * r;
            m2[i] += d * (v[i] - mean[i]);
          }
        }
      }
    }
  }

  // Tree merge over ty: at each level the upper half publishes, the lower half merges.
  float* sh_mean = smem;
  float* sh_m2 = smem + GN_THREADS * VEC;
  float* sh_cnt = smem + 2 * GN_THREADS * VEC;
  const int t = threadIdx.x;
  for (int half = rows_step >> 1; half >= 1; half >>= 1) {
    if (ty >= half && ty < 2 * half) {
      sh_cnt[t] = cnt;
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        sh_mean[t * VEC + i] = mean[i];
        sh_m2[t * VEC + i] = m2[i];
      }
    }
    __syncthreads();
    if (ty < half) {
      const int o = t + half * threads_c;
      const float n_b = sh_cnt[o];
      if (n_b != 0.0f) {
        const float n_ab = cnt + n_b;
        const float r = n_b / n_ab;
        const float w = cnt * r;
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
          const float delta = sh_mean[o * VEC + i] - mean[i];
          mean[i] += delta * r;
          m2[i] += sh_m2[o * VEC + i] + delta * delta * w;
        }
        cnt = n_ab;
      }
    }
    __syncthreads();
  }
  if (ty == 0 && active) {
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      ws_mean[task * C + c + i] = mean[i];
      ws_m2[task * C + c + i] = m2[i];
    }
  }
}

// ------------------------------------------------------------------ pass 2: per-group finalize

// Sum of v over the block (blockDim.x a multiple of 32, at most 1024), returned to every thread.
__device__ __forceinline__ double gn_block_sum(double v, double* sh) {
#pragma unroll
  for (int offset = 16; offset >= 1; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < static_cast<int>(blockDim.x >> 5) ? sh[lane] : 0.0;
#pragma unroll
    for (int offset = 16; offset >= 1; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    if (lane == 0) sh[32] = v;
  }
  __syncthreads();
  return sh[32];
}

// weight[c] / bias[c] as a double: param_dtype 0 fp32, 1 fp16, 2 bf16; `absent` when p is null.
__device__ __forceinline__ double gn_param(const void* __restrict__ p, int param_dtype, i64 c, double absent) {
  if (p == nullptr) return absent;
  if (param_dtype == 1) return gn_half_to_float(static_cast<const unsigned short*>(p)[c]);
  if (param_dtype == 2) return gn_bf16_to_float(static_cast<const unsigned short*>(p)[c]);
  return static_cast<const float*>(p)[c];
}

// weight, bias: [C] contiguous in param dtype weight_dtype / bias_dtype (codes of gn_param), or null.
extern "C" __global__ void __launch_bounds__(GN_THREADS)
group_norm_finalize(const float* __restrict__ ws_mean, const float* __restrict__ ws_m2,
                    const void* __restrict__ weight, int weight_dtype, const void* __restrict__ bias,
                    int bias_dtype, float* __restrict__ scale, float* __restrict__ shift, i64 C, i64 S, i64 G,
                    i64 num_chunks, i64 chunk_len, double eps) {
  __shared__ double sh[33];
  const i64 task = blockIdx.x;  // n * G + g
  const i64 n = task / G;
  const i64 g = task - n * G;
  const i64 Cg = C / G;
  const i64 items = num_chunks * Cg;
  const double count = static_cast<double>(S) * static_cast<double>(Cg);

  double acc = 0.0;
  for (i64 i = threadIdx.x; i < items; i += blockDim.x) {
    const i64 k = i / Cg;
    const i64 c = g * Cg + (i - k * Cg);
    const double rows = static_cast<double>(min(chunk_len, S - k * chunk_len));
    acc += rows * static_cast<double>(ws_mean[(n * num_chunks + k) * C + c]);
  }
  const double mean = gn_block_sum(acc, sh) / count;

  acc = 0.0;
  for (i64 i = threadIdx.x; i < items; i += blockDim.x) {
    const i64 k = i / Cg;
    const i64 c = g * Cg + (i - k * Cg);
    const i64 idx = (n * num_chunks + k) * C + c;
    const double rows = static_cast<double>(min(chunk_len, S - k * chunk_len));
    const double d = static_cast<double>(ws_mean[idx]) - mean;
    acc += static_cast<double>(ws_m2[idx]) + rows * d * d;
  }
  const double var = gn_block_sum(acc, sh) / count;
  const double rstd = 1.0 / sqrt(var + eps);

  for (i64 cl = threadIdx.x; cl < Cg; cl += blockDim.x) {
    const i64 c = g * Cg + cl;
    // The shift for the fp32 scale the apply pass uses, rounded once: x * s + shift is then (x - mean) * s + b
    // to that rounding. With the double scale, x * (s - double_s) would be left over, |mean| * rstd ulps: for a
    // group of one value far from 0 (rstd ~1 / sqrt(eps)) several times torch's own error.
    const float s = static_cast<float>(rstd * gn_param(weight, weight_dtype, c, 1.0));
    const double b = gn_param(bias, bias_dtype, c, 0.0);
    scale[n * C + c] = s;
    shift[n * C + c] = static_cast<float>(b - mean * static_cast<double>(s));
  }
}

// ------------------------------------------------------------------ pass 3: apply

// The apply pass walks the tensor backwards. The stats pass read it front to back, so on a tensor larger than
// L2 its end is what L2 still holds when this pass starts; going back to front reads that part from L2 before
// the writes of y evict it. Each thread visits its vectors last, last - step, ..., first (first = its global
// index, step = the grid's thread count).
__device__ __forceinline__ i64 gn_last_visit(i64 first, i64 num_vecs, i64 step) {
  return first + (num_vecs - 1 - first) / step * step;
}

// Channels-first: vector i covers elements [i * VEC, i * VEC + VEC) of one row n * C + c (S % VEC == 0),
// and scale/shift are indexed by that row. The row is tracked incrementally (stepping back), so the loop
// divides nothing.
template <class Tr, int VEC>
__device__ __forceinline__ void gn_apply_channels_first(const typename Tr::T* __restrict__ x,
                                                        typename Tr::T* __restrict__ y,
                                                        const float* __restrict__ scale,
                                                        const float* __restrict__ shift, i64 total, i64 S,
                                                        int silu) {
  const i64 num_vecs = total / VEC;
  const i64 row_vecs = S / VEC;
  const i64 step = static_cast<i64>(gridDim.x) * blockDim.x;
  const i64 first = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (first >= num_vecs) return;
  i64 i = gn_last_visit(first, num_vecs, step);
  i64 row = i / row_vecs;
  i64 off = i - row * row_vecs;
  const i64 step_rows = step / row_vecs;
  const i64 step_off = step - step_rows * row_vecs;
  for (; i >= first; i -= step) {
    const float a = scale[row], b = shift[row];
    float v[VEC];
    GnVec<Tr, VEC>::load_last_use(x + i * VEC, v);
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const float z = fmaf(v[j], a, b);
      v[j] = silu ? gn_silu(z) : z;
    }
    GnVec<Tr, VEC>::store_streaming(y + i * VEC, v);
    off -= step_off;
    row -= step_rows;
    if (off < 0) {
      off += row_vecs;
      --row;
    }
  }
}

// Channels-last: vector i covers channels [cv * VEC, cv * VEC + VEC) of row (n, s) (C % VEC == 0);
// (cv, s, n) are tracked incrementally (stepping back, with borrows).
template <class Tr, int VEC>
__device__ __forceinline__ void gn_apply_channels_last(const typename Tr::T* __restrict__ x,
                                                       typename Tr::T* __restrict__ y,
                                                       const float* __restrict__ scale,
                                                       const float* __restrict__ shift, i64 total, i64 C, i64 S,
                                                       int silu) {
  const i64 num_vecs = total / VEC;
  const i64 row_vecs = C / VEC;
  const i64 step = static_cast<i64>(gridDim.x) * blockDim.x;
  const i64 first = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (first >= num_vecs) return;
  i64 i = gn_last_visit(first, num_vecs, step);
  const i64 flat_row = i / row_vecs;
  i64 cv = i - flat_row * row_vecs;
  i64 n = flat_row / S;
  i64 s = flat_row - n * S;
  const i64 step_rows = step / row_vecs;
  const i64 step_cv = step - step_rows * row_vecs;
  const i64 step_n = step_rows / S;
  const i64 step_s = step_rows - step_n * S;
  for (; i >= first; i -= step) {
    float a[VEC], b[VEC], v[VEC];
    const i64 p = n * C + cv * VEC;
    GnVec<Tr, VEC>::load_params(scale + p, a);
    GnVec<Tr, VEC>::load_params(shift + p, b);
    GnVec<Tr, VEC>::load_last_use(x + i * VEC, v);
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const float z = fmaf(v[j], a[j], b[j]);
      v[j] = silu ? gn_silu(z) : z;
    }
    GnVec<Tr, VEC>::store_streaming(y + i * VEC, v);
    cv -= step_cv;
    i64 borrow = 0;
    if (cv < 0) {
      cv += row_vecs;
      borrow = 1;
    }
    s -= step_s + borrow;
    if (s < 0) {
      s += S;
      --n;
    }
    n -= step_n;
  }
}

// ------------------------------------------------------------------ extern "C" entry points

#define GN_STATS_SMEM_FLOATS (2 * GN_THREADS * 8 + GN_THREADS)

#define GN_DEFINE_KERNELS(SUFFIX, TRAITS)                                                                        \
  extern "C" __global__ void __launch_bounds__(GN_THREADS, GN_STATS_MIN_BLOCKS)                                                      \
      group_norm_stats_cf_##SUFFIX(const TRAITS::T* __restrict__ x, float* __restrict__ ws_mean,                \
                                   float* __restrict__ ws_m2, i64 C, i64 S, i64 num_chunks, i64 chunk_len,      \
                                   i64 block_c, int vec) {                                                      \
    if (vec)                                                                                                    \
      gn_stats_channels_first<TRAITS, TRAITS::kVec>(x, ws_mean, ws_m2, C, S, num_chunks, chunk_len, block_c);   \
    else                                                                                                        \
      gn_stats_channels_first<TRAITS, 1>(x, ws_mean, ws_m2, C, S, num_chunks, chunk_len, block_c);             \
  }                                                                                                             \
  extern "C" __global__ void __launch_bounds__(GN_THREADS, GN_STATS_MIN_BLOCKS)                                                      \
      group_norm_stats_cl_##SUFFIX(const TRAITS::T* __restrict__ x, float* __restrict__ ws_mean,                \
                                   float* __restrict__ ws_m2, i64 C, i64 S, i64 num_chunks, i64 chunk_len,      \
                                   i64 block_c, int vec) {                                                      \
    __shared__ float smem[GN_STATS_SMEM_FLOATS];                                                                \
    if (vec)                                                                                                    \
      gn_stats_channels_last<TRAITS, TRAITS::kVec>(x, ws_mean, ws_m2, C, S, num_chunks, chunk_len, block_c,    \
                                                   smem);                                                       \
    else                                                                                                        \
      gn_stats_channels_last<TRAITS, 1>(x, ws_mean, ws_m2, C, S, num_chunks, chunk_len, block_c, smem);         \
  }                                                                                                             \
  extern "C" __global__ void __launch_bounds__(GN_THREADS)                                                      \
      group_norm_apply_cf_##SUFFIX(const TRAITS::T* __restrict__ x, TRAITS::T* __restrict__ y,                  \
                                   const float* __restrict__ scale, const float* __restrict__ shift,            \
                                   i64 total, i64 C, i64 S, int silu, int vec) {                                \
    if (vec)                                                                                                    \
      gn_apply_channels_first<TRAITS, TRAITS::kVec>(x, y, scale, shift, total, S, silu);                        \
    else                                                                                                        \
      gn_apply_channels_first<TRAITS, 1>(x, y, scale, shift, total, S, silu);                                   \
  }                                                                                                             \
  extern "C" __global__ void __launch_bounds__(GN_THREADS)                                                      \
      group_norm_apply_cl_##SUFFIX(const TRAITS::T* __restrict__ x, TRAITS::T* __restrict__ y,                  \
                                   const float* __restrict__ scale, const float* __restrict__ shift,            \
                                   i64 total, i64 C, i64 S, int silu, int vec) {                                \
    if (vec)                                                                                                    \
      gn_apply_channels_last<TRAITS, TRAITS::kVec>(x, y, scale, shift, total, C, S, silu);                      \
    else                                                                                                        \
      gn_apply_channels_last<TRAITS, 1>(x, y, scale, shift, total, C, S, silu);                                 \
  }

GN_DEFINE_KERNELS(f32, GnF32)
GN_DEFINE_KERNELS(f16, GnF16)
GN_DEFINE_KERNELS(bf16, GnBF16)

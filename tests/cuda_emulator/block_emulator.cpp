// Runs csrc/cuda/group_norm.cu on the CPU for tests: a block's threads are std::threads; __syncthreads is a
// barrier over the block, and a warp shuffle is an exchange through memory between two barriers of the warp.
// Blocks run one after another, so `__shared__` arrays (static here) are the running block's shared memory.
// Built by tests/test_group_norm_cuda_emulated.py with g++ -std=c++20.
#include <barrier>
#include <cmath>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
};
struct uint4 {
  unsigned x, y, z, w;
};
struct float4 {
  float x, y, z, w;
};

thread_local Dim3 threadIdx;
Dim3 blockIdx, blockDim, gridDim;

std::barrier<>* g_block_barrier = nullptr;
std::vector<std::unique_ptr<std::barrier<>>> g_warp_barriers;
double g_exchange[1024];

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

using std::max;
using std::min;

inline void __syncthreads() { g_block_barrier->arrive_and_wait(); }
inline float __uint_as_float(unsigned u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fdividef(float a, float b) { return a / b; }
inline float __expf(float x) { return std::exp(x); }

template <class T>
inline T __shfl_xor_sync(unsigned, T value, int lane_mask) {
  const unsigned t = threadIdx.x, warp = t / 32;
  g_exchange[t] = static_cast<double>(value);
  g_warp_barriers[warp]->arrive_and_wait();
  const T other = static_cast<T>(g_exchange[(t & ~31u) | ((t & 31u) ^ static_cast<unsigned>(lane_mask))]);
  g_warp_barriers[warp]->arrive_and_wait();
  return other;
}

#include "../../csrc/cuda/group_norm.cu"

// Every block of a (gx, gy) grid of `threads` threads, one block after another.
template <class Kernel>
void launch(unsigned gx, unsigned gy, unsigned threads, Kernel kernel) {
  gridDim = {gx, gy, 1};
  blockDim = {threads, 1, 1};
  std::barrier<> block_barrier(threads);
  g_block_barrier = &block_barrier;
  g_warp_barriers.clear();
  for (unsigned w = 0; w < (threads + 31) / 32; ++w) g_warp_barriers.push_back(std::make_unique<std::barrier<>>(32));
  for (unsigned by = 0; by < gy; ++by)
    for (unsigned bx = 0; bx < gx; ++bx) {
      blockIdx = {bx, by, 1};
      std::vector<std::thread> block;
      for (unsigned t = 0; t < threads; ++t)
        block.emplace_back([=] {
          threadIdx = {t, 0, 0};
          kernel();
        });
      for (auto& thread : block) thread.join();
    }
}

// The three launches of genai_fast/backends/cuda/group_norm.py with the plan it made. dtype: 0 fp32, 1 fp16,
// 2 bf16; ws: 2 * N * num_chunks * C partials, then N * C scales and N * C shifts.
extern "C" void emulate_group_norm(const void* x, void* y, const void* weight, int weight_dtype, const void* bias,
                                   int bias_dtype, float* ws, long long N, long long C, long long S, long long G,
                                   long long num_chunks, long long chunk_len, long long block_c,
                                   long long channel_blocks, long long apply_blocks, int channels_last, int dtype,
                                   int vec, int silu, double eps) {
  float* ws_mean = ws;
  float* ws_m2 = ws + N * num_chunks * C;
  float* scale = ws_m2 + N * num_chunks * C;
  float* shift = scale + N * C;
  const auto gx = static_cast<unsigned>(N * num_chunks), gy = static_cast<unsigned>(channel_blocks);
  const auto apply_grid = static_cast<unsigned>(apply_blocks);
  const long long total = N * C * S;
#define GN_EMULATE(SUFFIX, T)                                                                                      \
  {                                                                                                                \
    const T* xt = static_cast<const T*>(x);                                                                        \
    T* yt = static_cast<T*>(y);                                                                                    \
    if (channels_last)                                                                                             \
      launch(gx, gy, GN_THREADS, [=] {                                                                             \
        group_norm_stats_cl_##SUFFIX(xt, ws_mean, ws_m2, C, S, num_chunks, chunk_len, block_c, vec);               \
      });                                                                                                          \
    else                                                                                                           \
      launch(gx, gy, GN_THREADS, [=] {                                                                             \
        group_norm_stats_cf_##SUFFIX(xt, ws_mean, ws_m2, C, S, num_chunks, chunk_len, block_c, vec);               \
      });                                                                                                          \
    launch(static_cast<unsigned>(N * G), 1, GN_THREADS, [=] {                                                      \
      group_norm_finalize(ws_mean, ws_m2, weight, weight_dtype, bias, bias_dtype, scale, shift, C, S, G,           \
                          num_chunks, chunk_len, eps);                                                             \
    });                                                                                                            \
    if (channels_last)                                                                                             \
      launch(apply_grid, 1, GN_THREADS,                                                                            \
             [=] { group_norm_apply_cl_##SUFFIX(xt, yt, scale, shift, total, C, S, silu, vec); });                 \
    else                                                                                                           \
      launch(apply_grid, 1, GN_THREADS,                                                                            \
             [=] { group_norm_apply_cf_##SUFFIX(xt, yt, scale, shift, total, C, S, silu, vec); });                 \
  }
  if (dtype == 0)
    GN_EMULATE(f32, float)
  else if (dtype == 1)
    GN_EMULATE(f16, unsigned short)
  else
    GN_EMULATE(bf16, unsigned short)
#undef GN_EMULATE
}

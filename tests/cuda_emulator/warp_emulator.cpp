// Runs csrc/cuda/word2vec.cu on the CPU for tests: each warp's 32 lanes are 32 std::threads, and the warp
// intrinsics the kernels use (__syncwarp, __ballot_sync, __shfl_xor_sync) are built on a barrier. Blocks
// and the warps of a block run one after another, so a launch is sequential in slice order (the order
// the float64 replay of tests/test_word2vec_gpu_kernels.py uses). Built by that test with g++ -std=c++20.
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstring>
#include <thread>
#include <vector>

struct Dim3 {
  unsigned x = 0, y = 0, z = 0;
};
thread_local Dim3 threadIdx;
Dim3 blockIdx, blockDim;

std::barrier<>* g_warp_barrier = nullptr;
unsigned g_ballot[32];
double g_shuffle[32];

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __shared__

float smem[1 << 16];  // the block's dynamic shared memory (`extern __shared__ float smem[]`)
// Shared memory starts out as this pattern (a NaN as a float, an id far outside any table as an int) rather than
// zeros, so a read of a slot the kernel never wrote shows up; the last slot still holding it after a launch tells
// how much of smem the block used (tests compare that with the launcher's shared-memory size).
constexpr unsigned kSharedPoison = 0x7fa5a5a5u;

using std::max;
using std::min;

inline unsigned __umulhi(unsigned a, unsigned b) {
  return static_cast<unsigned>((static_cast<unsigned long long>(a) * b) >> 32);
}
inline float __ldcg(const float* p) { return *p; }
inline void __stcg(float* p, float v) { *p = v; }
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline void __syncwarp() { g_warp_barrier->arrive_and_wait(); }

inline unsigned __ballot_sync(unsigned, bool predicate) {
  const unsigned lane = threadIdx.x & 31;
  g_ballot[lane] = predicate ? 1u : 0u;
  g_warp_barrier->arrive_and_wait();
  unsigned mask = 0;
  for (unsigned l = 0; l < 32; ++l) mask |= g_ballot[l] << l;
  g_warp_barrier->arrive_and_wait();
  return mask;
}

inline double __shfl_xor_sync(unsigned, double value, int lane_mask) {
  const unsigned lane = threadIdx.x & 31;
  g_shuffle[lane] = value;
  g_warp_barrier->arrive_and_wait();
  const double other = g_shuffle[lane ^ static_cast<unsigned>(lane_mask)];
  g_warp_barrier->arrive_and_wait();
  return other;
}

#include "../../csrc/cuda/word2vec.cu"

extern "C" void emulate_word2vec_train(float* syn0, float* syn1, const int* tokens, const float* alphas,
                                       const int* bounds, const float* prob, const int* alias, double* loss,
                                       float* syn1hs, const int* points, const unsigned char* codes,
                                       const int* path_lengths, long long num_slices, long long vocab, int dim,
                                       long long seed, int window, int negative, long long draw_stride, int mode,
                                       int cbow_mean, int shrink, int compute_loss, int depth, int hs,
                                       const float* lockf, long long lockf_len) {
  const long long blocks = (num_slices + W2V_WARPS - 1) / W2V_WARPS;
  for (float& f : smem) std::memcpy(&f, &kSharedPoison, 4);
  for (long long b = 0; b < blocks; ++b) {
    blockIdx.x = static_cast<unsigned>(b);
    for (int warp = 0; warp < W2V_WARPS; ++warp) {
      std::barrier<> warp_barrier(32);
      g_warp_barrier = &warp_barrier;
      std::vector<std::thread> lanes;
      for (int lane = 0; lane < 32; ++lane)
        lanes.emplace_back([=] {
          threadIdx.x = static_cast<unsigned>(warp * 32 + lane);
          word2vec_train(syn0, syn1, tokens, alphas, bounds, prob, alias, loss, syn1hs, points, codes, path_lengths,
                         num_slices, vocab, dim, seed, window, negative, draw_stride, mode, cbow_mean, shrink,
                         compute_loss, depth, hs, lockf, lockf_len);
        });
      for (auto& t : lanes) t.join();
    }
  }
}

// Floats of smem the last emulate_word2vec_train touched: one past the highest slot no longer holding the poison.
extern "C" long long emulate_word2vec_shared_floats_used() {
  for (long long i = static_cast<long long>(sizeof(smem) / sizeof(float)); i > 0; --i) {
    unsigned bits;
    std::memcpy(&bits, &smem[i - 1], 4);
    if (bits != kSharedPoison) return i;
  }
  return 0;
}

extern "C" void emulate_word2vec_draws(int* shrink_out, int* noise_out, const float* prob, const int* alias,
                                       long long n, long long vocab, long long seed, int window, long long draw_stride,
                                       int sets, int negative) {
  blockDim.x = 1;
  for (long long i = 0; i < n; ++i) {
    blockIdx.x = static_cast<unsigned>(i);
    threadIdx.x = 0;
    word2vec_draws(shrink_out, noise_out, prob, alias, n, vocab, seed, window, draw_stride, sets, negative);
  }
}

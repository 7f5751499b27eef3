// GroupNorm (+ optional SiLU) on the CPU for [N, C, S] tensors in two layouts:
//   channels-first (NCHW-contiguous): group (n, g) is one contiguous block of Cg * S elements;
//   channels-last  (NHWC):            row s of sample n holds all C channels contiguously.
// Statistics are fp32 two-pass within cache-sized pieces, merged in double (Chan's formula), so a
// pass over memory is read once for statistics and once for the output where the piece fits in L2.
// fp16/bf16 inputs are converted to a float scratch piece first, then the same float loops run.
#include "group_norm.h"

#include <memory>

#include "common.h"
#include "elementwise.h"

namespace genai_fast {
namespace {

// Hot loops are compiled for AVX-512, AVX2 and the baseline; the loader picks one at run time, so
// the wheel stays portable without giving up vector width.
#define GF_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))

constexpr int kLanes = 16;  // independent accumulators: lets the compiler vectorise fp32 sums

GF_CLONES double sum_floats(const float* x, int64_t n) {
  float acc[kLanes] = {0};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) acc[j] += x[i + j];
  double total = 0.0;
  for (int j = 0; j < kLanes; ++j) total += acc[j];
  for (; i < n; ++i) total += x[i];
  return total;
}

GF_CLONES double sum_squared_deviation(const float* x, int64_t n, float mean) {
  float acc[kLanes] = {0};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) {
      const float d = x[i + j] - mean;
      acc[j] += d * d;
    }
  double total = 0.0;
  for (int j = 0; j < kLanes; ++j) total += acc[j];
  for (; i < n; ++i) total += static_cast<double>(x[i] - mean) * (x[i] - mean);
  return total;
}

// Per-channel mean and M2 of `rows` channels-last rows of C values (two passes over the cached rows).
GF_CLONES void chunk_channel_moments(const float* x, int64_t rows, int64_t C, float* mean, float* m2) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < C; ++c) mean[c] += x[r * C + c];
  const float inv_rows = 1.0f / static_cast<float>(rows);
  for (int64_t c = 0; c < C; ++c) mean[c] *= inv_rows;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < C; ++c) {
      const float d = x[r * C + c] - mean[c];
      m2[c] += d * d;
    }
}

// This thread's float scratch of at least n elements. Reused across the tasks a thread runs (a fresh
// buffer per task meant an mmap, page faults and a zero fill for every piece), and never zero-filled.
float* thread_scratch(int64_t n) {
  thread_local std::unique_ptr<float[]> buffer;
  thread_local int64_t capacity = 0;
  if (capacity < n) {
    buffer.reset(new float[n]);
    capacity = n;
  }
  return buffer.get();
}

struct FloatPiece {
  const GroupNormArgs& args;
  float* scratch = nullptr;

  const float* load(int64_t offset, int64_t n) {
    if (args.dtype == DType::Float32) return static_cast<const float*>(args.x) + offset;
    scratch = thread_scratch(n);
    halves_to_floats(static_cast<const uint16_t*>(args.x) + offset, scratch, n, args.dtype == DType::BFloat16);
    return scratch;
  }
  // Where to write the output piece: the output itself for fp32, else the scratch (stored by `store`).
  float* output(int64_t offset, int64_t n) {
    if (args.dtype == DType::Float32) return static_cast<float*>(args.out) + offset;
    if (scratch == nullptr) scratch = thread_scratch(n);
    return scratch;
  }
  void store(int64_t offset, int64_t n) {
    if (args.dtype == DType::Float32) return;
    floats_to_halves(scratch, static_cast<uint16_t*>(args.out) + offset, n, args.dtype == DType::BFloat16);
  }
};

// Non-temporal stores save the read-for-ownership of a normal store, but leave the output in memory
// rather than in cache. That pays for outputs too big to stay cached anyway (an SD-sized activation is
// 10 MB and up); a small one is read back by the next layer right away, which must then fetch it from
// memory. fp16/bf16 outputs are stored by the conversion, never streamed.
constexpr int64_t kStreamingBytes = 8 << 20;

bool stream_output(const GroupNormArgs& a) {
  return a.dtype == DType::Float32 && a.N * a.C * a.S * static_cast<int64_t>(sizeof(float)) >= kStreamingBytes;
}

float channel_weight(const GroupNormArgs& a, int64_t c) { return a.weight ? a.weight[c] : 1.0f; }
float channel_bias(const GroupNormArgs& a, int64_t c) { return a.bias ? a.bias[c] : 0.0f; }

// Channels-first: each task is one (n, g) block, normalised right after its statistics so the
// second read comes from cache.
void group_norm_channels_first(const GroupNormArgs& a) {
  const int64_t Cg = a.C / a.G, block = Cg * a.S;
  parallel_for(a.N * a.G, a.num_threads, [&](int64_t task) {
    const int64_t n = task / a.G, g = task % a.G;
    const int64_t offset = (n * a.C + g * Cg) * a.S;
    FloatPiece piece{a};
    const float* x = piece.load(offset, block);
    const float mean = static_cast<float>(sum_floats(x, block) / block);
    const double var = sum_squared_deviation(x, block, mean) / block;
    const float rstd = static_cast<float>(1.0 / std::sqrt(var + a.eps));
    float* y = piece.output(offset, block);  // for fp16/bf16 this is x's scratch, overwritten in place
    const bool streaming = stream_output(a);     // fp32 writes the final output directly
    const bool has_next = task + 1 < a.N * a.G;  // the next block is usually this thread's next task
    const float* next = streaming && has_next ? static_cast<const float*>(a.x) + offset + block : nullptr;
    for (int64_t cl = 0; cl < Cg; ++cl) {
      const int64_t c = g * Cg + cl;
      const float scale = rstd * channel_weight(a, c);
      const float shift = channel_bias(a, c) - mean * scale;
      scale_shift(x + cl * a.S, y + cl * a.S, a.S, scale, shift, a.silu, streaming,
                  next ? next + cl * a.S : nullptr);
    }
    piece.store(offset, block);
    store_fence();
  });
}

// Channels-last work is split into chunks of about 64 KiB of rows of one sample.
struct RowChunks {
  int64_t S, C, rows_per_chunk, per_sample;

  RowChunks(int64_t S_, int64_t C_)
      : S(S_), C(C_), rows_per_chunk(std::max<int64_t>(1, 16384 / C_)),
        per_sample((S_ + rows_per_chunk - 1) / rows_per_chunk) {}
  int64_t rows(int64_t k) const { return std::min(rows_per_chunk, S - k * rows_per_chunk); }
  // First element of chunk `task` (= n * per_sample + k) in the [N, S, C] buffer.
  int64_t offset(int64_t task) const {
    return ((task / per_sample) * S + (task % per_sample) * rows_per_chunk) * C;
  }
};

// Pass 1: per-chunk, per-channel mean and M2 (two-pass over the cached chunk).
void chunk_channel_stats(const GroupNormArgs& a, const RowChunks& chunks, float* chunk_mean, float* chunk_m2) {
  const int64_t C = a.C;
  parallel_for(a.N * chunks.per_sample, a.num_threads, [&](int64_t task) {
    const int64_t rows = chunks.rows(task % chunks.per_sample);
    FloatPiece piece{a};
    const float* x = piece.load(chunks.offset(task), rows * C);
    chunk_channel_moments(x, rows, C, chunk_mean + task * C, chunk_m2 + task * C);
  });
}

// Merges a group's chunk x channel partials (Chan's formula, in double) into per-channel scale and shift.
// Sums run per channel across chunks (independent accumulators the compiler vectorises), not as one
// serial chain, which was latency-bound.
void group_scale_shift(const GroupNormArgs& a, const RowChunks& chunks, const float* chunk_mean,
                       const float* chunk_m2, float* scale, float* shift) {
  const int64_t C = a.C, Cg = C / a.G;
  parallel_for(a.N * a.G, a.num_threads, [&](int64_t task) {
    const int64_t n = task / a.G, c0 = (task % a.G) * Cg;
    const int64_t first = n * chunks.per_sample * C + c0;  // partial (n, chunk 0, c0)
    std::vector<double> acc(Cg, 0.0);
    for (int64_t k = 0; k < chunks.per_sample; ++k) {
      const double rows = double(chunks.rows(k));
      const float* mean_k = chunk_mean + first + k * C;
      for (int64_t c = 0; c < Cg; ++c) acc[c] += rows * mean_k[c];
    }
    double total = 0.0;
    for (int64_t c = 0; c < Cg; ++c) total += acc[c];
    const double mean = total / double(a.S * Cg);
    std::fill(acc.begin(), acc.end(), 0.0);
    for (int64_t k = 0; k < chunks.per_sample; ++k) {
      const double rows = double(chunks.rows(k));
      const float* mean_k = chunk_mean + first + k * C;
      const float* m2_k = chunk_m2 + first + k * C;
      for (int64_t c = 0; c < Cg; ++c) {
        const double d = mean_k[c] - mean;
        acc[c] += m2_k[c] + rows * d * d;
      }
    }
    double m2 = 0.0;
    for (int64_t c = 0; c < Cg; ++c) m2 += acc[c];
    const double rstd = 1.0 / std::sqrt(m2 / double(a.S * Cg) + a.eps);
    for (int64_t c = c0; c < c0 + Cg; ++c) {
      const double s = rstd * channel_weight(a, c);
      scale[n * C + c] = static_cast<float>(s);
      shift[n * C + c] = static_cast<float>(channel_bias(a, c) - mean * s);
    }
  });
}

// Pass 2: y = act(x * scale[c] + shift[c]) row by row.
void apply_scale_shift(const GroupNormArgs& a, const RowChunks& chunks, const float* scale, const float* shift) {
  const int64_t C = a.C;
  const bool streaming = stream_output(a);
  parallel_for(a.N * chunks.per_sample, a.num_threads, [&](int64_t task) {
    const int64_t n = task / chunks.per_sample, rows = chunks.rows(task % chunks.per_sample);
    const int64_t offset = chunks.offset(task);
    FloatPiece piece{a};
    const float* x = piece.load(offset, rows * C);
    float* y = piece.output(offset, rows * C);
    scale_shift_rows(x, y, rows, C, scale + n * C, shift + n * C, a.silu, streaming);
    piece.store(offset, rows * C);
    store_fence();
  });
}

void group_norm_channels_last(const GroupNormArgs& a) {
  const RowChunks chunks(a.S, a.C);
  std::vector<float> chunk_mean(a.N * chunks.per_sample * a.C), chunk_m2(a.N * chunks.per_sample * a.C);
  chunk_channel_stats(a, chunks, chunk_mean.data(), chunk_m2.data());
  std::vector<float> scale(a.N * a.C), shift(a.N * a.C);
  group_scale_shift(a, chunks, chunk_mean.data(), chunk_m2.data(), scale.data(), shift.data());
  apply_scale_shift(a, chunks, scale.data(), shift.data());
}

}  // namespace

void validate(const GroupNormArgs& a) {
  require(a.N >= 0, "N: expected >= 0, got " + std::to_string(a.N));
  require(a.C >= 1, "C: expected >= 1, got " + std::to_string(a.C));
  require(a.S >= 0, "S: expected >= 0, got " + std::to_string(a.S));
  require(a.G >= 1 && a.C % a.G == 0,
          "num_groups: expected a divisor of C=" + std::to_string(a.C) + ", got " + std::to_string(a.G));
  const int64_t numel = a.N * a.C * a.S;
  require(a.x_numel == numel, "x: expected N*C*S=" + std::to_string(numel) + " elements, got " + std::to_string(a.x_numel));
  require(a.out_numel == numel,
          "out: expected N*C*S=" + std::to_string(numel) + " elements, got " + std::to_string(a.out_numel));
  require(numel == 0 || (a.x != nullptr && a.out != nullptr), "x/out: null data pointer");
  require(std::isfinite(a.eps) && a.eps >= 0.0, "eps: expected a finite value >= 0");
  require(a.num_threads >= 1, "num_threads: expected >= 1");
}

void group_norm_forward(const GroupNormArgs& args) {
  validate(args);
  const int64_t numel = args.N * args.C * args.S;
  if (numel == 0) return;
  // Starting a thread costs about 10 us: below ~64K elements per thread one thread is faster.
  GroupNormArgs a = args;
  a.num_threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(args.num_threads, numel / 65536)));
  if (a.channels_last) {
    group_norm_channels_last(a);
  } else {
    group_norm_channels_first(a);
  }
}

}  // namespace genai_fast

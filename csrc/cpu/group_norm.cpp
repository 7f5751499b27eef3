// GroupNorm (+ optional SiLU) on the CPU for [N, C, S] tensors in two layouts:
//   channels-first (NCHW-contiguous): group (n, g) is one contiguous block of Cg * S elements;
//   channels-last  (NHWC):            row s of sample n holds all C channels contiguously.
// Statistics are fp32 two-pass within cache-sized pieces, merged in double (Chan's formula), so a
// pass over memory is read once for statistics and once for the output where the piece fits in L2.
// fp16/bf16 values are widened as they are loaded and rounded as they are stored (elementwise.h).
// The output is act((x - center) * scale + shift), center the group's mean rounded to fp32 (centred_shift says why).
#include "group_norm.h"

#include "common.h"
#include "elementwise.h"

namespace genai_fast {
namespace {

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

// The shift of y = (x - center) * scale + shift, for center = mean rounded to fp32: bias less the part of the mean
// that center leaves out (mean - center is exact in double). Kept near the bias, it rounds at the bias's ulp rather
// than at |mean * scale|'s, which a scale of up to 1 / sqrt(eps) makes large where a group's values are close
// together far from 0. For the fp32 scale applied, so that only roundings are left over.
float centred_shift(float bias, double mean, float center, float scale) {
  return static_cast<float>(bias - (mean - center) * scale);
}

// Channels-first: each task is one (n, g) block, normalised right after its statistics so the
// second read comes from cache.
void group_norm_channels_first(const GroupNormArgs& a) {
  const int64_t Cg = a.C / a.G, block = Cg * a.S;
  const DType dt = a.dtype;
  parallel_for(a.N * a.G, a.num_threads, [&](int64_t task) {
    const int64_t n = task / a.G, g = task % a.G;
    const int64_t offset = (n * a.C + g * Cg) * a.S;
    const void* x = element_at(a.x, dt, offset);
    // Corrected two-pass: the deviations from the mean of the fp32 first pass add up to its rounding error
    // (times block), which rsqrt(eps) would amplify where the variance is small against the mean.
    const float first = static_cast<float>(sum_values(x, dt, block) / block);
    double deviation = 0.0;
    const double m2 = sum_squared_deviation(x, dt, block, first, &deviation);
    const double mean = first + deviation / block;
    const double var = std::max(0.0, (m2 - deviation * deviation / block) / block);
    const float rstd = static_cast<float>(1.0 / std::sqrt(var + a.eps));
    void* y = element_at(a.out, dt, offset);
    const bool streaming = stream_output(a);
    const bool has_next = task + 1 < a.N * a.G;  // the next block is usually this thread's next task
    const void* next = streaming && has_next ? element_at(x, dt, block) : nullptr;
    const float center = static_cast<float>(mean);
    for (int64_t cl = 0; cl < Cg; ++cl) {
      const int64_t c = g * Cg + cl;
      const float scale = rstd * channel_weight(a, c);
      const float shift = centred_shift(channel_bias(a, c), mean, center, scale);
      scale_shift(element_at(x, dt, cl * a.S), element_at(y, dt, cl * a.S), dt, a.S, center, scale, shift, a.silu,
                  streaming, next ? element_at(next, dt, cl * a.S) : nullptr);
    }
    store_fence();
  });
}

// Channels-last work is split into chunks of about 32K values (rows of one sample): two passes over one
// come from L2.
struct RowChunks {
  int64_t S, C, rows_per_chunk, per_sample;

  RowChunks(int64_t S_, int64_t C_)
      : S(S_), C(C_), rows_per_chunk(std::max<int64_t>(1, 32768 / C_)),
        per_sample((S_ + rows_per_chunk - 1) / rows_per_chunk) {}
  int64_t rows(int64_t k) const { return std::min(rows_per_chunk, S - k * rows_per_chunk); }
  // First element of chunk `task` (= n * per_sample + k) in the [N, S, C] buffer.
  int64_t offset(int64_t task) const {
    return ((task / per_sample) * S + (task % per_sample) * rows_per_chunk) * C;
  }
};

// This thread's scratch of at least n elements of T, reused across the tasks a thread runs.
template <class T>
T* thread_scratch(int64_t n) {
  thread_local std::vector<T> buffer;
  if (static_cast<int64_t>(buffer.size()) < n) buffer.resize(n);
  return buffer.data();
}

// Sums of n values in double, over four chains: a single chain of dependent double adds took as long as
// reading the chunk.
template <class T>
double sum_in_double(const T* v, int64_t n) {
  double acc[4] = {0.0, 0.0, 0.0, 0.0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int j = 0; j < 4; ++j) acc[j] += v[i + j];
  for (; i < n; ++i) acc[0] += v[i];
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

double squared_deviation_in_double(const double* v, int64_t n, double mean) {
  double acc[4] = {0.0, 0.0, 0.0, 0.0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int j = 0; j < 4; ++j) acc[j] += (v[i + j] - mean) * (v[i + j] - mean);
  for (; i < n; ++i) acc[0] += (v[i] - mean) * (v[i] - mean);
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

// Pass 1: each chunk's per-group mean and M2. The chunk's per-channel moments (two passes over the cached
// rows) are merged into its groups right away (Chan's formula; the channels have equal counts), so the
// partials that cross threads are G per chunk rather than C: a cache line written by one core and read by
// another costs more here than the arithmetic. Means are carried in double from the channel's fp32 mean plus its
// correction on: an fp32 group mean is up to half an ulp off (3e-5 at 1000), which rstd ~ 1 / sqrt(eps) would
// turn into 1e-2 at the output of a nearly constant group.
void chunk_group_stats(const GroupNormArgs& a, const RowChunks& chunks, double* group_mean, double* group_m2) {
  const int64_t C = a.C, G = a.G, Cg = C / G;
  parallel_for(a.N * chunks.per_sample, a.num_threads, [&](int64_t task) {
    const int64_t rows = chunks.rows(task % chunks.per_sample);
    float* mean = thread_scratch<float>(3 * C);
    float* m2 = mean + C;
    float* correction = m2 + C;
    std::fill(mean, mean + 3 * C, 0.0f);
    channel_moments(element_at(a.x, a.dtype, chunks.offset(task)), a.dtype, rows, C, mean, m2, correction);
    double* channel_mean = thread_scratch<double>(C);
    for (int64_t c = 0; c < C; ++c) channel_mean[c] = double(mean[c]) + correction[c];
    for (int64_t g = 0; g < G; ++g) {
      const double group_mean_value = sum_in_double(channel_mean + g * Cg, Cg) / double(Cg);
      const double between = squared_deviation_in_double(channel_mean + g * Cg, Cg, group_mean_value);
      group_mean[task * G + g] = group_mean_value;
      group_m2[task * G + g] = sum_in_double(m2 + g * Cg, Cg) + double(rows) * between;
    }
  });
}

// Per-(n, c) center, scale and shift of the apply pass.
struct ChannelAffine {
  std::vector<float> center, scale, shift;  // [N, C]
  explicit ChannelAffine(int64_t size) : center(size), scale(size), shift(size) {}
};

// Merges each group's chunk partials (Chan's formula, in double) into per-channel center, scale and shift: G
// partials per chunk, few enough to merge on the calling thread.
void group_affine(const GroupNormArgs& a, const RowChunks& chunks, const double* group_mean,
                  const double* group_m2, ChannelAffine& affine) {
  const int64_t C = a.C, G = a.G, Cg = C / G;
  for (int64_t n = 0; n < a.N; ++n) {
    const int64_t first = n * chunks.per_sample * G;  // partial (n, chunk 0, group 0)
    for (int64_t g = 0; g < G; ++g) {
      double total = 0.0;
      for (int64_t k = 0; k < chunks.per_sample; ++k) total += double(chunks.rows(k)) * group_mean[first + k * G + g];
      const double count = double(a.S), mean = total / count;
      double m2 = 0.0;
      for (int64_t k = 0; k < chunks.per_sample; ++k) {
        const double d = group_mean[first + k * G + g] - mean;
        m2 += group_m2[first + k * G + g] + double(chunks.rows(k)) * Cg * d * d;
      }
      const double rstd = 1.0 / std::sqrt(m2 / (count * Cg) + a.eps);
      const float center = static_cast<float>(mean);
      for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
        const float s = static_cast<float>(rstd * channel_weight(a, c));
        affine.center[n * C + c] = center;
        affine.scale[n * C + c] = s;
        affine.shift[n * C + c] = centred_shift(channel_bias(a, c), mean, center, s);
      }
    }
  }
}

// Pass 2: y = act((x - center[c]) * scale[c] + shift[c]) row by row.
void apply_affine(const GroupNormArgs& a, const RowChunks& chunks, const ChannelAffine& affine) {
  const int64_t C = a.C;
  const bool streaming = stream_output(a);
  parallel_for(a.N * chunks.per_sample, a.num_threads, [&](int64_t task) {
    const int64_t n = task / chunks.per_sample, rows = chunks.rows(task % chunks.per_sample);
    const int64_t offset = chunks.offset(task);
    scale_shift_rows(element_at(a.x, a.dtype, offset), element_at(a.out, a.dtype, offset), a.dtype, rows, C,
                     affine.center.data() + n * C, affine.scale.data() + n * C, affine.shift.data() + n * C, a.silu,
                     streaming);
    store_fence();
  });
}

void group_norm_channels_last(const GroupNormArgs& a) {
  const RowChunks chunks(a.S, a.C);
  std::vector<double> group_mean(a.N * chunks.per_sample * a.G), group_m2(a.N * chunks.per_sample * a.G);
  chunk_group_stats(a, chunks, group_mean.data(), group_m2.data());
  ChannelAffine affine(a.N * a.C);
  group_affine(a, chunks, group_mean.data(), group_m2.data(), affine);
  apply_affine(a, chunks, affine);
}

}  // namespace

void validate(const GroupNormArgs& a) {
  require(a.N >= 0, "N: expected >= 0, got " + std::to_string(a.N));
  require(a.C >= 1, "C: expected >= 1, got " + std::to_string(a.C));
  require(a.S >= 0, "S: expected >= 0, got " + std::to_string(a.S));
  require(a.G >= 1 && a.C % a.G == 0,
          "num_groups: expected a divisor of C=" + std::to_string(a.C) + ", got " + std::to_string(a.G));
  const int64_t numel = checked_product({a.N, a.C, a.S}, "x");
  require(a.weight == nullptr || a.weight_numel == a.C,
          "weight: expected C=" + std::to_string(a.C) + " elements, got " + std::to_string(a.weight_numel));
  require(a.bias == nullptr || a.bias_numel == a.C,
          "bias: expected C=" + std::to_string(a.C) + " elements, got " + std::to_string(a.bias_numel));
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

// The sampler update of a guided diffusion step, fused: a diffusers loop runs
//   m = uncond + g (cond - uncond);  x0 = (x - sigma m) / alpha;  x_next = ... x ... x0 ... m ...
// as a dozen elementwise torch ops per step, each a pass over the latents. Every sampler's update
// (DDPM, DDIM, Euler, DPM-Solver++) is affine in x, m, its x0 (clipped or not), the previous step's x0
// and the noise, so one pass with per-step coefficients computes it; genai_fast/diffusion/samplers.py
// derives them.
#include "guided_update.h"
#include "simd.h"

#include <string>

namespace genai_fast {
namespace {

// Which terms take part: fixed for a call, so the branches below are the same for every element.
struct Terms {
  bool x, x0, m, change, noise, clip, keep_x0;
};

GF_INLINE void update16(const GuidedUpdateArgs& a, const Terms& t, int64_t i, int64_t count) {
  const v16 x = load_part(a.x + i, count);
  v16 m = load_part(a.model_output + i, count);
  if (a.guided) m = m + a.guidance * (load_part(a.model_output + a.n + i, count) - m);
  v16 out = {};
  if (t.x) out = out + a.c_x * x;
  if (t.m) out = out + a.c_m * m;
  if (t.x0 || t.change || t.keep_x0) {
    v16 x0 = a.x0_from_x * x + a.x0_from_m * m;
    if (t.clip) {  // comparisons are false for NaN, which passes through as in torch.clamp
      x0 = x0 < -a.clip ? -a.clip : x0;
      x0 = x0 > a.clip ? a.clip : x0;
    }
    if (t.x0) out = out + a.c_x0 * x0;
    if (t.change) out = out + a.c_change * (x0 - load_part(a.previous_x0 + i, count));
    if (t.keep_x0) store_part(a.x0_out + i, x0, count);
  }
  if (t.noise) out = out + a.c_noise * load_part(a.noise + i, count);
  store_part(a.out + i, out, count);
}

GF_CLONES void update_range(const GuidedUpdateArgs& a, const Terms& t, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; i += 16) update16(a, t, i, std::min<int64_t>(16, end - i));
}

}  // namespace

void validate(const GuidedUpdateArgs& a) {
  require(a.n >= 1, "x: expected at least one element");
  require(a.x != nullptr && a.model_output != nullptr && a.out != nullptr,
          "x, model_output, out: expected non-null addresses");
  require(a.x_numel == a.n, "x: expected " + std::to_string(a.n) + " elements, got " + std::to_string(a.x_numel));
  const int64_t model_n = a.guided ? checked_mul(2, a.n, "model_output") : a.n;
  require(a.model_numel == model_n, "model_output: expected " + std::to_string(model_n) + " elements, got " +
                                        std::to_string(a.model_numel));
  require(a.out_numel == a.n, "out: expected " + std::to_string(a.n) + " elements, got " +
                                  std::to_string(a.out_numel));
  require(a.c_change == 0.0f || (a.previous_x0 != nullptr && a.previous_numel == a.n),
          "previous_x0: expected " + std::to_string(a.n) + " elements for a non-zero x0-change coefficient");
  require(a.c_noise == 0.0f || (a.noise != nullptr && a.noise_numel == a.n),
          "noise: expected " + std::to_string(a.n) + " elements for a non-zero noise coefficient");
  require(a.x0_out == nullptr || a.x0_numel == a.n, "x0_out: expected " + std::to_string(a.n) + " elements");
  require(a.clip >= 0.0f, "clip: expected a bound >= 0 (infinity for none)");
  require(a.num_threads >= 1, "num_threads: expected >= 1");
}

void guided_update_forward(const GuidedUpdateArgs& a) {
  const Terms terms{a.c_x != 0.0f,     a.c_x0 != 0.0f,         a.c_m != 0.0f, a.c_change != 0.0f,
                    a.c_noise != 0.0f, std::isfinite(a.clip), a.x0_out != nullptr};
  // Memory-bound: a second thread pays from about 64k elements each (SD latents are 16k per image).
  const int workers = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(a.num_threads, a.n >> 16)));
  constexpr int64_t kChunk = 16384;  // a multiple of 16, so only the last chunk has a tail
  parallel_for((a.n + kChunk - 1) / kChunk, workers, [&](int64_t task) {
    update_range(a, terms, task * kChunk, std::min(a.n, (task + 1) * kChunk));
  });
}

}  // namespace genai_fast

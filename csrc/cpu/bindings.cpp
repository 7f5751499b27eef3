// pybind11 module genai_fast._C. Tensors cross as (data pointer, element count) pairs so the module
// does not link against libtorch and works with any torch version; the Python launchers in
// genai_fast/backends/cpp/ pass them and every size is validated here before memory is touched.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "attention.h"
#include "decode_attention.h"
#include "geglu.h"
#include "gguf_linear.h"
#include "guided_update.h"
#include "group_norm.h"
#include "linear.h"
#include "rms_norm.h"
#include "winograd.h"

namespace py = pybind11;
using namespace genai_fast;

void register_word2vec(py::module_& m);  // word2vec_bindings.cpp

namespace {

template <typename T>
T* as_ptr(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

void group_norm_forward_py(uintptr_t x, int64_t x_numel, uintptr_t out, int64_t out_numel, uintptr_t weight,
                           int64_t weight_numel, uintptr_t bias, int64_t bias_numel, int dtype_code, int64_t N,
                           int64_t C, int64_t S, int64_t G,
                           bool channels_last, double eps, bool silu, int num_threads) {
  GroupNormArgs args;
  args.x = as_ptr<const void>(x);
  args.out = as_ptr<void>(out);
  args.weight = as_ptr<const float>(weight);
  args.bias = as_ptr<const float>(bias);
  args.dtype = dtype_from_code(dtype_code);
  args.N = N, args.C = C, args.S = S, args.G = G;
  args.x_numel = x_numel, args.out_numel = out_numel;
  args.weight_numel = weight_numel, args.bias_numel = bias_numel;
  args.channels_last = channels_last;
  args.eps = eps;
  args.silu = silu;
  args.num_threads = num_threads;
  validate(args);  // with the GIL held, so a ValueError is raised before threads start
  py::gil_scoped_release release;
  group_norm_forward(args);
}

void skinny_linear_forward_py(uintptr_t x, int64_t x_numel, int64_t x_row_stride, uintptr_t weight,
                              int64_t weight_numel, uintptr_t bias, int64_t bias_numel, uintptr_t out,
                              int64_t out_numel, int64_t M, int64_t K, int64_t N, int num_threads) {
  SkinnyLinearArgs args;
  args.x = as_ptr<const float>(x);
  args.weight = as_ptr<const float>(weight);
  args.bias = as_ptr<const float>(bias);
  args.out = as_ptr<float>(out);
  args.M = M, args.K = K, args.N = N;
  args.x_row_stride = x_row_stride;
  args.x_numel = x_numel, args.weight_numel = weight_numel, args.bias_numel = bias_numel;
  args.out_numel = out_numel;
  args.num_threads = num_threads;
  validate(args);
  py::gil_scoped_release release;
  skinny_linear_forward(args);
}

GgufLinearArgs gguf_args(uintptr_t blocks, int64_t blocks_bytes, int block_type, uintptr_t out, int64_t out_numel,
                         int64_t N, int64_t K, int num_threads) {
  GgufLinearArgs args;
  args.blocks = as_ptr<const uint8_t>(blocks);
  args.blocks_bytes = blocks_bytes;
  args.kind = gguf_block_from_code(block_type);
  args.out = as_ptr<float>(out);
  args.out_numel = out_numel;
  args.N = N, args.K = K;
  args.num_threads = num_threads;
  return args;
}

void gguf_linear_forward_py(uintptr_t x, int64_t x_numel, int64_t x_row_stride, uintptr_t blocks,
                            int64_t blocks_bytes, int block_type, uintptr_t bias, int64_t bias_numel, uintptr_t out,
                            int64_t out_numel, int64_t M, int64_t K, int64_t N, int num_threads) {
  GgufLinearArgs args = gguf_args(blocks, blocks_bytes, block_type, out, out_numel, N, K, num_threads);
  args.x = as_ptr<const float>(x);
  args.x_numel = x_numel, args.x_row_stride = x_row_stride, args.M = M;
  args.bias = as_ptr<const float>(bias);
  args.bias_numel = bias_numel;
  validate(args);
  py::gil_scoped_release release;
  gguf_linear_forward(args);
}

void gguf_dequantize_py(uintptr_t blocks, int64_t blocks_bytes, int block_type, uintptr_t out, int64_t out_numel,
                        int64_t N, int64_t K, int num_threads) {
  gguf_dequantize(gguf_args(blocks, blocks_bytes, block_type, out, out_numel, N, K, num_threads));  // validates
}

void rms_norm_forward_py(uintptr_t x, int64_t x_numel, int64_t x_row_stride, uintptr_t weight,
                         int64_t weight_numel, uintptr_t out, int64_t out_numel, int64_t rows, int64_t D, double eps,
                         int num_threads) {
  RmsNormArgs args;
  args.x = as_ptr<const float>(x);
  args.weight = as_ptr<const float>(weight);
  args.out = as_ptr<float>(out);
  args.rows = rows, args.D = D, args.x_row_stride = x_row_stride;
  args.x_numel = x_numel, args.weight_numel = weight_numel, args.out_numel = out_numel;
  args.eps = eps;
  args.num_threads = num_threads;
  validate(args);
  py::gil_scoped_release release;
  rms_norm_forward(args);
}

void geglu_forward_py(uintptr_t x, int64_t x_numel, int64_t x_row_stride, uintptr_t out, int64_t out_numel,
                      int64_t rows, int64_t H, bool tanh, int num_threads) {
  GegluArgs args;
  args.x = as_ptr<const float>(x);
  args.out = as_ptr<float>(out);
  args.rows = rows, args.H = H, args.x_row_stride = x_row_stride;
  args.x_numel = x_numel, args.out_numel = out_numel;
  args.tanh = tanh;
  args.num_threads = num_threads;
  validate(args);
  py::gil_scoped_release release;
  geglu_forward(args);
}

void guided_update_forward_py(uintptr_t x, int64_t x_numel, uintptr_t model_output, int64_t model_numel,
                              uintptr_t previous_x0, int64_t previous_numel, uintptr_t noise, int64_t noise_numel,
                              uintptr_t out, int64_t out_numel, uintptr_t x0_out, int64_t x0_numel, int64_t n,
                              bool guided, double guidance, std::vector<double> coefficients, double clip,
                              int num_threads) {
  if (coefficients.size() != 7) throw std::invalid_argument("coefficients: expected 7 values");
  GuidedUpdateArgs args;
  args.x = as_ptr<const float>(x);
  args.model_output = as_ptr<const float>(model_output);
  args.previous_x0 = as_ptr<const float>(previous_x0);
  args.noise = as_ptr<const float>(noise);
  args.out = as_ptr<float>(out);
  args.x0_out = as_ptr<float>(x0_out);
  args.n = n;
  args.x_numel = x_numel, args.model_numel = model_numel, args.previous_numel = previous_numel;
  args.noise_numel = noise_numel, args.out_numel = out_numel, args.x0_numel = x0_numel;
  args.guided = guided;
  args.guidance = static_cast<float>(guidance);
  args.x0_from_x = static_cast<float>(coefficients[0]), args.x0_from_m = static_cast<float>(coefficients[1]);
  args.c_x = static_cast<float>(coefficients[2]), args.c_x0 = static_cast<float>(coefficients[3]);
  args.c_m = static_cast<float>(coefficients[4]), args.c_change = static_cast<float>(coefficients[5]);
  args.c_noise = static_cast<float>(coefficients[6]);
  args.clip = static_cast<float>(clip);
  args.num_threads = num_threads;
  validate(args);
  py::gil_scoped_release release;
  guided_update_forward(args);
}

WinogradShape winograd_shape(int64_t N, int64_t H, int64_t W, int64_t C, int64_t C_out) {
  WinogradShape shape;
  shape.N = N, shape.H = H, shape.W = W, shape.C = C, shape.C_out = C_out;
  return shape;
}

void winograd_input_py(uintptr_t x, int64_t x_numel, uintptr_t V, int64_t V_numel, int64_t N, int64_t H, int64_t W,
                       int64_t C, int num_threads) {
  WinogradInputArgs args;
  args.shape = winograd_shape(N, H, W, C, 1);
  args.x = as_ptr<const float>(x);
  args.V = as_ptr<float>(V);
  args.x_numel = x_numel, args.V_numel = V_numel;
  args.num_threads = num_threads;
  validate(args);
  py::gil_scoped_release release;
  winograd_input_transform(args);
}

void winograd_weight_py(uintptr_t weight, int64_t weight_extent, std::vector<int64_t> strides, uintptr_t U,
                        int64_t U_numel, int64_t C, int64_t C_out, int num_threads) {
  if (strides.size() != 4) throw std::invalid_argument("weight: expected 4 strides");
  WinogradWeightArgs args;
  args.shape = winograd_shape(1, 1, 1, C, C_out);
  args.weight = as_ptr<const float>(weight);
  args.weight_extent = weight_extent;
  for (int k = 0; k < 4; ++k) args.strides[k] = strides[k];
  args.U = as_ptr<float>(U);
  args.U_numel = U_numel;
  args.num_threads = num_threads;
  validate(args);
  py::gil_scoped_release release;
  winograd_weight_transform(args);
}

void winograd_output_py(uintptr_t M, int64_t M_numel, uintptr_t bias, int64_t bias_numel, bool per_sample_bias,
                        uintptr_t residual, int64_t residual_numel, uintptr_t out, int64_t out_numel, int64_t N,
                        int64_t H, int64_t W, int64_t C_out, bool silu, double output_scale, int num_threads) {
  WinogradOutputArgs args;
  args.shape = winograd_shape(N, H, W, 1, C_out);
  args.M = as_ptr<const float>(M);
  args.bias = as_ptr<const float>(bias);
  args.residual = as_ptr<const float>(residual);
  args.out = as_ptr<float>(out);
  args.M_numel = M_numel, args.bias_numel = bias_numel, args.residual_numel = residual_numel;
  args.out_numel = out_numel;
  args.per_sample_bias = per_sample_bias, args.silu = silu;
  args.output_scale = static_cast<float>(output_scale);
  args.num_threads = num_threads;
  validate(args);
  py::gil_scoped_release release;
  winograd_output_transform(args);
}

// The sizes and settings AttentionArgs and AttentionBackwardArgs share.
template <class Args>
void set_attention_sizes(Args& args, int64_t B, int64_t Hq, int64_t Hkv, int64_t Sq, int64_t Sk, int64_t D, int64_t Dv,
                         double scale, bool causal, int num_threads) {
  args.B = B, args.Hq = Hq, args.Hkv = Hkv, args.Sq = Sq, args.Sk = Sk, args.D = D, args.Dv = Dv;
  args.scale = static_cast<float>(scale);
  args.causal = causal;
  args.num_threads = num_threads;
}

// softcap and window of the three attention entry points (validate() checks them).
template <class Args>
void set_softcap_window(Args& args, double softcap, int64_t window) {
  args.softcap = static_cast<float>(softcap);
  args.window = window;
}

// The mask arguments of attention_forward and attention_backward: kind 0 none, 1 additive fp32, 2 booleans.
AttentionMask attention_mask(uintptr_t mask, int mask_kind, const std::vector<int64_t>& mask_strides,
                             int64_t mask_extent) {
  AttentionMask m;
  require(mask_kind >= 0 && mask_kind <= 2, "mask_kind: expected 0 (none), 1 (additive fp32) or 2 (booleans)");
  if (mask_kind == 0) return m;
  require(mask != 0, "mask: expected a non-null address");
  require(mask_strides.size() == 4, "mask_strides: expected 4 (over [B, Hq, Sq, Sk])");
  for (int i = 0; i < 4; ++i) m.strides[i] = mask_strides[i];
  m.extent = mask_extent;
  if (mask_kind == 1) {
    m.add = as_ptr<const float>(mask);
  } else {
    m.keep = as_ptr<const uint8_t>(mask);
  }
  return m;
}

void attention_forward_py(uintptr_t q, int64_t q_extent, std::vector<int64_t> q_strides, uintptr_t k, int64_t k_extent,
                          std::vector<int64_t> k_strides, uintptr_t v, int64_t v_extent, std::vector<int64_t> v_strides,
                          uintptr_t out, int64_t out_numel, uintptr_t lse, int64_t lse_numel, int64_t B, int64_t Hq,
                          int64_t Hkv, int64_t Sq, int64_t Sk, int64_t D, int64_t Dv, double scale, bool causal,
                          int num_threads, int streamed, uintptr_t mask, int mask_kind,
                          std::vector<int64_t> mask_strides, int64_t mask_extent, double softcap, int64_t window) {
  AttentionArgs args;
  args.streamed = streamed;
  args.mask = attention_mask(mask, mask_kind, mask_strides, mask_extent);
  args.q = as_ptr<const float>(q);
  args.k = as_ptr<const float>(k);
  args.v = as_ptr<const float>(v);
  args.out = as_ptr<float>(out);
  args.lse = lse == 0 ? nullptr : as_ptr<float>(lse);
  require(q_strides.size() == 3 && k_strides.size() == 3 && v_strides.size() == 3,
          "strides: expected 3 per tensor (the last dimension is unit-stride)");
  for (int i = 0; i < 3; ++i) args.q_strides[i] = q_strides[i], args.k_strides[i] = k_strides[i], args.v_strides[i] = v_strides[i];
  args.q_extent = q_extent, args.k_extent = k_extent, args.v_extent = v_extent;
  args.out_numel = out_numel, args.lse_numel = lse_numel;
  set_attention_sizes(args, B, Hq, Hkv, Sq, Sk, D, Dv, scale, causal, num_threads);
  set_softcap_window(args, softcap, window);
  validate(args);
  py::gil_scoped_release release;
  attention_forward(args);
}

void attention_backward_py(uintptr_t q, int64_t q_numel, uintptr_t k, int64_t k_numel, uintptr_t v, int64_t v_numel,
                           uintptr_t out, int64_t out_numel, uintptr_t grad_out, int64_t grad_out_numel, uintptr_t lse,
                           int64_t lse_numel, uintptr_t dq, int64_t dq_numel, uintptr_t dk, int64_t dk_numel,
                           uintptr_t dv, int64_t dv_numel, int64_t B, int64_t Hq, int64_t Hkv, int64_t Sq, int64_t Sk,
                           int64_t D, int64_t Dv, double scale, bool causal, int num_threads, uintptr_t mask,
                           int mask_kind, std::vector<int64_t> mask_strides, int64_t mask_extent, double softcap,
                           int64_t window) {
  AttentionBackwardArgs args;
  args.mask = attention_mask(mask, mask_kind, mask_strides, mask_extent);
  args.q = as_ptr<const float>(q), args.k = as_ptr<const float>(k), args.v = as_ptr<const float>(v);
  args.out = as_ptr<const float>(out), args.grad_out = as_ptr<const float>(grad_out);
  args.lse = as_ptr<const float>(lse);
  args.dq = as_ptr<float>(dq), args.dk = as_ptr<float>(dk), args.dv = as_ptr<float>(dv);
  args.q_numel = q_numel, args.k_numel = k_numel, args.v_numel = v_numel, args.out_numel = out_numel;
  args.grad_out_numel = grad_out_numel, args.lse_numel = lse_numel;
  args.dq_numel = dq_numel, args.dk_numel = dk_numel, args.dv_numel = dv_numel;
  set_attention_sizes(args, B, Hq, Hkv, Sq, Sk, D, Dv, scale, causal, num_threads);
  set_softcap_window(args, softcap, window);
  validate(args);
  py::gil_scoped_release release;
  attention_backward(args);
}

void decode_attention_forward_py(uintptr_t q, int64_t q_extent, std::vector<int64_t> q_strides, uintptr_t k_cache,
                                 int64_t k_extent, std::vector<int64_t> k_strides, uintptr_t v_cache, int64_t v_extent,
                                 std::vector<int64_t> v_strides, std::vector<int64_t> lengths, uintptr_t out,
                                 int64_t out_extent, std::vector<int64_t> out_strides, uintptr_t lse,
                                 int64_t lse_numel, int64_t B, int64_t Hq, int64_t Hkv, int64_t Sq, int64_t S_max,
                                 int64_t D, int64_t Dv, double scale, bool causal, int num_threads, double softcap,
                                 int64_t window, uintptr_t sinks, int64_t sinks_numel) {
  DecodeAttentionArgs args;
  args.q = as_ptr<const float>(q);
  args.k_cache = as_ptr<const float>(k_cache);
  args.v_cache = as_ptr<const float>(v_cache);
  args.out = as_ptr<float>(out);
  args.lse = lse == 0 ? nullptr : as_ptr<float>(lse);
  args.sinks = sinks == 0 ? nullptr : as_ptr<const float>(sinks);
  args.sinks_numel = sinks_numel;
  require(static_cast<int64_t>(lengths.size()) == B, "lengths: expected " + std::to_string(B) + " values");
  require(q_strides.size() == 3 && k_strides.size() == 3 && v_strides.size() == 3 && out_strides.size() == 3,
          "strides: expected 3 per tensor (the last dimension is unit-stride)");
  args.lengths = lengths.data();
  for (int i = 0; i < 3; ++i) {
    args.q_strides[i] = q_strides[i], args.k_strides[i] = k_strides[i], args.v_strides[i] = v_strides[i];
    args.out_strides[i] = out_strides[i];
  }
  args.q_extent = q_extent, args.k_extent = k_extent, args.v_extent = v_extent, args.out_extent = out_extent;
  args.lse_numel = lse_numel;
  args.B = B, args.Hq = Hq, args.Hkv = Hkv, args.Sq = Sq, args.S_max = S_max, args.D = D, args.Dv = Dv;
  args.scale = static_cast<float>(scale);
  args.causal = causal;
  args.num_threads = num_threads;
  set_softcap_window(args, softcap, window);
  validate(args);
  py::gil_scoped_release release;
  decode_attention_forward(args);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "genai_fast C++ CPU kernels (GIL released; parallel on torch's OpenMP threads)";
  m.attr("__version__") = "0.1.0";
#ifdef _OPENMP
  m.attr("built_with_openmp") = true;
#else
  m.attr("built_with_openmp") = false;
#endif
  m.def("group_norm_forward", &group_norm_forward_py, py::arg("x"), py::arg("x_numel"), py::arg("out"),
        py::arg("out_numel"), py::arg("weight"), py::arg("weight_numel"), py::arg("bias"), py::arg("bias_numel"),
        py::arg("dtype_code"), py::arg("N"),
        py::arg("C"), py::arg("S"), py::arg("G"), py::arg("channels_last"), py::arg("eps"), py::arg("silu"),
        py::arg("num_threads"),
        "GroupNorm(+SiLU) over [N, C, S] data at raw addresses; weight/bias fp32 [C] (their element counts "
        "checked against C) or 0.");
  m.def("skinny_linear_forward", &skinny_linear_forward_py, py::arg("x"), py::arg("x_numel"),
        py::arg("x_row_stride"), py::arg("weight"), py::arg("weight_numel"), py::arg("bias"), py::arg("bias_numel"),
        py::arg("out"), py::arg("out_numel"), py::arg("M"), py::arg("K"), py::arg("N"), py::arg("num_threads"),
        "fp32 out[M, N] = x[M, K] weight[N, K]^T + bias[N] for M <= 16 rows; bias 0 for none.");
  m.attr("SKINNY_MAX_ROWS") = kSkinnyMaxRows;
  m.def("gguf_linear_forward", &gguf_linear_forward_py, py::arg("x"), py::arg("x_numel"), py::arg("x_row_stride"),
        py::arg("blocks"), py::arg("blocks_bytes"), py::arg("block_type"), py::arg("bias"), py::arg("bias_numel"),
        py::arg("out"), py::arg("out_numel"), py::arg("M"), py::arg("K"), py::arg("N"), py::arg("num_threads"),
        "fp32 out[M, N] = x[M, K] W^T + bias[N] for M <= 16 rows, W [N, K] in GGUF blocks (block_type 0 Q4_0, "
        "1 Q4_1, 2 Q8_0); bias 0 for none.");
  m.def("gguf_dequantize", &gguf_dequantize_py, py::arg("blocks"), py::arg("blocks_bytes"), py::arg("block_type"),
        py::arg("out"), py::arg("out_numel"), py::arg("N"), py::arg("K"), py::arg("num_threads"),
        "The fp32 [N, K] weights that GGUF blocks hold, as the gguf_linear kernel expands them.");
  m.attr("GGUF_MAX_ROWS") = kGgufMaxRows;
  m.def("gguf_linear_isa", &gguf_linear_isa,
        "The instruction set gguf_linear runs with (avx512, avx2, baseline); GENAI_FAST_CPU_ISA caps it.");
  m.def("attention_forward", &attention_forward_py, py::arg("q"), py::arg("q_extent"), py::arg("q_strides"),
        py::arg("k"), py::arg("k_extent"), py::arg("k_strides"), py::arg("v"), py::arg("v_extent"),
        py::arg("v_strides"), py::arg("out"), py::arg("out_numel"), py::arg("lse"), py::arg("lse_numel"), py::arg("B"),
        py::arg("Hq"), py::arg("Hkv"), py::arg("Sq"), py::arg("Sk"), py::arg("D"), py::arg("Dv"), py::arg("scale"),
        py::arg("causal"), py::arg("num_threads"), py::arg("streamed") = -1, py::arg("mask") = 0,
        py::arg("mask_kind") = 0, py::arg("mask_strides") = std::vector<int64_t>{}, py::arg("mask_extent") = 0,
        py::arg("softcap") = 0.0, py::arg("window") = 0,
        "fp32 softmax(q k^T * scale) v for q [B, Hq, Sq, D], k [B, Hkv, Sk, D], v [B, Hkv, Sk, Dv] (causal: "
        "top-left) into a contiguous out [B, Hq, Sq, Dv] (lse: 0 or the address of B * Hq * Sq floats). "
        "streamed: -1 picks the scheme by size, 0 the short-sequence one, 1 the key-blocked one. mask: the "
        "address of an additive fp32 (mask_kind 1) or boolean-byte (2) mask over [B, Hq, Sq, Sk] at mask_strides "
        "(the key-blocked scheme runs it). softcap > 0: scores become softcap * tanh(score / softcap) before the "
        "mask; window > 0 (causal only): query i sees keys i - window < j <= i.");
  m.def("attention_backward", &attention_backward_py, py::arg("q"), py::arg("q_numel"), py::arg("k"),
        py::arg("k_numel"), py::arg("v"), py::arg("v_numel"), py::arg("out"), py::arg("out_numel"), py::arg("grad_out"),
        py::arg("grad_out_numel"), py::arg("lse"), py::arg("lse_numel"), py::arg("dq"), py::arg("dq_numel"),
        py::arg("dk"), py::arg("dk_numel"), py::arg("dv"), py::arg("dv_numel"), py::arg("B"), py::arg("Hq"),
        py::arg("Hkv"), py::arg("Sq"), py::arg("Sk"), py::arg("D"), py::arg("Dv"), py::arg("scale"), py::arg("causal"),
        py::arg("num_threads"), py::arg("mask") = 0, py::arg("mask_kind") = 0,
        py::arg("mask_strides") = std::vector<int64_t>{}, py::arg("mask_extent") = 0, py::arg("softcap") = 0.0,
        py::arg("window") = 0,
        "fp32 gradients dq, dk, dv of attention_forward from contiguous q, k, v, out, grad_out and lse; mask, "
        "softcap, window: the forward's, as attention_forward takes them (the mask's own gradient is not computed).");
  m.def("decode_attention_forward", &decode_attention_forward_py, py::arg("q"), py::arg("q_extent"),
        py::arg("q_strides"), py::arg("k_cache"), py::arg("k_extent"), py::arg("k_strides"), py::arg("v_cache"),
        py::arg("v_extent"), py::arg("v_strides"), py::arg("lengths"), py::arg("out"), py::arg("out_extent"),
        py::arg("out_strides"), py::arg("lse"), py::arg("lse_numel"), py::arg("B"), py::arg("Hq"), py::arg("Hkv"), py::arg("Sq"), py::arg("S_max"), py::arg("D"), py::arg("Dv"),
        py::arg("scale"), py::arg("causal"), py::arg("num_threads"), py::arg("softcap") = 0.0, py::arg("window") = 0,
        py::arg("sinks") = 0, py::arg("sinks_numel") = 0,
        "fp32 decode attention of q [B, Hq, Sq, D] over the first lengths[b] positions of each cache (lse: 0 or "
        "the address of B * Hq * Sq floats for each row's log-sum-exp). softcap > 0: scores become softcap * "
        "tanh(score / softcap); window > 0 (causal only): query i (at position lengths[b] - Sq + i) sees the "
        "positions p with 0 <= position - p < window. sinks: 0 or the address of Hq floats (sinks_numel), one "
        "more logit in each row's softmax.");
  m.def("rms_norm_forward", &rms_norm_forward_py, py::arg("x"), py::arg("x_numel"), py::arg("x_row_stride"),
        py::arg("weight"), py::arg("weight_numel"), py::arg("out"), py::arg("out_numel"), py::arg("rows"),
        py::arg("D"), py::arg("eps"), py::arg("num_threads"),
        "fp32 out[rows, D] = weight * (x * rsqrt(mean(x^2) + eps)); weight 0 for none.");
  m.def("geglu_forward", &geglu_forward_py, py::arg("x"), py::arg("x_numel"), py::arg("x_row_stride"), py::arg("out"),
        py::arg("out_numel"), py::arg("rows"), py::arg("H"), py::arg("tanh"), py::arg("num_threads"),
        "fp32 out[rows, H] = x[:, :H] * GELU(x[:, H:2H]) (exact, or the tanh approximation).");
  m.def("guided_update_forward", &guided_update_forward_py, py::arg("x"), py::arg("x_numel"), py::arg("model_output"),
        py::arg("model_numel"), py::arg("previous_x0"), py::arg("previous_numel"), py::arg("noise"),
        py::arg("noise_numel"), py::arg("out"), py::arg("out_numel"), py::arg("x0_out"), py::arg("x0_numel"),
        py::arg("n"), py::arg("guided"), py::arg("guidance"), py::arg("coefficients"), py::arg("clip"),
        py::arg("num_threads"),
        "fp32 sampler update with classifier-free guidance in one pass (genai_fast.guided_update).");
  m.def("winograd_input_transform", &winograd_input_py, py::arg("x"), py::arg("x_numel"), py::arg("V"),
        py::arg("V_numel"), py::arg("N"), py::arg("H"), py::arg("W"), py::arg("C"), py::arg("num_threads"),
        "fp32 x [N, H, W, C] (padding 1) -> V [16, P, C], Winograd F(2x2, 3x3) input tiles B^T d B.");
  m.def("winograd_weight_transform", &winograd_weight_py, py::arg("weight"), py::arg("weight_extent"),
        py::arg("strides"), py::arg("U"), py::arg("U_numel"), py::arg("C"), py::arg("C_out"), py::arg("num_threads"),
        "fp32 weight [C_out, C, 3, 3] at any strides -> U [16, C_out, C], G g G^T.");
  m.def("winograd_output_transform", &winograd_output_py, py::arg("M"), py::arg("M_numel"), py::arg("bias"),
        py::arg("bias_numel"), py::arg("per_sample_bias"), py::arg("residual"), py::arg("residual_numel"),
        py::arg("out"), py::arg("out_numel"), py::arg("N"), py::arg("H"), py::arg("W"), py::arg("C_out"),
        py::arg("silu"), py::arg("output_scale"), py::arg("num_threads"),
        "fp32 M [16, P, C_out] -> out [N, H, W, C_out]: A^T m A, then (act(y + bias) + residual) * scale.");
  register_word2vec(m);
}

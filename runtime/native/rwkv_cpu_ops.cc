// rwkv-deploy's CPU operators for ONNX Runtime (custom-op library, C API only), domain ai.rwkv_deploy.cpu:
//
// Fp16MatMul(X float [..., K], W float16 [N, K]) -> Y float [..., N]: Y = X . W^T in fp32 arithmetic, W an fp16
// initializer stored one output row per line. It replaces the portable fp16 graph's Cast -> MatMul -> Cast: the
// weights are read as fp16 (half the bytes of ONNX Runtime's x86 path, which widens them to fp32 at load time)
// and neither X nor Y is rounded to fp16, so the result is the portable graph's within fp16 rounding and closer
// to fp32.
//
// Fp32MatMul(X float [..., K], W float [N, K]) -> Y float [..., N]: the same for fp32 weights (the low-rank
// products every package keeps in fp32), read with software prefetch.
//
// BlockQuantMatMul(X float [..., K], W uint8 [ceil(N / 16), blocks, bytes]; bits, block_size, N) -> Y float:
// ONNX Runtime's MatMulNBits (8-bit blocks of 16 or 32, 4-bit blocks of 32, zero points) with its weights
// interleaved 16 output rows at a time (kernels.h; targets/cpu/quant_products.py packs them), X quantized to
// int8 per block as MatMulNBits' accuracy_level 4 does, and the int8 x uint8 products on AVX-512 VNNI where the
// machine has it, AVX2 or portable C++ otherwise.
//
// Rwkv7WkvStep(S [B, H, N, N], r, w_hat, k, v, a [B, ..., C], k_k, k_a, r_k, ln_weight, ln_bias [C];
// decay_scale, norm_floor, epsilon) -> (y [B, ..., C], S'): an RWKV-7 decode step's time-mix core between its
// weight products (wkv7_step.cc says what it computes), in place of about 45 small nodes per layer.
//
// TokenShiftMix(x [B, 1, C], shift [B, C], mix_1 .. mix_m [C]) -> (x as [B, C], x + (shift - x) * mix_i for
// each i): a decode step's token shift, the new shift state and every mix of a layer's block in one node (the
// portable graph's arithmetic, in its order, so bit-identical), in place of 2 + 2m nodes.
//
// Kernels live in weight_matmul.cc, block_quant_matmul.cc and wkv7_step.cc, paths chosen once at load by CPUID
// (kernels.h).
// Loaded with SessionOptions.register_custom_ops_library(path); exports RegisterCustomOps.

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "kernels.h"
#include "onnxruntime_c_api.h"

namespace {

using namespace rwkv_cpu;

const OrtApi* g_api = nullptr;
constexpr const char* kDomain = "ai.rwkv_deploy.cpu";
constexpr int kVersion = 3;  // the domain version this library implements: package/names.py CPU_OPS_VERSION
constexpr int64_t kRowsPerTask = 64;  // output rows per parallel task

const Path g_fp16_path = chosen_path(false);
const Fp16Rows g_fp16_rows = fp16_rows(g_fp16_path);
const Fp32Rows g_fp32_rows = fp32_rows(g_fp16_path);
const Path g_quant_path = chosen_path(true);
const Wkv7Heads g_wkv7_heads = wkv7_heads(g_fp16_path);

// -- the ONNX Runtime kernel ---------------------------------------------------------------------------------
OrtStatusPtr fail(const char* message) { return g_api->CreateStatus(ORT_INVALID_ARGUMENT, message); }

#define RETURN_IF_ERROR(expr)            \
  do {                                   \
    OrtStatusPtr _status = (expr);       \
    if (_status != nullptr) return _status; \
  } while (0)

OrtStatusPtr shape_of(const OrtValue* value, std::vector<int64_t>* dims) {
  OrtTensorTypeAndShapeInfo* info = nullptr;
  RETURN_IF_ERROR(g_api->GetTensorTypeAndShape(value, &info));
  size_t count = 0;
  OrtStatusPtr status = g_api->GetDimensionsCount(info, &count);
  if (status == nullptr) {
    dims->resize(count);
    status = g_api->GetDimensions(info, dims->data(), count);
  }
  g_api->ReleaseTensorTypeAndShapeInfo(info);
  return status;
}

// Every operator here takes X float [..., K] and one weight tensor W: their data and shapes.
template <typename W>
OrtStatusPtr x_and_weights(OrtKernelContext* context, const float** x, const W** w, std::vector<int64_t>* x_dims,
                           std::vector<int64_t>* w_dims) {
  const OrtValue *x_value = nullptr, *w_value = nullptr;
  RETURN_IF_ERROR(g_api->KernelContext_GetInput(context, 0, &x_value));
  RETURN_IF_ERROR(g_api->KernelContext_GetInput(context, 1, &w_value));
  RETURN_IF_ERROR(g_api->GetTensorMutableData(const_cast<OrtValue*>(x_value), (void**)x));
  RETURN_IF_ERROR(g_api->GetTensorMutableData(const_cast<OrtValue*>(w_value), (void**)w));
  RETURN_IF_ERROR(shape_of(x_value, x_dims));
  return shape_of(w_value, w_dims);
}

// Y [..., N] for X [..., K]: its rows (M) and the output, allocated.
OrtStatusPtr output_rows(OrtKernelContext* context, const std::vector<int64_t>& x_dims, int64_t n, int64_t* m,
                         float** y) {
  *m = 1;
  for (size_t i = 0; i + 1 < x_dims.size(); ++i) *m *= x_dims[i];
  std::vector<int64_t> y_dims(x_dims);
  y_dims.back() = n;
  OrtValue* y_value = nullptr;
  RETURN_IF_ERROR(g_api->KernelContext_GetOutput(context, 0, y_dims.data(), y_dims.size(), &y_value));
  return g_api->GetTensorMutableData(y_value, (void**)y);
}

// Tasks on the operators' own workers when the runtime started them (RwkvCpuOpsSetThreads), else on ONNX
// Runtime's pool.
OrtStatusPtr parallel_for(OrtKernelContext* context, TaskFn fn, size_t tasks, void* data) {
  if (pool_run(tasks, fn, data)) return nullptr;
  return g_api->KernelContext_ParallelFor(context, fn, tasks, 0, data);
}

size_t tasks_for(int64_t n) { return (size_t)((n + kRowsPerTask - 1) / kRowsPerTask); }

void task_rows(int64_t n, size_t index, int64_t* n0, int64_t* n1) {
  *n0 = (int64_t)index * kRowsPerTask;
  *n1 = *n0 + kRowsPerTask < n ? *n0 + kRowsPerTask : n;
}

// -- Fp16MatMul, Fp32MatMul -------------------------------------------------------------------------------------
template <typename W>
struct WeightOp;
template <>
struct WeightOp<uint16_t> {
  static constexpr const char* kName = "Fp16MatMul";
  static constexpr ONNXTensorElementDataType kType = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
  static Fp16Rows rows() { return g_fp16_rows; }
};
template <>
struct WeightOp<float> {
  static constexpr const char* kName = "Fp32MatMul";
  static constexpr ONNXTensorElementDataType kType = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  static Fp32Rows rows() { return g_fp32_rows; }
};

template <typename W>
void weight_task(void* data, size_t index) {
  const WeightProduct<W>& p = *static_cast<const WeightProduct<W>*>(data);
  int64_t n0, n1;
  task_rows(p.n, index, &n0, &n1);
  WeightOp<W>::rows()(p, n0, n1);
}

template <typename W>
OrtStatusPtr ORT_API_CALL weight_compute(void* /*kernel*/, OrtKernelContext* context) {
  const float* x = nullptr;
  const W* w = nullptr;
  std::vector<int64_t> x_dims, w_dims;
  RETURN_IF_ERROR(x_and_weights(context, &x, &w, &x_dims, &w_dims));
  if (x_dims.empty() || w_dims.size() != 2 || x_dims.back() != w_dims[1])
    return fail((std::string(WeightOp<W>::kName) + ": X [..., K] and W [N, K] must agree on K").c_str());
  const int64_t k = w_dims[1], n = w_dims[0];
  int64_t m = 0;
  float* y = nullptr;
  RETURN_IF_ERROR(output_rows(context, x_dims, n, &m, &y));
  if (m == 0 || n == 0) return nullptr;
  WeightProduct<W> p{x, w, y, m, k, n};
  // ONNX Runtime's pool splits the tasks between its threads. (Running small products on the calling thread
  // alone, to spare waking a sleeping worker, measured no faster under 1 MB of weights and slower under 4 MB.)
  return parallel_for(context, weight_task<W>, tasks_for(n), &p);
}

OrtStatusPtr ORT_API_CALL stateless_create(const OrtCustomOp*, const OrtApi*, const OrtKernelInfo*, void** kernel) {
  *kernel = nullptr;
  return nullptr;
}

template <typename W>
ONNXTensorElementDataType ORT_API_CALL weight_input_type(const OrtCustomOp*, size_t index) {
  return index == 0 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT : WeightOp<W>::kType;
}
template <typename W>
const char* ORT_API_CALL weight_name(const OrtCustomOp*) { return WeightOp<W>::kName; }
size_t ORT_API_CALL two(const OrtCustomOp*) { return 2; }

// -- BlockQuantMatMul ----------------------------------------------------------------------------------------
struct QuantKernel {
  int bits, block;
  int64_t n;
  QuantRows rows;
};

void quant_task(void* data, size_t index) {
  const auto& job = *static_cast<const std::pair<const QuantProduct*, QuantRows>*>(data);
  int64_t n0, n1;
  task_rows(job.first->w.n, index, &n0, &n1);
  job.second(*job.first, n0, n1);
}

OrtStatusPtr ORT_API_CALL quant_compute(void* kernel_data, OrtKernelContext* context) {
  const QuantKernel& kernel = *static_cast<const QuantKernel*>(kernel_data);
  const float* x = nullptr;
  const uint8_t* w = nullptr;
  std::vector<int64_t> x_dims, w_dims;
  RETURN_IF_ERROR(x_and_weights(context, &x, &w, &x_dims, &w_dims));
  QuantWeights qw{w, kernel.n, w_dims.size() == 3 ? w_dims[1] : 0, kernel.bits, kernel.block};
  if (x_dims.empty() || w_dims.size() != 3 || w_dims[0] != qw.groups() || w_dims[2] != qw.block_bytes())
    return fail("BlockQuantMatMul: W must be [ceil(N / 16), blocks, 16 * (block_size * bits / 8 + 4) + 16 * bits / 8]");
  const int64_t k = x_dims.back();
  if (k > qw.blocks * qw.block || k <= (qw.blocks - 1) * qw.block)
    return fail("BlockQuantMatMul: X [..., K] must have K in the last of W's blocks");
  int64_t m = 0;
  float* y = nullptr;
  RETURN_IF_ERROR(output_rows(context, x_dims, qw.n, &m, &y));
  if (m == 0 || qw.n == 0) return nullptr;
  std::unique_ptr<uint8_t[]> buffer(new uint8_t[quant_x_bytes(qw, m)]);  // quantize_x fills what is read
  QuantProduct p{qw, quantize_x(qw, x, m, k, buffer.get()), y};
  std::pair<const QuantProduct*, QuantRows> job{&p, kernel.rows};
  return parallel_for(context, quant_task, tasks_for(qw.n), &job);
}

OrtStatusPtr ORT_API_CALL quant_create(const OrtCustomOp*, const OrtApi*, const OrtKernelInfo* info, void** kernel) {
  int64_t bits = 0, block = 0, n = 0;
  RETURN_IF_ERROR(g_api->KernelInfoGetAttribute_int64(info, "bits", &bits));
  RETURN_IF_ERROR(g_api->KernelInfoGetAttribute_int64(info, "block_size", &block));
  RETURN_IF_ERROR(g_api->KernelInfoGetAttribute_int64(info, "N", &n));
  QuantRows rows = quant_rows(g_quant_path, (int)bits, (int)block);
  if (rows == nullptr) return fail("BlockQuantMatMul: takes 8-bit blocks of 16 or 32 values or 4-bit blocks of 32");
  if (n <= 0) return fail("BlockQuantMatMul: N must be positive");
  *kernel = new QuantKernel{(int)bits, (int)block, n, rows};
  return nullptr;
}

void ORT_API_CALL quant_destroy(void* kernel) { delete static_cast<QuantKernel*>(kernel); }

ONNXTensorElementDataType ORT_API_CALL quant_input_type(const OrtCustomOp*, size_t index) {
  return index == 0 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT : ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
}
const char* ORT_API_CALL quant_name(const OrtCustomOp*) { return "BlockQuantMatMul"; }

// -- Rwkv7WkvStep -------------------------------------------------------------------------------------------
struct Wkv7Kernel {
  float decay_scale, norm_floor, eps;
};

void wkv7_task(void* data, size_t row) {
  const Wkv7Step& p = *static_cast<const Wkv7Step*>(data);
  g_wkv7_heads(p, (int64_t)row * p.heads, (int64_t)(row + 1) * p.heads);
}

// Input `index` as float data, with its element count.
OrtStatusPtr float_input(OrtKernelContext* context, size_t index, const float** data, int64_t* count,
                         std::vector<int64_t>* dims) {
  const OrtValue* value = nullptr;
  RETURN_IF_ERROR(g_api->KernelContext_GetInput(context, index, &value));
  RETURN_IF_ERROR(g_api->GetTensorMutableData(const_cast<OrtValue*>(value), (void**)data));
  RETURN_IF_ERROR(shape_of(value, dims));
  *count = 1;
  for (int64_t d : *dims) *count *= d;
  return nullptr;
}

OrtStatusPtr ORT_API_CALL wkv7_compute(void* kernel_data, OrtKernelContext* context) {
  const Wkv7Kernel& kernel = *static_cast<const Wkv7Kernel*>(kernel_data);
  const float* in[11] = {};
  int64_t count[11] = {};
  std::vector<int64_t> dims[11];
  for (size_t i = 0; i < 11; ++i) RETURN_IF_ERROR(float_input(context, i, &in[i], &count[i], &dims[i]));
  const std::vector<int64_t>& s = dims[0];
  if (s.size() != 4 || s[2] != s[3] || s[1] <= 0 || s[2] <= 0)
    return fail("Rwkv7WkvStep: the state must be [B, H, N, N]");
  const int64_t rows = s[0], c = s[1] * s[2];
  for (size_t i = 1; i < 11; ++i) {
    const bool per_row = i <= 5;
    if (count[i] != (per_row ? rows * c : c) || (per_row && (dims[i].empty() || dims[i][0] != rows)))
      return fail("Rwkv7WkvStep: r, w_hat, k, v and a must be [B, ..., C] and k_k, k_a, r_k, ln_weight, ln_bias "
                  "hold C values, for a state [B, H, N, N] and C = H * N");
  }
  OrtValue *y_value = nullptr, *s_value = nullptr;
  RETURN_IF_ERROR(g_api->KernelContext_GetOutput(context, 0, dims[1].data(), dims[1].size(), &y_value));
  RETURN_IF_ERROR(g_api->KernelContext_GetOutput(context, 1, s.data(), s.size(), &s_value));
  Wkv7Step p{in[1], in[2], in[3], in[4], in[5], in[6], in[7], in[8], in[9], in[10], in[0], nullptr, nullptr,
             rows, s[1], s[2], kernel.decay_scale, kernel.norm_floor, kernel.eps};
  RETURN_IF_ERROR(g_api->GetTensorMutableData(y_value, (void**)&p.y));
  RETURN_IF_ERROR(g_api->GetTensorMutableData(s_value, (void**)&p.state_out));
  if (rows == 0) return nullptr;
  if (rows == 1) {  // one row's heads take microseconds: waking a worker would cost more than it saves
    g_wkv7_heads(p, 0, p.heads);
    return nullptr;
  }
  return parallel_for(context, wkv7_task, (size_t)rows, &p);
}

OrtStatusPtr ORT_API_CALL wkv7_create(const OrtCustomOp*, const OrtApi*, const OrtKernelInfo* info, void** kernel) {
  float decay_scale = 0.f, norm_floor = 0.f, eps = 0.f;
  RETURN_IF_ERROR(g_api->KernelInfoGetAttribute_float(info, "decay_scale", &decay_scale));
  RETURN_IF_ERROR(g_api->KernelInfoGetAttribute_float(info, "norm_floor", &norm_floor));
  RETURN_IF_ERROR(g_api->KernelInfoGetAttribute_float(info, "epsilon", &eps));
  if (!(norm_floor > 0.f) || !(eps > 0.f)) return fail("Rwkv7WkvStep: norm_floor and epsilon must be positive");
  *kernel = new Wkv7Kernel{decay_scale, norm_floor, eps};
  return nullptr;
}

void ORT_API_CALL wkv7_destroy(void* kernel) { delete static_cast<Wkv7Kernel*>(kernel); }

ONNXTensorElementDataType ORT_API_CALL all_float(const OrtCustomOp*, size_t) {
  return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
}
const char* ORT_API_CALL wkv7_name(const OrtCustomOp*) { return "Rwkv7WkvStep"; }
size_t ORT_API_CALL eleven(const OrtCustomOp*) { return 11; }

// -- TokenShiftMix ------------------------------------------------------------------------------------------
OrtStatusPtr ORT_API_CALL shift_compute(void*, OrtKernelContext* context) {
  size_t inputs = 0, outputs = 0;
  RETURN_IF_ERROR(g_api->KernelContext_GetInputCount(context, &inputs));
  RETURN_IF_ERROR(g_api->KernelContext_GetOutputCount(context, &outputs));
  if (inputs < 3 || outputs != inputs - 1) return fail("TokenShiftMix: takes x, shift and m mixes, gives m + 1 outputs");
  const float *x = nullptr, *shift = nullptr;
  int64_t x_count = 0, shift_count = 0;
  std::vector<int64_t> x_dims, shift_dims;
  RETURN_IF_ERROR(float_input(context, 0, &x, &x_count, &x_dims));
  RETURN_IF_ERROR(float_input(context, 1, &shift, &shift_count, &shift_dims));
  if (shift_dims.size() != 2 || x_count != shift_count || x_dims.empty() || x_dims[0] != shift_dims[0])
    return fail("TokenShiftMix: x must be [B, 1, C] for a shift state [B, C]");
  const int64_t c = shift_dims[1];
  OrtValue* value = nullptr;
  float* out = nullptr;
  RETURN_IF_ERROR(g_api->KernelContext_GetOutput(context, 0, shift_dims.data(), shift_dims.size(), &value));
  RETURN_IF_ERROR(g_api->GetTensorMutableData(value, (void**)&out));
  if (x_count > 0) std::memcpy(out, x, sizeof(float) * x_count);
  for (size_t i = 2; i < inputs; ++i) {
    const float* mix = nullptr;
    int64_t mix_count = 0;
    std::vector<int64_t> mix_dims;
    RETURN_IF_ERROR(float_input(context, i, &mix, &mix_count, &mix_dims));
    if (mix_count != c) return fail("TokenShiftMix: each mix must hold C values");
    RETURN_IF_ERROR(g_api->KernelContext_GetOutput(context, i - 1, x_dims.data(), x_dims.size(), &value));
    RETURN_IF_ERROR(g_api->GetTensorMutableData(value, (void**)&out));
    for (int64_t at = 0; at < x_count; at += c)
      for (int64_t j = 0; j < c; ++j) {
        const float d = shift[at + j] - x[at + j];
        const float m = d * mix[j];
        out[at + j] = x[at + j] + m;
      }
  }
  return nullptr;
}

const char* ORT_API_CALL shift_name(const OrtCustomOp*) { return "TokenShiftMix"; }
size_t ORT_API_CALL three(const OrtCustomOp*) { return 3; }
OrtCustomOpInputOutputCharacteristic ORT_API_CALL shift_input(const OrtCustomOp*, size_t index) {
  return index < 2 ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_VARIADIC;
}
OrtCustomOpInputOutputCharacteristic ORT_API_CALL all_variadic(const OrtCustomOp*, size_t) {
  return INPUT_OUTPUT_VARIADIC;
}

// -- the custom-op descriptions ------------------------------------------------------------------------------
void* ORT_API_CALL create_kernel_v1(const OrtCustomOp*, const OrtApi*, const OrtKernelInfo*) { return nullptr; }
void ORT_API_CALL compute_v1(void*, OrtKernelContext*) {}
void ORT_API_CALL no_destroy(void*) {}
const char* ORT_API_CALL op_provider(const OrtCustomOp*) { return "CPUExecutionProvider"; }
size_t ORT_API_CALL one_count(const OrtCustomOp*) { return 1; }
size_t ORT_API_CALL two_count(const OrtCustomOp*) { return 2; }
OrtCustomOpInputOutputCharacteristic ORT_API_CALL required(const OrtCustomOp*, size_t) {
  return INPUT_OUTPUT_REQUIRED;
}
OrtMemType ORT_API_CALL input_memory(const OrtCustomOp*, size_t) { return OrtMemTypeDefault; }
int ORT_API_CALL one(const OrtCustomOp*) { return 1; }
int ORT_API_CALL zero(const OrtCustomOp*) { return 0; }
int ORT_API_CALL start_version(const OrtCustomOp*) { return 1; }
int ORT_API_CALL end_version(const OrtCustomOp*) { return 2147483647; }

using NameFn = const char*(ORT_API_CALL*)(const OrtCustomOp*);
using InputTypeFn = ONNXTensorElementDataType(ORT_API_CALL*)(const OrtCustomOp*, size_t);
using CountFn = size_t(ORT_API_CALL*)(const OrtCustomOp*);
using CreateFn = OrtStatusPtr(ORT_API_CALL*)(const OrtCustomOp*, const OrtApi*, const OrtKernelInfo*, void**);
using ComputeFn = OrtStatusPtr(ORT_API_CALL*)(void*, OrtKernelContext*);
using DestroyFn = void(ORT_API_CALL*)(void*);

OrtCustomOp make_op(NameFn name, InputTypeFn input_type, CountFn inputs, CreateFn create, ComputeFn compute,
                    DestroyFn destroy, CountFn outputs = one_count) {
  OrtCustomOp op;
  std::memset(&op, 0, sizeof(op));
  op.version = 17;  // the fields up to KernelComputeV2 and the version range; ONNX Runtime 1.17 and later
  op.CreateKernel = create_kernel_v1;
  op.GetName = name;
  op.GetExecutionProviderType = op_provider;
  op.GetInputType = input_type;
  op.GetInputTypeCount = inputs;
  op.GetOutputType = all_float;
  op.GetOutputTypeCount = outputs;
  op.KernelCompute = compute_v1;
  op.KernelDestroy = destroy;
  op.GetInputCharacteristic = required;
  op.GetOutputCharacteristic = required;
  op.GetInputMemoryType = input_memory;
  op.GetVariadicInputMinArity = one;
  op.GetVariadicInputHomogeneity = zero;
  op.GetVariadicOutputMinArity = one;
  op.GetVariadicOutputHomogeneity = zero;
  op.CreateKernelV2 = create;
  op.KernelComputeV2 = compute;
  op.GetStartVersion = start_version;
  op.GetEndVersion = end_version;
  return op;
}

OrtCustomOp g_fp16_matmul = make_op(weight_name<uint16_t>, weight_input_type<uint16_t>, two, stateless_create,
                                    weight_compute<uint16_t>, no_destroy);
OrtCustomOp g_fp32_matmul = make_op(weight_name<float>, weight_input_type<float>, two, stateless_create,
                                    weight_compute<float>, no_destroy);
OrtCustomOp g_block_quant_matmul = make_op(quant_name, quant_input_type, two, quant_create, quant_compute,
                                           quant_destroy);
OrtCustomOp g_wkv7_step = make_op(wkv7_name, all_float, eleven, wkv7_create, wkv7_compute, wkv7_destroy, two_count);
OrtCustomOp g_token_shift_mix = [] {
  OrtCustomOp op = make_op(shift_name, all_float, three, stateless_create, shift_compute, no_destroy, one_count);
  op.GetInputCharacteristic = shift_input;  // x, shift, then the mixes
  op.GetOutputCharacteristic = all_variadic;  // the new shift, then one output per mix
  op.GetVariadicInputHomogeneity = one;
  op.GetVariadicOutputMinArity = [](const OrtCustomOp*) -> int { return 2; };
  op.GetVariadicOutputHomogeneity = one;
  return op;
}();

}  // namespace

extern "C" {

// Which kernel path this machine takes ("avx512", "avx2" or "portable"): for bench rows and tests. The
// quantized products take "avx512" only with AVX-512 VNNI.
__attribute__((visibility("default"))) const char* RwkvCpuOpsPath() { return path_name(g_fp16_path); }
__attribute__((visibility("default"))) const char* RwkvCpuOpsQuantPath() { return path_name(g_quant_path); }

// Start the operators' own workers for `threads` threads in all (the calling thread is one), or none for 1 or
// less: the runtime calls it with the session's thread count before running a CPU graph.
__attribute__((visibility("default"))) void RwkvCpuOpsSetThreads(int threads) { set_pool_threads(threads); }

// The operator domain version this library implements (a library built from older sources says less).
__attribute__((visibility("default"))) int RwkvCpuOpsVersion() { return kVersion; }

__attribute__((visibility("default"))) OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options,
                                                                                  const OrtApiBase* api_base) {
  g_api = api_base->GetApi(17);
  if (g_api == nullptr) return nullptr;  // older than 1.17: nothing registered, the session will say so
  OrtCustomOpDomain* domain = nullptr;
  RETURN_IF_ERROR(g_api->CreateCustomOpDomain(kDomain, &domain));
  RETURN_IF_ERROR(g_api->CustomOpDomain_Add(domain, &g_fp16_matmul));
  RETURN_IF_ERROR(g_api->CustomOpDomain_Add(domain, &g_fp32_matmul));
  RETURN_IF_ERROR(g_api->CustomOpDomain_Add(domain, &g_block_quant_matmul));
  RETURN_IF_ERROR(g_api->CustomOpDomain_Add(domain, &g_wkv7_step));
  RETURN_IF_ERROR(g_api->CustomOpDomain_Add(domain, &g_token_shift_mix));
  return g_api->AddCustomOpDomain(options, domain);
}

}  // extern "C"

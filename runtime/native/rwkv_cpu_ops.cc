// rwkv-deploy's CPU operators for ONNX Runtime (custom-op library, C API only).
//
// Fp16MatMul (domain ai.rwkv_deploy.cpu): Y[M, N] = X[M, K] . W[N, K]^T in fp32 arithmetic, W an fp16 initializer
// stored one output row per line. It replaces the portable fp16 graph's Cast -> MatMul -> Cast: the weights are
// read as fp16 (half the bytes of ONNX Runtime's x86 path, which widens them to fp32 at load time) and neither X
// nor Y is rounded to fp16, so the result is the portable graph's within fp16 rounding and closer to fp32.
// Paths: AVX-512F, AVX2+F16C+FMA, portable C++, chosen once at load by CPUID.
//
// Loaded with SessionOptions.register_custom_ops_library(path); exports RegisterCustomOps.

#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <vector>

#include <immintrin.h>

#include "onnxruntime_c_api.h"

namespace {

const OrtApi* g_api = nullptr;
constexpr const char* kDomain = "ai.rwkv_deploy.cpu";
constexpr int64_t kRowsPerTask = 64;  // output rows per parallel task
// Software prefetch this far ahead in the weight stream, one line per loop: with the hardware prefetcher alone the
// 0.1B head product took 8.3-9.9 ms, 4.0-4.8 with this, and a whole decode step 31.7 -> 26.4 ms at 1 thread,
// 21.5 -> 17.6 at 2 (2 KB and 8 KB measured the same; docs/bench.md "rwkv-deploy's CPU operators").
constexpr int64_t kPrefetchBytes = 4096;

// -- fp16 -> fp32 without F16C (the portable path and the tails) ------------------------------------------
float half_to_float(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      exp = 127 - 15 + 1;
      while (!(mant & 0x400)) { mant <<= 1; --exp; }
      bits = sign | (exp << 23) | ((mant & 0x3ff) << 13);
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// -- the products: rows [n0, n1) of Y for all M rows of X ---------------------------------------------------
struct Product {
  const float* x;     // [M, K]
  const uint16_t* w;  // [N, K]
  float* y;           // [M, N]
  int64_t m, k, n;
};

void rows_portable(const Product& p, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const uint16_t* w = p.w + n * p.k;
    for (int64_t m = 0; m < p.m; ++m) {
      const float* x = p.x + m * p.k;
      float acc = 0.f;
      for (int64_t i = 0; i < p.k; ++i) acc += x[i] * half_to_float(w[i]);
      p.y[m * p.n + n] = acc;
    }
  }
}

__attribute__((target("avx2,f16c,fma"))) float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// One weight row (output n) against up to 4 rows of X: the weights are read once, front to back, in one
// sequential stream over the whole matrix (interleaving several weight rows defeats the prefetcher: measured),
// with two accumulators per X row to hide the FMA latency.
template <int MB>
__attribute__((target("avx2,f16c,fma"))) void row_avx2(const Product& p, int64_t n, int64_t m) {
  __m256 acc0[MB], acc1[MB];
  for (int r = 0; r < MB; ++r) acc0[r] = acc1[r] = _mm256_setzero_ps();
  const uint16_t* w = p.w + n * p.k;
  int64_t i = 0;
  for (; i + 16 <= p.k; i += 16) {
    _mm_prefetch((const char*)(w + i) + kPrefetchBytes, _MM_HINT_T0);
    __m256 w0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(w + i)));
    __m256 w1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(w + i + 8)));
    for (int r = 0; r < MB; ++r) {
      const float* x = p.x + (m + r) * p.k + i;
      acc0[r] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x), acc0[r]);
      acc1[r] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + 8), acc1[r]);
    }
  }
  for (int r = 0; r < MB; ++r) {
    float s = hsum256(_mm256_add_ps(acc0[r], acc1[r]));
    for (int64_t j = i; j < p.k; ++j) s += p.x[(m + r) * p.k + j] * half_to_float(w[j]);
    p.y[(m + r) * p.n + n] = s;
  }
}

__attribute__((target("avx512f"))) float hsum512(__m512 v) { return _mm512_reduce_add_ps(v); }

template <int MB>
__attribute__((target("avx512f,avx2,f16c,fma"))) void row_avx512(const Product& p, int64_t n, int64_t m) {
  __m512 acc0[MB], acc1[MB];
  for (int r = 0; r < MB; ++r) acc0[r] = acc1[r] = _mm512_setzero_ps();
  const uint16_t* w = p.w + n * p.k;
  int64_t i = 0;
  for (; i + 32 <= p.k; i += 32) {
    _mm_prefetch((const char*)(w + i) + kPrefetchBytes, _MM_HINT_T0);
    __m512 w0 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(w + i)));
    __m512 w1 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(w + i + 16)));
    for (int r = 0; r < MB; ++r) {
      const float* x = p.x + (m + r) * p.k + i;
      acc0[r] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x), acc0[r]);
      acc1[r] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + 16), acc1[r]);
    }
  }
  for (int r = 0; r < MB; ++r) {
    float s = hsum512(_mm512_add_ps(acc0[r], acc1[r]));
    for (int64_t j = i; j < p.k; ++j) s += p.x[(m + r) * p.k + j] * half_to_float(w[j]);
    p.y[(m + r) * p.n + n] = s;
  }
}

// Batches (M >= 4): 4 weight rows x 4 X rows per pass, each converted weight vector used 4 times.
__attribute__((target("avx512f,avx2,f16c,fma"))) void block4x4_avx512(const Product& p, int64_t n, int64_t m) {
  __m512 acc[4][4];
  for (int j = 0; j < 4; ++j)
    for (int r = 0; r < 4; ++r) acc[j][r] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= p.k; i += 16) {
    __m512 xv[4];
    for (int r = 0; r < 4; ++r) xv[r] = _mm512_loadu_ps(p.x + (m + r) * p.k + i);
    for (int j = 0; j < 4; ++j) {
      __m512 wv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(p.w + (n + j) * p.k + i)));
      for (int r = 0; r < 4; ++r) acc[j][r] = _mm512_fmadd_ps(wv, xv[r], acc[j][r]);
    }
  }
  for (int j = 0; j < 4; ++j)
    for (int r = 0; r < 4; ++r) {
      float s = hsum512(acc[j][r]);
      for (int64_t t = i; t < p.k; ++t) s += p.x[(m + r) * p.k + t] * half_to_float(p.w[(n + j) * p.k + t]);
      p.y[(m + r) * p.n + n + j] = s;
    }
}

__attribute__((target("avx2,f16c,fma"))) void block4x4_avx2(const Product& p, int64_t n, int64_t m) {
  __m256 acc[4][4];
  for (int j = 0; j < 4; ++j)
    for (int r = 0; r < 4; ++r) acc[j][r] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= p.k; i += 8) {
    __m256 xv[4];
    for (int r = 0; r < 4; ++r) xv[r] = _mm256_loadu_ps(p.x + (m + r) * p.k + i);
    for (int j = 0; j < 4; ++j) {
      __m256 wv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(p.w + (n + j) * p.k + i)));
      for (int r = 0; r < 4; ++r) acc[j][r] = _mm256_fmadd_ps(wv, xv[r], acc[j][r]);
    }
  }
  for (int j = 0; j < 4; ++j)
    for (int r = 0; r < 4; ++r) {
      float s = hsum256(acc[j][r]);
      for (int64_t t = i; t < p.k; ++t) s += p.x[(m + r) * p.k + t] * half_to_float(p.w[(n + j) * p.k + t]);
      p.y[(m + r) * p.n + n + j] = s;
    }
}

// Rows [n0, n1): one weight row at a time against every X row (decoding, M < 4: one sequential stream over
// the weights), or 4 x 4 blocks for the X rows in fours (batches) and single rows for the rest.
template <void (*R1)(const Product&, int64_t, int64_t), void (*B44)(const Product&, int64_t, int64_t)>
void rows_simd(const Product& p, int64_t n0, int64_t n1) {
  const int64_t m4 = p.m & ~int64_t(3);
  int64_t n = n0;
  if (m4 > 0) {
    // X rows outside: their 4-row block stays in L1 while the task's weight rows (fp16, half the bytes) come
    // from L2; the other order re-read X from L2 for every 4 weight rows (measured 6-12% slower, M = 16 and 64).
    const int64_t n4 = n0 + ((n1 - n0) & ~int64_t(3));
    for (int64_t m = 0; m < m4; m += 4)
      for (int64_t t = n0; t < n4; t += 4) B44(p, t, m);
    n = n4;
    for (int64_t t = n; t < n1; ++t)
      for (int64_t m = 0; m < m4; ++m) R1(p, t, m);
  }
  for (int64_t t = n0; t < n1; ++t)
    for (int64_t m = m4; m < p.m; ++m) R1(p, t, m);
}

using RowsFn = void (*)(const Product&, int64_t, int64_t);

// RWKV_DEPLOY_CPU_KERNELS=avx2|portable caps the choice (tests run every path on one machine).
RowsFn choose_rows() {
  __builtin_cpu_init();
  const char* cap = std::getenv("RWKV_DEPLOY_CPU_KERNELS");
  const bool allow512 = cap == nullptr || *cap == 0 || std::strcmp(cap, "avx512") == 0;
  const bool allow256 = allow512 || std::strcmp(cap, "avx2") == 0;
  if (allow512 && __builtin_cpu_supports("avx512f")) return rows_simd<row_avx512<1>, block4x4_avx512>;
  if (allow256 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
    return rows_simd<row_avx2<1>, block4x4_avx2>;
  return rows_portable;
}

const RowsFn g_rows = choose_rows();

const char* path_name() {
  if (g_rows == rows_portable) return "portable";
  return g_rows == rows_simd<row_avx512<1>, block4x4_avx512> ? "avx512" : "avx2";
}

void run_task(void* data, size_t index) {
  const Product& p = *static_cast<const Product*>(data);
  int64_t n0 = (int64_t)index * kRowsPerTask, n1 = n0 + kRowsPerTask < p.n ? n0 + kRowsPerTask : p.n;
  g_rows(p, n0, n1);
}

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

OrtStatusPtr ORT_API_CALL compute(void* /*kernel*/, OrtKernelContext* context) {
  const OrtValue *x_value = nullptr, *w_value = nullptr;
  RETURN_IF_ERROR(g_api->KernelContext_GetInput(context, 0, &x_value));
  RETURN_IF_ERROR(g_api->KernelContext_GetInput(context, 1, &w_value));
  std::vector<int64_t> x_dims, w_dims;
  RETURN_IF_ERROR(shape_of(x_value, &x_dims));
  RETURN_IF_ERROR(shape_of(w_value, &w_dims));
  if (x_dims.empty() || w_dims.size() != 2 || x_dims.back() != w_dims[1])
    return fail("Fp16MatMul: X [..., K] and W [N, K] must agree on K");
  const int64_t k = w_dims[1], n = w_dims[0];
  int64_t m = 1;
  for (size_t i = 0; i + 1 < x_dims.size(); ++i) m *= x_dims[i];
  std::vector<int64_t> y_dims(x_dims);
  y_dims.back() = n;
  OrtValue* y_value = nullptr;
  RETURN_IF_ERROR(g_api->KernelContext_GetOutput(context, 0, y_dims.data(), y_dims.size(), &y_value));
  const float* x = nullptr;
  const uint16_t* w = nullptr;
  float* y = nullptr;
  RETURN_IF_ERROR(g_api->GetTensorMutableData(const_cast<OrtValue*>(x_value), (void**)&x));
  RETURN_IF_ERROR(g_api->GetTensorMutableData(const_cast<OrtValue*>(w_value), (void**)&w));
  RETURN_IF_ERROR(g_api->GetTensorMutableData(y_value, (void**)&y));
  if (m == 0 || n == 0) return nullptr;
  Product p{x, w, y, m, k, n};
  const size_t tasks = (size_t)((n + kRowsPerTask - 1) / kRowsPerTask);
  return g_api->KernelContext_ParallelFor(context, run_task, tasks, 0, &p);
}

// -- the custom-op description -------------------------------------------------------------------------------
void* ORT_API_CALL create_kernel(const OrtCustomOp*, const OrtApi*, const OrtKernelInfo*) { return (void*)1; }
OrtStatusPtr ORT_API_CALL create_kernel_v2(const OrtCustomOp*, const OrtApi*, const OrtKernelInfo*, void** kernel) {
  *kernel = (void*)1;
  return nullptr;
}
const char* ORT_API_CALL op_name(const OrtCustomOp*) { return "Fp16MatMul"; }
const char* ORT_API_CALL op_provider(const OrtCustomOp*) { return "CPUExecutionProvider"; }
ONNXTensorElementDataType ORT_API_CALL input_type(const OrtCustomOp*, size_t index) {
  return index == 0 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
}
size_t ORT_API_CALL input_count(const OrtCustomOp*) { return 2; }
ONNXTensorElementDataType ORT_API_CALL output_type(const OrtCustomOp*, size_t) {
  return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
}
size_t ORT_API_CALL output_count(const OrtCustomOp*) { return 1; }
void ORT_API_CALL compute_v1(void*, OrtKernelContext*) {}
void ORT_API_CALL destroy_kernel(void*) {}
OrtCustomOpInputOutputCharacteristic ORT_API_CALL required(const OrtCustomOp*, size_t) {
  return INPUT_OUTPUT_REQUIRED;
}
OrtMemType ORT_API_CALL input_memory(const OrtCustomOp*, size_t) { return OrtMemTypeDefault; }
int ORT_API_CALL one(const OrtCustomOp*) { return 1; }
int ORT_API_CALL zero(const OrtCustomOp*) { return 0; }
int ORT_API_CALL start_version(const OrtCustomOp*) { return 1; }
int ORT_API_CALL end_version(const OrtCustomOp*) { return 2147483647; }

OrtCustomOp make_op() {
  OrtCustomOp op;
  std::memset(&op, 0, sizeof(op));
  op.version = 17;  // the fields up to KernelComputeV2 and the version range; ONNX Runtime 1.17 and later
  op.CreateKernel = create_kernel;
  op.GetName = op_name;
  op.GetExecutionProviderType = op_provider;
  op.GetInputType = input_type;
  op.GetInputTypeCount = input_count;
  op.GetOutputType = output_type;
  op.GetOutputTypeCount = output_count;
  op.KernelCompute = compute_v1;
  op.KernelDestroy = destroy_kernel;
  op.GetInputCharacteristic = required;
  op.GetOutputCharacteristic = required;
  op.GetInputMemoryType = input_memory;
  op.GetVariadicInputMinArity = one;
  op.GetVariadicInputHomogeneity = zero;
  op.GetVariadicOutputMinArity = one;
  op.GetVariadicOutputHomogeneity = zero;
  op.CreateKernelV2 = create_kernel_v2;
  op.KernelComputeV2 = compute;
  op.GetStartVersion = start_version;
  op.GetEndVersion = end_version;
  return op;
}

OrtCustomOp g_fp16_matmul = make_op();

}  // namespace

extern "C" {

// Which kernel path this machine takes ("avx512", "avx2" or "portable"): for bench rows and tests.
__attribute__((visibility("default"))) const char* RwkvCpuOpsPath() { return path_name(); }

__attribute__((visibility("default"))) OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options,
                                                                                  const OrtApiBase* api_base) {
  g_api = api_base->GetApi(17);
  if (g_api == nullptr) return nullptr;  // older than 1.17: nothing registered, the session will say so
  OrtCustomOpDomain* domain = nullptr;
  RETURN_IF_ERROR(g_api->CreateCustomOpDomain(kDomain, &domain));
  RETURN_IF_ERROR(g_api->CustomOpDomain_Add(domain, &g_fp16_matmul));
  return g_api->AddCustomOpDomain(options, domain);
}

}  // extern "C"

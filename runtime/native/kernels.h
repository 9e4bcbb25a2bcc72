// The kernels behind rwkv-deploy's CPU operators (rwkv_cpu_ops.cc holds the ONNX Runtime glue). Each kernel
// computes a range of output rows [n0, n1) for every row of X, so the glue can split a product into tasks.
// Paths are chosen once at load by CPUID; RWKV_DEPLOY_CPU_KERNELS=avx2|portable caps the choice (tests run
// every path on one machine).

#pragma once

#include <cstddef>
#include <cstdint>

namespace rwkv_cpu {

enum class Path { kPortable, kAvx2, kAvx512 };

// -- the operators' own workers (worker_pool.cc) -----------------------------------------------------------------
using TaskFn = void (*)(void*, size_t);
// Start `threads` - 1 workers (0 or 1: none, and the operators use ONNX Runtime's pool), replacing any.
void set_pool_threads(int threads);
// fn(data, i) for i in [0, tasks) on the calling thread and the workers; false when there are no workers.
bool pool_run(size_t tasks, TaskFn fn, void* data);

// Software prefetch this far ahead in every kernel's weight stream, every line: with the hardware prefetcher
// alone the 0.1B fp16 head product took 8.3-9.9 ms, 4.0-4.8 with this, and a whole decode step 31.7 -> 26.4 ms
// at 1 thread, 21.5 -> 17.6 at 2 (2 KB and 8 KB measured the same; docs/bench.md "rwkv-deploy's CPU operators").
constexpr int64_t kPrefetchBytes = 4096;

// The widest path this machine runs within the RWKV_DEPLOY_CPU_KERNELS cap; `needs_vnni` also asks for
// AVX-512 VNNI (and BW) before taking the AVX-512 path.
Path chosen_path(bool needs_vnni);
const char* path_name(Path path);
float half_to_float(uint16_t h);

// -- Fp16MatMul, Fp32MatMul: Y[M, N] = X[M, K] . W[N, K]^T, W one output row per line (weight_matmul.cc) --------
template <typename W>  // uint16_t: fp16 bits; float
struct WeightProduct {
  const float* x;  // [M, K]
  const W* w;      // [N, K]
  float* y;        // [M, N]
  int64_t m, k, n;
};
using Fp16Product = WeightProduct<uint16_t>;
using Fp32Product = WeightProduct<float>;
using Fp16Rows = void (*)(const Fp16Product&, int64_t n0, int64_t n1);
using Fp32Rows = void (*)(const Fp32Product&, int64_t n0, int64_t n1);
Fp16Rows fp16_rows(Path path);
Fp32Rows fp32_rows(Path path);

// -- BlockQuantMatMul: 8- or 4-bit block-quantized weights, interleaved 16 rows at a time, int8 activations ---
// (block_quant_matmul.cc). W [groups = ceil(N / 16), blocks, block_bytes()]: for each group of 16 output rows and
// each block of `block` K values, the 16 rows' values, then their 16 fp32 scales, then their 16 zero points:
// - 8-bit: block / 4 chunks of 64 bytes; chunk c holds row j's values 4c .. 4c + 3 at bytes 4j .. 4j + 3;
// - 4-bit: block / 8 chunks of 64 bytes; chunk c holds row j's values 8c + i in the low nibble and 8c + 4 + i in
//   the high nibble of byte 4j + i (i < 4);
// - zero points: 16 bytes (8-bit), 8 bytes of two nibbles, row 2i low (4-bit).
// Weight (n, k) = (q - zero point) * scale of its block; rows past N are zeros.
constexpr int kGroupRows = 16;

struct QuantWeights {
  const uint8_t* w;
  int64_t n, blocks;
  int bits, block;
  int64_t value_bytes() const { return int64_t(kGroupRows) * block * bits / 8; }
  int64_t block_bytes() const { return value_bytes() + kGroupRows * 4 + kGroupRows * bits / 8; }
  int64_t groups() const { return (n + kGroupRows - 1) / kGroupRows; }
};

// X quantized per weight block: int8 values with one scale per block (max |x| / 127), as llama.cpp's Q8 and
// ONNX Runtime's MatMulNBits at accuracy_level 4 do.
struct QuantX {
  const int8_t* q;          // [M, blocks * block], zero past K
  const float* scale;       // [M, blocks]
  const float* scaled_sum;  // [M, blocks]: scale * sum of the block's q (for the zero points)
  int64_t m;
};

// Bytes of QuantX's arrays for M rows; quantize_x fills them from X [M, K] (K <= blocks * block).
int64_t quant_x_bytes(const QuantWeights& w, int64_t m);
QuantX quantize_x(const QuantWeights& w, const float* x, int64_t m, int64_t k, void* buffer);

struct QuantProduct {
  QuantWeights w;
  QuantX x;
  float* y;  // [M, N]
};
// Rows [n0, n1) of Y (n0 a multiple of 16).
using QuantRows = void (*)(const QuantProduct&, int64_t n0, int64_t n1);
// The kernel for this weight format on `path`; nullptr when the format is not one of 8-bit blocks of 16 or 32
// values or 4-bit blocks of 32 (what rwkv-deploy's int8 / int5 / int4 packages hold).
QuantRows quant_rows(Path path, int bits, int block);

// -- Rwkv7WkvStep: an RWKV-7 decode step's time-mix core, per (batch row, head) (wkv7_step.cc) ---------------
struct Wkv7Step {
  const float *r, *w_hat, *k, *v, *a;  // [rows, C], C = heads * head_size
  const float *k_k, *k_a, *r_k;        // [C]
  const float *ln_weight, *ln_bias;    // [C]
  const float* state;                  // [rows, heads, head_size (value), head_size (key)]
  float* y;                            // [rows, C]
  float* state_out;                    // as state
  int64_t rows, heads, head_size;
  float decay_scale, norm_floor, eps;  // w = exp(decay_scale * sigmoid(w_hat)); |kk| >= norm_floor; ln_x's eps
};
// (row, head) pairs [t0, t1), t = row * heads + head.
using Wkv7Heads = void (*)(const Wkv7Step&, int64_t t0, int64_t t1);
Wkv7Heads wkv7_heads(Path path);

}  // namespace rwkv_cpu

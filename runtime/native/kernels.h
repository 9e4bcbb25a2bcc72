// The kernels behind rwkv-deploy's CPU operators (rwkv_cpu_ops.cc holds the ONNX Runtime glue). Each kernel
// computes a range of output rows [n0, n1) for every row of X, so the glue can split a product into tasks.
// Paths are chosen once at load by CPUID; RWKV_DEPLOY_CPU_KERNELS=avx2|portable caps the choice (tests run
// every path on one machine).

#pragma once

#include <cstdint>

namespace rwkv_cpu {

enum class Path { kPortable, kAvx2, kAvx512 };

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

// -- BlockQuantMatMul: ONNX Runtime's MatMulNBits weights, int8 activations (block_quant_matmul.cc) ----------
// W: [N, blocks, block * bits / 8] uint8, value j of a 4-bit block in byte j / 2 (low nibble first);
// scales: [N, blocks] float; zero points: [N, zp_row_bytes] uint8 (4-bit: two per byte, low nibble first).
// Weight (n, j) = (q - zero point) * scale of its block.
struct QuantWeights {
  const uint8_t* w;
  const float* scales;
  const uint8_t* zero_points;
  int64_t n, blocks;
  int bits, block;
  int64_t row_bytes() const { return blocks * block * bits / 8; }
  int64_t zp_row_bytes() const { return bits == 8 ? blocks : (blocks + 1) / 2; }
  // quantized x values per row of X: 4-bit rows are padded to a whole pair of blocks
  int64_t x_row_values() const { return (bits == 8 ? blocks : (blocks + 1) / 2 * 2) * block; }
};

// X quantized per weight block: int8 values with one scale per block (max |x| / 127), as llama.cpp's Q8 and
// ONNX Runtime's accuracy_level 4. 8-bit: in X's order. 4-bit (blocks of 32): in the order two blocks' packed
// bytes unpack, low nibbles of both then high nibbles of both: per pair of blocks (b0, b1), 64 values: b0's
// even-indexed values, b1's even, b0's odd, b1's odd (16 each).
struct QuantX {
  const int8_t* q;  // [M, x_row_values]
  const float* scale;  // [M, blocks]
  const float* scaled_sum;  // [M, blocks]: scale * sum of the block's q (for the zero points)
  int64_t m;
};

// Sizes of QuantX's arrays for M rows; quantize_x fills them from X [M, K] (K <= blocks * block, zero padded).
int64_t quant_x_bytes(const QuantWeights& w, int64_t m);
QuantX quantize_x(const QuantWeights& w, const float* x, int64_t m, int64_t k, void* buffer);

struct QuantProduct {
  QuantWeights w;
  QuantX x;
  float* y;  // [M, N]
};
using QuantRows = void (*)(const QuantProduct&, int64_t n0, int64_t n1);
// The kernel for this weight format on `path`; nullptr when the format is not one of 8-bit blocks of 16 or 32
// values or 4-bit blocks of 32 (what rwkv-deploy's int8 / int5 / int4 packages hold).
QuantRows quant_rows(Path path, int bits, int block);

}  // namespace rwkv_cpu

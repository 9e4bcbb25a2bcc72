// BlockQuantMatMul's kernels: Y[M, N] = X[M, K] . W^T with W in ONNX Runtime's MatMulNBits layout (kernels.h),
// X quantized to int8 per weight block, int8 x uint8 dot products in int32, one fp32 scale per block pair.
//
// Per block b of row n: sum_j (q_j - z) s (xq_j sx) = s (sx dot(q, xq) - z sx sum(xq)); the second term is the
// zero-point correction, summed over a row's blocks as one fp32 dot product of (s z) with (sx sum(xq)).
// Paths: AVX-512 VNNI (vpdpbusd, 64 values per instruction), AVX2 (widened to int16, vpmaddwd), portable C++.

#include <cmath>
#include <cstring>

#include <immintrin.h>

#include "kernels.h"

namespace rwkv_cpu {
namespace {

constexpr int64_t kPrefetchBytes = 4096;  // as the fp16 kernels: one line per 64 weight bytes, this far ahead
constexpr int64_t kAlign = 64;

int64_t aligned(int64_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

int zero_point(const uint8_t* zp, int bits, int64_t b) {
  return bits == 8 ? zp[b] : (zp[b / 2] >> (4 * (b & 1))) & 15;
}

// Where value t of block b sits in a row of quantized x (QuantX's layout).
int64_t x_position(int bits, int block, int64_t b, int t) {
  if (bits == 8) return b * block + t;
  return (b / 2) * 64 + (t & 1) * 32 + (b & 1) * 16 + t / 2;  // 4-bit, blocks of 32
}

// The arrays one (weight row n, X row m) dot product reads.
struct RowPair {
  const uint8_t* w;
  const float* s;
  const uint8_t* zp;
  const int8_t* xq;
  const float* xs;
  const float* xc;
  RowPair(const QuantProduct& p, int64_t n, int64_t m)
      : w(p.w.w + n * p.w.row_bytes()), s(p.w.scales + n * p.w.blocks),
        zp(p.w.zero_points + n * p.w.zp_row_bytes()), xq(p.x.q + m * p.w.x_row_values()),
        xs(p.x.scale + m * p.w.blocks), xc(p.x.scaled_sum + m * p.w.blocks) {}
};

// -- portable --------------------------------------------------------------------------------------------
float dot_portable(const QuantProduct& p, int64_t n, int64_t m) {
  const QuantWeights& w = p.w;
  const RowPair r(p, n, m);
  const int B = w.block;
  float acc = 0.f;
  for (int64_t b = 0; b < w.blocks; ++b) {
    int32_t d = 0;
    if (w.bits == 8) {
      for (int t = 0; t < B; ++t) d += int32_t(r.w[b * B + t]) * r.xq[b * B + t];
    } else {  // byte j: value 2j in its low nibble, 2j + 1 in its high
      const uint8_t* wb = r.w + b * B / 2;
      for (int t = 0; t < B; ++t)
        d += int32_t((wb[t / 2] >> (4 * (t & 1))) & 15) * r.xq[x_position(4, B, b, t)];
    }
    acc += r.s[b] * (r.xs[b] * float(d) - float(zero_point(r.zp, w.bits, b)) * r.xc[b]);
  }
  return acc;
}

// -- AVX2: per block, values widened to int16 and multiplied pairwise into int32 (vpmaddwd) -------------------
__attribute__((target("avx2,fma"))) float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma"))) inline __m256i dot16_avx2(__m128i w_u8, const int8_t* x) {
  return _mm256_madd_epi16(_mm256_cvtepu8_epi16(w_u8), _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)x)));
}

template <int BITS, int B>
__attribute__((target("avx2,fma"))) float dot_avx2(const QuantProduct& p, int64_t n, int64_t m) {
  const QuantWeights& w = p.w;
  const RowPair r(p, n, m);
  __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
  float correction = 0.f;
  const __m128i low4 = _mm_set1_epi8(15);
  for (int64_t b = 0; b < w.blocks; ++b) {
    _mm_prefetch((const char*)r.w + b * B * BITS / 8 + kPrefetchBytes, _MM_HINT_T0);
    __m256i d = _mm256_setzero_si256();
    if (BITS == 8) {
      for (int c = 0; c < B; c += 16)
        d = _mm256_add_epi32(d, dot16_avx2(_mm_loadu_si128((const __m128i*)(r.w + b * B + c)), r.xq + b * B + c));
    } else {  // B == 32: 16 bytes, low nibbles against the block's even values, high against its odd ones
      __m128i packed = _mm_loadu_si128((const __m128i*)(r.w + b * 16));
      d = _mm256_add_epi32(dot16_avx2(_mm_and_si128(packed, low4), r.xq + x_position(4, B, b, 0)),
                           dot16_avx2(_mm_and_si128(_mm_srli_epi16(packed, 4), low4), r.xq + x_position(4, B, b, 1)));
    }
    acc[b & 1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), _mm256_set1_ps(r.s[b] * r.xs[b]), acc[b & 1]);
    correction += r.s[b] * float(zero_point(r.zp, BITS, b)) * r.xc[b];
  }
  return hsum8(_mm256_add_ps(acc[0], acc[1])) - correction;
}

// -- AVX-512 VNNI: 64 values per vpdpbusd, scales of 16 blocks at a time ------------------------------------
#define RWKV_AVX512_VNNI "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma"

// 64 weights of a row as uint8 in QuantX's order, from `at` (8-bit: 64 bytes; 4-bit: the 32 packed bytes of a
// pair of blocks, loaded into both halves, the upper half shifted by 4: low nibbles, then high nibbles).
// `bytes`: how many of them lie inside the row (masked load past its end).
template <int BITS>
__attribute__((target(RWKV_AVX512_VNNI))) inline __m512i weights64(const uint8_t* at, int64_t bytes) {
  if (BITS == 8)
    return bytes >= 64 ? _mm512_loadu_si512(at) : _mm512_maskz_loadu_epi8((__mmask64(1) << bytes) - 1, at);
  const __m256i packed = bytes >= 32 ? _mm256_loadu_si256((const __m256i*)at)
                                     : _mm256_maskz_loadu_epi8((__mmask32(1) << bytes) - 1, at);
  const __m512i both = _mm512_broadcast_i64x4(packed);
  const __m512i shift = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(4), 1);
  return _mm512_and_si512(_mm512_srlv_epi16(both, shift), _mm512_set1_epi8(15));
}

// Zero points of blocks [g, g + count) of a row as 16 floats (count <= 16; lanes past it are zero).
template <int BITS>
__attribute__((target(RWKV_AVX512_VNNI))) inline __m512 zero_points16(const uint8_t* zp, int64_t g, int64_t count) {
  __m128i z;
  if (BITS == 8) {
    z = count >= 16 ? _mm_loadu_si128((const __m128i*)(zp + g))
                    : _mm_maskz_loadu_epi8((__mmask16)((1u << count) - 1), zp + g);
  } else {  // g is even: blocks g, g + 1 share a byte
    __m128i packed = _mm_maskz_loadu_epi8((__mmask16)((1u << ((count + 1) / 2)) - 1), zp + g / 2);
    const __m128i low4 = _mm_set1_epi8(15);
    z = _mm_unpacklo_epi8(_mm_and_si128(packed, low4), _mm_and_si128(_mm_srli_epi16(packed, 4), low4));
    z = _mm_maskz_mov_epi8((__mmask16)((1u << count) - 1), z);
  }
  return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(z));
}

// For vector v of a group of 16 blocks: which of them each int32 lane (4 values) belongs to.
template <int BITS, int B>
__attribute__((target(RWKV_AVX512_VNNI))) inline __m512i lane_blocks(int v) {
  const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  if (BITS == 4)  // lanes 0-3 and 8-11: the pair's first block, 4-7 and 12-15: its second
    return _mm512_add_epi32(_mm512_and_si512(_mm512_srli_epi32(lane, 2), _mm512_set1_epi32(1)),
                            _mm512_set1_epi32(2 * v));
  return _mm512_add_epi32(_mm512_srli_epi32(lane, B == 32 ? 3 : 2), _mm512_set1_epi32(v * 64 / B));
}

// Weight row n against X rows [m, m + R): R = 4 for batches, each weight vector unpacked once for the 4 rows.
template <int BITS, int B, int R>
__attribute__((target(RWKV_AVX512_VNNI))) void dots_avx512(const QuantProduct& p, int64_t n, int64_t m) {
  constexpr int kVectors = 16 * B / 64;  // vectors of 64 values per group of 16 blocks
  constexpr int64_t kVectorBytes = 64 * BITS / 8, kGroupBytes = kVectors * kVectorBytes;
  const QuantWeights& w = p.w;
  const RowPair row(p, n, m);
  const int64_t x_stride = w.x_row_values(), s_stride = w.blocks;  // from one X row to the next
  __m512i lanes[kVectors];
  for (int v = 0; v < kVectors; ++v) lanes[v] = lane_blocks<BITS, B>(v);
  __m512 acc[R], correction[R], scale[R];
  for (int r = 0; r < R; ++r) acc[r] = correction[r] = _mm512_setzero_ps();
  const int64_t groups = w.blocks / 16;
  for (int64_t g = 0; g < groups; ++g) {  // whole groups: unrolled, no masks
    const uint8_t* wg = row.w + g * kGroupBytes;
    const int8_t* xg = row.xq + g * 16 * B;
    for (int64_t line = 0; line < kGroupBytes; line += 64) _mm_prefetch((const char*)wg + line + kPrefetchBytes, _MM_HINT_T0);
    const __m512 sv = _mm512_loadu_ps(row.s + g * 16);
    const __m512 sz = _mm512_mul_ps(sv, zero_points16<BITS>(row.zp, g * 16, 16));
    for (int r = 0; r < R; ++r) {
      scale[r] = _mm512_mul_ps(sv, _mm512_loadu_ps(row.xs + r * s_stride + g * 16));
      correction[r] = _mm512_fmadd_ps(sz, _mm512_loadu_ps(row.xc + r * s_stride + g * 16), correction[r]);
    }
#pragma GCC unroll 8
    for (int v = 0; v < kVectors; ++v) {
      const __m512i wv = weights64<BITS>(wg + v * kVectorBytes, kVectorBytes);
      for (int r = 0; r < R; ++r) {
        const __m512i d = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv,
                                              _mm512_loadu_si512(xg + r * x_stride + v * 64));
        acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_permutexvar_ps(lanes[v], scale[r]), acc[r]);
      }
    }
  }
  const int64_t g0 = groups * 16, count = w.blocks - g0;
  if (count > 0) {  // the last, partial group: masked loads; lanes past the row have zero scales
    const __mmask16 mask = (__mmask16)((1u << count) - 1);
    const __m512 sv = _mm512_maskz_loadu_ps(mask, row.s + g0);
    const __m512 sz = _mm512_mul_ps(sv, zero_points16<BITS>(row.zp, g0, count));
    for (int r = 0; r < R; ++r) {
      scale[r] = _mm512_mul_ps(sv, _mm512_maskz_loadu_ps(mask, row.xs + r * s_stride + g0));
      correction[r] = _mm512_fmadd_ps(sz, _mm512_maskz_loadu_ps(mask, row.xc + r * s_stride + g0), correction[r]);
    }
    const int64_t w_left = w.row_bytes() - groups * kGroupBytes, x_left = x_stride - g0 * B;
    for (int v = 0; v * kVectorBytes < w_left; ++v) {
      const __m512i wv = weights64<BITS>(row.w + groups * kGroupBytes + v * kVectorBytes, w_left - v * kVectorBytes);
      const int64_t x_bytes = x_left - v * 64;
      const __mmask64 x_mask = x_bytes >= 64 ? ~__mmask64(0) : (__mmask64(1) << x_bytes) - 1;
      for (int r = 0; r < R; ++r) {
        const __m512i xv = _mm512_maskz_loadu_epi8(x_mask, row.xq + r * x_stride + g0 * B + v * 64);
        const __m512i d = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv, xv);
        acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_permutexvar_ps(lanes[v], scale[r]), acc[r]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    p.y[(m + r) * w.n + n] = _mm512_reduce_add_ps(acc[r]) - _mm512_reduce_add_ps(correction[r]);
}

template <int BITS, int B>
void rows_avx512(const QuantProduct& p, int64_t n0, int64_t n1) {
  const int64_t m4 = p.x.m & ~int64_t(3);
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t m = 0; m < m4; m += 4) dots_avx512<BITS, B, 4>(p, n, m);
    for (int64_t m = m4; m < p.x.m; ++m) dots_avx512<BITS, B, 1>(p, n, m);
  }
}

// Rows [n0, n1) against every row of X: one weight row at a time (it stays in L1 across the X rows).
template <float (*DOT)(const QuantProduct&, int64_t, int64_t)>
void rows(const QuantProduct& p, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t m = 0; m < p.x.m; ++m) p.y[m * p.w.n + n] = DOT(p, n, m);
}

}  // namespace

int64_t quant_x_bytes(const QuantWeights& w, int64_t m) {
  return aligned(m * w.x_row_values()) + 2 * aligned(m * w.blocks * int64_t(sizeof(float)));
}

QuantX quantize_x(const QuantWeights& w, const float* x, int64_t m, int64_t k, void* buffer) {
  const int B = w.block;
  int8_t* q = static_cast<int8_t*>(buffer);
  float* scale = reinterpret_cast<float*>(q + aligned(m * w.x_row_values()));
  float* scaled_sum = reinterpret_cast<float*>(reinterpret_cast<char*>(scale) +
                                               aligned(m * w.blocks * int64_t(sizeof(float))));
  std::memset(q, 0, size_t(m * w.x_row_values()));
  for (int64_t r = 0; r < m; ++r) {
    const float* xr = x + r * k;
    int8_t* qr = q + r * w.x_row_values();
    for (int64_t b = 0; b < w.blocks; ++b) {
      const int64_t j0 = b * B, j1 = j0 + B < k ? j0 + B : k;
      float amax = 0.f;
      for (int64_t j = j0; j < j1; ++j) amax = std::fmax(amax, std::fabs(xr[j]));
      const float inverse = amax > 0.f ? 127.f / amax : 0.f;
      int32_t sum = 0;
      for (int64_t j = j0; j < j1; ++j) {
        const int v = int(std::nearbyint(xr[j] * inverse));
        qr[x_position(w.bits, B, b, int(j - j0))] = int8_t(v);
        sum += v;
      }
      scale[r * w.blocks + b] = amax / 127.f;
      scaled_sum[r * w.blocks + b] = amax / 127.f * float(sum);
    }
  }
  return QuantX{q, scale, scaled_sum, m};
}

QuantRows quant_rows(Path path, int bits, int block) {
  const bool supported = (bits == 8 && (block == 16 || block == 32)) || (bits == 4 && block == 32);
  if (!supported) return nullptr;
  if (path == Path::kAvx512) {
    if (bits == 4) return rows_avx512<4, 32>;
    return block == 16 ? rows_avx512<8, 16> : rows_avx512<8, 32>;
  }
  if (path == Path::kAvx2) {
    if (bits == 4) return rows<dot_avx2<4, 32>>;
    return block == 16 ? rows<dot_avx2<8, 16>> : rows<dot_avx2<8, 32>>;
  }
  return rows<dot_portable>;
}

}  // namespace rwkv_cpu

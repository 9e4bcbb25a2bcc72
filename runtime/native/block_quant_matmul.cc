// BlockQuantMatMul's kernels: Y[M, N] = X[M, K] . W^T with W block-quantized and interleaved 16 rows at a time
// (kernels.h), X quantized to int8 per weight block.
//
// Per block b of row n: sum_j (q_j - z) s (xq_j sx) = s (sx dot(q, xq) - z sx sum(xq)). The interleaving puts 4
// values of each of 16 rows in one 64-byte vector, so one int8 x uint8 dot-product instruction against 4 values
// of x broadcast advances 16 rows at once in int32; a block's dot products are scaled once per block, for all 16
// rows together. Paths: AVX-512 VNNI (vpdpbusd), AVX2 (vpmaddubsw on nibbles, then vpmaddwd), portable C++.

#include <cmath>
#include <cstring>

#include <immintrin.h>

#include "kernels.h"

namespace rwkv_cpu {
namespace {

constexpr int64_t kAlign = 64;

int64_t aligned(int64_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

// The values, scales and zero points of group g, block b; and the X rows' arrays for block b.
struct Block {
  const uint8_t* values;
  const float* scales;
  const uint8_t* zero_points;
  Block(const QuantWeights& w, int64_t g, int64_t b) {
    values = w.w + (g * w.blocks + b) * w.block_bytes();
    scales = reinterpret_cast<const float*>(values + w.value_bytes());
    zero_points = values + w.value_bytes() + kGroupRows * 4;
  }
};

int zero_point(const uint8_t* zp, int bits, int j) { return bits == 8 ? zp[j] : (zp[j / 2] >> (4 * (j & 1))) & 15; }

// -- portable --------------------------------------------------------------------------------------------
void rows_portable(const QuantProduct& p, int64_t n0, int64_t n1) {
  const QuantWeights& w = p.w;
  const int B = w.block;
  for (int64_t g = n0 / kGroupRows; g * kGroupRows < n1; ++g) {
    for (int64_t m = 0; m < p.x.m; ++m) {
      float acc[kGroupRows] = {};
      for (int64_t b = 0; b < w.blocks; ++b) {
        const Block blk(w, g, b);
        const int8_t* xq = p.x.q + m * w.blocks * B + b * B;
        int32_t d[kGroupRows] = {};
        for (int j = 0; j < kGroupRows; ++j) {
          for (int t = 0; t < B; ++t) {
            int q;
            if (w.bits == 8) {
              q = blk.values[(t / 4) * 64 + 4 * j + t % 4];
            } else {  // value 8c + i: low nibble of byte 4j + i; 8c + 4 + i: its high nibble
              const int c = t / 8, i = t % 8;
              q = (blk.values[c * 64 + 4 * j + i % 4] >> (i < 4 ? 0 : 4)) & 15;
            }
            d[j] += q * xq[t];
          }
          acc[j] += blk.scales[j] * (p.x.scale[m * w.blocks + b] * float(d[j]) -
                                     float(zero_point(blk.zero_points, w.bits, j)) * p.x.scaled_sum[m * w.blocks + b]);
        }
      }
      for (int j = 0; j < kGroupRows && g * kGroupRows + j < w.n; ++j) p.y[m * w.n + g * kGroupRows + j] = acc[j];
    }
  }
}

// -- AVX2: 8 rows per 32-byte half; u8 x s8 pairs by vpmaddubsw on 4-bit halves (no int16 overflow), then vpmaddwd
__attribute__((target("avx2,fma"))) inline __m256i dot4_avx2(__m256i w_nibbles, __m256i x4) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(w_nibbles, x4), _mm256_set1_epi16(1));
}

// The int32 dot products of 8 rows (one half of a chunk) with the 4 (8-bit) or 8 (4-bit) x values of the chunk.
template <int BITS>
__attribute__((target("avx2,fma"))) inline __m256i chunk_avx2(const uint8_t* at, const int8_t* x) {
  const __m256i v = _mm256_loadu_si256((const __m256i*)at), low4 = _mm256_set1_epi8(15);
  const __m256i lo = _mm256_and_si256(v, low4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
  int32_t x0, x1;
  std::memcpy(&x0, x, 4);
  if (BITS == 8)  // q = 16 hi + lo
    return _mm256_add_epi32(dot4_avx2(lo, _mm256_set1_epi32(x0)),
                            _mm256_slli_epi32(dot4_avx2(hi, _mm256_set1_epi32(x0)), 4));
  std::memcpy(&x1, x + 4, 4);
  return _mm256_add_epi32(dot4_avx2(lo, _mm256_set1_epi32(x0)), dot4_avx2(hi, _mm256_set1_epi32(x1)));
}

template <int BITS, int B>
__attribute__((target("avx2,fma"))) void rows_avx2(const QuantProduct& p, int64_t n0, int64_t n1) {
  constexpr int kValuesPerChunk = BITS == 8 ? 4 : 8, kChunks = B / kValuesPerChunk;
  const QuantWeights& w = p.w;
  for (int64_t g = n0 / kGroupRows; g * kGroupRows < n1; ++g) {
    for (int64_t m = 0; m < p.x.m; ++m) {
      __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
      for (int64_t b = 0; b < w.blocks; ++b) {
        const Block blk(w, g, b);
        for (int64_t line = 0; line < w.block_bytes(); line += 64)
          _mm_prefetch((const char*)blk.values + line + kPrefetchBytes, _MM_HINT_T0);
        const int8_t* xq = p.x.q + m * w.blocks * B + b * B;
        const __m256 xs = _mm256_set1_ps(p.x.scale[m * w.blocks + b]);
        const __m256 xc = _mm256_set1_ps(p.x.scaled_sum[m * w.blocks + b]);
        for (int h = 0; h < 2; ++h) {  // rows 0-7, 8-15
          __m256i d = _mm256_setzero_si256();
          for (int c = 0; c < kChunks; ++c)
            d = _mm256_add_epi32(d, chunk_avx2<BITS>(blk.values + c * 64 + h * 32, xq + c * kValuesPerChunk));
          __m128i z8;
          if (BITS == 8) {
            z8 = _mm_loadl_epi64((const __m128i*)(blk.zero_points + h * 8));
          } else {
            int32_t packed;
            std::memcpy(&packed, blk.zero_points + h * 4, 4);
            const __m128i v = _mm_cvtsi32_si128(packed), low4 = _mm_set1_epi8(15);
            z8 = _mm_unpacklo_epi8(_mm_and_si128(v, low4), _mm_and_si128(_mm_srli_epi16(v, 4), low4));
          }
          const __m256 z = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(z8));
          const __m256 t = _mm256_fmsub_ps(_mm256_cvtepi32_ps(d), xs, _mm256_mul_ps(z, xc));
          acc[h] = _mm256_fmadd_ps(_mm256_loadu_ps(blk.scales + h * 8), t, acc[h]);
        }
      }
      float out[kGroupRows];
      _mm256_storeu_ps(out, acc[0]);
      _mm256_storeu_ps(out + 8, acc[1]);
      for (int j = 0; j < kGroupRows && g * kGroupRows + j < w.n; ++j) p.y[m * w.n + g * kGroupRows + j] = out[j];
    }
  }
}

// -- AVX-512 VNNI: one vpdpbusd advances 16 rows by 4 values -------------------------------------------------
#define RWKV_AVX512_VNNI "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma"

template <int BITS>
__attribute__((target(RWKV_AVX512_VNNI))) inline __m512 zero_points16(const uint8_t* zp) {
  __m128i z;
  if (BITS == 8) {
    z = _mm_loadu_si128((const __m128i*)zp);
  } else {
    const __m128i packed = _mm_loadl_epi64((const __m128i*)zp), low4 = _mm_set1_epi8(15);
    z = _mm_unpacklo_epi8(_mm_and_si128(packed, low4), _mm_and_si128(_mm_srli_epi16(packed, 4), low4));
  }
  return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(z));
}

__attribute__((target(RWKV_AVX512_VNNI))) inline __m512i x4(const int8_t* x) {
  int32_t v;
  std::memcpy(&v, x, 4);
  return _mm512_set1_epi32(v);
}

// Group g against X rows [m, m + R): R = 4 for batches, each weight vector loaded once for the 4 rows.
template <int BITS, int B, int R>
__attribute__((target(RWKV_AVX512_VNNI))) void group_avx512(const QuantProduct& p, int64_t g, int64_t m) {
  constexpr int kChunks = BITS == 8 ? B / 4 : B / 8;
  const QuantWeights& w = p.w;
  const int64_t x_row = w.blocks * B;
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  for (int64_t b = 0; b < w.blocks; ++b) {
    const Block blk(w, g, b);
    for (int64_t line = 0; line < w.block_bytes(); line += 64)
      _mm_prefetch((const char*)blk.values + line + kPrefetchBytes, _MM_HINT_T0);
    const int8_t* xq = p.x.q + m * x_row + b * B;
    __m512i d[R][2];  // two chains per row, to hide vpdpbusd's latency
    for (int r = 0; r < R; ++r) d[r][0] = d[r][1] = _mm512_setzero_si512();
#pragma GCC unroll 8
    for (int c = 0; c < kChunks; ++c) {
      const __m512i v = _mm512_loadu_si512(blk.values + c * 64);
      if (BITS == 8) {
        for (int r = 0; r < R; ++r) d[r][c & 1] = _mm512_dpbusd_epi32(d[r][c & 1], v, x4(xq + r * x_row + c * 4));
      } else {
        const __m512i low4 = _mm512_set1_epi8(15);
        const __m512i lo = _mm512_and_si512(v, low4), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
        for (int r = 0; r < R; ++r) {
          d[r][0] = _mm512_dpbusd_epi32(d[r][0], lo, x4(xq + r * x_row + c * 8));
          d[r][1] = _mm512_dpbusd_epi32(d[r][1], hi, x4(xq + r * x_row + c * 8 + 4));
        }
      }
    }
    const __m512 s = _mm512_loadu_ps(blk.scales), z = zero_points16<BITS>(blk.zero_points);
    for (int r = 0; r < R; ++r) {
      const int64_t at = (m + r) * w.blocks + b;
      const __m512 sum = _mm512_cvtepi32_ps(_mm512_add_epi32(d[r][0], d[r][1]));  // t = sum sx - z sx sum(xq)
      const __m512 t = _mm512_fmsub_ps(sum, _mm512_set1_ps(p.x.scale[at]),
                                       _mm512_mul_ps(z, _mm512_set1_ps(p.x.scaled_sum[at])));
      acc[r] = _mm512_fmadd_ps(s, t, acc[r]);
    }
  }
  const int64_t left = w.n - g * kGroupRows;
  const __mmask16 rows = left >= kGroupRows ? __mmask16(0xffff) : __mmask16((1u << left) - 1);
  for (int r = 0; r < R; ++r) _mm512_mask_storeu_ps(p.y + (m + r) * w.n + g * kGroupRows, rows, acc[r]);
}

template <int BITS, int B>
void rows_avx512(const QuantProduct& p, int64_t n0, int64_t n1) {
  const int64_t m4 = p.x.m & ~int64_t(3);
  for (int64_t g = n0 / kGroupRows; g * kGroupRows < n1; ++g) {
    for (int64_t m = 0; m < m4; m += 4) group_avx512<BITS, B, 4>(p, g, m);
    for (int64_t m = m4; m < p.x.m; ++m) group_avx512<BITS, B, 1>(p, g, m);
  }
}

}  // namespace

int64_t quant_x_bytes(const QuantWeights& w, int64_t m) {
  return aligned(m * w.blocks * w.block) + 2 * aligned(m * w.blocks * int64_t(sizeof(float)));
}

QuantX quantize_x(const QuantWeights& w, const float* x, int64_t m, int64_t k, void* buffer) {
  const int B = w.block;
  int8_t* q = static_cast<int8_t*>(buffer);
  float* scale = reinterpret_cast<float*>(q + aligned(m * w.blocks * B));
  float* scaled_sum = reinterpret_cast<float*>(reinterpret_cast<char*>(scale) +
                                               aligned(m * w.blocks * int64_t(sizeof(float))));
  std::memset(q, 0, size_t(m * w.blocks * B));
  for (int64_t r = 0; r < m; ++r) {
    const float* xr = x + r * k;
    int8_t* qr = q + r * w.blocks * B;
    for (int64_t b = 0; b < w.blocks; ++b) {
      const int64_t j0 = b * B, j1 = j0 + B < k ? j0 + B : k;
      float amax = 0.f;
      for (int64_t j = j0; j < j1; ++j) amax = std::fmax(amax, std::fabs(xr[j]));
      const float inverse = amax > 0.f ? 127.f / amax : 0.f;
      int32_t sum = 0;
      for (int64_t j = j0; j < j1; ++j) {
        const int v = int(std::nearbyint(xr[j] * inverse));
        qr[j] = int8_t(v);
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
    if (bits == 4) return rows_avx2<4, 32>;
    return block == 16 ? rows_avx2<8, 16> : rows_avx2<8, 32>;
  }
  return rows_portable;
}

}  // namespace rwkv_cpu

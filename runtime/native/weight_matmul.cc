// Fp16MatMul's and Fp32MatMul's kernels: Y[M, N] = X[M, K] . W[N, K]^T in fp32 arithmetic, W (fp16 or fp32)
// one output row per line, one template for both weight types. Paths: AVX-512F, AVX2+F16C+FMA, portable C++.

#include <cstdlib>
#include <cstring>

#include <immintrin.h>

#include "kernels.h"

namespace rwkv_cpu {
namespace {

// -- loading weights of either type as fp32 ------------------------------------------------------------------
inline float to_float(uint16_t w) { return half_to_float(w); }
inline float to_float(float w) { return w; }

__attribute__((target("avx2,f16c,fma"))) inline __m256 load8(const uint16_t* w) {
  return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)w));
}
__attribute__((target("avx2,f16c,fma"))) inline __m256 load8(const float* w) { return _mm256_loadu_ps(w); }
__attribute__((target("avx512f,avx2,f16c,fma"))) inline __m512 load16(const uint16_t* w) {
  return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)w));
}
__attribute__((target("avx512f,avx2,f16c,fma"))) inline __m512 load16(const float* w) { return _mm512_loadu_ps(w); }

// One software prefetch per cache line of the weights a loop iteration reads (`bytes` of them).
inline void prefetch_ahead(const void* at, int bytes) {
  for (int line = 0; line < bytes; line += 64) _mm_prefetch((const char*)at + line + kPrefetchBytes, _MM_HINT_T0);
}

// -- the products: rows [n0, n1) of Y for all M rows of X ---------------------------------------------------
template <typename W>
void rows_portable(const WeightProduct<W>& p, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const W* w = p.w + n * p.k;
    for (int64_t m = 0; m < p.m; ++m) {
      const float* x = p.x + m * p.k;
      float acc = 0.f;
      for (int64_t i = 0; i < p.k; ++i) acc += x[i] * to_float(w[i]);
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

// One weight row (output n) against one row of X: the weights are read once, front to back, in one sequential
// stream over the whole matrix (interleaving several weight rows defeats the prefetcher: measured), with two
// accumulators to hide the FMA latency.
template <typename W>
__attribute__((target("avx2,f16c,fma"))) void row_avx2(const WeightProduct<W>& p, int64_t n, int64_t m) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  const W* w = p.w + n * p.k;
  const float* x = p.x + m * p.k;
  int64_t i = 0;
  for (; i + 16 <= p.k; i += 16) {
    prefetch_ahead(w + i, 16 * sizeof(W));
    acc0 = _mm256_fmadd_ps(load8(w + i), _mm256_loadu_ps(x + i), acc0);
    acc1 = _mm256_fmadd_ps(load8(w + i + 8), _mm256_loadu_ps(x + i + 8), acc1);
  }
  float s = hsum256(_mm256_add_ps(acc0, acc1));
  for (int64_t j = i; j < p.k; ++j) s += x[j] * to_float(w[j]);
  p.y[m * p.n + n] = s;
}

__attribute__((target("avx512f"))) float hsum512(__m512 v) { return _mm512_reduce_add_ps(v); }

template <typename W>
__attribute__((target("avx512f,avx2,f16c,fma"))) void row_avx512(const WeightProduct<W>& p, int64_t n, int64_t m) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  const W* w = p.w + n * p.k;
  const float* x = p.x + m * p.k;
  int64_t i = 0;
  for (; i + 32 <= p.k; i += 32) {
    prefetch_ahead(w + i, 32 * sizeof(W));
    acc0 = _mm512_fmadd_ps(load16(w + i), _mm512_loadu_ps(x + i), acc0);
    acc1 = _mm512_fmadd_ps(load16(w + i + 16), _mm512_loadu_ps(x + i + 16), acc1);
  }
  float s = hsum512(_mm512_add_ps(acc0, acc1));
  for (int64_t j = i; j < p.k; ++j) s += x[j] * to_float(w[j]);
  p.y[m * p.n + n] = s;
}

// Batches (M >= 4): 4 weight rows x 4 X rows per pass, each converted weight vector used 4 times.
template <typename W>
__attribute__((target("avx512f,avx2,f16c,fma"))) void block4x4_avx512(const WeightProduct<W>& p, int64_t n, int64_t m) {
  __m512 acc[4][4];
  for (int j = 0; j < 4; ++j)
    for (int r = 0; r < 4; ++r) acc[j][r] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= p.k; i += 16) {
    __m512 xv[4];
    for (int r = 0; r < 4; ++r) xv[r] = _mm512_loadu_ps(p.x + (m + r) * p.k + i);
    for (int j = 0; j < 4; ++j) {
      __m512 wv = load16(p.w + (n + j) * p.k + i);
      for (int r = 0; r < 4; ++r) acc[j][r] = _mm512_fmadd_ps(wv, xv[r], acc[j][r]);
    }
  }
  for (int j = 0; j < 4; ++j)
    for (int r = 0; r < 4; ++r) {
      float s = hsum512(acc[j][r]);
      for (int64_t t = i; t < p.k; ++t) s += p.x[(m + r) * p.k + t] * to_float(p.w[(n + j) * p.k + t]);
      p.y[(m + r) * p.n + n + j] = s;
    }
}

template <typename W>
__attribute__((target("avx2,f16c,fma"))) void block4x4_avx2(const WeightProduct<W>& p, int64_t n, int64_t m) {
  __m256 acc[4][4];
  for (int j = 0; j < 4; ++j)
    for (int r = 0; r < 4; ++r) acc[j][r] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= p.k; i += 8) {
    __m256 xv[4];
    for (int r = 0; r < 4; ++r) xv[r] = _mm256_loadu_ps(p.x + (m + r) * p.k + i);
    for (int j = 0; j < 4; ++j) {
      __m256 wv = load8(p.w + (n + j) * p.k + i);
      for (int r = 0; r < 4; ++r) acc[j][r] = _mm256_fmadd_ps(wv, xv[r], acc[j][r]);
    }
  }
  for (int j = 0; j < 4; ++j)
    for (int r = 0; r < 4; ++r) {
      float s = hsum256(acc[j][r]);
      for (int64_t t = i; t < p.k; ++t) s += p.x[(m + r) * p.k + t] * to_float(p.w[(n + j) * p.k + t]);
      p.y[(m + r) * p.n + n + j] = s;
    }
}

// Rows [n0, n1): one weight row at a time against every X row (decoding, M < 4: one sequential stream over
// the weights), or 4 x 4 blocks for the X rows in fours (batches) and single rows for the rest.
template <typename W, void (*R1)(const WeightProduct<W>&, int64_t, int64_t),
          void (*B44)(const WeightProduct<W>&, int64_t, int64_t)>
void rows_simd(const WeightProduct<W>& p, int64_t n0, int64_t n1) {
  const int64_t m4 = p.m & ~int64_t(3);
  int64_t n = n0;
  if (m4 > 0) {
    // X rows outside: their 4-row block stays in L1 while the task's weight rows come from L2; the other order
    // re-read X from L2 for every 4 weight rows (fp16: measured 6-12% slower, M = 16 and 64).
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

template <typename W>
void (*weight_rows(Path path))(const WeightProduct<W>&, int64_t, int64_t) {
  if (path == Path::kAvx512) return rows_simd<W, row_avx512<W>, block4x4_avx512<W>>;
  if (path == Path::kAvx2) return rows_simd<W, row_avx2<W>, block4x4_avx2<W>>;
  return rows_portable<W>;
}

}  // namespace

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

Path chosen_path(bool needs_vnni) {
  __builtin_cpu_init();
  const char* cap = std::getenv("RWKV_DEPLOY_CPU_KERNELS");
  const bool allow512 = cap == nullptr || *cap == 0 || std::strcmp(cap, "avx512") == 0;
  const bool allow256 = allow512 || std::strcmp(cap, "avx2") == 0;
  const bool vnni = __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw") &&
                    __builtin_cpu_supports("avx512vl");
  if (allow512 && __builtin_cpu_supports("avx512f") && (vnni || !needs_vnni)) return Path::kAvx512;
  if (allow256 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
    return Path::kAvx2;
  return Path::kPortable;
}

const char* path_name(Path path) {
  return path == Path::kAvx512 ? "avx512" : path == Path::kAvx2 ? "avx2" : "portable";
}

Fp16Rows fp16_rows(Path path) { return weight_rows<uint16_t>(path); }
Fp32Rows fp32_rows(Path path) { return weight_rows<float>(path); }

}  // namespace rwkv_cpu

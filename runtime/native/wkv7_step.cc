// Rwkv7WkvStep's kernel: one decode step of an RWKV-7 time-mix core, for one (batch row, head) at a time, in one
// pass over the head's state. What the portable graph spreads over about 45 nodes per layer (models/reference/
// v7.py, from the key normalisation to the bonus term):
//
//   kk = normalize(k * k_k)              per head, |kk| floored at norm_floor
//   k' = k * (1 + (a - 1) * k_a)
//   w  = exp(decay_scale * sigmoid(w_hat))
//   S' = S diag(w) + (S (-kk)) (kk * a)^T + v k'^T        S [N (value), N (key)]
//   y  = group_norm(S' r) * ln_weight + ln_bias + sum(r * k' * r_k) v
//
// All in fp32, one pass over each state row; one body for AVX-512F, AVX2+FMA and portable C++ (vectors of 16,
// 8 or 4 lanes).

#include <cmath>
#include <vector>

#include "kernels.h"

namespace rwkv_cpu {
namespace {

// W floats as one GCC/Clang vector: inside the AVX-512 and AVX2 functions below it compiles to zmm or ymm
// registers, in the portable one to SSE2 (x86-64's baseline) or whatever the target has.
typedef float Floats16 __attribute__((vector_size(64)));
typedef float Floats8 __attribute__((vector_size(32)));
typedef float Floats4 __attribute__((vector_size(16)));
typedef float Floats2 __attribute__((vector_size(8)));

// Load, store, and a sum of the lanes that halves the vector at each level (a chain of W scalar additions would
// cost a row of the state more than its products).
template <int W>
struct Lanes;
template <>
struct Lanes<2> {
  typedef Floats2 T;
  __attribute__((always_inline)) static float sum(const T& v) { return v[0] + v[1]; }
};
template <int W, typename Vector>
struct LaneOps {
  typedef Vector T;
  __attribute__((always_inline)) static T load(const float* p) {
    T v;
    __builtin_memcpy(&v, p, sizeof v);
    return v;
  }
  __attribute__((always_inline)) static void store(float* p, const T& v) { __builtin_memcpy(p, &v, sizeof v); }
  __attribute__((always_inline)) static float sum(const T& v) {
    typename Lanes<W / 2>::T low, high;
    __builtin_memcpy(&low, &v, sizeof low);
    __builtin_memcpy(&high, (const char*)&v + sizeof low, sizeof high);
    return Lanes<W / 2>::sum(low + high);
  }
};
template <>
struct Lanes<4> : LaneOps<4, Floats4> {};
template <>
struct Lanes<8> : LaneOps<8, Floats8> {};
template <>
struct Lanes<16> : LaneOps<16, Floats16> {};

// The per-channel operands of one head: -kk (alpha), kk * a (beta), k', the decay w; and the bonus sum.
inline float head_operands(const Wkv7Step& p, int64_t at, int64_t head, float* alpha, float* beta, float* kp,
                           float* w) {
  const int64_t n = p.head_size;
  const float *r = p.r + at, *k = p.k + at, *a = p.a + at, *w_hat = p.w_hat + at;
  const float *k_k = p.k_k + head * n, *k_a = p.k_a + head * n, *r_k = p.r_k + head * n;
  float norm = 0.f;
  for (int64_t j = 0; j < n; ++j) {
    alpha[j] = k[j] * k_k[j];
    norm += alpha[j] * alpha[j];
  }
  norm = std::sqrt(norm);
  const float inv = 1.f / (norm > p.norm_floor ? norm : p.norm_floor);
  float bonus = 0.f;
  for (int64_t j = 0; j < n; ++j) {
    const float kk = alpha[j] * inv;
    alpha[j] = -kk;
    beta[j] = kk * a[j];
    kp[j] = k[j] * (1.f + (a[j] - 1.f) * k_a[j]);
    w[j] = std::exp(p.decay_scale / (1.f + std::exp(-w_hat[j])));
    bonus += r[j] * kp[j] * r_k[j];
  }
  return bonus;
}

// One state row i: S'_i = S_i * w + (S_i . alpha) beta + v_i k', and returns S'_i . r.
template <int W>
__attribute__((always_inline)) inline float state_row(const float* si, float* so, const float* alpha,
                                                      const float* beta, const float* kp, const float* w,
                                                      const float* r, float vi, int64_t n) {
  using V = Lanes<W>;
  const int64_t body = n - n % W;
  typename V::T acc = {};
  for (int64_t j = 0; j < body; j += W) acc += V::load(si + j) * V::load(alpha + j);
  float sa = V::sum(acc);
  for (int64_t j = body; j < n; ++j) sa += si[j] * alpha[j];
  typename V::T out = {};
  for (int64_t j = 0; j < body; j += W) {
    const typename V::T s = V::load(si + j) * V::load(w + j) + sa * V::load(beta + j) + vi * V::load(kp + j);
    V::store(so + j, s);
    out += s * V::load(r + j);
  }
  float y = V::sum(out);
  for (int64_t j = body; j < n; ++j) {
    so[j] = si[j] * w[j] + sa * beta[j] + vi * kp[j];
    y += so[j] * r[j];
  }
  return y;
}

// (row, head) pairs [t0, t1).
template <int W>
__attribute__((always_inline)) inline void heads_body(const Wkv7Step& p, int64_t t0, int64_t t1) {
  const int64_t n = p.head_size, c = p.heads * n;
  std::vector<float> scratch(5 * n);
  float *alpha = scratch.data(), *beta = alpha + n, *kp = beta + n, *w = kp + n, *y = w + n;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t row = t / p.heads, head = t % p.heads, at = row * c + head * n;
    const float bonus = head_operands(p, at, head, alpha, beta, kp, w);
    const float *s = p.state + t * n * n, *r = p.r + at, *v = p.v + at;
    float* s_out = p.state_out + t * n * n;
    for (int64_t i = 0; i < n; ++i) y[i] = state_row<W>(s + i * n, s_out + i * n, alpha, beta, kp, w, r, v[i], n);
    // ln_x: this head's values normalised (two passes), then its affine, then the bonus term
    float mean = 0.f, var = 0.f;
    for (int64_t i = 0; i < n; ++i) mean += y[i];
    mean /= (float)n;
    for (int64_t i = 0; i < n; ++i) var += (y[i] - mean) * (y[i] - mean);
    const float scale = 1.f / std::sqrt(var / (float)n + p.eps);
    const float *ln_w = p.ln_weight + head * n, *ln_b = p.ln_bias + head * n;
    float* out = p.y + at;
    for (int64_t i = 0; i < n; ++i) out[i] = (y[i] - mean) * scale * ln_w[i] + ln_b[i] + bonus * v[i];
  }
}

__attribute__((target("avx512f,avx2,fma"))) void heads_avx512(const Wkv7Step& p, int64_t t0, int64_t t1) {
  heads_body<16>(p, t0, t1);
}
__attribute__((target("avx2,fma"))) void heads_avx2(const Wkv7Step& p, int64_t t0, int64_t t1) {
  heads_body<8>(p, t0, t1);
}
void heads_portable(const Wkv7Step& p, int64_t t0, int64_t t1) { heads_body<4>(p, t0, t1); }

}  // namespace

Wkv7Heads wkv7_heads(Path path) {
  if (path == Path::kAvx512) return heads_avx512;
  if (path == Path::kAvx2) return heads_avx2;
  return heads_portable;
}

}  // namespace rwkv_cpu

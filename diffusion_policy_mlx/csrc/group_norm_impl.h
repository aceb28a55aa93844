// The GroupNorm kernels, written once over GCC vectors of 16 floats; the including file's ISA
// flags decide the instructions (one AVX-512 register, or two AVX2 ones). Everything here has
// internal linkage, so the AVX-512 and AVX2 copies never stand in for each other at link time.
//
// A sample's (S, C) block is read row by row, every row whole: per-channel partial sums are
// kept across the rows and added up per group at the end. So every pass is a sequential,
// vectorised sweep whatever the group width (16 channels in the ResNet, C / 8 in the U-Net).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "group_norm_kernels.h"

namespace dp_mlx {
namespace {

constexpr int64_t W = 16;
typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));

inline vf splat(float v) { return vf{} + v; }

// A chunk of n <= W floats; the full chunk is one vector move (the size must be a constant).
inline vf load(const float* p, int64_t n) {
  vf v{};
  if (n == W)
    std::memcpy(&v, p, sizeof(vf));
  else
    std::memcpy(&v, p, n * sizeof(float));
  return v;
}

inline void store(float* p, vf v, int64_t n) {
  if (n == W)
    std::memcpy(p, &v, sizeof(vf));
  else
    std::memcpy(p, &v, n * sizeof(float));
}

inline vf vmin(vf a, vf b) { return a < b ? a : b; }
inline vf vmax(vf a, vf b) { return a > b ? a : b; }

// exp(x) for x in [-87, 88] (clamped outside): x = n ln2 + r with |r| <= ln2 / 2, Cephes' degree
// 6 polynomial for exp(r), and 2^n put straight into the exponent bits. Within 2 ulp of expf.
inline vf vexp(vf x) {
  x = vmin(vmax(x, splat(-87.0f)), splat(88.0f));
  // round to nearest: adding 1.5 * 2^23 leaves no fraction bits
  const vf n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  vf r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  vf p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const vi e = (__builtin_convertvector(n, vi) + 127) << 23;
  return p * (vf)e;
}

// Mish as activation.mish computes it: with n = exp(h) (clamped at 20, where the ratio is
// exactly 1 in float32), tanh(softplus(h)) = p / (p + 2), p = n (n + 2).
template <int Act>
inline vf act_fwd(vf h) {
  if constexpr (Act == kActMish) {
    const vf n = vexp(vmin(h, splat(20.0f)));
    const vf p = n * (n + 2.0f);
    return h * p / (p + 2.0f);
  } else if constexpr (Act == kActRelu) {
    return vmax(h, splat(0.0f));
  } else {
    return h;
  }
}

// d act / dh. Mish: t + h dt/dh with t = p / q, q = p + 2, dt/dh = 4 n (n + 1) / q^2.
template <int Act>
inline vf act_grad(vf h) {
  if constexpr (Act == kActMish) {
    const vf n = vexp(vmin(h, splat(20.0f)));
    const vf p = n * (n + 2.0f);
    const vf q = p + 2.0f;
    return p / q + h * (4.0f * n * (n + 1.0f)) / (q * q);
  } else if constexpr (Act == kActRelu) {
    return h > 0.0f ? splat(1.0f) : splat(0.0f);
  } else {
    return splat(1.0f);
  }
}

// f(c, n) for the chunks [c, c + n) of a row of C channels, n = W but for the last.
template <class F>
inline void chunks(int64_t C, F&& f) {
  for (int64_t c = 0; c < C; c += W) f(c, std::min(W, C - c));
}

// C channels rounded up to whole chunks: per-channel vectors are read a whole chunk at a time.
inline int64_t padded_channels(int64_t C) { return (C + W - 1) / W * W; }

// Scratch of per-channel vectors, padded to whole chunks.
struct Scratch {
  explicit Scratch(int64_t C, int count) : padded(padded_channels(C)), data(padded * count) {}
  float* operator[](int i) { return data.data() + i * padded; }
  int64_t padded;
  std::vector<float> data;
};

// out[c] = value(the sum of acc over c's group), for every channel c.
template <class F>
inline void per_group(const float* acc, int64_t C, int64_t G, float* out, F&& value) {
  const int64_t cg = C / G;
  for (int64_t g = 0; g < G; ++g) {
    double sum = 0.0;
    for (int64_t c = g * cg; c < (g + 1) * cg; ++c) sum += acc[c];
    std::fill(out + g * cg, out + (g + 1) * cg, static_cast<float>(value(sum)));
  }
}

// The per-channel copies of sample xb's group mean and 1 / std: two passes (the mean, then the
// centred squares), as torch's GroupNorm, so the variance does not lose precision to
// E[x^2] - E[x]^2.
inline void sample_stats(
    const float* xb, int64_t S, int64_t C, int64_t G, float eps, float* acc, float* mean_c,
    float* rstd_c) {
  const double count = static_cast<double>(S) * (C / G);
  std::fill(acc, acc + padded_channels(C), 0.0f);
  for (int64_t s = 0; s < S; ++s)
    chunks(C, [&](int64_t c, int64_t n) {
      store(acc + c, load(acc + c, W) + load(xb + s * C + c, n), W);
    });
  per_group(acc, C, G, mean_c, [&](double sum) { return sum / count; });
  std::fill(acc, acc + padded_channels(C), 0.0f);
  for (int64_t s = 0; s < S; ++s)
    chunks(C, [&](int64_t c, int64_t n) {
      const vf d = load(xb + s * C + c, n) - load(mean_c + c, W);
      store(acc + c, load(acc + c, W) + d * d, W);
    });
  per_group(acc, C, G, rstd_c, [&](double sum) { return 1.0 / std::sqrt(sum / count + eps); });
}

template <int Act>
void forward(
    const float* x, const float* w, const float* b, float* y, int64_t B, int64_t S, int64_t C,
    int64_t G, float eps) {
  Scratch v(C, 5);
  float *acc = v[0], *mean_c = v[1], *rstd_c = v[2], *scale = v[3], *shift = v[4];
  for (int64_t i = 0; i < B; ++i) {
    const float* xb = x + i * S * C;
    float* yb = y + i * S * C;
    sample_stats(xb, S, C, G, eps, acc, mean_c, rstd_c);
    for (int64_t c = 0; c < C; ++c) {
      scale[c] = rstd_c[c] * w[c];
      shift[c] = b[c] - mean_c[c] * scale[c];
    }
    for (int64_t s = 0; s < S; ++s)
      chunks(C, [&](int64_t c, int64_t n) {
        const vf h = load(xb + s * C + c, n) * load(scale + c, W) + load(shift + c, W);
        store(yb + s * C + c, act_fwd<Act>(h), n);
      });
  }
}

// With xhat the normalised input, h = xhat w + b and dh = dy act'(h):
// db = sum dh, dw = sum dh xhat, dx = rstd (dh w - mean(dh w) - xhat mean(dh w xhat)), the
// means over the sample's group. dh is parked in dx between the two passes.
template <int Act>
void backward(
    const float* x, const float* w, const float* b, const float* dy, float* dx, float* dw,
    float* db, int64_t B, int64_t S, int64_t C, int64_t G, float eps) {
  Scratch v(C, 9);
  float *acc = v[0], *mean_c = v[1], *rstd_c = v[2], *wp = v[3], *bp = v[4], *sdh = v[5],
        *sdhx = v[6], *m1 = v[7], *m2 = v[8];
  std::copy(w, w + C, wp);
  std::copy(b, b + C, bp);
  std::fill(dw, dw + C, 0.0f);
  std::fill(db, db + C, 0.0f);
  const int64_t cg = C / G;
  const double count = static_cast<double>(S) * cg;
  for (int64_t i = 0; i < B; ++i) {
    const float* xb = x + i * S * C;
    const float* dyb = dy + i * S * C;
    float* dxb = dx + i * S * C;
    sample_stats(xb, S, C, G, eps, acc, mean_c, rstd_c);
    std::fill(sdh, sdh + v.padded, 0.0f);
    std::fill(sdhx, sdhx + v.padded, 0.0f);
    for (int64_t s = 0; s < S; ++s)
      chunks(C, [&](int64_t c, int64_t n) {
        const vf xhat = (load(xb + s * C + c, n) - load(mean_c + c, W)) * load(rstd_c + c, W);
        vf dh = load(dyb + s * C + c, n);
        if constexpr (Act != kActNone)
          dh = dh * act_grad<Act>(xhat * load(wp + c, W) + load(bp + c, W));
        store(dxb + s * C + c, dh, n);
        store(sdh + c, load(sdh + c, W) + dh, W);
        store(sdhx + c, load(sdhx + c, W) + dh * xhat, W);
      });
    for (int64_t c = 0; c < C; ++c) {
      db[c] += sdh[c];
      dw[c] += sdhx[c];
    }
    for (int64_t g = 0; g < G; ++g) {
      double s1 = 0.0, s2 = 0.0;
      for (int64_t c = g * cg; c < (g + 1) * cg; ++c) {
        s1 += static_cast<double>(wp[c]) * sdh[c];
        s2 += static_cast<double>(wp[c]) * sdhx[c];
      }
      std::fill(m1 + g * cg, m1 + (g + 1) * cg, static_cast<float>(s1 / count));
      std::fill(m2 + g * cg, m2 + (g + 1) * cg, static_cast<float>(s2 / count));
    }
    for (int64_t s = 0; s < S; ++s)
      chunks(C, [&](int64_t c, int64_t n) {
        const vf xhat = (load(xb + s * C + c, n) - load(mean_c + c, W)) * load(rstd_c + c, W);
        const vf dh = load(dxb + s * C + c, n);
        const vf g = dh * load(wp + c, W) - load(m1 + c, W) - xhat * load(m2 + c, W);
        store(dxb + s * C + c, load(rstd_c + c, W) * g, n);
      });
  }
}

}  // namespace
}  // namespace dp_mlx

// Defines the forward and backward entry points for the including file's ISA.
#define DP_MLX_DEFINE_GROUP_NORM(fwd_name, bwd_name)                                         \
  namespace dp_mlx {                                                                       \
  DP_MLX_GROUP_NORM_FWD(fwd_name) {                                                        \
    switch (act) {                                                                         \
      case kActMish: return forward<kActMish>(x, w, b, y, B, S, C, G, eps);                \
      case kActRelu: return forward<kActRelu>(x, w, b, y, B, S, C, G, eps);                \
      default: return forward<kActNone>(x, w, b, y, B, S, C, G, eps);                      \
    }                                                                                      \
  }                                                                                        \
  DP_MLX_GROUP_NORM_BWD(bwd_name) {                                                        \
    switch (act) {                                                                         \
      case kActMish: return backward<kActMish>(x, w, b, dy, dx, dw, db, B, S, C, G, eps);  \
      case kActRelu: return backward<kActRelu>(x, w, b, dy, dx, dw, db, B, S, C, G, eps);  \
      default: return backward<kActNone>(x, w, b, dy, dx, dw, db, B, S, C, G, eps);        \
    }                                                                                      \
  }                                                                                        \
  }

// Entry points of the GroupNorm kernels, one set per instruction set, each defined in its own
// file compiled with that instruction set's flags.
//
// x, y, dy, dx are (B, S, C) float32 row-major; channels [g * C / G, (g + 1) * C / G) of a sample
// form group g, normalised over all S steps. `act` is applied after the affine (kActNone,
// kActMish, kActRelu).
#pragma once

#include <cstdint>

namespace dp_mlx {

constexpr int kActNone = 0;
constexpr int kActMish = 1;
constexpr int kActRelu = 2;

// y = act(group_norm(x) * w + b)
#define DP_MLX_GROUP_NORM_FWD(name)                                                          \
  void name(const float* x, const float* w, const float* b, float* y, int64_t B, int64_t S, \
            int64_t C, int64_t G, float eps, int act)

// dx, dw, db of sum(dy * y); dw and db (C,) are overwritten.
#define DP_MLX_GROUP_NORM_BWD(name)                                                          \
  void name(const float* x, const float* w, const float* b, const float* dy, float* dx,     \
            float* dw, float* db, int64_t B, int64_t S, int64_t C, int64_t G, float eps,    \
            int act)

DP_MLX_GROUP_NORM_FWD(group_norm_fwd_avx512);
DP_MLX_GROUP_NORM_FWD(group_norm_fwd_avx2);
DP_MLX_GROUP_NORM_BWD(group_norm_bwd_avx512);
DP_MLX_GROUP_NORM_BWD(group_norm_bwd_avx2);

}  // namespace dp_mlx

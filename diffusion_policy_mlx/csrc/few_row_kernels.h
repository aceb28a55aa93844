// Entry points of the few-row product kernels, one set per instruction set. Each is defined in
// its own file, compiled with that instruction set's flags.
#pragma once

#include <cstdint>

namespace dp_mlx {

// y[m, n] = sum_k x[m, k] * w[n, k] for m < M and n in [n0, n1); x (M, K) and y (M, N) float32,
// w (N, K) float32 or float16 (its bits), all row-major.
#define DP_MLX_FEW_ROWS(name, Wt)                                                          \
  void name(const float* x, const Wt* w, float* y, int64_t M, int64_t K, int64_t N, int64_t n0, \
            int64_t n1)

DP_MLX_FEW_ROWS(few_rows_avx512, float);
DP_MLX_FEW_ROWS(few_rows_avx512, uint16_t);
DP_MLX_FEW_ROWS(few_rows_avx2, float);
DP_MLX_FEW_ROWS(few_rows_avx2, uint16_t);

}  // namespace dp_mlx

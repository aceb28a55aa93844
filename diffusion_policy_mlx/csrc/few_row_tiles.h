// The few-row product, written once over a vector type `V` that the including file defines for
// its instruction set. Everything here has internal linkage, so the AVX-512 and AVX2 copies of
// these templates never stand in for each other at link time.
#pragma once

#include <algorithm>
#include <cstdint>

#include "few_row_kernels.h"

namespace dp_mlx {
namespace {

// Rows [m0, m0 + MR) of x against weight rows [n0, n0 + NR), over all of K; each weight vector
// is loaded (and converted) once and used for every row.
template <class V, int MR, int NR, class Wt>
inline void tile(
    const float* x, const Wt* w, float* y, int64_t K, int64_t N, int64_t m0, int64_t n0) {
  typename V::vec acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = V::zero();
  const int64_t k_vec = K - K % V::width;
  for (int64_t k = 0; k < k_vec; k += V::width) {
    typename V::vec wv[NR];
    for (int j = 0; j < NR; ++j) wv[j] = V::load(w + (n0 + j) * K + k);
    for (int i = 0; i < MR; ++i) {
      const typename V::vec xv = V::load(x + (m0 + i) * K + k);
      for (int j = 0; j < NR; ++j) acc[i][j] = V::fma(xv, wv[j], acc[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < NR; ++j) {
      float s = V::sum(acc[i][j]);
      for (int64_t k = k_vec; k < K; ++k)
        s += x[(m0 + i) * K + k] * V::scalar(w[(n0 + j) * K + k]);
      y[(m0 + i) * N + n0 + j] = s;
    }
  }
}

// Up to 4 rows by 4 weight rows per tile: 16 accumulators and 4 weight vectors fit AVX-512's 32
// registers.
template <class V, class Wt, int MR>
inline void row_group(
    const float* x, const Wt* w, float* y, int64_t K, int64_t N, int64_t m0, int64_t n_begin,
    int64_t n_end) {
  int64_t n = n_begin;
  for (; n + 4 <= n_end; n += 4) tile<V, MR, 4, Wt>(x, w, y, K, N, m0, n);
  for (; n < n_end; ++n) tile<V, MR, 1, Wt>(x, w, y, K, N, m0, n);
}

template <class V, class Wt>
void few_rows(
    const float* x, const Wt* w, float* y, int64_t M, int64_t K, int64_t N, int64_t n_begin,
    int64_t n_end) {
  // With more than 4 rows, each group of 4 rereads a block of weight rows; blocks of 16 rows
  // (16 K values) stay in L2 for the rereads, so memory sees every weight once.
  constexpr int64_t kBlock = 16;
  const int64_t block = M > 4 ? kBlock : n_end - n_begin;
  for (int64_t nb = n_begin; nb < n_end; nb += block) {
    const int64_t ne = std::min(nb + block, n_end);
    for (int64_t m0 = 0; m0 < M; m0 += 4) {
      switch (std::min<int64_t>(4, M - m0)) {
        case 4: row_group<V, Wt, 4>(x, w, y, K, N, m0, nb, ne); break;
        case 3: row_group<V, Wt, 3>(x, w, y, K, N, m0, nb, ne); break;
        case 2: row_group<V, Wt, 2>(x, w, y, K, N, m0, nb, ne); break;
        default: row_group<V, Wt, 1>(x, w, y, K, N, m0, nb, ne); break;
      }
    }
  }
}

}  // namespace
}  // namespace dp_mlx

// Defines the two entry points `name` (float32 and float16 weights) for the including file's V.
#define DP_MLX_DEFINE_FEW_ROWS(name, V)                                            \
  namespace dp_mlx {                                                               \
  DP_MLX_FEW_ROWS(name, float) { few_rows<V, float>(x, w, y, M, K, N, n0, n1); }   \
  DP_MLX_FEW_ROWS(name, uint16_t) {                                                \
    few_rows<V, uint16_t>(x, w, y, M, K, N, n0, n1);                               \
  }                                                                                \
  }

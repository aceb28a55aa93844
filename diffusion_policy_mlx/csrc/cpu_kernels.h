// The MLX operations of the package's CPU extension, bound to Python in module.cpp.
#pragma once

#include <string>

#include "mlx/mlx.h"

namespace dp_mlx {

// x @ w^T for x (M <= 16, K) float32 and w (N, K) float32 or float16 -> (M, N) float32.
mlx::core::array few_row_matmul(
    const mlx::core::array& x, const mlx::core::array& w, int threads,
    mlx::core::StreamOrDevice s);

// A stride-1 'same' convolution (odd K) for B * T <= 16: x (B, T, C_in) float32, w (C_out, K,
// C_in) float32 or float16, bias (C_out,) float32 -> (B, T, C_out) float32.
mlx::core::array few_row_conv1d(
    const mlx::core::array& x, const mlx::core::array& w, const mlx::core::array& bias,
    int threads, mlx::core::StreamOrDevice s);

// activation(group_norm(x) * weight + bias) for x (B, S, C) float32, weight and bias (C,):
// `groups` groups of C / groups channels, each normalised over S. activation is "none",
// "mish" or "relu". Differentiable in all three inputs.
mlx::core::array group_norm(
    const mlx::core::array& x, const mlx::core::array& weight, const mlx::core::array& bias,
    int groups, float eps, const std::string& activation, mlx::core::StreamOrDevice s);

// conv1d(x, w, stride, padding) + bias in bfloat16 on AMX tiles (products accumulated in
// float32): x (B, T, C_in) float32, w the packed bfloat16 weight (2 * ceil(C_out / 32),
// ceil(K * C_in / 32), 16, 32), bias (C_out,) float32 -> (B, T_out, C_out) float32.
mlx::core::array amx_conv1d(
    const mlx::core::array& x, const mlx::core::array& w, const mlx::core::array& bias,
    int kernel, int stride, int padding, int threads, mlx::core::StreamOrDevice s);

}  // namespace dp_mlx

// The Python module of the package's CPU kernels, diffusion_policy_mlx._cpu_kernels.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/variant.h>

#include "mlx/version.h"

#include "cpu_kernels.h"
#include "isa.h"

namespace nb = nanobind;
using namespace nb::literals;

NB_MODULE(_cpu_kernels, m) {
  m.doc() = "CPU kernels of diffusion_policy_mlx (MLX primitives).";
  m.attr("mlx_version") = std::to_string(MLX_VERSION_MAJOR) + "." +
                          std::to_string(MLX_VERSION_MINOR) + "." +
                          std::to_string(MLX_VERSION_PATCH);
  m.attr("isa") = dp_mlx::kIsa == dp_mlx::Isa::avx512 ? "avx512"
                  : dp_mlx::kIsa == dp_mlx::Isa::avx2 ? "avx2"
                                                      : "none";
  m.attr("amx") = dp_mlx::kAmx;
  m.def("few_row_matmul", &dp_mlx::few_row_matmul, "x"_a, "w"_a, nb::kw_only(), "threads"_a = 1,
        "stream"_a = nb::none(),
        "x @ w.T for x (M <= 16, K) float32 and w (N, K) float32 or float16 -> (M, N) float32.");
  m.def("few_row_conv1d", &dp_mlx::few_row_conv1d, "x"_a, "w"_a, "bias"_a, nb::kw_only(),
        "threads"_a = 1, "stream"_a = nb::none(),
        "conv1d(x, w, padding=K // 2) + bias for x (B, T, C_in) with B * T <= 16 float32, w "
        "(C_out, K, C_in) float32 or float16 (K odd) -> (B, T, C_out) float32.");
  m.def("amx_conv1d", &dp_mlx::amx_conv1d, "x"_a, "w"_a, "bias"_a, nb::kw_only(), "kernel"_a,
        "stride"_a = 1, "padding"_a = 0, "threads"_a = 1, "stream"_a = nb::none(),
        "conv1d(x, w, stride, padding) + bias in bfloat16 on AMX (float32 accumulation): x "
        "(B, T, C_in) float32, w packed by model/common/amx_conv1d.py's pack_weight, bias "
        "(C_out,) float32 -> (B, T_out, C_out) float32.");
  m.def("group_norm", &dp_mlx::group_norm, "x"_a, "weight"_a, "bias"_a, nb::kw_only(),
        "groups"_a, "eps"_a = 1e-5f, "activation"_a = "none", "stream"_a = nb::none(),
        "activation(group_norm(x) * weight + bias) for x (B, S, C) float32, weight and bias "
        "(C,), torch's channel grouping; activation 'none', 'mish' or 'relu'.");
}

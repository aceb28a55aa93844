"""GroupNorm -> Mish -> FiLM -> residual in one GPU kernel on NVIDIA GPUs, for inference.

At batch 1 the temporal U-Net's denoising step is bound by kernel launches, not arithmetic: a
compiled step runs ~300 kernels of a few microseconds each. In every ``Conv1dBlock`` the
GroupNorm (a layout copy, two reductions, the normalisation), the affine, the Mish and then the
FiLM modulation or the residual add of ``ConditionalResidualBlock1D`` take about six kernels;
:func:`group_norm_mish` does all of it in one, with one thread block per (sample, group).

The kernel runs only on MLX's CUDA backend and has no gradient, so :class:`FusedConv1dBlock`
(swapped in for ``Conv1dBlock`` on NVIDIA GPUs unless ``accel.fused_group_norm: false``) uses it
in eval mode (every ``predict_action``) and keeps MLX's ops in training.
"""

import mlx.core as mx

from diffusion_policy_mlx.model.diffusion.conv1d_components import Conv1dBlock

_THREADS = 256

_HEADER = """
// Sum of v over the thread block, returned to every thread.
__device__ float block_sum(float v) {
  __shared__ float warp_sums[32];
  __shared__ float total;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  __syncthreads();  // warp_sums and total may still be read by a previous call
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < ((blockDim.x + 31) >> 5) ? warp_sums[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    if (lane == 0) total = v;
  }
  __syncthreads();
  return total;
}
"""

# x: (B, L, C) row-contiguous; block b * G + g normalises channels [g * CG, (g + 1) * CG) of
# sample b over all L steps. Two passes over the group (mean, then the centred variance), as
# torch's GroupNorm, so the result does not lose precision to E[x^2] - E[x]^2.
_SOURCE = """
  constexpr int CG = C / G;
  constexpr int N = L * CG;
  const int b = blockIdx.x / G;
  const int g = blockIdx.x % G;
  const size_t base = (size_t)b * L * C + g * CG;
  float s = 0.0f;
  for (int i = threadIdx.x; i < N; i += blockDim.x) {{
    s += static_cast<float>(x[base + (i / CG) * C + i % CG]);
  }}
  const float mean = block_sum(s) / N;
  float v = 0.0f;
  for (int i = threadIdx.x; i < N; i += blockDim.x) {{
    const float d = static_cast<float>(x[base + (i / CG) * C + i % CG]) - mean;
    v += d * d;
  }}
  const float rstd = rsqrtf(block_sum(v) / N + EPS);
  for (int i = threadIdx.x; i < N; i += blockDim.x) {{
    const int c = g * CG + i % CG;
    const size_t at = base + (i / CG) * C + i % CG;
    float y = (static_cast<float>(x[at]) - mean) * rstd * static_cast<float>(weight[c])
        + static_cast<float>(bias[c]);
    // Mish as activation.mish computes it: one exp, clamped where the ratio is exactly 1.
    const float n = __expf(fminf(y, 20.0f));
    const float p = n * (n + 2.0f);
    y = y * p / (p + 2.0f);
{epilogue}    out[at] = static_cast<T>(y);
  }}
"""
# The optional inputs are not parameters of the kernels that lack them, so their lines are only
# written into the source of the kernels that have them.
_EPILOGUE = {
    "scale": "    y *= static_cast<float>(scale[b * C + c]);\n",
    "shift": "    y += static_cast<float>(shift[b * C + c]);\n",
    "residual": "    y += static_cast<float>(residual[at]);\n",
}

_kernels: dict[tuple[bool, bool, bool, float], object] = {}


def _kernel(has_scale: bool, has_shift: bool, has_residual: bool, eps: float) -> object:
    key = (has_scale, has_shift, has_residual, eps)
    if key not in _kernels:
        extra = [n for n, on in zip(_EPILOGUE, key[:3], strict=True) if on]
        source = _SOURCE.format(epilogue="".join(_EPILOGUE[n] for n in extra))
        _kernels[key] = mx.fast.cuda_kernel(
            name="group_norm_mish",
            input_names=["x", "weight", "bias", *extra],
            output_names=["out"],
            # eps is part of the source, so each value gets its own compiled kernel
            source=f"  constexpr float EPS = {eps!r}f;\n" + source,
            header=_HEADER,
        )
    return _kernels[key]


def group_norm_mish(
    x: mx.array,
    weight: mx.array,
    bias: mx.array,
    num_groups: int,
    eps: float = 1e-5,
    scale: mx.array | None = None,
    shift: mx.array | None = None,
    residual: mx.array | None = None,
) -> mx.array:
    """``mish(group_norm(x) * weight + bias) * scale + shift + residual`` over channels-last input.

    Shapes: ``x`` (B, L, C); ``weight``, ``bias`` (C,); ``scale``, ``shift`` (B, C), broadcast
    over L (FiLM); ``residual`` (B, L, C). GroupNorm statistics are taken over L and the C /
    ``num_groups`` channels of each group (torch's ``GroupNorm`` on channels-first input).

    Runs only on MLX's CUDA backend, and has no gradient.
    """
    batch, length, channels = x.shape
    if channels % num_groups:
        raise ValueError(f"group_norm_mish: {channels} channels do not split into {num_groups}")
    extra = [a for a in (scale, shift, residual) if a is not None]
    kernel = _kernel(scale is not None, shift is not None, residual is not None, float(eps))
    return kernel(
        inputs=[x, weight, bias, *extra],
        template=[
            ("T", x.dtype),
            ("L", length),
            ("C", channels),
            ("G", num_groups),
        ],
        grid=(batch * num_groups * _THREADS, 1, 1),
        threadgroup=(_THREADS, 1, 1),
        output_shapes=[x.shape],
        output_dtypes=[x.dtype],
    )[0]


class FusedConv1dBlock(Conv1dBlock):
    """``Conv1dBlock`` whose norm, Mish, FiLM and residual run as :func:`group_norm_mish` in eval
    mode: (B, T, C_in) -> (B, T, C_out)."""

    def __call__(
        self,
        x: mx.array,
        scale: mx.array | None = None,
        shift: mx.array | None = None,
        residual: mx.array | None = None,
    ) -> mx.array:
        if self.training:
            return super().__call__(x, scale, shift, residual)
        conv, norm, _ = self.block
        return group_norm_mish(
            conv(x), norm.weight, norm.bias, norm.num_groups, norm.eps, scale, shift, residual
        )

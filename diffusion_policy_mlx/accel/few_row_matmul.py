"""``x @ w.T`` for a few rows of ``x`` on the CPU, through the package's own kernel.

At batch 1 the U-Net's convolutions (as im2col GEMMs) have 4 to 16 rows, and each is a pass over
its weights: the forward is bound by how fast 263 MB (lowdim) or 1 GB (hybrid) of weights are
read. MLX hands these products to BLAS, which OpenBLAS runs at about 10-11 GB/s on a 2-core EPYC
(it packs the wide operand before multiplying). The kernel in ``csrc/few_row_matmul.cpp``, an
MLX primitive with AVX-512 and AVX2 code, reads every weight once and multiplies it into all
rows from registers, on every core: 28 GB/s on the same machine (``benchmarks/bench_blas.py``).

The kernel is the compiled extension ``diffusion_policy_mlx._cpu_kernels``, which
``pip install`` builds on Linux x86_64. It is used where all of these hold: it was built, against
the MLX version now running (its C++ ABI is that version's), the CPU has AVX2 with FMA and F16C,
MLX's default device is the CPU, the layer is in eval mode (sampling; training keeps MLX's
products), the product has at most :data:`MAX_ROWS` rows, and ``DP_MLX_CPU_KERNELS`` is not
``off``. Otherwise :func:`matmul_wt` is ``x @ w.T``.
:func:`kernel_status` says which, and why.

With ``DP_MLX_CPU_WEIGHTS=float16`` the kernel reads float16 copies of the convolution weights
during sampling (:class:`InferenceWeights`), half the bytes, accumulating in float32. With
``DP_MLX_CPU_WEIGHTS=bfloat16`` the convolutions of more than :data:`MAX_ROWS` rows (batched
sampling) run in bfloat16 on AMX instead (:mod:`~diffusion_policy_mlx.accel.amx_conv1d`),
on weights packed for it; the few-row products then stay float32.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

import mlx.core as mx
import mlx.nn as nn

from diffusion_policy_mlx.accel import cpu_streams

log = logging.getLogger(__name__)

ENV_VAR = "DP_MLX_CPU_KERNELS"
_OFF_VALUES = {"off", "0", "false", "no", "none"}
# The kernel keeps up to 4 rows x 4 weight rows in registers and rereads cached weight blocks
# for more rows; past 16 rows the products are BLAS's ground (compute, not reads).
MAX_ROWS = 16

# False routes every product to MLX, as if the kernel were not built: the other side of
# benchmarks/bench_cpu_kernels.py.
ENABLED = True

_kernels: ModuleType | None = None
_status: str | None = None


def _load() -> tuple[ModuleType | None, str]:
    if os.environ.get(ENV_VAR, "").strip().lower() in _OFF_VALUES:
        return None, f"disabled by {ENV_VAR}={os.environ[ENV_VAR]}"
    try:
        module = importlib.import_module("diffusion_policy_mlx._cpu_kernels")
    except ImportError as error:
        return None, (
            f"not built ({error}); `pip install -e .` builds it on Linux x86_64 with a C++ "
            "compiler and CMake"
        )
    if module.mlx_version != mx.__version__:
        return None, (
            f"built against MLX {module.mlx_version} but MLX {mx.__version__} is installed; "
            "rebuild it with `pip install -e .`"
        )
    if module.isa == "none":
        return None, "this CPU lacks AVX2 with FMA and F16C"
    return module, f"{module.isa} kernel"


def extension() -> ModuleType | None:
    """The loaded extension ``diffusion_policy_mlx._cpu_kernels`` (this kernel and the CPU
    GroupNorm's), or None when it cannot be used (see :func:`kernel_status`)."""
    global _kernels, _status
    if _status is None:
        _kernels, _status = _load()
    return _kernels


def kernels() -> ModuleType | None:
    """The loaded extension, or None when it cannot be used (see :func:`kernel_status`) or
    :data:`ENABLED` is False."""
    return extension() if ENABLED else None


def kernel_status() -> str:
    """Why the kernel is or is not used in this process."""
    kernels()
    return _status


def uses_kernel(rows: int, module: nn.Module) -> bool:
    """Whether a product of ``module`` (a layer) over ``rows`` rows on the current default device
    takes the kernel. Only in eval mode: training keeps MLX's products (and their tuned
    gradients), so its numbers do not depend on whether the extension was built."""
    return (
        rows <= MAX_ROWS
        and not module.training
        and mx.default_device() == mx.cpu
        and kernels() is not None
    )


def matmul_wt(x: mx.array, w: mx.array, module: nn.Module) -> mx.array:
    """``x @ w.T`` for a product of ``module``: x (..., K) float32, w (N, K) float32 or float16
    -> (..., N) float32.

    Through the kernel where :func:`uses_kernel` holds for ``x``'s rows (its leading axes
    flattened), on as many threads as the CPU streams leave this one; its gradients are
    GEMMs."""
    rows = x.size // x.shape[-1]
    if not uses_kernel(rows, module):
        return x @ w.T
    y = kernels().few_row_matmul(
        x.reshape(rows, x.shape[-1]), w, threads=cpu_streams.cores_per_stream()
    )
    return y.reshape(*x.shape[:-1], w.shape[0])


def few_row_conv1d(x: mx.array, w: mx.array, bias: mx.array) -> mx.array:
    """``mx.conv1d(x, w, padding=K // 2) + bias`` through the kernel, for a layer where
    :func:`uses_kernel` holds: x (B, T, C_in) float32 with B * T <= :data:`MAX_ROWS`, w
    (C_out, K, C_in) float32 or float16 (K odd), bias (C_out,) -> (B, T, C_out) float32.

    The kernel builds the input's columns itself and adds the bias, so a batch-1 convolution
    is one operation instead of MLX's pad, K slices, concatenation, product and add."""
    return kernels().few_row_conv1d(x, w, bias, threads=cpu_streams.cores_per_stream())


# Lower precision for sampling, opt-in, since the actions then differ from float32's by the
# rounding: float16 weights for the few-row kernel (half the bytes to read at batch 1), or
# bfloat16 products on AMX for batched sampling; both accumulate in float32.
WEIGHTS_VAR = "DP_MLX_CPU_WEIGHTS"
_WEIGHT_DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}


def weight_dtype() -> mx.Dtype:
    """The precision of the convolution weights at inference on the CPU:
    ``DP_MLX_CPU_WEIGHTS`` (``float32``, the default; ``float16`` for the few-row kernel;
    ``bfloat16`` for the AMX kernel)."""
    value = os.environ.get(WEIGHTS_VAR, "float32").strip().lower()
    if value not in _WEIGHT_DTYPES:
        raise ValueError(
            f"{WEIGHTS_VAR}={os.environ[WEIGHTS_VAR]!r}: give one of {sorted(_WEIGHT_DTYPES)}"
        )
    return _WEIGHT_DTYPES[value]


class InferenceWeights:
    """Low-precision copies of a model's convolution weights, for the kernels at inference.

    ``arrays`` maps ``str(id(module))`` of every ``nn.Conv1d`` / ``nn.ConvTranspose1d`` in the
    model to its weight in :attr:`dtype` (:func:`weight_dtype`): float16 copies for the
    few-row kernel, or for bfloat16 the weights packed for the AMX kernel
    (:func:`~diffusion_policy_mlx.accel.amx_conv1d.pack_weight`; a transposed
    convolution's as the (4 C_out, 1, C_in) product ``Upsample1d`` takes). :meth:`refresh`
    recomputes a copy when its module's weight array has been replaced (MLX arrays are
    immutable, so training, EMA updates and checkpoint loads all replace them), and updates
    ``arrays`` in place, so that a compiled function declaring it as an input
    (``CompiledStepCache``) reads the new copies. Empty when the weights stay float32, MLX's
    default device is a GPU or the kernel for the dtype is not in use.
    """

    def __init__(self) -> None:
        self.arrays: dict[str, mx.array] = {}
        self.dtype: mx.Dtype = mx.float32
        self._sources: dict[str, mx.array] = {}

    def refresh(self, model: nn.Module) -> None:
        # amx_conv1d imports this module
        from diffusion_policy_mlx.accel import amx_conv1d

        dtype = weight_dtype()
        on_cpu = mx.default_device() == mx.cpu
        usable = on_cpu and kernels() is not None
        if dtype == mx.bfloat16:
            usable = usable and amx_conv1d.available()
        if on_cpu and dtype != mx.float32 and not usable:
            _warn_once(dtype)
        if dtype != self.dtype or dtype == mx.float32 or not usable:
            self.arrays.clear()
            self._sources.clear()
        self.dtype = dtype if usable else mx.float32
        if self.dtype == mx.float32:
            return
        convs = {
            str(id(m)): m
            for _, m in model.named_modules()
            if isinstance(m, nn.Conv1d | nn.ConvTranspose1d)
        }
        for key in set(self.arrays) - set(convs):
            del self.arrays[key], self._sources[key]
        stale = [key for key, m in convs.items() if self._sources.get(key) is not m.weight]
        for key in stale:
            weight = convs[key].weight
            self._sources[key] = weight
            if dtype != mx.bfloat16:
                self.arrays[key] = weight.astype(dtype)
            elif isinstance(convs[key], nn.ConvTranspose1d):
                self.arrays[key] = amx_conv1d.pack_weight(weight.reshape(-1, 1, weight.shape[2]))
            else:
                self.arrays[key] = amx_conv1d.pack_weight(weight)
            # one at a time: evaluated together, the hybrid U-Net's packs (pads, casts and
            # transposes of 244M entries) took 4.3 s; one by one, reusing the buffers, 0.9 s
            mx.eval(self.arrays[key])

    def __deepcopy__(self, memo: dict) -> InferenceWeights:
        # a copied model (the EMA policy) has modules of its own
        return InferenceWeights()


_warned: set[str] = set()


def _warn_once(dtype: mx.Dtype) -> None:
    """Say, once per process and dtype, that ``DP_MLX_CPU_WEIGHTS`` asks for a precision whose
    kernel cannot run here, so that sampling silently staying float32 is not mistaken for it."""
    # amx_conv1d imports this module
    from diffusion_policy_mlx.accel import amx_conv1d

    name = str(dtype).removeprefix("mlx.core.")
    if name in _warned:
        return
    _warned.add(name)
    if dtype == mx.bfloat16:  # the extension or AMX missing: amx_status says which
        reason = amx_conv1d.amx_status().removeprefix("no: ")
    else:
        reason = f"the extension is not in use ({kernel_status()})"
    log.warning("%s=%s has no effect, sampling stays float32: %s", WEIGHTS_VAR, name, reason)


_active: InferenceWeights | None = None


@contextmanager
def using(weights: InferenceWeights | None) -> Iterator[None]:
    """Within: :func:`weight_for` returns ``weights``' copies (inside ``mx.compile`` tracing,
    the tracers that stand for them)."""
    global _active
    previous, _active = _active, weights
    try:
        yield
    finally:
        _active = previous


def weight_for(module: nn.Module, rows: int) -> mx.array:
    """The weight a product over ``rows`` rows multiplies: the float16 copy of
    ``module.weight`` where the kernel takes the product and :func:`using` holds one, else
    ``module.weight``."""
    if _active is None or _active.dtype != mx.float16 or not uses_kernel(rows, module):
        return module.weight
    return _active.arrays.get(str(id(module)), module.weight)


def packed_weight_for(module: nn.Module, rows: int) -> mx.array | None:
    """The AMX-packed bfloat16 weight of ``module`` for a product over ``rows`` rows, where
    :func:`using` holds bfloat16 weights, the product has more than :data:`MAX_ROWS` rows,
    ``module`` is in eval mode and MLX's default device is the CPU; else None."""
    if (
        _active is None
        or _active.dtype != mx.bfloat16
        or rows <= MAX_ROWS
        or module.training
        or mx.default_device() != mx.cpu
    ):
        return None
    return _active.arrays.get(str(id(module)))

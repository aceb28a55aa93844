"""The ``accel`` settings and :func:`configure`, which decides the device and the fast paths
once per process.

Settings come from the ``accel`` config group (``config/accel/default.yaml``); a config
without one (upstream's YAML files) gets the defaults. Environment variables override them:

=============================  ===========================  ==================================
setting                        environment variable         values
=============================  ===========================  ==================================
``accel.cpu_streams``          ``DP_MLX_CPU_STREAMS``       null (one per core, at most 2), n
``accel.cpu_weights``          ``DP_MLX_CPU_WEIGHTS``       float32, float16, bfloat16
``accel.cpu_kernels``          ``DP_MLX_CPU_KERNELS``       true / false (``off``)
``accel.fused_group_norm``     ``DP_MLX_FUSED_GROUP_NORM``  true / false (``0``)
=============================  ===========================  ==================================

``DP_MLX_MALLOC=system`` keeps glibc's allocator settings (:mod:`.malloc`), and ``DP_MLX_BLAS``
chooses the BLAS loaded when ``diffusion_policy_mlx.accel`` is imported (:mod:`.blas`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from diffusion_policy_mlx.accel import blas, cpu_streams, cuda_defaults, extension, malloc
from diffusion_policy_mlx.accel.low_precision import DTYPES

import mlx.core as mx

from diffusion_policy_mlx.config_compat import ConfigError, mlx_device

log = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "cpu_streams": None,
    "cpu_weights": "float32",
    "cpu_kernels": True,
    "fused_group_norm": True,
}
ENV_VARS = {
    "cpu_streams": cpu_streams.ENV_VAR,
    "cpu_weights": "DP_MLX_CPU_WEIGHTS",
    "cpu_kernels": "DP_MLX_CPU_KERNELS",
    "fused_group_norm": "DP_MLX_FUSED_GROUP_NORM",
}
_TRUE = {"1", "on", "true", "yes"}
_FALSE = {"0", "off", "false", "no", "none"}


@dataclass(frozen=True)
class AccelConfig:
    """What :func:`configure` decided: the device, the CPU streams batches are split over, the
    extension the CPU layers call (None: MLX's operations), the precision of the convolution
    weights while sampling on the CPU, and whether the fused CUDA GroupNorm runs."""

    device: mx.Device
    cpu_streams: int
    kernels: ModuleType | None
    kernel_status: str
    cpu_weights: mx.Dtype
    fused_group_norm: bool

    @property
    def on_cpu(self) -> bool:
        return self.device == mx.cpu


_current: AccelConfig | None = None


def current() -> AccelConfig | None:
    """The settings of the last :func:`configure` call (None before the first)."""
    return _current


def settings(cfg: Mapping[str, Any] | None, environ: Mapping[str, str]) -> dict[str, Any]:
    """The ``accel`` settings: ``cfg`` (the config group, None for the defaults) with the
    environment's overrides; one :class:`ConfigError` names a bad key or value."""
    cfg = {} if cfg is None else dict(cfg)
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"accel: unknown settings {unknown}; the settings are {list(DEFAULTS)}")
    values = {**DEFAULTS, **cfg}
    sources = {key: f"accel.{key}" for key in values}
    for key, var in ENV_VARS.items():
        if key != "cpu_streams" and environ.get(var, "").strip():
            values[key], sources[key] = environ[var].strip(), f"{var}"
    for key in ("cpu_kernels", "fused_group_norm"):
        values[key] = _flag(values[key], sources[key])
    weights = str(values["cpu_weights"]).lower()
    if weights not in DTYPES:
        raise ConfigError(
            f"{sources['cpu_weights']}={values['cpu_weights']!r}: give one of {list(DTYPES)}"
        )
    values["cpu_weights"] = weights
    return values


def _flag(value: Any, source: str) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in _TRUE:
        return True
    if str(value).lower() in _FALSE:
        return False
    raise ConfigError(f"{source}={value!r}: give true or false (on/off)")


def configure(
    device: str | None = None,
    cfg: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> AccelConfig:
    """Decide, for this process, the device (``training.device``: ``cpu``, ``cuda:0``, ``mps``,
    ``gpu``; None: MLX's default) and the fast paths (``cfg``: the ``accel`` config group), and
    make them current; returns them. Call it once, before anything is computed: it sets MLX's
    default device, on the CPU the BFS width and ``malloc`` settings, on CUDA the MLX CUDA
    defaults (:mod:`.cuda_defaults`). :func:`~diffusion_policy_mlx.accel.apply` then swaps the
    fast paths into a built policy."""
    global _current
    environ = os.environ if environ is None else environ
    values = settings(cfg, environ)
    chosen = mx.default_device() if device is None else mlx_device(device)
    mx.set_default_device(chosen)
    on_cpu = chosen == mx.cpu
    if on_cpu:
        cpu_streams.apply_cpu_defaults()
        malloc.keep_freed_memory(False)
    cuda_defaults.apply_cuda_defaults(mx.cuda.is_available())

    kernels, status = extension.load() if on_cpu else (None, "not on the CPU")
    if not values["cpu_kernels"]:
        kernels, status = None, "turned off (accel.cpu_kernels / DP_MLX_CPU_KERNELS)"
    _current = AccelConfig(
        device=chosen,
        cpu_streams=cpu_streams.stream_count(values["cpu_streams"], on_cpu, environ),
        kernels=kernels,
        kernel_status=status,
        cpu_weights=usable_weights(values["cpu_weights"], on_cpu, kernels, status),
        fused_group_norm=values["fused_group_norm"] and mx.cuda.is_available() and not on_cpu,
    )
    return _current


def usable_weights(name: str, on_cpu: bool, kernels: ModuleType | None, status: str) -> mx.Dtype:
    """The sampling weights' precision asked for, where its kernel runs here; float32 (with a
    warning, so that it is not mistaken for the lower precision) where it cannot."""
    dtype = DTYPES[name]
    if dtype == mx.float32 or not on_cpu:
        return mx.float32
    if kernels is None:
        reason = f"the extension is not in use ({status})"
    elif dtype == mx.bfloat16 and not kernels.amx:
        reason = extension.amx_status(kernels, status).removeprefix("no: ")
    else:
        return dtype
    log.warning("accel.cpu_weights=%s has no effect, sampling stays float32: %s", name, reason)
    return mx.float32


def status() -> dict[str, str]:
    """What this process runs on, in words: the BLAS, the CPU kernels and the AMX kernel."""
    info = blas.blas_info()
    kernels, why = extension.load()
    via = f", through {info.shim}" if info.shim else ""
    return {
        "BLAS": f"{info.library or 'MLX bundled (reference)'} ({info.reason}{via})",
        "few-row CPU kernel": why,
        "bfloat16 AMX convolutions (accel.cpu_weights=bfloat16)": extension.amx_status(
            kernels, why
        ),
    }

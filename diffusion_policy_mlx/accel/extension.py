"""The package's compiled CPU kernels, ``diffusion_policy_mlx._cpu_kernels``, and why they are or
are not in use.

``pip install`` builds the extension on Linux x86_64 (``diffusion_policy_mlx/csrc``). It holds
the few-row product and convolution (:mod:`.few_row_matmul`), the GroupNorm with its gradient
(:mod:`.group_norm`) and the bfloat16 AMX convolution (:mod:`.amx_conv1d`). It can be used where
it was built against the MLX version now running (its C++ ABI is that version's) and the CPU has
AVX2 with FMA and F16C; ``accel.cpu_kernels: false`` (or ``DP_MLX_CPU_KERNELS=off``) keeps
MLX's own operations.
"""

from __future__ import annotations

import importlib
from functools import cache
from types import ModuleType
from typing import Any

import mlx.core as mx

MODULE = "diffusion_policy_mlx._cpu_kernels"


@cache
def load() -> tuple[ModuleType | None, str]:
    """The extension module (or None when it cannot be used here) and a sentence saying why."""
    try:
        module = importlib.import_module(MODULE)
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


def amx_status(kernels: ModuleType | None, why_not: str) -> str:
    """Whether the bfloat16 AMX convolution runs with ``kernels`` (the extension in use, or
    None for ``why_not``)."""
    if kernels is None:
        return f"no: the extension is not in use ({why_not})"
    if not kernels.amx:
        return "no: this CPU or OS has no AMX with bfloat16 (Sapphire Rapids or later)"
    return "yes"


class Shared:
    """The extension (or a stand-in for it) as a layer holds it: its functions as attributes,
    and the same object in every deep copy of the layer (the EMA policy), since a module
    cannot be copied."""

    def __init__(self, kernels: Any) -> None:
        self._kernels = kernels

    def __getattr__(self, name: str) -> Any:
        return getattr(self._kernels, name)

    def __deepcopy__(self, memo: dict) -> Shared:
        return self

"""Use an optimized CBLAS for MLX's CPU backend on Linux.

The ``mlx[cpu]`` wheel links the reference (netlib) BLAS, which runs a 1024x1024 float32 matmul at
about 5 GFLOP/s on a 2-core x86 machine; OpenBLAS or MKL run it at about 150. MLX's CPU convolutions
and matmuls go through ``cblas_sgemm``, and Python loads extension modules with ``RTLD_NOW``, so the
symbol is bound when ``mlx.core`` is imported. Loading an optimized BLAS with ``RTLD_GLOBAL`` *before*
that import puts its ``cblas_sgemm`` first in the global lookup scope, and MLX binds to it.

``diffusion_policy_mlx/accel/__init__.py`` calls :func:`load_fast_blas` when the package is
imported, before anything imports MLX.

Environment variable ``DP_MLX_BLAS``:

* unset: search for OpenBLAS, then MKL, then BLIS among the system's shared libraries;
* ``off`` (or ``0``, ``none``, ``false``): keep MLX's bundled reference BLAS;
* a file name or path: load exactly that library (an error if it cannot be loaded).

Install one on Debian/Ubuntu with ``apt-get install libopenblas0-pthread``; on Fedora
``dnf install openblas``; or point ``DP_MLX_BLAS`` at ``libmkl_rt.so`` from an MKL install.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "DP_MLX_BLAS"
_OFF_VALUES = {"off", "0", "none", "false", "no"}
# Sonames tried in order; find_library adds whatever ldconfig knows under the generic names.
_CANDIDATES = (
    "libopenblas.so.0",
    "libopenblas.so",
    "libmkl_rt.so.2",
    "libmkl_rt.so",
    "libblis.so.4",
    "libblis.so",
)


@dataclass(frozen=True)
class BlasInfo:
    """Which BLAS MLX's CPU backend uses in this process.

    ``library`` is the path (or soname) of the optimized BLAS loaded ahead of MLX, or ``None`` when
    MLX uses its bundled reference BLAS (or, on macOS, Accelerate); ``reason`` says why.
    """

    library: str | None
    reason: str

    @property
    def fast(self) -> bool:
        return self.library is not None


_info: BlasInfo | None = None
# The loaded library, for its thread-count functions.
_lib: ctypes.CDLL | None = None
# (setter, getter) per BLAS, as each names them.
_THREAD_FUNCTIONS = (
    ("openblas_set_num_threads", "openblas_get_num_threads"),
    ("MKL_Set_Num_Threads", "MKL_Get_Max_Threads"),
    ("bli_thread_set_num_threads", "bli_thread_get_num_threads"),
)


def _loaded_path(name: str) -> str:
    """Resolve a soname to the file the dynamic loader mapped, for messages."""
    maps = Path("/proc/self/maps")
    if maps.exists():
        stem = Path(name).name.split(".so")[0]
        for line in maps.read_text().splitlines():
            path = line.split()[-1]
            if Path(path).name.startswith(stem):
                return path
    return name


def _try_load(name: str) -> str | None:
    global _lib
    try:
        lib = ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
    except OSError:
        return None
    if not hasattr(lib, "cblas_sgemm"):
        return None
    _lib = lib
    return _loaded_path(name)


def _candidates() -> list[str]:
    names = list(_CANDIDATES)
    for generic in ("openblas", "mkl_rt", "blis"):
        found = ctypes.util.find_library(generic)
        if found and found not in names:
            names.append(found)
    return names


def load_fast_blas() -> BlasInfo:
    """Load an optimized CBLAS ahead of ``mlx.core`` (idempotent); return what is in use."""
    global _info
    if _info is not None:
        return _info
    choice = os.environ.get(ENV_VAR, "").strip()
    if not sys.platform.startswith("linux"):
        _info = BlasInfo(None, f"{sys.platform}: MLX uses the platform's BLAS")
    elif choice.lower() in _OFF_VALUES:
        _info = BlasInfo(None, f"disabled by {ENV_VAR}={choice}")
    elif "mlx.core" in sys.modules:
        _info = BlasInfo(
            None,
            "mlx.core was imported before diffusion_policy_mlx.accel, too late to load a fast "
            "BLAS; import diffusion_policy_mlx.accel first",
        )
    elif choice:
        path = _try_load(choice)
        if path is None:
            raise OSError(
                f"{ENV_VAR}={choice}: cannot load it as a CBLAS library exporting cblas_sgemm; "
                f"give the path of libopenblas.so.0 or libmkl_rt.so, or set {ENV_VAR}=off"
            )
        _info = BlasInfo(path, f"chosen by {ENV_VAR}")
    else:
        path = next((p for p in map(_try_load, _candidates()) if p is not None), None)
        _info = BlasInfo(path, "found on the system" if path else "no optimized BLAS installed")
    if not _info.fast and sys.platform.startswith("linux") and choice.lower() not in _OFF_VALUES:
        remedy = (
            "Install OpenBLAS (Debian/Ubuntu: apt-get install libopenblas0-pthread) for ~30x "
            "faster CPU training and inference"
            if "mlx.core" not in sys.modules
            else "Import diffusion_policy_mlx.accel before mlx"
        )
        warnings.warn(
            f"MLX runs its CPU matmuls and convolutions on the slow reference BLAS ({_info.reason}). "
            f"{remedy}, or set {ENV_VAR}=off to silence this.",
            RuntimeWarning,
            stacklevel=2,
        )
    return _info


def blas_info() -> BlasInfo:
    """The BLAS decision made when ``diffusion_policy_mlx.accel`` was imported."""
    return load_fast_blas()


def _thread_functions() -> tuple[ctypes._CFuncPtr, ctypes._CFuncPtr] | None:
    if _lib is None:
        return None
    for setter, getter in _THREAD_FUNCTIONS:
        # hasattr on a CDLL is how ctypes asks whether a library exports a symbol
        if hasattr(_lib, setter) and hasattr(_lib, getter):
            return getattr(_lib, setter), getattr(_lib, getter)
    return None


def num_threads() -> int | None:
    """Threads the loaded BLAS runs each call on; None when it is not ours to set (MLX's
    bundled BLAS, Accelerate, or a library without a known thread-count function)."""
    functions = _thread_functions()
    return None if functions is None else int(functions[1]())


def set_num_threads(n: int) -> bool:
    """Run the loaded BLAS's calls on ``n`` threads (OpenBLAS, MKL or BLIS); returns whether
    it could. Takes effect for calls that start after it returns."""
    if n < 1:
        raise ValueError(f"BLAS thread count must be >= 1, got {n}")
    functions = _thread_functions()
    if functions is None:
        return False
    if functions[1]() != n:
        functions[0](n)
    return True

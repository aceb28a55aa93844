"""Use an optimized BLAS for MLX's CPU backend on Linux.

The ``mlx[cpu]`` wheel links the reference (netlib) BLAS, which runs a 1024x1024 float32 matmul at
about 5 GFLOP/s on a 2-core x86 machine; OpenBLAS or MKL run it at about 150. MLX's CPU convolutions
and matmuls go through ``cblas_sgemm``, and Python loads extension modules with ``RTLD_NOW``, so the
symbol is bound when ``mlx.core`` is imported. Loading an optimized BLAS with ``RTLD_GLOBAL`` *before*
that import puts its ``cblas_sgemm`` first in the global lookup scope, and MLX binds to it.

``diffusion_policy_mlx/accel/__init__.py`` calls :func:`load_fast_blas` when the package is
imported, before anything imports MLX.

Where the BLAS comes from, first found wins:

1. ``DP_MLX_BLAS``, when set (see below);
2. the system's OpenBLAS, MKL or BLIS, where the dynamic loader finds one;
3. the OpenBLAS of the ``scipy-openblas32`` wheel, an install requirement on Linux, so that
   ``pip install`` alone gives a fast BLAS. Its symbols carry a ``scipy_`` prefix
   (``scipy_cblas_sgemm``); the small library ``_blas_shim`` (``csrc/blas_shim.c``, built by
   ``setup.py``) serves the unprefixed names MLX imports and forwards each to it;
4. MLX's bundled reference BLAS, with a warning.

Environment variable ``DP_MLX_BLAS``:

* ``off`` (or ``0``, ``none``, ``false``): keep MLX's bundled reference BLAS;
* ``wheel``: the ``scipy-openblas32`` wheel's OpenBLAS, even where the system has one;
* a file name or path: load exactly that library (an error if it cannot be loaded); a library
  with ``scipy_``-prefixed symbols goes through the shim.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os
import sys
import warnings
from dataclasses import dataclass
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

ENV_VAR = "DP_MLX_BLAS"
_OFF_VALUES = {"off", "0", "none", "false", "no"}
WHEEL_VALUE = "wheel"
WHEEL_PACKAGE = "scipy_openblas32"
# The prefix the wheel's OpenBLAS puts on every symbol.
WHEEL_PREFIX = "scipy_"
# Serves the unprefixed names for a prefixed OpenBLAS (csrc/blas_shim.c).
SHIM = Path(__file__).with_name(f"_blas_shim{EXTENSION_SUFFIXES[0]}")
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
    MLX uses its bundled reference BLAS (or, on macOS, Accelerate); ``reason`` says why; ``shim``
    is the forwarding library MLX binds to when ``library``'s symbols are prefixed.
    """

    library: str | None
    reason: str
    shim: str | None = None

    @property
    def fast(self) -> bool:
        return self.library is not None


_info: BlasInfo | None = None
# The loaded library, for its thread-count functions.
_lib: ctypes.CDLL | None = None
# (setter, getter) per BLAS, as each names them.
_THREAD_FUNCTIONS = (
    ("openblas_set_num_threads", "openblas_get_num_threads"),
    (f"{WHEEL_PREFIX}openblas_set_num_threads", f"{WHEEL_PREFIX}openblas_get_num_threads"),
    ("MKL_Set_Num_Threads", "MKL_Get_Max_Threads"),
    ("bli_thread_set_num_threads", "bli_thread_get_num_threads"),
)


def _loaded_path(name: str) -> str:
    """Resolve a soname to the file the dynamic loader mapped, for messages; a path is that
    file (matching it by name could find another, e.g. numpy's libscipy_openblas64_)."""
    maps = Path("/proc/self/maps")
    if "/" not in name and maps.exists():
        stem = Path(name).name.split(".so")[0]
        for line in maps.read_text().splitlines():
            path = line.split()[-1]
            if Path(path).name.startswith(stem):
                return path
    return name


def _try_load(name: str) -> BlasInfo | None:
    """Load ``name`` globally, with the shim when its CBLAS names are prefixed; None when it
    cannot be loaded or exports no ``cblas_sgemm`` under either name. ``reason`` is left empty
    for the caller."""
    global _lib
    try:
        lib = ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
    except OSError:
        return None
    # hasattr on a CDLL is how ctypes asks whether a library exports a symbol
    if hasattr(lib, "cblas_sgemm"):
        shim = None
    elif hasattr(lib, f"{WHEEL_PREFIX}cblas_sgemm") and SHIM.is_file():
        # loaded after the library: the shim's references to the prefixed names bind to it
        ctypes.CDLL(str(SHIM), mode=ctypes.RTLD_GLOBAL)
        shim = str(SHIM)
    else:
        return None
    _lib = lib
    return BlasInfo(_loaded_path(name), "", shim)


def _candidates() -> list[str]:
    names = list(_CANDIDATES)
    for generic in ("openblas", "mkl_rt", "blis"):
        found = ctypes.util.find_library(generic)
        if found and found not in names:
            names.append(found)
    return names


def wheel_library() -> Path | None:
    """The OpenBLAS of the ``scipy-openblas32`` wheel, or None where it is not installed."""
    spec = importlib.util.find_spec(WHEEL_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    found = sorted((Path(spec.origin).parent / "lib").glob("libscipy_openblas*.so*"))
    return found[0] if found else None


def _load_explicit(choice: str) -> BlasInfo:
    if choice.lower() == WHEEL_VALUE:
        wheel = wheel_library()
        if wheel is None:
            raise OSError(
                f"{ENV_VAR}={choice}: the scipy-openblas32 package is not installed; "
                f"run `pip install scipy-openblas32`, or unset {ENV_VAR}"
            )
        name, reason = str(wheel), f"the scipy-openblas32 wheel, chosen by {ENV_VAR}={choice}"
    else:
        name, reason = choice, f"chosen by {ENV_VAR}"
    info = _try_load(name)
    if info is None:
        shim_note = (
            ""
            if SHIM.is_file()
            else f" ({SHIM.name}, needed for a prefixed OpenBLAS, is not built: run `pip install -e .`)"
        )
        raise OSError(
            f"{ENV_VAR}={choice}: cannot load {name} as a CBLAS library exporting cblas_sgemm "
            f"or {WHEEL_PREFIX}cblas_sgemm{shim_note}; give the path of libopenblas.so.0 or "
            f"libmkl_rt.so, set {ENV_VAR}={WHEEL_VALUE}, or set {ENV_VAR}=off"
        )
    return BlasInfo(info.library, reason, info.shim)


def _load_found() -> BlasInfo:
    """The system's library, else the wheel's, else None (MLX's bundled BLAS)."""
    for name in _candidates():
        info = _try_load(name)
        if info is not None:
            return BlasInfo(info.library, "found on the system", info.shim)
    wheel = wheel_library()
    if wheel is None:
        return BlasInfo(None, "no optimized BLAS installed")
    info = _try_load(str(wheel))
    if info is None:
        return BlasInfo(None, f"{SHIM.name}, which {wheel.name} needs, is not built")
    return BlasInfo(info.library, "the scipy-openblas32 wheel", info.shim)


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
        _info = _load_explicit(choice)
    else:
        _info = _load_found()
    if not _info.fast and sys.platform.startswith("linux") and choice.lower() not in _OFF_VALUES:
        remedy = (
            "Reinstall the package (`pip install -e .` installs the scipy-openblas32 wheel and "
            "builds its shim) or install a system OpenBLAS for ~30x faster CPU training and "
            "inference"
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

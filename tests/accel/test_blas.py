"""The fast-BLAS path: MLX's ``cblas_sgemm`` must bind to the optimized library we load.

The checks read the dynamic loader's own binding log (``LD_DEBUG=bindings``) in a subprocess, so
they prove which library libmlx calls without timing anything. Where the library is the
scipy-openblas32 wheel's, libmlx binds to the shim, and the shim's ``cblas_sgemm`` must be the
address of the wheel's ``scipy_cblas_sgemm``.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from diffusion_policy_mlx.accel import blas

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux-only fast path")

PROBE = """
import ctypes, json
from diffusion_policy_mlx.accel import blas as d
import mlx.core as mx
import numpy as np

info = d.blas_info()
out = {"library": info.library, "shim": info.shim, "reason": info.reason}
if info.shim is not None:
    address = lambda lib, name: ctypes.cast(getattr(lib, name), ctypes.c_void_p).value
    shim, lib = ctypes.CDLL(info.shim), ctypes.CDLL(info.library)
    out["forwards"] = address(shim, "cblas_sgemm") == address(lib, "scipy_cblas_sgemm")
a = mx.random.normal((64, 48), stream=mx.cpu)
b = mx.random.normal((48, 32), stream=mx.cpu)
m = mx.random.normal((6, 6), stream=mx.cpu) + 6 * mx.eye(6)
out["matmul_error"] = float(np.abs(np.array(mx.matmul(a, b, stream=mx.cpu)) - np.array(a) @ np.array(b)).max())
out["inv_error"] = float(np.abs(np.array(mx.linalg.inv(m, stream=mx.cpu)) - np.linalg.inv(np.array(m))).max())
print("PROBE=" + json.dumps(out))
"""

# blas.py loaded on its own, with the system search finding nothing: what a machine without a
# system OpenBLAS gets from the package's search order.
NO_SYSTEM_PROBE = f"""
import ctypes.util, importlib.util, json, sys
spec = importlib.util.spec_from_file_location("blas_alone", {str(Path(blas.__file__))!r})
blas = sys.modules["blas_alone"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(blas)
blas._CANDIDATES = ()
ctypes.util.find_library = lambda name: None
info = blas.load_fast_blas()
import mlx.core as mx
mx.eval(mx.ones((8, 8)) @ mx.ones((8, 8)))
print("PROBE=" + json.dumps({{"library": info.library, "shim": info.shim, "reason": info.reason}}))
"""


def _run(env_extra: dict[str, str], code: str = PROBE) -> tuple[dict, str | None]:
    """Return (the probe's report, the library libmlx binds cblas_sgemm to)."""
    env = {**os.environ, "LD_DEBUG": "bindings", **env_extra}
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    line = next(x for x in proc.stdout.splitlines() if x.startswith("PROBE="))
    bound = None
    for line_ in proc.stderr.splitlines():
        if "libmlx.so" in line_.split(" to ")[0] and "`cblas_sgemm'" in line_:
            bound = line_.split(" to ")[1].split(" [")[0]
    return json.loads(line.removeprefix("PROBE=")), bound


def _same_file(a: str, b: str) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def _require_fast(report: dict) -> None:
    if report["library"] is None:
        if os.environ.get("DP_MLX_REQUIRE_FAST_BLAS"):
            pytest.fail(f"DP_MLX_REQUIRE_FAST_BLAS is set but no fast BLAS: {report['reason']}")
        pytest.skip(f"no optimized BLAS: {report['reason']}")


def _assert_bound_to(report: dict, bound: str | None) -> None:
    assert bound is not None, "libmlx's cblas_sgemm binding was not found in the loader log"
    target = report["shim"] or report["library"]
    assert _same_file(target, bound), f"package loaded {target} but libmlx calls {bound}"
    if report["shim"] is not None:
        assert report["forwards"], "the shim's cblas_sgemm is not the wheel's scipy_cblas_sgemm"


def test_mlx_binds_sgemm_to_the_loaded_blas():
    report, bound = _run({})
    _require_fast(report)
    _assert_bound_to(report, bound)
    assert report["matmul_error"] < 1e-4 and report["inv_error"] < 1e-4


def test_wheel_serves_mlx_through_the_shim():
    if blas.wheel_library() is None and not os.environ.get("DP_MLX_REQUIRE_FAST_BLAS"):
        pytest.skip("scipy-openblas32 is not installed")
    report, bound = _run({"DP_MLX_BLAS": "wheel"})
    assert Path(report["library"]).parent.parent.name == "scipy_openblas32"
    assert report["shim"] is not None and Path(report["shim"]).name.startswith("_blas_shim")
    _assert_bound_to(report, bound)
    # the forwarded BLAS and LAPACK calls compute what numpy does
    assert report["matmul_error"] < 1e-4 and report["inv_error"] < 1e-4


def test_without_a_system_blas_the_wheel_is_chosen():
    if blas.wheel_library() is None and not os.environ.get("DP_MLX_REQUIRE_FAST_BLAS"):
        pytest.skip("scipy-openblas32 is not installed")
    report, bound = _run({}, NO_SYSTEM_PROBE)
    assert report["reason"] == "the scipy-openblas32 wheel"
    assert Path(report["library"]).name.startswith("libscipy_openblas")
    assert bound is not None and _same_file(report["shim"], bound)


def test_explicit_library_wins_over_the_search():
    wheel = blas.wheel_library()
    if wheel is None:
        pytest.skip("scipy-openblas32 is not installed")
    report, bound = _run({"DP_MLX_BLAS": str(wheel)})
    assert report["reason"] == "chosen by DP_MLX_BLAS"
    assert _same_file(report["library"], wheel)
    _assert_bound_to(report, bound)


def test_shim_serves_every_blas_symbol_libmlx_imports():
    """A new MLX release that imports another BLAS or LAPACK routine must not fall through to
    the reference BLAS unnoticed."""
    if shutil.which("nm") is None or not blas.SHIM.is_file():
        pytest.skip("needs binutils' nm and the built shim")
    import mlx.core as mx

    libmlx = Path(mx.__file__).with_name("lib") / "libmlx.so"

    def symbols(path: Path, *flags: str) -> set[str]:
        out = subprocess.run(["nm", "-D", *flags, str(path)], capture_output=True, text=True)
        return {line.split()[-1] for line in out.stdout.splitlines() if line.strip()}

    # the C library's and C++ runtime's imports are versioned (name@GLIBC_...) or mangled
    wanted = {
        s for s in symbols(libmlx, "--undefined-only") if s.startswith("cblas_") or s.endswith("_")
    }
    wanted = {s for s in wanted if "@" not in s and not s.startswith("_")}
    assert "cblas_sgemm" in wanted
    missing = wanted - symbols(blas.SHIM, "--defined-only")
    assert not missing, f"add to diffusion_policy_mlx/csrc/blas_shim.c: {sorted(missing)}"


def test_off_switch_keeps_the_bundled_blas():
    report, bound = _run({"DP_MLX_BLAS": "off"})
    assert report["library"] is None
    assert bound is not None and "openblas" not in bound and "mkl" not in bound
    assert "_blas_shim" not in bound


def test_bad_explicit_library_names_the_variable():
    env = {**os.environ, "DP_MLX_BLAS": "/nonexistent/libfoo.so"}
    proc = subprocess.run(
        [sys.executable, "-c", "import diffusion_policy_mlx.accel"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert "DP_MLX_BLAS=/nonexistent/libfoo.so" in proc.stderr


def test_module_command_reports_without_warnings():
    proc = subprocess.run(
        [sys.executable, "-m", "diffusion_policy_mlx.accel"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert proc.stdout.startswith("BLAS: ")
    assert "Warning" not in proc.stderr, proc.stderr


def test_thread_count_is_settable_on_the_loaded_blas():
    code = (
        "from diffusion_policy_mlx.accel import blas\n"
        "print(blas.set_num_threads(1), blas.num_threads())"
    )
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code],
        env={**os.environ, "DP_MLX_BLAS": "wheel"},
        capture_output=True,
        text=True,
    )
    if blas.wheel_library() is None:
        pytest.skip("scipy-openblas32 is not installed")
    assert out.stdout.split() == ["True", "1"], out.stderr

"""The fast-BLAS path: MLX's ``cblas_sgemm`` must bind to the optimized library we load.

The check reads the dynamic loader's own binding log (``LD_DEBUG=bindings``) in a subprocess, so it
proves which library libmlx calls without timing anything.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux-only fast path")

PROBE = (
    "from diffusion_policy_mlx.accel import blas; import mlx.core as mx; "
    "print('LIB=' + str(blas.blas_info().library))"
)


def _run(env_extra: dict[str, str]) -> tuple[str | None, str | None]:
    """Return (library chosen by the package, library libmlx binds cblas_sgemm to)."""
    env = {**os.environ, "LD_DEBUG": "bindings", **env_extra}
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", PROBE],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    chosen = proc.stdout.strip().removeprefix("LIB=")
    bound = None
    for line in proc.stderr.splitlines():
        if "libmlx.so" in line.split(" to ")[0] and "`cblas_sgemm'" in line:
            bound = line.split(" to ")[1].split(" [")[0]
    return (None if chosen == "None" else chosen), bound


def _same_file(a: str, b: str) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def test_mlx_binds_sgemm_to_the_loaded_blas():
    chosen, bound = _run({})
    if chosen is None:
        if os.environ.get("DP_MLX_REQUIRE_FAST_BLAS"):
            pytest.fail("DP_MLX_REQUIRE_FAST_BLAS is set but no optimized BLAS was loaded")
        pytest.skip("no optimized BLAS installed (apt-get install libopenblas0-pthread)")
    assert bound is not None, "libmlx's cblas_sgemm binding was not found in the loader log"
    assert _same_file(chosen, bound), f"package loaded {chosen} but libmlx calls {bound}"


def test_off_switch_keeps_the_bundled_blas():
    chosen, bound = _run({"DP_MLX_BLAS": "off"})
    assert chosen is None
    assert bound is not None and "libopenblas" not in bound and "mkl" not in bound


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

"""Shared test fixtures: where the upstream fixtures and the PushT data live.

``DP_MLX_SHARED`` names the shared folder; by default it is ``../shared`` next to the checkout.
"""

import os
from pathlib import Path

import pytest

# Before any test module imports mlx.core: the package loads the fast CPU BLAS on import.
import diffusion_policy_mlx  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DP_MLX_SHARED", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures" / "upstream"
UPSTREAM_CONFIG = SHARED / "fixtures" / "upstream_config"
PUSHT_ZARR = SHARED / "data" / "pusht" / "pusht_cchi_v7_replay.zarr"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent (set DP_MLX_SHARED to the shared folder)")
    return path


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """``shared/fixtures/upstream``: numbers produced by upstream's PyTorch code."""
    return _require(FIXTURES)


@pytest.fixture(scope="session")
def upstream_config_dir() -> Path:
    """``shared/fixtures/upstream_config``: upstream's own workspace and task YAML files."""
    return _require(UPSTREAM_CONFIG)


@pytest.fixture(scope="session")
def pusht_zarr() -> Path:
    """Upstream's recorded PushT demonstrations."""
    return _require(PUSHT_ZARR)


@pytest.fixture
def cpu_kernels():
    """The package's CPU extension (``diffusion_policy_mlx._cpu_kernels``): skips the test
    where it is not in use, and fails it instead under ``DP_MLX_REQUIRE_CPU_KERNELS`` (CI)."""
    from diffusion_policy_mlx.accel import few_row_matmul

    module = few_row_matmul.extension()
    if module is None:
        status = few_row_matmul.kernel_status()
        if os.environ.get("DP_MLX_REQUIRE_CPU_KERNELS"):
            pytest.fail(
                f"DP_MLX_REQUIRE_CPU_KERNELS is set but the CPU kernels are not in use: {status}"
            )
        pytest.skip(f"CPU kernels not in use: {status}")
    return module


@pytest.fixture
def amx(cpu_kernels):
    """The CPU extension where this CPU and OS run its bfloat16 AMX kernel; skips the test
    elsewhere (AMX is a property of the machine, not of the build)."""
    if not cpu_kernels.amx:
        pytest.skip("this CPU or OS has no AMX with bfloat16 (Sapphire Rapids or later)")
    return cpu_kernels

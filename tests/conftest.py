"""Shared test fixtures: where the upstream fixtures and the PushT data live.

Upstream's numbers and configs are in the repository (``tests/fixtures/``). The PushT data is
``data/pusht/pusht_cchi_v7_replay.zarr``, where ``python -m diffusion_policy_mlx.data download
pusht`` puts it, once it holds the published arrays. A shared folder (``DP_MLX_SHARED``, by
default ``../shared`` next to the checkout) is an optional second source for both.
"""

import os
from pathlib import Path

import pytest
from data_sources import find_pusht

# Before any test module imports mlx.core: the package loads the fast CPU BLAS on import.
import diffusion_policy_mlx  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DP_MLX_SHARED", REPO.parent / "shared"))
FIXTURES = REPO / "tests" / "fixtures"


def _first_existing(*candidates: Path) -> Path:
    for path in candidates:
        if path.exists():
            return path
    pytest.skip(f"none of {', '.join(map(str, candidates))} exists")


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """Numbers produced by upstream's PyTorch code (``tests/fixtures/README.md``)."""
    return _first_existing(FIXTURES / "upstream", SHARED / "fixtures" / "upstream")


@pytest.fixture(scope="session")
def upstream_config_dir() -> Path:
    """Upstream's own workspace and task YAML files."""
    return _first_existing(FIXTURES / "upstream_config", SHARED / "fixtures" / "upstream_config")


@pytest.fixture(scope="session")
def pusht_zarr(request: pytest.FixtureRequest) -> Path:
    """Upstream's recorded PushT demonstrations (see ``data_sources.find_pusht``)."""
    # no cache under `-p no:cacheprovider`: the data is then verified once per session
    cache = getattr(request.config, "cache", None)
    try:
        return find_pusht(REPO, SHARED, cache)
    except LookupError as missing:
        pytest.skip(str(missing))


@pytest.fixture
def cpu_kernels():
    """The package's CPU extension (``diffusion_policy_mlx._cpu_kernels``): skips the test
    where it is not in use, and fails it instead under ``DP_MLX_REQUIRE_CPU_KERNELS`` (CI)."""
    from diffusion_policy_mlx.model.common import few_row_matmul

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

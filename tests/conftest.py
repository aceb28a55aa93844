"""Shared test fixtures: where the upstream fixtures and the PushT data live.

``DP_MLX_SHARED`` names the shared folder; by default it is ``../shared`` next to the checkout.
"""

import os
from pathlib import Path

import pytest

# Before any test module imports mlx.core: importing accel loads the fast CPU BLAS.
from diffusion_policy_mlx import accel

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DP_MLX_SHARED", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures" / "upstream"
UPSTREAM_CONFIG = SHARED / "fixtures" / "upstream_config"
PUSHT_ZARR = SHARED / "data" / "pusht" / "pusht_cchi_v7_replay.zarr"

# As an entry point does: MLX's default device, the default accel settings. Tests that build
# policies directly run them plain unless they apply accel themselves.
accel.configure()


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
    from diffusion_policy_mlx.accel import extension

    module, status = extension.load()
    if module is None:
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


@pytest.fixture
def cpu_config():
    """``cpu_config(kernels, **changes)``: accel settings for the CPU with ``kernels`` (the
    extension, a stand-in for it, or None for MLX's operations), one stream and float32
    sampling weights unless ``changes`` say otherwise."""
    import mlx.core as mx

    def make(kernels=None, **changes) -> accel.AccelConfig:
        settings = {
            "device": mx.Device(mx.cpu),
            "cpu_streams": 1,
            "kernels": kernels,
            "kernel_status": "given by the test",
            "cpu_weights": mx.float32,
            "fused_group_norm": False,
        }
        return accel.AccelConfig(**(settings | changes))

    return make

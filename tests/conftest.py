"""Shared test fixtures: where the upstream fixtures and the PushT data live.

Upstream's numbers and configs are in the repository (``tests/fixtures/``). The PushT data is
``data/pusht/pusht_cchi_v7_replay.zarr``, where ``python -m diffusion_policy_mlx.data download
pusht`` puts it, once it holds the published arrays. A shared folder (``DP_MLX_SHARED``, by
default ``../shared`` next to the checkout) is an optional second source for both.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from data_sources import find_pusht
from tiny_runs import TINY_EVAL

# Before any test module imports mlx.core: importing accel loads the fast CPU BLAS.
from diffusion_policy_mlx import accel

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DP_MLX_SHARED", REPO.parent / "shared"))
FIXTURES = REPO / "tests" / "fixtures"

# wandb reports its own errors and metrics to the server it talks to; in tests that is a stand-in
# server gone by exit time, and every process would print its failed exports at exit.
os.environ.setdefault("WANDB_ERROR_REPORTING", "false")

# As an entry point does: MLX's default device, the default accel settings. Tests that build
# policies directly run them plain unless they apply accel themselves.
accel.configure()


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


@pytest.fixture(scope="session")
def tiny_lowdim_checkpoint(tmp_path_factory, pusht_zarr) -> Path:
    """``checkpoints/latest.ckpt`` of a tiny keypoint U-Net run that ``train.py`` wrote
    (``training.debug``); read it, never change it: the whole session shares it."""
    run_dir = tmp_path_factory.mktemp("train") / "run"
    subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            "--config-name=train_diffusion_unet_lowdim_workspace",
            f"task.dataset.zarr_path={pusht_zarr}",
            f"hydra.run.dir={run_dir}",
            "policy.model.down_dims=[16,32]",
            "policy.model.diffusion_step_embed_dim=16",
            "policy.num_inference_steps=4",
            "training.debug=True",
            "dataloader.batch_size=16",
            "val_dataloader.batch_size=16",
            "training.rollout_every=1000",  # rollouts are eval.py's job
            *TINY_EVAL,
        ],
        cwd=REPO,
        env={**os.environ, "WANDB_MODE": "disabled"},
        check=True,
        capture_output=True,
    )
    return run_dir / "checkpoints" / "latest.ckpt"


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
def cpu_device():
    """The CPU as MLX's default device for the test, then back: accel's CPU machinery is
    compared with MLX's own operations on the CPU, also on a host whose default is a GPU (whose
    TF32 matmuls differ from the CPU's float32 in the fourth digit)."""
    import mlx.core as mx

    device = mx.default_device()
    mx.set_default_device(mx.cpu)
    yield
    mx.set_default_device(device)


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

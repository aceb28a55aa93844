"""Sweeps through Hydra launcher plugins: jobs run in worker processes, which must resolve
``${eval:...}`` and upstream aliases on their own (the package registers them on import)."""

import pytest
from test_train import check_debug_run, run_train, train_args

from diffusion_policy_mlx.common.checkpoint_util import load_checkpoint
from diffusion_policy_mlx.scripts.multirun_metrics import sweep_metrics

NAME = "train_diffusion_unet_lowdim_workspace"


@pytest.mark.parametrize(
    ("launcher", "package"),
    [("joblib", "hydra_plugins.hydra_joblib_launcher"), ("submitit_local", "submitit")],
)
def test_two_job_sweep_through_a_launcher(tmp_path, pusht_zarr, launcher, package):
    pytest.importorskip(package, reason=f'pip install -e ".[launchers]" for {launcher}')
    sweep = tmp_path / "sweep"
    args = train_args(NAME, tmp_path / "unused", pusht_zarr)
    run_train(
        ["-m", *args, "training.seed=1,2", f"hydra/launcher={launcher}", f"hydra.sweep.dir={sweep}"]
    )
    runs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in runs] == ["0", "1"]
    for run_dir, seed in zip(runs, (1, 2), strict=True):
        check_debug_run(run_dir, NAME)
        assert load_checkpoint(run_dir / "checkpoints" / "latest.ckpt").cfg.training.seed == seed
    (config,) = sweep_metrics(sweep, k=2)
    assert config.n_seeds == 2 and 0.0 <= config.max_mean <= 1.0

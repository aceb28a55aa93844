"""Train a policy from a Hydra config.

    python train.py --config-name=train_diffusion_unet_hybrid_workspace task=pusht_image
    python train.py --config-name=train_diffusion_unet_lowdim_workspace training.seed=1,2 -m
    python train.py --config-dir <upstream>/diffusion_policy/config \\
        --config-name train_diffusion_unet_lowdim_workspace task=pusht_lowdim

Runs are written to ``outputs/<date>/<time>_<name>_<task>/`` (multirun: one numbered folder
per job). ``mlx.launch -n N train.py ...`` trains data-parallel on N processes; they all write
to rank 0's run folder, and only rank 0 logs, evaluates and saves checkpoints. Upstream configs work unmodified: their ``_target_`` s map to this package, and a
``--config-dir`` replaces ``config/`` as the folder configs are read from.
"""

import os
import sys
from pathlib import Path

import diffusion_policy_mlx.accel as accel

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from diffusion_policy_mlx.common.distributed import broadcast_str, init_group
from diffusion_policy_mlx.config_compat import check_targets, translate_config

# Line-buffered output, so progress reaches log files and pipes as it happens.
sys.stdout.reconfigure(line_buffering=True)
sys.stderr.reconfigure(line_buffering=True)


def config_path(argv: list[str]) -> str | None:
    """``config/`` next to this file, unless ``--config-dir``/``-cd`` names the config folder.

    Hydra searches a ``--config-dir`` only after the primary folder, so our files would shadow
    same-named ones there (upstream's unmodified YAML); the folder given on the command line
    therefore replaces ``config/``. To add a folder of extra configs (e.g. more tasks) on top of
    ours, use ``hydra.searchpath=[file://DIR]`` instead.
    """
    for arg in argv:
        if arg in ("--config-dir", "-cd") or arg.startswith(("--config-dir=", "-cd=")):
            return None
    return str(Path(__file__).parent / "config")


@hydra.main(version_base="1.3", config_path=config_path(sys.argv[1:]), config_name=None)
def main(cfg: DictConfig) -> None:
    # Resolve at once, so every ${now:...} in the config gives the same time.
    OmegaConf.resolve(cfg)
    cfg = translate_config(cfg)
    check_targets(cfg)
    cls = hydra.utils.get_class(cfg._target_)
    accel.configure(cfg.training.device, cfg.get("accel"))
    # Data-parallel ranks start a moment apart, so their ${now:} run folders may differ: all
    # use rank 0's.
    group = init_group()
    output_dir = (
        None if group is None else broadcast_str(HydraConfig.get().runtime.output_dir, group)
    )
    workspace = cls(cfg, output_dir=output_dir)
    workspace.accelerate(accel.apply)
    workspace.run()


def other_rank_overrides(environ: dict[str, str]) -> list[str]:
    """Hydra overrides for data-parallel ranks other than 0 (``MLX_RANK`` is set by
    ``mlx.launch``): no run folder, saved config or log file of their own."""
    if int(environ.get("MLX_RANK", "0")) == 0:
        return []
    return ["hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=stdout"]


if __name__ == "__main__":
    sys.argv += other_rank_overrides(dict(os.environ))
    main()

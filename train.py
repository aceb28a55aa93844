"""Train a policy from a Hydra config.

    python train.py --config-name=train_diffusion_unet_hybrid_workspace task=pusht_image
    python train.py --config-name=train_diffusion_unet_lowdim_workspace training.seed=1,2 -m
    python train.py --config-dir <upstream>/diffusion_policy/config \\
        --config-name train_diffusion_unet_lowdim_workspace task=pusht_lowdim

Runs are written to ``outputs/<date>/<time>_<name>_<task>/`` (multirun: one numbered folder
per job). Upstream configs work unmodified: their ``_target_`` s map to this package.
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

import diffusion_policy_mlx  # noqa: F401  (before mlx.core: loads the fast BLAS)
from diffusion_policy_mlx.config_compat import check_targets, translate_config

# Line-buffered output, so progress reaches log files and pipes as it happens.
sys.stdout.reconfigure(line_buffering=True)
sys.stderr.reconfigure(line_buffering=True)


@hydra.main(version_base="1.3", config_path=str(Path(__file__).parent / "config"), config_name=None)
def main(cfg: DictConfig) -> None:
    # Resolve at once, so every ${now:...} in the config gives the same time.
    OmegaConf.resolve(cfg)
    cfg = translate_config(cfg)
    check_targets(cfg)
    cls = hydra.utils.get_class(cfg._target_)
    workspace = cls(cfg)
    workspace.run()


if __name__ == "__main__":
    main()

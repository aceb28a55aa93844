"""Train a policy from a Hydra config.

    python train.py --config-name=train_diffusion_unet_hybrid_workspace task=pusht_image
    python train.py -m --config-name=train_diffusion_unet_lowdim_workspace training.seed=1,2
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
from diffusion_policy_mlx.config_compat import (
    UPSTREAM_TASK_CONFIGS,
    UPSTREAM_WORKSPACE_CONFIGS,
    check_targets,
    translate_config,
)

CONFIG_DIR = Path(__file__).parent / "config"
EXAMPLE = "python train.py --config-name=train_diffusion_unet_lowdim_workspace task=pusht_lowdim"
# Hydra's own flags that need no config
_INFO_FLAGS = (
    "-h",
    "--help",
    "--hydra-help",
    "--version",
    "-i",
    "--info",
    "-sc",
    "--shell-completion",
)

# Line-buffered output, so progress reaches log files and pipes as it happens.
sys.stdout.reconfigure(line_buffering=True)
sys.stderr.reconfigure(line_buffering=True)


def _option(argv: list[str], long: str, short: str) -> str | None:
    """The value of ``--long=V``, ``--long V``, ``-short=V`` or ``-short V`` in ``argv``."""
    for i, arg in enumerate(argv):
        for flag in (long, short):
            if arg.startswith(flag + "="):
                return arg.split("=", 1)[1]
            if arg == flag and i + 1 < len(argv):
                return argv[i + 1]
    return None


def _names(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.yaml"))


def command_line_error(argv: list[str]) -> str | None:
    """What is wrong with a command that names no config, or a config or task that the config
    folder lacks (upstream's are "not supported yet"); None when Hydra can take it from here.
    Said before Hydra starts, in one message naming what is available."""
    if any(arg in _INFO_FLAGS for arg in argv):
        return None
    config_dir, config_path = (
        _option(argv, "--config-dir", "-cd"),
        _option(argv, "--config-path", "-cp"),
    )
    # --config-path is relative to this file, as for hydra.main's config_path
    folder = Path(config_dir) if config_dir else Path(__file__).parent / (config_path or "config")
    configs = _names(folder)
    name = _option(argv, "--config-name", "-cn")
    if name is None:
        return (
            f"name a config with --config-name; the configs in {folder}: {', '.join(configs)} "
            f"(e.g. `{EXAMPLE}`)"
        )
    name = name.removesuffix(".yaml")
    if name not in configs:
        if name in UPSTREAM_WORKSPACE_CONFIGS:
            return f"--config-name={name}: not supported yet; supported: {', '.join(configs)}"
        return f"--config-name={name}: no such config in {folder}; available: {', '.join(configs)}"
    tasks = _names(folder / "task")
    for arg in argv:
        if not arg.startswith("task="):
            continue
        for task in arg.removeprefix("task=").split(","):  # a multirun may sweep tasks
            if tasks and task not in tasks:
                what = "not supported yet" if task in UPSTREAM_TASK_CONFIGS else "no such task"
                return f"task={task}: {what}; supported tasks: {', '.join(tasks)}"
    return None


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
    return str(CONFIG_DIR)


@hydra.main(version_base="1.3", config_path=config_path(sys.argv[1:]), config_name=None)
def main(cfg: DictConfig) -> None:
    # Resolve at once, so every ${now:...} in the config gives the same time.
    OmegaConf.resolve(cfg)
    cfg = translate_config(cfg)
    check_targets(cfg, shipped_tasks=_names(CONFIG_DIR / "task"))
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
    if (error := command_line_error(sys.argv[1:])) is not None:
        sys.exit(f"train.py: {error}")
    sys.argv += other_rank_overrides(dict(os.environ))
    main()

"""Our config/ files carry upstream's keys and values (only device and output dirs differ)."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from diffusion_policy_mlx.config_compat import translate_config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"
UPSTREAM_NAMES = [
    "train_diffusion_unet_lowdim_workspace",
    "train_diffusion_transformer_lowdim_workspace",
    "train_diffusion_unet_hybrid_workspace",
    "train_diffusion_unet_ddim_hybrid_workspace",
    "train_diffusion_unet_image_workspace",
    "train_diffusion_transformer_hybrid_workspace",
]
OURS_ONLY = [
    "train_diffusion_unet_ddim_lowdim_workspace",
    "train_diffusion_transformer_lowdim_pusht_workspace",
]
# Intended differences: MLX device naming and where runs are written.
DIFFERENT = {"training.device", "multi_run.run_dir", "multi_run.wandb_name_base", "logging.name"}
# Keys only ours have: the image dataset loads just the observations the policy reads; the speed
# settings (the accel group).
OURS_ONLY_KEYS = {
    "task.dataset.n_obs_steps",
    "accel.cpu_streams",
    "accel.cpu_weights",
    "accel.cpu_kernels",
    "accel.fused_group_norm",
}


def _flat(node, prefix=""):
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: node}


def _load(config_dir: Path, name: str, overrides=()) -> dict:
    task = "pusht_lowdim" if "lowdim" in name else "pusht_image"
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        cfg = compose(name, overrides=[f"task={task}", *overrides], return_hydra_config=True)
    with open_dict(cfg):
        run_dir = cfg.hydra.run.dir
        del cfg["hydra"]
    container = OmegaConf.to_container(translate_config(cfg), resolve=True)
    container["hydra_run_dir"] = run_dir
    return _flat(container)


@pytest.mark.parametrize("name", UPSTREAM_NAMES)
def test_same_keys_and_values_as_upstream(upstream_config_dir, name):
    ours = _load(CONFIG_DIR, name, ["hydra.run.dir=x"])
    theirs = _load(upstream_config_dir, name, ["hydra.run.dir=x"])
    assert ours.keys() - OURS_ONLY_KEYS == theirs.keys()
    assert all(ours[k] == ours["n_obs_steps"] for k in ours.keys() & {"task.dataset.n_obs_steps"})
    assert ours["accel.cpu_streams"] is None and ours["accel.cpu_weights"] == "float32"
    differing = {k for k in theirs if ours[k] != theirs[k]}
    assert differing <= DIFFERENT, {k: (ours[k], theirs[k]) for k in differing - DIFFERENT}
    assert ours["training.device"] == "gpu" and theirs["training.device"] == "cuda:0"


@pytest.mark.parametrize("name", UPSTREAM_NAMES + OURS_ONLY)
def test_runs_go_under_outputs(name):
    flat = _load(CONFIG_DIR, name)
    task = "pusht_lowdim" if "lowdim" in name else "pusht_image"
    run_dir = flat["hydra_run_dir"]
    assert run_dir.startswith("outputs/") and run_dir.endswith(f"_{flat['name']}_{task}")
    assert flat["multi_run.run_dir"] == run_dir
    assert flat["task.dataset.zarr_path"] == "data/pusht/pusht_cchi_v7_replay.zarr"


def test_ddim_lowdim_and_pusht_transformer_variants():
    ddim = _load(CONFIG_DIR, "train_diffusion_unet_ddim_lowdim_workspace")
    assert ddim["policy.noise_scheduler._target_"].endswith("ddim.DDIMScheduler")
    assert ddim["policy.num_inference_steps"] == 8
    # observations inpainted next to actions: the U-Net sees obs_dim + action_dim channels
    assert (ddim["policy.model.input_dim"], ddim["policy.model.global_cond_dim"]) == (22, None)
    pusht = _load(CONFIG_DIR, "train_diffusion_transformer_lowdim_pusht_workspace")
    assert (pusht["horizon"], pusht["n_obs_steps"], pusht["n_action_steps"]) == (16, 2, 8)
    assert (pusht["policy.model.cond_dim"], pusht["optimizer.weight_decay"]) == (20, 0.1)

"""The workspace's config keys are checked before anything is built, naming the key."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from diffusion_policy_mlx.config_compat import ConfigError, translate_config
from diffusion_policy_mlx.workspace.config_checks import validate_workspace_config

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"


def _cfg(name="train_diffusion_unet_lowdim_workspace", overrides=(), config_dir=CONFIG_DIR):
    task = "task=pusht_lowdim" if "lowdim" in name else "task=pusht_image"
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        cfg = compose(name, overrides=[task, *overrides])
    return translate_config(cfg)


def _refused(match: str, **kwargs) -> str:
    with pytest.raises(ConfigError, match=match) as error:
        validate_workspace_config(_cfg(**kwargs))
    return str(error.value)


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIG_DIR.glob("train_*.yaml")))
def test_shipped_configs_pass(name):
    validate_workspace_config(_cfg(name))


def test_upstream_configs_pass(upstream_config_dir):
    names = sorted(p.stem for p in upstream_config_dir.glob("train_*.yaml"))
    assert len(names) == 6
    for name in names:
        validate_workspace_config(_cfg(name, config_dir=upstream_config_dir))


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("training.num_epochs=abc", r"training.num_epochs must be an integer >= 0; got 'abc'"),
        ("training.num_epochs=-1", r"training.num_epochs must be an integer >= 0; got -1"),
        ("training.num_epochs=1.5", r"training.num_epochs must be an integer >= 0; got 1.5"),
        ("training.num_epochs=true", r"training.num_epochs must be an integer >= 0; got True"),
        ("training.checkpoint_every=0", r"training.checkpoint_every must be an integer >= 1"),
        ("training.val_every=-3", r"training.val_every must be an integer >= 1; got -3"),
        ("training.rollout_every=0", r"training.rollout_every must be an integer >= 1"),
        ("training.sample_every=often", r"training.sample_every must be .* got 'often'"),
        ("training.gradient_accumulate_every=0", r"training.gradient_accumulate_every must be"),
        ("training.max_train_steps=0", r"training.max_train_steps must be null or an integer"),
        ("training.lr_warmup_steps=-1", r"training.lr_warmup_steps must be an integer >= 0"),
        ("training.lr_scheduler=cosyne", r"training.lr_scheduler must be one of \[.*'cosine'"),
        ("training.use_ema=maybe", r"training.use_ema must be true or false; got 'maybe'"),
        ("training.tqdm_interval_sec=-1", r"training.tqdm_interval_sec must be a number >= 0"),
        ("dataloader.batch_size=0", r"dataloader.batch_size must be an integer >= 1"),
        ("checkpoint.topk.mode=best", r"checkpoint.topk.mode must be 'max' or 'min'"),
        ("checkpoint.topk.k=-1", r"checkpoint.topk.k must be an integer >= 0"),
    ],
)
def test_bad_values_name_the_key(override, match):
    _refused(match, overrides=[override])


def test_accepted_edge_values():
    for override in ("training.num_epochs=0", "training.max_val_steps=0", "checkpoint.topk.k=0"):
        validate_workspace_config(_cfg(overrides=[override]))


def test_a_missing_key_is_named():
    cfg = _cfg()
    with open_dict(cfg):
        del cfg.training.val_every
    with pytest.raises(ConfigError, match="The config has no training.val_every"):
        validate_workspace_config(cfg)


def test_n_obs_steps_must_fit_the_horizon():
    message = _refused(
        "n_obs_steps=20 \\(policy.n_obs_steps\\) is larger than", overrides=["n_obs_steps=20"]
    )
    assert "horizon=16 (policy.horizon)" in message


@pytest.mark.parametrize(
    ("name", "overrides", "limit"),
    [
        # executed actions start at n_obs_steps - 1 (oa_step_convention=True in our config)
        ("train_diffusion_unet_lowdim_workspace", [], 15),
        # ... and at n_obs_steps without it, as upstream's U-Net lowdim policy defaults to
        ("train_diffusion_unet_lowdim_workspace", ["policy.oa_step_convention=false"], 14),
        ("train_diffusion_unet_hybrid_workspace", [], 15),
        ("train_diffusion_transformer_hybrid_workspace", [], 9),
        # upstream's generic transformer config: horizon 5 with 3 observed steps
        ("train_diffusion_transformer_lowdim_workspace", [], 3),
    ],
)
def test_n_action_steps_must_end_inside_the_window(name, overrides, limit):
    validate_workspace_config(_cfg(name, overrides=[*overrides, f"n_action_steps={limit}"]))
    message = _refused(
        rf"n_action_steps={limit + 1} \(policy.n_action_steps\) does not fit",
        name=name,
        overrides=[*overrides, f"n_action_steps={limit + 1}"],
    )
    assert f"Use n_action_steps <= {limit}" in message


def test_latency_steps_count_against_the_window():
    # the policy predicts n_action_steps + n_latency_steps actions
    validate_workspace_config(_cfg(overrides=["n_action_steps=8", "n_latency_steps=7"]))
    _refused(
        r"policy.n_action_steps=16 does not fit",
        overrides=["n_action_steps=8", "n_latency_steps=8"],
    )


def test_upstream_transformer_lowdim_window(upstream_config_dir):
    # upstream's generic config: horizon 5, 3 observed steps, 1 executed action
    name = "train_diffusion_transformer_lowdim_workspace"
    validate_workspace_config(_cfg(name, ["n_action_steps=3"], upstream_config_dir))
    with pytest.raises(ConfigError, match=r"Use n_action_steps <= 3"):
        validate_workspace_config(_cfg(name, ["n_action_steps=4"], upstream_config_dir))


def test_dataset_window_must_match_the_policy():
    _refused(
        r"task.dataset.horizon=12 differs from horizon=16",
        overrides=["task.dataset.horizon=12"],
    )
    name = "train_diffusion_unet_hybrid_workspace"
    _refused(
        r"task.dataset.n_obs_steps=1 must be null or an integer from n_obs_steps=2",
        name=name,
        overrides=["task.dataset.n_obs_steps=1"],
    )
    validate_workspace_config(_cfg(name, overrides=["task.dataset.n_obs_steps=null"]))


def test_policy_window_values_must_be_positive_integers():
    _refused(
        r"Config key horizon='16' \(policy.horizon\) must be an integer >= 1",
        overrides=["horizon='16'"],
    )
    cfg = _cfg()
    OmegaConf.update(cfg, "policy.n_obs_steps", 0)
    with pytest.raises(ConfigError, match=r"policy.n_obs_steps=0 must be an integer >= 1"):
        validate_workspace_config(cfg)

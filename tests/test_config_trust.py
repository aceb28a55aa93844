import sys
from pathlib import Path

import pytest
from crafted_checkpoint import evil_module
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from diffusion_policy_mlx import config_trust
from diffusion_policy_mlx.config_compat import ConfigError, translate_config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"
OURS = "diffusion_policy_mlx.model.diffusion.ema_model.EMAModel"


def _composed(config_dir: Path) -> list:
    configs = []
    for path in sorted(config_dir.glob("train_*.yaml")):
        task = "pusht_lowdim" if "lowdim" in path.stem else "pusht_image"
        with initialize_config_dir(config_dir=str(config_dir), version_base=None):
            configs.append(compose(path.stem, overrides=[f"task={task}"]))
    return configs


def test_shipped_and_upstream_configs_are_admitted(upstream_config_dir, monkeypatch):
    monkeypatch.delenv(config_trust.TRUSTED_TARGETS_ENV, raising=False)
    configs = _composed(CONFIG_DIR) + _composed(upstream_config_dir)
    assert len(configs) >= 12
    for cfg in configs:
        OmegaConf.resolve(cfg)
        # as stored (translated) and as upstream wrote it (aliases)
        for variant in (translate_config(cfg), cfg):
            config_trust.check_stored_config(variant, "test.ckpt")
        assert config_trust.workspace_class(cfg, "test.ckpt").__name__.startswith("Train")


def _hostile(target: str, where: str = "scheduler") -> OmegaConf:
    return OmegaConf.create(
        {
            "_target_": "diffusion_policy_mlx.workspace.train_diffusion_unet_lowdim_workspace."
            "TrainDiffusionUnetLowdimWorkspace",
            "policy": {where: {"_target_": target}, "ok": {"_target_": OURS}},
        }
    )


@pytest.mark.parametrize(
    "target",
    [
        "os.system",
        "pathlib.Path.write_text",
        "builtins.exec",
        "subprocess.run",
        "diffusion_policy_mlx.workspace.base_workspace.os.system",  # a module's import
        "diffusion_policy_mlx.workspace.base_workspace.hydra.utils.instantiate",
        "diffusion_policy_mlx.model.diffusion.ema_model.EMAModel.__init__",
        "diffusion_policy_mlx.model.diffusion.ema_model.EMAModel.__subclasses__",
        "diffusion_policy_mlx.common.checkpoint_util.save_checkpoint",  # writes files
        "diffusion_policy_mlx.data.download.download",
        "diffusion_policy_mlx.workspace.no_such_module.Thing",
        "diffusion_policy.common.checkpoint_util.save_checkpoint",  # via the upstream alias
        "mlx.core.save",
    ],
)
def test_targets_outside_the_allow_list_are_refused(target):
    with pytest.raises(ConfigError) as info:
        config_trust.workspace_class(_hostile(target), "run/latest.ckpt")
    message = str(info.value)
    assert f"policy.scheduler._target_: {target!r}" in message
    assert "run/latest.ckpt" in message and "DP_MLX_TRUSTED_TARGETS" in message
    assert "policy.ok" not in message


def test_nothing_is_imported_before_the_check(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    name = evil_module(tmp_path, "dp_mlx_evil_top", marker)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = OmegaConf.create(
        {
            "_target_": f"{name}.run",
            "policy": {"x": [{"_args_": [{"_target_": f"{name}.run"}]}]},
            "via_interpolation": {"_target_": "${policy.name}"},
        }
    )
    with pytest.raises(ConfigError) as info:
        config_trust.workspace_class(cfg, "crafted.ckpt")
    message = str(info.value)
    assert f"  _target_: '{name}.run'" in message
    assert f"policy.x[0]._args_[0]._target_: '{name}.run'" in message
    assert "via_interpolation._target_: an interpolation" in message
    assert name not in sys.modules and not marker.exists()


def test_user_trusted_prefixes(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    name = evil_module(tmp_path, "dp_mlx_user_pkg", marker)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = _hostile(f"{name}.run")
    # a stored config cannot trust itself
    cfg.trusted_targets = [name]
    with pytest.raises(ConfigError, match=f"'{name}.run'"):
        config_trust.check_stored_config(cfg, "x.ckpt")
    config_trust.check_stored_config(cfg, "x.ckpt", trusted=[name])
    config_trust.check_stored_config(cfg, "x.ckpt", trusted=[f"{name}."])
    with pytest.raises(ConfigError):  # a prefix covers modules, not name beginnings
        config_trust.check_stored_config(cfg, "x.ckpt", trusted=[name[:-1]])
    monkeypatch.setenv(config_trust.TRUSTED_TARGETS_ENV, f"other, {name}")
    config_trust.check_stored_config(cfg, "x.ckpt")
    assert not marker.exists()  # checking never imports


def test_split_trusted_overrides(monkeypatch):
    monkeypatch.delenv(config_trust.TRUSTED_TARGETS_ENV, raising=False)
    rest, trusted = config_trust.split_trusted_overrides(
        ["task.env_runner.n_test=2", "trusted_targets=[my_pkg.,other]", "trusted_targets=a,b"]
    )
    assert rest == ["task.env_runner.n_test=2"]
    assert trusted == ("my_pkg", "other", "a", "b")
    assert config_trust.trusted_prefixes(["", " . "]) == ()  # never "trust everything"


def test_a_resumed_run_trusts_its_own_config(monkeypatch):
    monkeypatch.delenv(config_trust.TRUSTED_TARGETS_ENV, raising=False)
    own = OmegaConf.create(
        {"policy": {"_target_": "my_pkg.policies.Mine"}, "trusted_targets": "helpers"}
    )
    trusted = config_trust.trusted_by(own)
    assert trusted == ("my_pkg.policies.Mine", "helpers")
    stored = OmegaConf.create(
        {"policy": {"_target_": "my_pkg.policies.Mine", "h": {"_target_": "helpers.f"}}}
    )
    config_trust.check_stored_config(stored, "latest.ckpt", trusted)
    stored.policy.h._target_ = "my_pkg.other.Thing"
    with pytest.raises(ConfigError, match="'my_pkg.other.Thing'"):
        config_trust.check_stored_config(stored, "latest.ckpt", trusted)


def test_a_stored_config_without_a_workspace_is_refused():
    with pytest.raises(ConfigError, match="x.ckpt has no _target_ naming its workspace"):
        config_trust.workspace_class(OmegaConf.create({"policy": {}}), "x.ckpt")

import re
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from diffusion_policy_mlx import config_compat
from diffusion_policy_mlx.config_compat import (
    AdamW,
    ConfigError,
    mlx_device,
    safe_eval,
    translate_config,
    translate_target,
)

WORKSPACES = [
    "train_diffusion_unet_lowdim_workspace",
    "train_diffusion_transformer_lowdim_workspace",
    "train_diffusion_unet_hybrid_workspace",
    "train_diffusion_unet_ddim_hybrid_workspace",
    "train_diffusion_unet_image_workspace",
    "train_diffusion_transformer_hybrid_workspace",
]


def _task_for(name: str) -> str:
    return "pusht_lowdim" if "lowdim" in name else "pusht_image"


def _compose(config_dir: Path, name: str) -> OmegaConf:
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        cfg = compose(name, overrides=[f"task={_task_for(name)}"])
    OmegaConf.resolve(cfg)
    return cfg


@pytest.mark.parametrize(
    "expression, expected",
    [
        ("8+0", 8),
        ("2-1+0", 1),
        ("16-1", 15),
        ("2 if False or True else 20 + 2", 2),
        ("2 if False or False else 20 + 2", 22),
        ("20 if False else None", None),
        ("20*2 if True else None", 40),
        ('500 if "mh" == "mh" else 400', 500),
        ('500 if "ph" == "mh" else 400', 400),
        ("20 if True else 0", 20),
        ("not True", False),
        ("1 < 2 <= 2", True),
        ("3 < 2 < 5", False),
        ("-(3 // 2) % 5", 4),
        ("2 ** 10 / 4", 256.0),
    ],
)
def test_safe_eval_matches_python(expression, expected):
    assert safe_eval(expression) == expected
    assert safe_eval(expression) == eval(expression)  # the reference semantics (trusted input)


def test_safe_eval_passes_typed_values_through():
    assert safe_eval(7) == 7
    assert safe_eval(None) is None
    assert safe_eval(True) is True


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os').system('true')",
        "open('/etc/passwd')",
        "(1).__class__",
        "[1, 2][0]",
        "x + 1",
        "lambda: 1",
        "[i for i in (1, 2)]",
        "2 ** 100000",
    ],
)
def test_safe_eval_rejects_code(expression):
    with pytest.raises(ConfigError, match="eval"):
        safe_eval(expression)


def test_safe_eval_reports_syntax_errors():
    with pytest.raises(ConfigError, match=re.escape("cannot parse '1 +'")):
        safe_eval("1 +")


@pytest.mark.parametrize(
    "expression, reason",
    [
        ("(((((2**64)**64)**64)**64)**64)**64", "'\\*\\*' would build a value beyond"),
        ("'a'*10**9", "'\\*' would build a value beyond"),
        ("10**9*[0]", "'\\*' would build a value beyond"),
        ("(2**600)*(2**600)", "'\\*' would build a value beyond"),
        ("'%0999999999d'%1", "'%' would build a value beyond"),
        ("'%.999999999f'%1.5", "'%' would build a value beyond"),
        ("'%s'*1000 % (('a'*9000,)*1000)", "would build a value beyond"),
        ("'%*d' % (10**9, 1)", "'\\*' widths are not allowed"),
        ("2**1024", "integer exceeds 1024 bits"),
        ("(" * 20000 + "1" + ")" * 20000, "the expression has 40001 characters"),
        ("-" * 20000 + "1", "the expression has 20001 characters"),
        ("-" * 500 + "1", "nested 501 levels deep"),
        ("(" * 300 + "1" + ")" * 300, "cannot parse"),
        ("1/0", "ZeroDivisionError"),
        ("7 % 0", "ZeroDivisionError"),
        ("2.0**100000", "OverflowError"),
        ("(2**1023 + (2**1023 - 1)) / 1", "OverflowError"),
        ("'a' + 1", "TypeError"),
        ("'%d' % 'x'", "TypeError"),
        ("(-8) ** 0.5", "a complex is not a config value"),
    ],
)
def test_safe_eval_bounds_cost_and_names_the_expression(expression, reason):
    with pytest.raises(ConfigError, match=reason) as info:
        safe_eval(expression)
    shown = expression if len(expression) <= 120 else expression[:100]
    assert str(info.value).startswith(f"${{eval:{shown}")


def test_safe_eval_keeps_values_inside_the_bounds():
    assert safe_eval("2**1000") == 2**1000
    assert safe_eval("'ab'*3 + '%03d' % 7") == "ababab007"
    assert safe_eval("20000 * 1.5") == 30000.0
    assert safe_eval("(1, 2) + (3,)") == (1, 2, 3)
    assert safe_eval("1e308 * 10") == float("inf")


def test_eval_resolver_errors_name_the_key_and_expression():
    cfg = OmegaConf.create({"policy": {"n": "${eval:'1/0'}"}})
    with pytest.raises(Exception, match=r"\$\{eval:1/0\} failed: ZeroDivisionError") as info:
        _ = cfg.policy.n
    assert "full_key: policy.n" in str(info.value)


def test_eval_resolver_is_registered_and_safe():
    cfg = OmegaConf.create({"n": 8, "m": 0, "x": "${eval:'${n}+${m}'}", "y": "${eval:'open(1)'}"})
    assert cfg.x == 8
    with pytest.raises(Exception, match="not allowed"):
        _ = cfg.y


@pytest.mark.parametrize("name", WORKSPACES)
def test_every_upstream_eval_resolves(upstream_config_dir, name):
    raw = (upstream_config_dir / f"{name}.yaml").read_text()
    raw += (upstream_config_dir / "task" / f"{_task_for(name)}.yaml").read_text()
    assert "${eval:" in raw
    cfg = _compose(upstream_config_dir, name)
    # Hand-derived values of the eval'd keys (n_obs_steps, n_action_steps, n_latency_steps).
    To, Ta = cfg.n_obs_steps, cfg.n_action_steps
    assert cfg.task.dataset.pad_before == To - 1
    assert cfg.task.dataset.pad_after == Ta - 1
    if name == "train_diffusion_unet_lowdim_workspace":
        assert (cfg.policy.model.input_dim, cfg.policy.model.local_cond_dim) == (2, None)
        assert cfg.policy.model.global_cond_dim == 20 * 2
        assert cfg.policy.n_action_steps == 8
    elif name == "train_diffusion_transformer_lowdim_workspace":
        assert (cfg.policy.model.input_dim, cfg.policy.model.cond_dim) == (2, 20)
        assert cfg.policy.model.output_dim == 2
        assert cfg.task.dataset.pad_before == 2
    else:
        assert cfg.policy.n_action_steps == 8


def test_eval_with_local_cond_override(upstream_config_dir):
    with initialize_config_dir(config_dir=str(upstream_config_dir), version_base=None):
        cfg = compose(
            "train_diffusion_unet_lowdim_workspace",
            overrides=["obs_as_global_cond=False", "obs_as_local_cond=False"],
        )
    model = cfg.policy.model
    assert (model.input_dim, model.local_cond_dim, model.global_cond_dim) == (22, None, None)


@pytest.mark.parametrize("name", WORKSPACES)
def test_upstream_targets_map_to_this_package(upstream_config_dir, name):
    cfg = translate_config(_compose(upstream_config_dir, name))
    targets = [str(node._target_) for _, node in config_compat._targets(cfg)]
    assert len(targets) >= 5
    assert all(t.startswith(("diffusion_policy_mlx.", "mlx.")) for t in targets), targets
    assert cfg._target_.startswith("diffusion_policy_mlx.workspace.train_diffusion_")
    scheduler = cfg.policy.noise_scheduler._target_
    assert scheduler in {
        "diffusion_policy_mlx.schedulers.ddpm.DDPMScheduler",
        "diffusion_policy_mlx.schedulers.ddim.DDIMScheduler",
    }
    if "optimizer" in cfg and "_target_" in cfg.optimizer:
        assert cfg.optimizer._target_ == "diffusion_policy_mlx.config_compat.AdamW"


def test_translate_leaves_original_untouched():
    cfg = OmegaConf.create(
        {"_target_": "diffusion_policy.a.B", "x": [{"_target_": "torch.nn.Identity"}]}
    )
    out = translate_config(cfg)
    assert out._target_ == "diffusion_policy_mlx.a.B"
    assert out.x[0]._target_ == "mlx.nn.Identity"
    assert cfg._target_ == "diffusion_policy.a.B"


def test_unknown_foreign_target_names_the_key():
    cfg = OmegaConf.create({"policy": {"noise_scheduler": {"_target_": "diffusers.PNDMScheduler"}}})
    with pytest.raises(
        ConfigError, match=r"policy\.noise_scheduler\._target_: 'diffusers\.PNDMScheduler'"
    ):
        translate_config(cfg)


def test_check_targets_lists_every_missing_target():
    cfg = OmegaConf.create(
        {
            "ok": {"_target_": "mlx.nn.Identity"},
            "a": {"_target_": "diffusion_policy_mlx.env_runner.no_such_runner.Runner"},
            "b": [{"_target_": "diffusion_policy_mlx.config_compat.NoSuchThing"}],
        }
    )
    with pytest.raises(ConfigError) as info:
        config_compat.check_targets(cfg)
    message = str(info.value)
    assert "a._target_" in message and "no_such_runner does not exist" in message
    assert "b[0]._target_" in message and "config_compat.NoSuchThing does not exist" in message
    assert "ok._target_" not in message


def test_upstream_classes_not_ported_yet_list_what_is_supported():
    cfg = translate_config(
        OmegaConf.create(
            {
                "_target_": "diffusion_policy.workspace.train_ibc_dfo_lowdim_workspace.X",
                "policy": {"_target_": "diffusion_policy.policy.bet_lowdim_policy.BETLowdimPolicy"},
                "task": {
                    "name": "kitchen_lowdim",
                    "dataset": {"_target_": "diffusion_policy.dataset.kitchen_lowdim_dataset.K"},
                },
            }
        )
    )
    with pytest.raises(ConfigError) as info:
        config_compat.check_targets(cfg, shipped_tasks=["pusht_lowdim", "pusht_image"])
    lines = str(info.value).splitlines()
    assert "does not have yet" in lines[0]
    workspace, policy, dataset, task = lines[1:]
    assert workspace.startswith("  _target_: ") and "train_ibc_dfo_lowdim_workspace" in workspace
    assert workspace.endswith(
        "not supported yet; supported: train_diffusion_transformer_hybrid_workspace, "
        "train_diffusion_transformer_lowdim_workspace, train_diffusion_unet_hybrid_workspace, "
        "train_diffusion_unet_image_workspace, train_diffusion_unet_lowdim_workspace"
    )
    assert policy.startswith("  policy._target_: ") and "bet_lowdim_policy" in policy
    assert "not supported yet; supported: diffusion_transformer_hybrid_image_policy" in policy
    assert dataset.endswith("not supported yet; supported: pusht_dataset, pusht_image_dataset")
    assert task == (
        "task 'kitchen_lowdim' is not supported yet; supported tasks: pusht_image, pusht_lowdim."
    )
    assert "spelling" not in str(info.value)


def test_hydra_instantiates_translated_targets():
    from hydra.utils import instantiate

    cfg = translate_config(
        OmegaConf.create(
            {
                "optimizer": {
                    "_target_": "torch.optim.AdamW",
                    "lr": 1.0e-4,
                    "betas": [0.95, 0.999],
                    "eps": 1.0e-8,
                    "weight_decay": 1.0e-6,
                },
                "identity": {"_target_": "torch.nn.Identity"},
            }
        )
    )
    optimizer = instantiate(cfg.optimizer, params=None)
    assert optimizer.betas == [0.95, 0.999] and optimizer.weight_decay == 1e-6
    assert optimizer.learning_rate.item() == pytest.approx(1e-4)
    assert isinstance(instantiate(cfg.identity), nn.Identity)


def test_adamw_follows_torch_update_rule():
    # One torch.optim.AdamW step by hand: p=1, g=0.5, lr=0.1, wd=0.01, betas (0.9, 0.999):
    # p <- p*(1 - lr*wd) = 0.999; m = 0.05, v = 2.5e-4; bias-corrected m/sqrt(v) = 0.05/0.5 = 0.1
    # p <- 0.999 - lr/(1-0.9) * 0.05 / (sqrt(2.5e-4)/sqrt(1-0.999) + eps) = 0.899.
    optimizer = AdamW(params=object(), lr=0.1, weight_decay=0.01)
    params = {"w": mx.array([1.0])}
    new = optimizer.apply_gradients({"w": mx.array([0.5])}, params)
    assert new["w"].item() == pytest.approx(0.899, abs=1e-6)
    with pytest.raises(ConfigError, match="amsgrad"):
        AdamW(amsgrad=True)


def test_device_mapping():
    assert mlx_device("cpu") == mx.Device(mx.cpu)
    expected = mx.Device(mx.gpu) if mx.is_available(mx.gpu) else mx.Device(mx.cpu)
    for name in ("cuda:0", "cuda", "mps", "gpu"):
        assert mlx_device(name) == expected
    with pytest.raises(ConfigError, match="'tpu:0' is not a device"):
        mlx_device("tpu:0")


def test_gpu_fallback_warns_once_in_one_wording(monkeypatch, caplog):
    monkeypatch.setattr(mx, "is_available", lambda device: False)
    config_compat._warn_no_gpu.cache_clear()
    with caplog.at_level("WARNING", logger=config_compat.__name__):
        devices = [mlx_device(name) for name in ("gpu", "cuda:0", "mps", "cuda")]
    assert devices == [mx.Device(mx.cpu)] * 4
    assert [r.getMessage() for r in caplog.records] == [
        "this MLX build has no GPU backend: running on the CPU "
        "(ask for device 'cpu' to skip this message)"
    ]


def test_translate_target_table():
    assert translate_target("diffusion_policy.model.diffusion.ema_model.EMAModel") == (
        "diffusion_policy_mlx.model.diffusion.ema_model.EMAModel"
    )
    assert translate_target("diffusion_policy_mlx.x.Y") == "diffusion_policy_mlx.x.Y"
    assert translate_target("diffusers.schedulers.scheduling_ddim.DDIMScheduler") == (
        "diffusion_policy_mlx.schedulers.ddim.DDIMScheduler"
    )

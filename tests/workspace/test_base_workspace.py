import copy
import logging
import sys
from functools import partial
from pathlib import Path

from diffusion_policy_mlx.accel.cpu_streams import CpuStreams

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from crafted_checkpoint import craft, evil_module
from hydra import compose, initialize_config_dir
from mlx.optimizers import SGD
from mlx.utils import tree_flatten
from omegaconf import OmegaConf, open_dict

from diffusion_policy_mlx import accel
from diffusion_policy_mlx.common.checkpoint_util import CheckpointError, CheckpointMismatchError
from diffusion_policy_mlx.config_compat import AdamW, ConfigError
from diffusion_policy_mlx.model.common.normalizer import LinearNormalizer
from diffusion_policy_mlx.model.diffusion.ema_model import EMAModel
from diffusion_policy_mlx.workspace import base_workspace
from diffusion_policy_mlx.workspace.base_workspace import BaseWorkspace, TrainStep
from diffusion_policy_mlx.workspace.train_diffusion_unet_lowdim_workspace import (
    TrainDiffusionUnetLowdimWorkspace,
)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
TINY_LOWDIM = [
    "policy.model.down_dims=[8,16]",
    "policy.model.diffusion_step_embed_dim=8",
    "policy.num_inference_steps=2",
    "training.device=cpu",
]


def _cfg(name="train_diffusion_unet_lowdim_workspace", overrides=()):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose(name, overrides=[*TINY_LOWDIM, *overrides])
    OmegaConf.resolve(cfg)
    return cfg


class Regression(nn.Module):
    """A deterministic ``compute_loss`` so compiled and hand-written steps can be compared."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2)

    def compute_loss(self, batch):
        return mx.mean(mx.square(self.linear(batch["x"]) - batch["y"]))


def _batches(n):
    rng = np.random.default_rng(0)
    return [
        {"x": mx.array(rng.normal(size=(4, 3)), mx.float32), "y": mx.array(rng.normal(size=(4, 2)))}
        for _ in range(n)
    ]


def test_train_step_equals_value_and_grad_plus_adamw():
    mx.random.seed(0)
    model, reference = Regression(), Regression()
    reference.update(model.parameters())
    step = TrainStep(model, AdamW(lr=0.01, weight_decay=0.1), gradient_accumulate_every=1)
    ref_opt = AdamW(lr=0.01, weight_decay=0.1)
    grad_fn = nn.value_and_grad(reference, reference.compute_loss)
    for batch in _batches(3):
        loss, stepped = step(batch)
        mx.eval(loss, step.state)
        ref_loss, grads = grad_fn(batch)
        ref_opt.update(reference, grads)
        assert stepped
        assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-6)
    for (k, a), (_, b) in zip(
        tree_flatten(model.parameters()), tree_flatten(reference.parameters()), strict=True
    ):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-5, atol=1e-7, err_msg=k)


@pytest.mark.parametrize("n_streams", [2, 3])
def test_train_step_split_over_cpu_streams_equals_the_whole_batch(n_streams):
    """The batch's rows split over CPU streams: the same loss and update as one stream."""
    model, reference = Regression(), Regression()
    reference.update(model.parameters())
    batches = _batches(3)
    split = TrainStep(model, AdamW(lr=0.01, weight_decay=0.1), 1, split=CpuStreams(n_streams))
    losses = []
    for batch in batches:
        loss, _ = split(batch)
        mx.eval(loss, split.state)
        losses.append(loss.item())
    whole = TrainStep(reference, AdamW(lr=0.01, weight_decay=0.1), gradient_accumulate_every=1)
    for batch, split_loss in zip(batches, losses, strict=True):
        loss, _ = whole(batch)
        mx.eval(loss, whole.state)
        assert split_loss == pytest.approx(loss.item(), rel=1e-6)
    for (k, a), (_, b) in zip(
        tree_flatten(model.parameters()), tree_flatten(reference.parameters()), strict=True
    ):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-5, atol=1e-7, err_msg=k)


def test_gradient_accumulation_averages_batches():
    model, reference = Regression(), Regression()
    reference.update(model.parameters())
    step = TrainStep(model, AdamW(lr=0.01), gradient_accumulate_every=2)
    ref_opt = AdamW(lr=0.01)
    grad_fn = nn.value_and_grad(reference, reference.compute_loss)
    batches = _batches(4)
    flags = []
    for batch in batches:
        loss, stepped = step(batch)
        mx.eval(loss, step.state)
        flags.append(stepped)
    assert flags == [False, True, False, True]
    for a, b in (batches[:2], batches[2:]):
        grads = [grad_fn(x)[1] for x in (a, b)]
        mean = nn.utils.tree_map(lambda g, h: (g + h) / 2, *grads)
        ref_opt.update(reference, mean)
    assert step.optimizer.step.item() == 2
    for (k, a), (_, b) in zip(
        tree_flatten(model.parameters()), tree_flatten(reference.parameters()), strict=True
    ):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-5, atol=1e-7, err_msg=k)
    with pytest.raises(ValueError, match="gradient_accumulate_every must be >= 1"):
        TrainStep(model, AdamW(), gradient_accumulate_every=0)


class WithFrozenAndBatchNorm(Regression):
    """Averaged (linear), copied because frozen (stats), copied because BatchNorm (bn)."""

    def __init__(self):
        super().__init__()
        self.stats = nn.Linear(3, 2)
        self.stats.freeze()
        self.bn = nn.BatchNorm(2)

    def compute_loss(self, batch):
        h = self.bn(self.linear(batch["x"]) + self.stats(batch["x"]))
        return mx.mean(mx.square(h - batch["y"]))


@pytest.mark.parametrize("accumulate", [1, 2])
def test_fused_ema_matches_ema_model_step(accumulate):
    model = WithFrozenAndBatchNorm()
    reference = copy.deepcopy(model)
    ema = EMAModel(copy.deepcopy(model), power=0.75)
    reference_ema = EMAModel(copy.deepcopy(model), power=0.75)
    fused = TrainStep(model, AdamW(lr=0.05), accumulate, ema)
    plain = TrainStep(reference, AdamW(lr=0.05), accumulate)
    for batch in _batches(6):
        loss, _ = fused(batch)
        mx.eval(loss, fused.state)
        ref_loss, _ = plain(batch)
        reference_ema.step(reference)
        mx.eval(ref_loss, plain.state, reference_ema.averaged_model.parameters())
    assert ema.optimization_step == reference_ema.optimization_step == 6
    assert ema.decay == reference_ema.decay > 0
    got = dict(tree_flatten(ema.averaged_model.parameters()))
    want = dict(tree_flatten(reference_ema.averaged_model.parameters()))
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_allclose(
            np.array(got[k]), np.array(want[k]), rtol=1e-5, atol=1e-6, err_msg=k
        )
    # the copied ones equal the trained model's, the averaged ones lag behind it
    trained = dict(tree_flatten(model.parameters()))
    assert mx.array_equal(got["stats.weight"], trained["stats.weight"])
    assert mx.array_equal(got["bn.running_mean"], trained["bn.running_mean"])
    assert not mx.array_equal(got["linear.weight"], trained["linear.weight"])


def _fitted_normalizer() -> LinearNormalizer:
    rng = np.random.default_rng(1)
    normalizer = LinearNormalizer()
    normalizer.fit(
        {
            "obs": rng.normal(size=(64, 20)).astype(np.float32),
            "action": rng.normal(size=(64, 2)).astype(np.float32),
        }
    )
    return normalizer


def _trained_workspace(tmp_path, overrides=()) -> TrainDiffusionUnetLowdimWorkspace:
    workspace = TrainDiffusionUnetLowdimWorkspace(_cfg(overrides=overrides), output_dir=tmp_path)
    workspace.model.set_normalizer(_fitted_normalizer())
    workspace.ema_model.set_normalizer(_fitted_normalizer())
    rng = np.random.default_rng(2)
    batch = {
        "obs": mx.array(rng.normal(size=(4, 16, 20)), mx.float32),
        "action": mx.array(rng.normal(size=(4, 16, 2)), mx.float32),
    }
    step = TrainStep(workspace.model, workspace.optimizer, 1)
    for _ in range(2):
        loss, _ = step(batch)
        workspace.ema.step(workspace.model)
        mx.eval(loss, step.state, workspace.ema_model.parameters())
    workspace.epoch, workspace.global_step = 3, 41
    workspace.topk_state = {"path_value_map": {"a.ckpt": 0.5}}
    return workspace


def _flat(module):
    return {k: np.array(v) for k, v in tree_flatten(module.parameters())}


def test_policy_train_steps_split_over_cpu_streams_follow_the_whole_batch(tmp_path, cpu_config):
    """The diffusion loss's noise and timesteps are drawn per sample: two streams' chunks draw
    the whole batch's rows, so the split U-Net policy trains like the unsplit one."""
    losses, params = {}, {}
    for n in (2, 1):
        mx.random.seed(0)
        workspace = TrainDiffusionUnetLowdimWorkspace(_cfg(), output_dir=tmp_path / str(n))
        workspace.accelerate(partial(accel.apply, config=cpu_config(cpu_streams=n)))
        assert workspace.model.batch_split.count == n
        workspace.model.set_normalizer(_fitted_normalizer())
        rng = np.random.default_rng(2)
        batch = {
            "obs": mx.array(rng.normal(size=(5, 16, 20)), mx.float32),
            "action": mx.array(rng.normal(size=(5, 16, 2)), mx.float32),
        }
        # SGD: parameter changes are the gradients (AdamW would blow float noise in
        # near-zero gradients up to full-size steps)
        step = TrainStep(
            workspace.model, SGD(learning_rate=0.1), 1, split=workspace.model.batch_split
        )
        losses[n] = []
        for _ in range(3):
            loss, _ = step(batch)
            mx.eval(loss, step.state)
            losses[n].append(loss.item())
        params[n] = _flat(workspace.model)
    np.testing.assert_allclose(losses[2], losses[1], rtol=1e-5)
    assert len(set(losses[1])) == 3  # fresh noise every step
    for k, v in params[1].items():
        np.testing.assert_allclose(params[2][k], v, rtol=1e-4, atol=1e-6, err_msg=k)


def test_workspace_checkpoint_round_trip(tmp_path):
    workspace = _trained_workspace(tmp_path)
    path = workspace.save_checkpoint()
    assert path == tmp_path / "checkpoints" / "latest.ckpt"
    after_save = mx.random.uniform(shape=(2,))

    restored = BaseWorkspace.create_from_checkpoint(path, output_dir=tmp_path / "other")
    assert type(restored) is TrainDiffusionUnetLowdimWorkspace
    assert (restored.epoch, restored.global_step) == (3, 41)
    assert restored.topk_state == {"path_value_map": {"a.ckpt": 0.5}}
    assert restored.ema.optimization_step == 2 and restored.ema.decay == workspace.ema.decay
    for name in ("model", "ema_model"):
        expected, got = _flat(getattr(workspace, name)), _flat(getattr(restored, name))
        assert expected.keys() == got.keys()
        for k in expected:
            np.testing.assert_array_equal(expected[k], got[k], err_msg=f"{name}.{k}")
    opt_a, opt_b = (
        dict(tree_flatten(workspace.optimizer.state)),
        dict(tree_flatten(restored.optimizer.state)),
    )
    assert opt_a.keys() == opt_b.keys() and opt_b["step"].item() == 2
    # the MLX generator continues exactly where the saved run was
    assert mx.array_equal(mx.random.uniform(shape=(2,)), after_save)


def test_debug_caps_rollouts_and_sampling_and_drops_the_optimizer_moments(tmp_path):
    workspace = _trained_workspace(tmp_path, overrides=["policy.num_inference_steps=10"])
    full = sum(v.nbytes for v in workspace.checkpoint_tensors().values())
    cfg = copy.deepcopy(workspace.cfg)
    cfg.task.env_runner.n_test = 3
    cfg.task.env_runner.n_train_vis = 0
    cfg.val_dataloader.batch_size = 8
    workspace._apply_debug(cfg)
    assert (cfg.dataloader.batch_size, cfg.val_dataloader.batch_size) == (16, 8)
    runner = cfg.task.env_runner
    # caps, not settings: a smaller value stays
    assert (runner.n_train, runner.n_train_vis, runner.n_test, runner.n_test_vis) == (1, 0, 1, 1)
    assert runner.max_steps == base_workspace.DEBUG_ROLLOUT_CAPS["max_steps"]
    assert (cfg.training.num_epochs, cfg.training.max_train_steps, cfg.training.rollout_every) == (
        2,
        3,
        1,
    )
    assert workspace.model.num_inference_steps == workspace.ema_model.num_inference_steps == 4
    # the workspace's own config, which checkpoints store for eval.py, keeps the full sampler
    assert workspace.cfg.policy.num_inference_steps == 10
    light = workspace.checkpoint_tensors()
    assert sorted(k for k in light if k.startswith("optimizer.")) == [
        "optimizer.learning_rate",
        "optimizer.step",
    ]
    assert sum(v.nbytes for v in light.values()) < 0.6 * full


def test_a_debug_checkpoint_resumes_with_fresh_optimizer_moments(tmp_path, caplog):
    workspace = _trained_workspace(tmp_path)
    workspace.light_checkpoints = True
    path = workspace.save_checkpoint()
    restored = TrainDiffusionUnetLowdimWorkspace(_cfg(), output_dir=tmp_path / "other")
    with caplog.at_level(logging.INFO):
        ckpt = restored.load_checkpoint(path)
    assert ckpt.state["optimizer_moments"] is False and ckpt.finished_epoch == 2
    assert "holds no optimizer moments" in caplog.text
    # the step count and learning rate come back, so the LR schedule resumes where it was
    assert restored.optimizer.state["step"].item() == 2
    assert restored.optimizer.learning_rate.item() == workspace.optimizer.learning_rate.item()
    moments = dict(tree_flatten(restored.optimizer.state))
    assert all(not mx.any(v).item() for k, v in moments.items() if v.ndim)
    assert (restored.epoch, restored.global_step) == (3, 41)
    np.testing.assert_array_equal(
        _flat(workspace.ema_model)["model.final_conv.1.weight"],
        _flat(restored.ema_model)["model.final_conv.1.weight"],
    )


def test_loading_into_another_config_names_keys(tmp_path):
    path = _trained_workspace(tmp_path).save_checkpoint()
    other = TrainDiffusionUnetLowdimWorkspace(
        _cfg(overrides=["policy.model.down_dims=[8,32]"]), output_dir=tmp_path
    )
    with pytest.raises(CheckpointMismatchError) as info:
        other.load_checkpoint(path)
    message = str(info.value)
    assert "policy.model.down_dims: [8, 16] -> [8, 32]" in message
    assert "shape mismatch" in message
    assert (
        "model.down_modules.1.1.blocks.1.block.1.weight: checkpoint (16,) vs model (32,)" in message
    )


def test_compatible_config_change_is_reported_not_fatal(tmp_path, caplog):
    path = _trained_workspace(tmp_path).save_checkpoint()
    other = TrainDiffusionUnetLowdimWorkspace(
        _cfg(overrides=["policy.num_inference_steps=3"]), output_dir=tmp_path
    )
    with caplog.at_level(logging.WARNING):
        other.load_checkpoint(path)
    assert "policy.num_inference_steps: 2 -> 3" in caplog.text
    assert other.global_step == 41


def test_run_refuses_a_damaged_latest_checkpoint(tmp_path):
    workspace = _trained_workspace(tmp_path)
    path = workspace.save_checkpoint()
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"latest\.ckpt is truncated"):
        workspace.run()


def _write_text_scheduler(target: Path) -> dict:
    return {"_target_": "pathlib.Path.write_text", "self": str(target), "data": "import os"}


def test_checkpoint_that_writes_a_file_is_refused(tmp_path):
    saved = _trained_workspace(tmp_path).save_checkpoint()
    pth = tmp_path / "evil.pth"

    def hostile(cfg):
        cfg["policy"]["noise_scheduler"] = _write_text_scheduler(pth)
        return cfg

    crafted = craft(saved, tmp_path / "crafted.ckpt", config=hostile)
    with pytest.raises(ConfigError) as info:
        BaseWorkspace.create_from_checkpoint(crafted, output_dir=tmp_path / "out")
    assert "policy.noise_scheduler._target_: 'pathlib.Path.write_text'" in str(info.value)
    assert str(crafted) in str(info.value)
    assert not pth.exists() and not (tmp_path / "out").exists()


def test_resume_checks_the_stored_config(tmp_path, monkeypatch):
    workspace = _trained_workspace(tmp_path)
    saved = workspace.save_checkpoint()
    marker = tmp_path / "ran"
    name = evil_module(tmp_path, "dp_mlx_evil_resume", marker)
    monkeypatch.syspath_prepend(str(tmp_path))

    def hostile(cfg):
        cfg["_target_"] = f"{name}.run"
        cfg["trusted_targets"] = [name]  # a stored config cannot trust itself
        return cfg

    craft(saved, saved, config=hostile)
    with pytest.raises(ConfigError, match=f"  _target_: '{name}.run'"):
        workspace.run()
    assert name not in sys.modules and not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", f"{name}.py", "run.lock"]


def test_run_refuses_an_oversize_config_at_start(tmp_path):
    cfg = _cfg()
    with open_dict(cfg):
        cfg.task.notes = "x" * 20_000_000
    workspace = TrainDiffusionUnetLowdimWorkspace(cfg, output_dir=tmp_path)
    with pytest.raises(ConfigError, match="MiB in a checkpoint"):
        workspace.run()
    assert list(tmp_path.iterdir()) == []


def test_workspace_checks_the_policy_type(tmp_path):
    from diffusion_policy_mlx.workspace.train_diffusion_transformer_lowdim_workspace import (
        TrainDiffusionTransformerLowdimWorkspace,
    )

    with pytest.raises(
        TypeError,
        match="config policy built a DiffusionUnetLowdimPolicy; this workspace needs a "
        "DiffusionTransformerLowdimPolicy",
    ):
        TrainDiffusionTransformerLowdimWorkspace(_cfg(), output_dir=tmp_path)

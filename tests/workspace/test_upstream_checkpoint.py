"""Importing checkpoints that upstream's own workspaces wrote (tests/fixtures/upstream_checkpoints,
made by tests/fixtures/make_upstream_checkpoints.py): weights, normalizer, optimizer, counters,
and the imported checkpoint evaluated by eval.py and resumed by train.py."""

import json
import lzma
import os
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten
from safetensors import safe_open

from diffusion_policy_mlx.common.upstream import to_mlx_layout
from diffusion_policy_mlx.workspace.base_workspace import BaseWorkspace
from diffusion_policy_mlx.workspace.upstream_checkpoint import (
    import_upstream_checkpoint,
    read_upstream_checkpoint,
    torch_parameter_order,
)

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "upstream_checkpoints"
NAMES = sorted(p.name.removesuffix(".ckpt.xz") for p in FIXTURES.glob("*.ckpt.xz"))
# the fixture script saves upstream's epoch 7 at global step 39
UPSTREAM_EPOCH, UPSTREAM_STEP = 7, 39


def unpack(name: str, tmp_path: Path) -> Path:
    path = tmp_path / f"{name}.ckpt"
    path.write_bytes(lzma.decompress((FIXTURES / f"{name}.ckpt.xz").read_bytes()))
    return path


def reference(name: str, tmp_path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    path = tmp_path / f"{name}.reference.safetensors"
    path.write_bytes(lzma.decompress((FIXTURES / f"{name}.reference.safetensors.xz").read_bytes()))
    with safe_open(str(path), "numpy") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


@pytest.fixture(scope="module", params=NAMES)
def imported(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    result = import_upstream_checkpoint(unpack(request.param, tmp), tmp / "run" / "latest.ckpt")
    return request.param, tmp, result


def relative_error(ours: mx.array, theirs: np.ndarray) -> float:
    return float(np.abs(np.array(ours) - theirs).max() / np.abs(theirs).max())


def test_all_five_workspaces_have_fixtures():
    assert NAMES == sorted(
        ["unet_lowdim", "unet_image", "unet_hybrid", "transformer_lowdim", "transformer_hybrid"]
    )


def test_imported_ema_policy_gives_upstreams_outputs(imported):
    name, tmp, result = imported
    ref, _ = reference(name, tmp)
    # from the written file, as eval.py builds it
    workspace = BaseWorkspace.create_from_checkpoint(result.path, output_dir=tmp / "run")
    policy = workspace.ema_model
    n_args = sum(k.startswith("denoiser.arg") for k in ref)
    args = [mx.array(ref[f"denoiser.arg{i}"]) for i in range(n_args)]
    kwargs = {
        k.removeprefix("denoiser."): mx.array(v)
        for k, v in ref.items()
        if k.startswith("denoiser.") and not k.startswith(("denoiser.arg", "denoiser.out"))
    }
    out = policy.model(*args, **kwargs)
    assert relative_error(out, ref["denoiser.out"]) < 1e-4
    # the trained (non-EMA) weights differ, so the EMA copy is the one that was loaded
    assert relative_error(workspace.model.model(*args, **kwargs), ref["denoiser.out"]) > 1e-3
    if "obs_encoder.out" in ref:
        obs = {
            k.removeprefix("obs_encoder.in."): mx.array(v)
            for k, v in ref.items()
            if k.startswith("obs_encoder.in.")
        }
        assert relative_error(policy.obs_encoder(obs), ref["obs_encoder.out"]) < 1e-4


def test_normalizer_and_counters_are_imported(imported):
    name, tmp, result = imported
    upstream = read_upstream_checkpoint(tmp / f"{name}.ckpt")
    workspace = result.workspace
    assert (workspace.epoch, workspace.global_step) == (UPSTREAM_EPOCH + 1, UPSTREAM_STEP + 1)
    assert workspace.ema.optimization_step == UPSTREAM_STEP + 1
    for policy, state in (
        (workspace.model, upstream.model),
        (workspace.ema_model, upstream.ema_model),
    ):
        ours = policy.normalizer.state_dict()
        theirs = {
            k.removeprefix("normalizer."): v
            for k, v in state.items()
            if k.startswith("normalizer.")
        }
        assert ours.keys() == theirs.keys() and len(ours) > 0
        for k, v in theirs.items():
            np.testing.assert_array_equal(ours[k], v)


def test_optimizer_order_is_upstreams(imported):
    name, tmp, result = imported
    _, metadata = reference(name, tmp)
    torch_names = json.loads(metadata["optimizer_parameters"])
    upstream = read_upstream_checkpoint(tmp / f"{name}.ckpt")
    order = torch_parameter_order(result.workspace, upstream.model)
    assert len(order) == len(torch_names)
    for ours, theirs in zip(order, torch_names, strict=True):
        assert ours in theirs.split("|")


@pytest.mark.parametrize("name", [n for n in NAMES if "lowdim" in n])
def test_adamw_moments_are_converted(name, tmp_path):
    result = import_upstream_checkpoint(unpack(name, tmp_path), tmp_path / "out.ckpt")
    assert any(note.startswith("optimizer: AdamW moments") for note in result.notes)
    upstream = read_upstream_checkpoint(tmp_path / f"{name}.ckpt")
    names = torch_parameter_order(result.workspace, upstream.model)
    state = dict(tree_flatten(result.workspace.optimizer.state))
    steps = {k: v for k, v in state.items() if k.endswith("step")}
    assert steps and all(int(v) == 4 for v in steps.values())  # the fixture's four AdamW steps
    model = result.workspace.model
    checked = 0
    for index, moments in upstream.optimizer["state"].items():
        param = names[index]
        m = to_mlx_layout(model, {param: moments["exp_avg"]})[param]
        v = to_mlx_layout(model, {param: moments["exp_avg_sq"]})[param]
        [m_key] = [k for k in state if k.endswith(f"{param}.m")]
        [v_key] = [k for k in state if k.endswith(f"{param}.v")]
        np.testing.assert_array_equal(np.array(state[m_key]), m)
        np.testing.assert_array_equal(np.array(state[v_key]), v)
        checked += 1
    assert checked == len(tree_flatten(model.trainable_parameters()))


def test_untrained_checkpoint_starts_a_fresh_optimizer(tmp_path):
    result = import_upstream_checkpoint(unpack("unet_image", tmp_path), tmp_path / "out.ckpt")
    assert any("starts fresh" in note and "no AdamW moments" in note for note in result.notes)


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, *script.split(), *args],
        cwd=REPO,
        env={**os.environ, "WANDB_MODE": "disabled"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_cli_then_eval_rolls_out_an_imported_lowdim_checkpoint(tmp_path):
    dst = tmp_path / "imported.ckpt"
    proc = run(
        "-m diffusion_policy_mlx.scripts.import_upstream",
        str(unpack("unet_lowdim", tmp_path)),
        "-o",
        str(dst),
    )
    assert "TrainDiffusionUnetLowdimWorkspace, epoch 8, global step 40" in proc.stdout
    assert "AdamW moments of" in proc.stdout
    out = tmp_path / "eval"
    run(
        "eval.py",
        *("-c", str(dst), "-o", str(out), "-d", "cpu"),
        "policy.num_inference_steps=4",
        "task.env_runner.n_train=0",
        "task.env_runner.n_train_vis=0",
        "task.env_runner.n_test=1",
        "task.env_runner.n_test_vis=0",
        "task.env_runner.max_steps=8",
    )
    log = json.loads((out / "eval_log.json").read_text())
    assert 0.0 <= log["test/mean_score"] <= 1.0


def test_train_resumes_from_an_imported_checkpoint(tmp_path, pusht_zarr):
    """Fine-tuning: the imported file as a run's latest.ckpt, and train.py with the same policy
    config continues from upstream's next epoch."""
    run_dir = tmp_path / "run"
    latest = run_dir / "checkpoints" / "latest.ckpt"
    import_upstream_checkpoint(unpack("unet_lowdim", tmp_path), latest)
    run(
        "train.py",
        "--config-name=train_diffusion_unet_lowdim_workspace",
        f"task.dataset.zarr_path={pusht_zarr}",
        f"hydra.run.dir={run_dir}",
        "policy.model.diffusion_step_embed_dim=8",
        "policy.model.down_dims=[8,16]",
        "policy.model.kernel_size=3",
        "policy.num_inference_steps=2",
        "training.num_epochs=9",
        "training.max_train_steps=2",
        "training.max_val_steps=1",
        "training.rollout_every=1000",
        "training.sample_every=1000",
        "dataloader.batch_size=16",
        "val_dataloader.batch_size=16",
    )
    lines = [json.loads(line) for line in (run_dir / "logs.json.txt").read_text().splitlines()]
    assert {line["epoch"] for line in lines} == {UPSTREAM_EPOCH + 1}
    assert lines[0]["global_step"] == UPSTREAM_STEP + 1
    assert all(np.isfinite(line["train_loss"]) for line in lines)

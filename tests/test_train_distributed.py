"""train.py under ``mlx.launch -n 2`` (ring backend on this machine) against a 1-process run."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from diffusion_policy_mlx.common.checkpoint_util import load_checkpoint
from diffusion_policy_mlx.common.json_logger import read_json_log

REPO = Path(__file__).resolve().parents[1]
LAUNCH = shutil.which("mlx.launch", path=str(Path(sys.executable).parent))

pytestmark = pytest.mark.skipif(LAUNCH is None, reason="mlx.launch is not installed")


TINY = {
    "train_diffusion_unet_lowdim_workspace": [
        "task=pusht_lowdim",
        "policy.model.down_dims=[16,32]",
        "policy.model.diffusion_step_embed_dim=16",
        "policy.num_inference_steps=4",
    ],
    # random crops too: every rank must crop its samples as a 1-process run would
    "train_diffusion_unet_hybrid_workspace": [
        "task=pusht_image",
        "policy.down_dims=[16,32]",
        "policy.diffusion_step_embed_dim=16",
        "policy.num_inference_steps=4",
        "policy.crop_shape=[48,48]",
    ],
}
LOWDIM = "train_diffusion_unet_lowdim_workspace"


def args(run_dir: Path, zarr: Path, *extra: str, name: str = LOWDIM) -> list[str]:
    return [
        f"--config-name={name}",
        *TINY[name],
        f"task.dataset.zarr_path={zarr}",
        f"hydra.run.dir={run_dir}",
        # 5 samples: uneven shards of 3 and 2, so the weighted gradient average is exercised
        "dataloader.batch_size=5",
        "dataloader.num_workers=0",
        "val_dataloader.batch_size=8",
        "val_dataloader.num_workers=0",
        "training.max_train_steps=4",
        "training.max_val_steps=2",
        "training.rollout_every=100",
        "training.val_every=1",
        "training.sample_every=1",
        "training.checkpoint_every=1",
        "task.env_runner.n_train=1",
        "task.env_runner.n_test=1",
        "task.env_runner.n_train_vis=0",
        "task.env_runner.n_test_vis=0",
        "task.env_runner.max_steps=8",
        *extra,
    ]


ENV = {**os.environ, "WANDB_MODE": "disabled"}


def launch(n: int, train_args: list[str], **kwargs) -> subprocess.Popen:
    cmd = [LAUNCH, "-n", str(n), "--backend", "ring", "--", sys.executable, "train.py"]
    return subprocess.Popen(
        [*cmd, *train_args],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def single(train_args: list[str]) -> None:
    subprocess.run(
        [sys.executable, "train.py", *train_args],
        cwd=REPO,
        env=ENV,
        check=True,
        timeout=600,
        capture_output=True,
    )


@pytest.mark.parametrize(
    "name",
    [LOWDIM, pytest.param("train_diffusion_unet_hybrid_workspace", marks=pytest.mark.slow)],
)
def test_two_processes_follow_the_one_process_loss_curve(tmp_path, pusht_zarr, name):
    single(args(tmp_path / "one", pusht_zarr, "training.num_epochs=3", name=name))
    proc = launch(2, args(tmp_path / "two", pusht_zarr, "training.num_epochs=3", name=name))
    out, _ = proc.communicate(timeout=600)
    assert "data-parallel training on 2 processes, global batch 5" in out, out[-3000:]
    one = read_json_log(tmp_path / "one" / "logs.json.txt")
    two = read_json_log(tmp_path / "two" / "logs.json.txt")
    assert [r["global_step"] for r in two] == list(range(12))
    np.testing.assert_allclose(
        [r["train_loss"] for r in two], [r["train_loss"] for r in one], rtol=2e-5
    )
    for a, b in zip(one, two, strict=True):
        if "val_loss" in a:
            assert b["val_loss"] == pytest.approx(a["val_loss"], rel=2e-5)
    # rank 0 alone writes; the checkpoint equals the 1-process run's (and the ranks agreed,
    # or check_replicas_agree would have stopped the run)
    ckpt_one = load_checkpoint(tmp_path / "one" / "checkpoints" / "latest.ckpt")
    ckpt_two = load_checkpoint(tmp_path / "two" / "checkpoints" / "latest.ckpt")
    for key, value in ckpt_one.group("model").items():
        np.testing.assert_allclose(ckpt_two.group("model")[key], value, rtol=1e-4, atol=1e-6)
    assert not (REPO / "train.log").exists()  # rank 1 writes no Hydra folder or log of its own


def rank_pid(run_dir: Path, rank: int) -> int | None:
    """The pid of ``train.py`` rank ``rank`` writing to ``run_dir``."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            f"hydra.run.dir={run_dir}".encode() in cmdline
            and f"MLX_RANK={rank}".encode() in environ
        ):
            return int(proc.name)
    return None


def test_a_killed_rank_stops_the_run_and_the_same_command_resumes(tmp_path, pusht_zarr):
    run_dir = tmp_path / "run"
    train_args = args(run_dir, pusht_zarr, "training.num_epochs=200")
    proc = launch(2, train_args)
    latest = run_dir / "checkpoints" / "latest.ckpt"
    deadline = time.monotonic() + 300
    while not latest.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert latest.exists(), "no checkpoint was written"
    pid = rank_pid(run_dir, 1)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=120)
    assert "Node with rank 1 exited" in out, out[-3000:]
    assert "run the same command again to resume" in out
    stopped = load_checkpoint(latest)  # intact
    assert 1 <= stopped.state["epoch"] < 200

    resumed = launch(2, [*train_args[:-1], f"training.num_epochs={stopped.state['epoch'] + 2}"])
    out, _ = resumed.communicate(timeout=600)
    assert f"Resumed after epoch {stopped.finished_epoch}" in out, out[-3000:]
    logs = read_json_log(run_dir / "logs.json.txt")
    assert logs[-1]["epoch"] == stopped.state["epoch"] + 1
    assert [r["global_step"] for r in logs] == list(range(len(logs)))

"""A run folder stays one run's: logs after kills and restarts, a second process, a full disk,
an unwritable checkpoint folder, wandb faults. Tiny lowdim runs on the real PushT data."""

import errno
import json
import os
import shutil
import socket
from pathlib import Path

import mlx.core as mx
import pytest
from fake_server import FakeServer
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from test_train import REPO, SMALL_RUN, TINY, run_train, train_args

from diffusion_policy_mlx.common import atomic_file
from diffusion_policy_mlx.common.checkpoint_util import CheckpointError, load_checkpoint
from diffusion_policy_mlx.common.json_logger import read_json_log
from diffusion_policy_mlx.common.run_lock import run_lock
from diffusion_policy_mlx.workspace.train_diffusion_unet_lowdim_workspace import (
    TrainDiffusionUnetLowdimWorkspace,
)

NAME = "train_diffusion_unet_lowdim_workspace"


def _records(*steps, **values) -> str:
    return "".join(json.dumps({"global_step": s, "epoch": s // 3, **values}) + "\n" for s in steps)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, pusht_zarr) -> Path:
    """A debug run (2 epochs of 3 steps, checkpointed at global step 6)."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    run_train(train_args(NAME, run_dir, pusht_zarr))
    return run_dir


def test_a_run_restarted_without_a_checkpoint_starts_a_new_log(tmp_path, pusht_zarr):
    """The first run died before its first checkpoint: its 49 lines are kept aside, not
    continued (which made 55 lines for 48 steps)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    dead = _records(*range(49), train_loss=9.0)
    (run_dir / "logs.json.txt").write_text(dead)
    run_train(train_args(NAME, run_dir, pusht_zarr))
    assert [r["global_step"] for r in read_json_log(run_dir / "logs.json.txt")] == list(range(6))
    assert (run_dir / "logs.json.txt.1").read_text() == dead
    assert "the old log is kept as" in (run_dir / "train.log").read_text()


def test_resume_drops_lines_past_the_checkpoint_and_skips_a_damaged_line(
    finished_run, tmp_path, pusht_zarr
):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    logs = run_dir / "logs.json.txt"
    kept = logs.read_text()
    # a damaged line, then what a killed continuation logged after the checkpoint at step 6
    logs.write_text(kept + '{"global_step": 5, "train_lo\x00\x00\n' + _records(6, 7, 8, 9))
    extra = ["training.debug=False", "training.num_epochs=3", "training.max_train_steps=3"]
    extra += ["training.max_val_steps=1", "training.rollout_every=1000"]
    run_train(train_args(NAME, run_dir, pusht_zarr, *extra))
    records = read_json_log(logs)
    assert [r["global_step"] for r in records] == list(range(9))
    assert logs.read_text().startswith(kept)
    assert all("train_loss" in r for r in records[6:])  # logged anew, not the stale lines
    train_log = (run_dir / "train.log").read_text()
    assert "1 damaged line(s)" in train_log and "line 7)" in train_log
    assert load_checkpoint(run_dir / "checkpoints" / "latest.ckpt").state["global_step"] == 9


def test_a_second_process_on_the_run_folder_is_refused_naming_the_first(tmp_path, pusht_zarr):
    run_dir = tmp_path / "run"
    with run_lock(run_dir):  # this test process plays the first run
        proc = run_train(train_args(NAME, run_dir, pusht_zarr), check=False)
    assert proc.returncode != 0
    assert f"is in use by process {os.getpid()} on host {socket.gethostname()}" in proc.stderr
    assert not (run_dir / "logs.json.txt").exists()
    assert not (run_dir / "checkpoints").exists()


def test_wandb_faults_cost_one_warning_and_the_run_logs_offline(tmp_path, pusht_zarr):
    """An API key, ``WANDB_MODE=""`` and a wandb host behind a proxy that answers garbage."""
    garbage = FakeServer("garbage")
    url = garbage.url
    run_dir = tmp_path / "run"
    env = {"WANDB_MODE": "", "WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": url}
    env["WANDB_CONFIG_DIR"] = str(tmp_path / "wandb_config")
    try:
        run_train(train_args(NAME, run_dir, pusht_zarr), **env)
    finally:
        garbage.close()
    train_log = (run_dir / "train.log").read_text()
    warnings = [line for line in train_log.splitlines() if "[WARNING] - wandb:" in line]
    assert len(warnings) == 1 and f"cannot reach {url}" in warnings[0]
    assert any((run_dir / "wandb").glob("offline-run-*"))
    assert [r["global_step"] for r in read_json_log(run_dir / "logs.json.txt")] == list(range(6))


# ---------------------------------------------------------------------------------------------
# In-process: faults the file system of a test machine cannot produce on demand
# ---------------------------------------------------------------------------------------------


def _workspace(run_dir: Path, zarr: Path, *extra: str) -> TrainDiffusionUnetLowdimWorkspace:
    overrides = [f"task.dataset.zarr_path={zarr}", *TINY[NAME], *SMALL_RUN, *extra]
    with initialize_config_dir(config_dir=str(REPO / "config"), version_base=None):
        cfg = compose(NAME, overrides=["task=pusht_lowdim", *overrides])
    OmegaConf.resolve(cfg)
    return TrainDiffusionUnetLowdimWorkspace(cfg, output_dir=run_dir)


def test_an_unwritable_checkpoint_folder_is_refused_before_any_work(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    # root ignores permission bits, so a read-only file system is simulated; the data path
    # does not exist: the refusal must come before the data is opened
    monkeypatch.setattr(atomic_file.tempfile, "TemporaryFile", read_only)
    workspace = _workspace(tmp_path / "run", tmp_path / "no_such.zarr")
    with pytest.raises(CheckpointError) as info:
        workspace.run()
    assert f"cannot write checkpoints to {tmp_path / 'run' / 'checkpoints'}" in str(info.value)
    assert "Read-only file system (EROFS)" in str(info.value) and "Nothing was trained" in (
        str(info.value)
    )
    assert not (tmp_path / "run" / "logs.json.txt").exists()


def test_a_full_disk_at_a_checkpoint_keeps_the_last_one(tmp_path, pusht_zarr, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    real = mx.save_safetensors
    saves = []

    def disk_fills_at_the_second_save(file, arrays, metadata):
        saves.append(file.name)
        if len(saves) == 1:
            return real(file, arrays, metadata=metadata)
        file.write(b"\x10" * 4096)  # part of the file made it to disk
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(mx, "save_safetensors", disk_fills_at_the_second_save)
    run_dir = tmp_path / "run"
    workspace = _workspace(run_dir, pusht_zarr)
    latest = run_dir / "checkpoints" / "latest.ckpt"
    with pytest.raises(CheckpointError) as info:
        workspace.run()
    message = str(info.value)
    assert f"could not write checkpoint {latest}: No space left on device (ENOSPC)" in message
    assert "previous latest.ckpt is intact" in message
    monkeypatch.undo()
    assert load_checkpoint(latest).state["global_step"] == 3  # epoch 0's
    # epoch 0's top-k copy (a hard link to that latest.ckpt) and no partial file
    names = sorted(p.name for p in latest.parent.iterdir())
    assert names[1:] == ["latest.ckpt"] and names[0].startswith("epoch=0000-")

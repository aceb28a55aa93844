"""The training loop stops at the first non-finite loss, naming the step and checkpoint."""

import os

import pytest

from diffusion_policy_mlx.workspace.loss_guard import TrainingDivergedError, require_finite_loss


def test_finite_losses_pass(tmp_path):
    require_finite_loss(0.5, 3, 0, tmp_path)
    require_finite_loss(1e30, 3, 0, tmp_path)


@pytest.mark.parametrize("loss", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_loss_names_step_and_no_checkpoint(tmp_path, loss):
    with pytest.raises(TrainingDivergedError, match=rf"train_loss is {loss} at global step 12 "):
        require_finite_loss(loss, 12, 4, tmp_path / "checkpoints")
    with pytest.raises(FloatingPointError, match="No checkpoint had been written yet"):
        require_finite_loss(loss, 12, 4, tmp_path / "checkpoints")


def test_the_last_good_checkpoint_is_latest_or_the_newest_top_k(tmp_path):
    old, new = tmp_path / "epoch=0000-a.ckpt", tmp_path / "epoch=0001-b.ckpt"
    for i, path in enumerate((new, old)):
        path.write_bytes(b"x")
        os.utime(path, ns=(10**9 * (2 - i), 10**9 * (2 - i)))
    with pytest.raises(TrainingDivergedError, match=f"last good checkpoint is {new}"):
        require_finite_loss(float("nan"), 1, 0, tmp_path)
    (tmp_path / "latest.ckpt").write_bytes(b"x")
    with pytest.raises(TrainingDivergedError, match=f"last good checkpoint is {tmp_path}/latest"):
        require_finite_loss(float("nan"), 1, 0, tmp_path)

"""eval.py on a checkpoint train.py produced: the end-to-end train + eval smoke test."""

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from crafted_checkpoint import craft, evil_module
from mlx.utils import tree_flatten
from tiny_runs import TINY_EVAL

from diffusion_policy_mlx.common.checkpoint_util import (
    CheckpointError,
    CheckpointMismatchError,
    load_checkpoint,
)
from diffusion_policy_mlx.config_compat import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _load_eval_module():
    spec = importlib.util.spec_from_file_location("dp_mlx_eval", REPO / "eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def checkpoint(tiny_lowdim_checkpoint) -> Path:
    return tiny_lowdim_checkpoint


def test_eval_writes_log_and_videos(checkpoint, tmp_path):
    out = tmp_path / "eval"
    proc = subprocess.run(
        [sys.executable, str(REPO / "eval.py"), "-c", str(checkpoint), "-o", str(out), *TINY_EVAL],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    log = json.loads((out / "eval_log.json").read_text())
    assert {"test/mean_score", "train/mean_score"} <= log.keys()
    rewards = [v for k, v in log.items() if k.startswith("test/sim_max_reward_")]
    assert len(rewards) == 2 and all(0.0 <= r <= 1.0 for r in rewards)
    assert log["test/mean_score"] == pytest.approx(np.mean(rewards))
    videos = [v for k, v in log.items() if "sim_video" in k]
    assert len(videos) == 2 and all(
        Path(v).is_file() and Path(v).parent == out / "media" for v in videos
    )
    assert f"eval log: {out / 'eval_log.json'}" in proc.stdout
    assert "EMA weights" in proc.stdout
    # the debug run's last epoch is epoch 1 (its top-k file is epoch=0001-...)
    assert f"checkpoint: {checkpoint} (epoch 1, 6 training steps)" in proc.stdout


def test_eval_rolls_out_the_ema_policy(checkpoint, tmp_path, monkeypatch):
    # A runner that records what it was given, importable from a throwaway module.
    (tmp_path / "recording_runner.py").write_text(
        textwrap.dedent(
            """
            from diffusion_policy_mlx.env_runner.base_lowdim_runner import BaseLowdimRunner

            class RecordingRunner(BaseLowdimRunner):
                seen = []

                def __init__(self, output_dir, **kwargs):
                    super().__init__(output_dir)

                def run(self, policy):
                    RecordingRunner.seen.append(policy)
                    return {"test/mean_score": 0.25}
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    eval_module = _load_eval_module()
    log = eval_module.main(
        [
            "-c",
            str(checkpoint),
            "-o",
            str(tmp_path / "out"),
            "-d",
            "cpu",
            "task.env_runner._target_=recording_runner.RecordingRunner",
            "trusted_targets=[recording_runner]",
        ]
    )
    assert log == {"test/mean_score": 0.25}
    (policy,) = sys.modules["recording_runner"].RecordingRunner.seen
    assert not policy.training
    ema = load_checkpoint(checkpoint).group("ema_model")
    model = load_checkpoint(checkpoint).group("model")
    params = dict(tree_flatten(policy.parameters()))
    assert params.keys() == ema.keys()
    differs = [k for k in ema if not np.array_equal(np.array(ema[k]), np.array(model[k]))]
    assert differs  # EMA and trained weights differ, so the check below tells them apart
    for k in ema:
        np.testing.assert_array_equal(np.array(params[k]), np.array(ema[k]), err_msg=k)


def test_eval_refuses_to_overwrite_without_consent(checkpoint, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    proc = subprocess.run(
        [sys.executable, str(REPO / "eval.py"), "-c", str(checkpoint), "-o", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode != 0
    assert f"{out} exists and is not empty; pass --overwrite" in proc.stderr
    assert (out / "keep.txt").read_text() == "x"


def test_eval_on_a_damaged_checkpoint_names_the_damage(checkpoint, tmp_path):
    damaged = tmp_path / "damaged.ckpt"
    damaged.write_bytes(checkpoint.read_bytes()[:-64])
    eval_module = _load_eval_module()
    with pytest.raises(CheckpointError, match=r"damaged\.ckpt is truncated: tensor '.+' ends at"):
        eval_module.main(["-c", str(damaged), "-o", str(tmp_path / "out")])


def test_eval_overrides_go_through_the_target_check(checkpoint, tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    name = evil_module(tmp_path, "dp_mlx_evil_override", marker)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "out"
    args = ["-c", str(checkpoint), "-o", str(out), f"task.env_runner._target_={name}.run"]
    with pytest.raises(ConfigError, match=f"task.env_runner._target_: '{name}.run'"):
        _load_eval_module().main(args)
    assert name not in sys.modules and not marker.exists() and not out.exists()


@pytest.mark.parametrize("where", ["top", "scheduler"])
def test_eval_refuses_a_checkpoint_that_runs_code(checkpoint, tmp_path, monkeypatch, where):
    marker = tmp_path / "ran"
    name = evil_module(tmp_path, f"dp_mlx_evil_{where}", marker)
    monkeypatch.syspath_prepend(str(tmp_path))
    pth = tmp_path / "site.pth"

    def hostile(cfg):
        if where == "top":
            cfg["_target_"] = f"{name}.run"
        else:
            cfg["policy"]["noise_scheduler"] = {
                "_target_": "pathlib.Path.write_text",
                "self": str(pth),
                "data": f"import {name}",
            }
        return cfg

    crafted = craft(checkpoint, tmp_path / "crafted.ckpt", config=hostile)
    out = tmp_path / "out"
    with pytest.raises(ConfigError) as info:
        _load_eval_module().main(["-c", str(crafted), "-o", str(out)])
    key, target = {
        "top": ("_target_", f"{name}.run"),
        "scheduler": ("policy.noise_scheduler._target_", "pathlib.Path.write_text"),
    }[where]
    assert f"  {key}: {target!r}" in str(info.value)
    assert name not in sys.modules and not marker.exists() and not pth.exists()
    assert not out.exists()


def test_eval_reports_what_an_override_changes_in_the_policy(checkpoint, tmp_path):
    eval_module = _load_eval_module()
    out = tmp_path / "out"
    with pytest.raises(CheckpointMismatchError) as error:
        eval_module.main(["-c", str(checkpoint), "-o", str(out), "policy.model.down_dims=[16,64]"])
    message = str(error.value)
    assert "policy.model.down_dims: [16, 32] -> [16, 64]" in message
    assert "no differences in the policy config" not in message
    assert not (out / "eval_log.json").exists()


def test_eval_warns_about_a_compatible_policy_override(checkpoint, tmp_path, caplog):
    eval_module = _load_eval_module()
    out = tmp_path / "out"
    eval_module.main(
        ["-c", str(checkpoint), "-o", str(out), "-d", "cpu", "policy.num_inference_steps=2"]
        + TINY_EVAL
    )
    assert "policy.num_inference_steps: 4 -> 2" in caplog.text
    assert (out / "eval_log.json").is_file()
    # the checkpoint itself is untouched
    assert load_checkpoint(checkpoint).cfg.policy.num_inference_steps == 4

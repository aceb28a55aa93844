"""quickstart.py: its recipe composes, bad input is refused before work starts, it trains,
evaluates and says what the score means and where everything went."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from diffusion_policy_mlx.common.checkpoint_util import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import quickstart  # noqa: E402

TINY = ["training.num_epochs=2", "training.max_train_steps=2", "training.max_val_steps=1"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "quickstart.py"), *args],
        capture_output=True,
        text=True,
        timeout=1800,
        cwd=REPO,
    )


def _quickstart(*args: str) -> str:
    proc = _run(*args)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return proc.stdout


def _reported(stdout: str) -> dict[str, str]:
    lines = dict(line.split(":", 1) for line in stdout.splitlines()[-6:])
    return {k.strip(): v.strip() for k, v in lines.items()}


def test_the_recipe_composes_into_the_policy_it_describes(tmp_path):
    """Hydra composes the recipe as train.py would: a misspelt key fails here."""
    cmd = [sys.executable, str(REPO / "train.py"), f"--config-name={quickstart.CONFIG}"]
    cmd += quickstart.recipe_overrides(quickstart.RECIPE | {"training.device": "cpu"})
    proc = subprocess.run([*cmd, "--cfg", "job"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = yaml.safe_load(proc.stdout)
    policy = cfg["policy"]
    assert policy["model"]["down_dims"] == [64, 128, 256]
    assert policy["noise_scheduler"]["_target_"].endswith("ddim.DDIMScheduler")
    assert "variance_type" not in policy["noise_scheduler"]
    assert policy["num_inference_steps"] == 10
    assert cfg["optimizer"]["lr"] == 1e-3
    assert cfg["checkpoint"]["topk"]["k"] == 0
    assert cfg["training"]["num_epochs"] == 50


def test_the_score_is_explained_with_hand_computed_numbers():
    text = quickstart.explain([1.0, 0.5, 0.96, 0.09])
    # mean (1 + 0.5 + 0.96 + 0.09) / 4 = 0.6375, median (0.5 + 0.96) / 2 = 0.73, 2 above 0.95
    assert text.startswith("test/mean_score 0.637 over 4 test seeds (median 0.730, 2 of 4 above")
    assert "0 means the T was never moved onto the target" in text
    assert "1 means fully covered" in text


def test_a_missing_replay_buffer_is_refused_before_anything_is_written(tmp_path):
    proc = _run("--zarr", str(tmp_path / "nowhere.zarr"), "--output", str(tmp_path / "runs"))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"quickstart: --zarr {tmp_path / 'nowhere.zarr'} does not exist; give a PushT replay "
        "buffer, or add --scripted-demos to generate demonstrations there."
    )
    assert not (tmp_path / "runs").exists() and not (tmp_path / "nowhere.zarr").exists()


def test_no_test_seeds_is_refused(tmp_path):
    proc = _run("--n-test", "0", "--output", str(tmp_path / "runs"))
    assert proc.returncode == 2 and "--n-test 0: give at least one test seed" in proc.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_quickstart_on_recorded_data(tmp_path, pusht_zarr):
    runs = tmp_path / "runs"
    stdout = _quickstart("--zarr", str(pusht_zarr), "--output", str(runs), "--n-test", "3", *TINY)
    paths = _reported(stdout)
    assert Path(paths["data"]) == pusht_zarr
    ckpt = load_checkpoint(paths["checkpoint"])
    assert ckpt.state["epoch"] == 2
    assert ckpt.cfg.policy.model.down_dims == [64, 128, 256]
    # latest.ckpt alone: no top-k checkpoint named after a score there never was
    assert sorted(p.name for p in Path(paths["checkpoint"]).parent.iterdir()) == ["latest.ckpt"]
    assert Path(paths["train logs"]).parent.parent == runs
    log = json.loads(Path(paths["eval log"]).read_text())
    scores = [v for k, v in log.items() if k.startswith("test/sim_max_reward_")]
    assert len(scores) == 3 and not any(k.startswith("train/") for k in log)
    assert f"test/mean_score {sum(scores) / 3:.3f} over 3 test seeds" in stdout
    videos = paths["videos"].split(", ")
    assert len(videos) == 3 and all(Path(v).is_file() for v in videos)
    assert paths["again"] == f"python eval.py -c {paths['checkpoint']} -o OUT"


@pytest.mark.slow
def test_quickstart_generates_scripted_demos(tmp_path):
    demos = tmp_path / "demos.zarr"
    stdout = _quickstart(
        "--scripted-demos",
        "--zarr",
        str(demos),
        "--episodes",
        "4",
        "--output",
        str(tmp_path / "runs"),
        "--n-test",
        "1",
        *TINY,
    )
    paths = _reported(stdout)
    assert "Training on demonstrations from the scripted expert" in stdout
    assert Path(paths["data"]) == demos and (demos / "data" / "action").exists()
    assert load_checkpoint(paths["checkpoint"]).state["epoch"] == 2
    assert 0.0 <= json.loads(Path(paths["eval log"]).read_text())["test/mean_score"] <= 1.0

"""quickstart.py: train, evaluate and report where everything went."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from diffusion_policy_mlx.common.checkpoint_util import load_checkpoint

REPO = Path(__file__).resolve().parents[1]


def _quickstart(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(REPO / "quickstart.py"), "--epochs", "2", "--steps", "2", *args],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    return proc.stdout


def _reported(stdout: str) -> dict[str, Path]:
    lines = dict(line.split(":", 1) for line in stdout.splitlines()[-6:])
    return {k.strip(): Path(v.split("  (")[0].strip()) for k, v in lines.items()}


@pytest.mark.slow
def test_quickstart_on_recorded_data(tmp_path, pusht_zarr):
    stdout = _quickstart("--zarr", str(pusht_zarr), "--output", str(tmp_path / "runs"))
    paths = _reported(stdout)
    assert paths["data"] == pusht_zarr
    ckpt = load_checkpoint(paths["checkpoint"])
    assert ckpt.state["epoch"] == 2
    assert paths["train logs"].is_file() and paths["train logs"].parent.parent == tmp_path / "runs"
    assert any(paths["train video"].glob("*.mp4"))
    log = json.loads(paths["eval log"].read_text())
    assert 0.0 <= log["test/mean_score"] <= 1.0
    assert len(list(paths["eval videos"].glob("*.mp4"))) == 2

"""train.py end to end: tiny models, the real PushT data, CPU, rollouts included."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from diffusion_policy_mlx.common.checkpoint_util import load_checkpoint
from diffusion_policy_mlx.common.json_logger import read_json_log
from diffusion_policy_mlx.common.replay_buffer import ReplayBuffer

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "train_diffusion_unet_lowdim_workspace": [
        "policy.model.down_dims=[16,32]",
        "policy.model.diffusion_step_embed_dim=16",
        "policy.num_inference_steps=4",
    ],
    "train_diffusion_transformer_lowdim_workspace": [
        "policy.model.n_layer=1",
        "policy.model.n_head=2",
        "policy.model.n_emb=16",
        "policy.num_inference_steps=4",
        # upstream's generic config is sized for BlockPush (Ta=1): fewer policy calls for PushT
        "horizon=10",
        "n_obs_steps=2",
        "n_action_steps=8",
    ],
    "train_diffusion_unet_hybrid_workspace": [
        "policy.down_dims=[16,32]",
        "policy.diffusion_step_embed_dim=16",
        "policy.num_inference_steps=4",
        "policy.crop_shape=[48,48]",
    ],
    "train_diffusion_unet_image_workspace": [
        "policy.down_dims=[16,32]",
        "policy.diffusion_step_embed_dim=16",
        "policy.num_inference_steps=4",
        "policy.obs_encoder.crop_shape=[48,48]",
    ],
    "train_diffusion_transformer_hybrid_workspace": [
        "policy.n_layer=1",
        "policy.n_head=2",
        "policy.n_emb=16",
        "policy.num_inference_steps=4",
        "policy.crop_shape=[48,48]",
    ],
}
SMALL_RUN = [
    "training.debug=True",
    "dataloader.batch_size=4",
    "val_dataloader.batch_size=4",
    "dataloader.num_workers=1",
    "val_dataloader.num_workers=1",
    "task.env_runner.n_train=1",
    "task.env_runner.n_train_vis=1",
    "task.env_runner.n_test=1",
    "task.env_runner.n_test_vis=1",
    "task.env_runner.max_steps=16",
]


def task_of(name: str) -> str:
    return "pusht_lowdim" if "lowdim" in name else "pusht_image"


def train_args(name: str, run_dir: Path, zarr: Path, *extra: str) -> list[str]:
    return [
        f"--config-name={name}",
        f"task={task_of(name)}",
        f"task.dataset.zarr_path={zarr}",
        f"hydra.run.dir={run_dir}",
        *TINY[name],
        *SMALL_RUN,
        *extra,
    ]


def run_train(args: list[str], check: bool = True, **env: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=REPO,
        env={**os.environ, "WANDB_MODE": "disabled", **env},
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if check:
        assert proc.returncode == 0, proc.stderr[-5000:]
    return proc


def check_debug_run(run_dir: Path, name: str) -> None:
    """What a ``training.debug=True`` run (2 epochs of 3 steps, all evals) leaves behind."""
    logs = read_json_log(run_dir / "logs.json.txt")
    assert [r["global_step"] for r in logs] == list(range(6))
    assert [r["epoch"] for r in logs] == [0, 0, 0, 1, 1, 1]
    lrs = [r["lr"] for r in logs]
    assert lrs == sorted(lrs) and lrs[0] > 0  # linear warmup, stepped per batch
    for end_of_epoch in (logs[2], logs[5]):
        assert {"val_loss", "train_action_mse_error", "test/mean_score", "train/mean_score"} <= (
            end_of_epoch.keys()
        )
        assert 0.0 <= end_of_epoch["test/mean_score"] <= 1.0
        assert end_of_epoch["val_loss"] > 0

    ckpt_dir = run_dir / "checkpoints"
    names = sorted(p.name for p in ckpt_dir.iterdir())
    assert "latest.ckpt" in names
    topk = [n for n in names if n != "latest.ckpt"]
    assert len(topk) == 2, names
    for epoch, fname in enumerate(topk):
        match = re.fullmatch(r"epoch=(\d{4})-test_mean_score=(\d\.\d{3})\.ckpt", fname)
        assert match and int(match[1]) == epoch
        # the number in the file name is the epoch that just finished, and loading says so
        assert load_checkpoint(ckpt_dir / fname).finished_epoch == epoch
        score = logs[3 * epoch + 2]["test/mean_score"]
        assert float(match[2]) == pytest.approx(score, abs=5e-4)

    latest = load_checkpoint(ckpt_dir / "latest.ckpt")
    assert (latest.state["epoch"], latest.state["global_step"]) == (2, 6)
    assert latest.cfg.name == name.removesuffix("_workspace")
    assert any(k.startswith("ema_model.") for k in latest.tensors)
    # debug checkpoints leave out the optimizer's moments, and the run said how large they are
    assert latest.state["optimizer_moments"] is False
    assert not [k for k, v in latest.tensors.items() if k.startswith("optimizer.") and v.ndim]
    train_log = (run_dir / "train.log").read_text()
    assert train_log.count("checkpoints: ") == 1
    assert "each (model, EMA, no optimizer moments: training.debug) in " in train_log
    videos = sorted((run_dir / "media").glob("*.mp4"))
    assert len(videos) == 4 and all(v.stat().st_size > 0 for v in videos)


@pytest.fixture(scope="module")
def lowdim_run(tmp_path_factory, pusht_zarr) -> Path:
    """One tiny U-Net lowdim debug run, shared by the fast tests below."""
    run_dir = tmp_path_factory.mktemp("lowdim") / "run"
    run_train(train_args("train_diffusion_unet_lowdim_workspace", run_dir, pusht_zarr))
    return run_dir


def test_unet_lowdim_trains_with_rollouts(lowdim_run):
    check_debug_run(lowdim_run, "train_diffusion_unet_lowdim_workspace")
    log_text = (lowdim_run / "train.log").read_text()
    assert "Resuming" not in log_text


def test_a_debug_run_resumes_as_a_full_run_and_reports_the_epoch(lowdim_run, tmp_path, pusht_zarr):
    run_dir = tmp_path / "run"
    shutil.copytree(lowdim_run, run_dir)
    name = "train_diffusion_unet_lowdim_workspace"
    extra = ["training.debug=False", "training.num_epochs=3", "training.max_train_steps=2"]
    extra += ["training.max_val_steps=1", "training.rollout_every=1000"]
    run_train(train_args(name, run_dir, pusht_zarr, *extra))
    log_text = (run_dir / "train.log").read_text()
    assert "holds no optimizer moments (a training.debug checkpoint)" in log_text
    assert "Resumed after epoch 1 (6 training steps done)" in log_text
    match = re.search(r"checkpoints: ([\d.]+) MB each \(model, EMA, optimizer\) in (\S+)", log_text)
    assert match and Path(match[2]) == run_dir / "checkpoints"
    latest = load_checkpoint(run_dir / "checkpoints" / "latest.ckpt")
    assert (latest.finished_epoch, latest.state["optimizer_moments"]) == (2, True)
    # the announced size is the tensors' bytes; the file adds its header and RNG state
    size_mb = (run_dir / "checkpoints" / "latest.ckpt").stat().st_size / 1e6
    assert float(match[1]) == pytest.approx(size_mb, rel=0.1)


def test_resume_into_a_different_config_names_the_keys(lowdim_run, tmp_path, pusht_zarr):
    run_dir = tmp_path / "run"
    shutil.copytree(lowdim_run, run_dir)
    args = train_args("train_diffusion_unet_lowdim_workspace", run_dir, pusht_zarr)
    proc = run_train([*args, "policy.model.down_dims=[16,64]"], check=False)
    assert proc.returncode != 0
    assert "was written by a different configuration" in proc.stderr
    assert "policy.model.down_dims: [16, 32] -> [16, 64]" in proc.stderr
    assert (
        "model.down_modules.1.0.blocks.0.block.0.weight: checkpoint (32, 5, 16) vs model (64, 5, 16)"
        in proc.stderr
    )


def test_damaged_latest_checkpoint_stops_the_run(lowdim_run, tmp_path, pusht_zarr):
    run_dir = tmp_path / "run"
    shutil.copytree(lowdim_run, run_dir)
    latest = run_dir / "checkpoints" / "latest.ckpt"
    damaged = latest.read_bytes()[:-1000]
    latest.write_bytes(damaged)
    args = train_args("train_diffusion_unet_lowdim_workspace", run_dir, pusht_zarr)
    proc = run_train(args, check=False)
    assert proc.returncode != 0
    assert f"checkpoint {latest} is truncated" in proc.stderr
    assert latest.read_bytes() == damaged  # nothing already written is lost


def test_final_epoch_is_checkpointed_whatever_checkpoint_every(tmp_path, pusht_zarr):
    name = "train_diffusion_unet_lowdim_workspace"
    extra = ["training.debug=False", "training.num_epochs=4", "training.max_train_steps=2"]
    extra += ["training.max_val_steps=1", "training.checkpoint_every=2"]
    run_train(train_args(name, tmp_path / "run", pusht_zarr, *extra))
    ckpt_dir = tmp_path / "run" / "checkpoints"
    # epoch 0: latest + top-k (rollouts run at epoch 0 only); epoch 2: latest (no score to rank);
    # epoch 3, the last, is not a multiple of checkpoint_every but still saved
    assert sorted(p.name for p in ckpt_dir.iterdir())[0].startswith("epoch=0000-")
    assert len(list(ckpt_dir.iterdir())) == 2
    assert load_checkpoint(ckpt_dir / "latest.ckpt").state["epoch"] == 4
    # the top-k file (a hard link to epoch 0's latest.ckpt) kept epoch 0's contents
    topk = next(p for p in ckpt_dir.iterdir() if p.name.startswith("epoch=0000-"))
    assert load_checkpoint(topk).state["epoch"] == 1
    log_text = (tmp_path / "run" / "train.log").read_text()
    assert "epoch 2: checkpoint.topk.monitor_key=test_mean_score was not logged" in log_text


def test_unknown_target_fails_before_any_work(tmp_path, pusht_zarr):
    name = "train_diffusion_unet_lowdim_workspace"
    bad = "task.env_runner._target_=diffusion_policy_mlx.env_runner.no_such_runner.Runner"
    proc = run_train([*train_args(name, tmp_path / "run", pusht_zarr), bad], check=False)
    assert proc.returncode != 0
    assert "task.env_runner._target_" in proc.stderr and "no_such_runner does not exist" in (
        proc.stderr
    )
    assert not (tmp_path / "run" / "logs.json.txt").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            # README's sweep line as it was: no config named
            ["-m", "training.seed=42,43", "hydra/launcher=joblib"],
            "train.py: name a config with --config-name; the configs in ",
        ),
        (
            ["--config-name=train_bet_lowdim_workspace"],
            "train.py: --config-name=train_bet_lowdim_workspace: not supported yet; supported: ",
        ),
        (
            ["-cn", "train_ibc_dfo_hybrid_workspace", "task=pusht_image"],
            "train.py: --config-name=train_ibc_dfo_hybrid_workspace: not supported yet; ",
        ),
        (
            [
                "--config-name",
                "train_diffusion_unet_lowdim_workspace",
                "task=pusht_lowdim,can_lowdim",
            ],
            "train.py: task=can_lowdim: not supported yet; supported tasks: pusht_image, pusht_lowdim",
        ),
        (
            ["--config-name=train_diffusion_unet_lowdim_workspac"],
            "train.py: --config-name=train_diffusion_unet_lowdim_workspac: no such config in ",
        ),
    ],
)
def test_command_line_without_a_supported_config_says_what_is_there(tmp_path, args, message):
    proc = run_train([*args, f"hydra.run.dir={tmp_path / 'run'}"], check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(message), proc.stderr
    if "task=" not in message:
        assert "train_diffusion_unet_lowdim_workspace" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_data_that_does_not_fit_the_task_names_the_key_and_shapes(tmp_path, pusht_zarr):
    name = "train_diffusion_unet_lowdim_workspace"
    args = train_args(name, tmp_path / "run", pusht_zarr, "task.obs_dim=21")
    proc = run_train(args, check=False)
    assert proc.returncode != 0
    assert "obs" in proc.stderr and "(21,)" in proc.stderr and "(20,)" in proc.stderr
    assert not (tmp_path / "run" / "logs.json.txt").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("training.num_epochs=abc", "training.num_epochs must be an integer >= 0; got 'abc'"),
        ("training.num_epochs=-1", "training.num_epochs must be an integer >= 0; got -1"),
        ("training.checkpoint_every=0", "training.checkpoint_every must be an integer >= 1"),
        ("n_obs_steps=20", "n_obs_steps=20 (policy.n_obs_steps) is larger than horizon=16"),
        ("n_action_steps=17", "n_action_steps=17 (policy.n_action_steps) does not fit"),
    ],
)
def test_bad_config_fails_before_the_data_loads(tmp_path, override, message):
    # the data path does not exist: a check after the data loads would report that instead
    run_dir = tmp_path / "run"
    args = train_args("train_diffusion_unet_lowdim_workspace", run_dir, tmp_path / "no.zarr")
    proc = run_train([*args, override], check=False)
    assert proc.returncode != 0
    assert "ConfigError: " in proc.stderr and message in proc.stderr
    assert "Dataset not found" not in proc.stderr
    assert not (run_dir / "logs.json.txt").exists() and not (run_dir / "checkpoints").exists()


def test_non_finite_loss_stops_at_the_first_bad_step(lowdim_run, tmp_path, pusht_zarr):
    # a finished 2-epoch run resumed for a third epoch with a learning rate that diverges
    run_dir = tmp_path / "run"
    shutil.copytree(lowdim_run, run_dir)
    latest = run_dir / "checkpoints" / "latest.ckpt"
    saved = latest.read_bytes()
    args = train_args("train_diffusion_unet_lowdim_workspace", run_dir, pusht_zarr)
    extra = ["training.debug=False", "training.num_epochs=3", "training.max_train_steps=3"]
    # (the learning rate is restored from the checkpoint; the weight decay is not)
    extra += ["training.max_val_steps=1", "optimizer.weight_decay=1e30"]
    proc = run_train([*args, *extra], check=False)
    assert proc.returncode != 0
    match = re.search(
        r"TrainingDivergedError: Training stopped: train_loss is (nan|inf) at global step (\d+) \(epoch 2\)",
        proc.stderr,
    )
    assert match, proc.stderr[-3000:]
    assert f"The last good checkpoint is {latest}" in proc.stderr
    assert latest.read_bytes() == saved  # nothing already written is lost
    steps = [r["global_step"] for r in read_json_log(run_dir / "logs.json.txt")]
    assert max(steps) < int(match[2])  # the bad step was not logged


def _tiny_lowdim_store(path: Path, bad_row: int | None = None) -> Path:
    rng = np.random.default_rng(0)
    buffer = ReplayBuffer.create_empty_numpy()
    for n in (20, 20, 20):
        buffer.add_episode(
            {
                "keypoint": rng.uniform(0, 512, size=(n, 9, 2)).astype(np.float32),
                "state": rng.uniform(0, 512, size=(n, 5)).astype(np.float32),
                "action": rng.uniform(0, 512, size=(n, 2)).astype(np.float32),
            }
        )
    if bad_row is not None:
        buffer["action"][bad_row, 1] = np.nan
    return buffer.save_to_path(path)


def test_bad_data_stops_the_run_before_the_first_step(tmp_path):
    zarr = _tiny_lowdim_store(tmp_path / "nan.zarr", bad_row=25)
    run_dir = tmp_path / "run"
    proc = run_train(
        train_args("train_diffusion_unet_lowdim_workspace", run_dir, zarr), check=False
    )
    assert proc.returncode != 0
    assert "DataError" in proc.stderr, proc.stderr[-3000:]
    assert "data/action holds nan at row 25 (episode 1, step 5)" in proc.stderr
    # the start-up check of the checkpoint folder creates it, but nothing is written there
    assert not (run_dir / "logs.json.txt").exists()
    assert not list((run_dir / "checkpoints").glob("*"))


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in TINY if n != "train_diffusion_unet_lowdim_workspace"])
def test_each_workspace_trains_with_rollouts(tmp_path, pusht_zarr, name):
    run_train(train_args(name, tmp_path / "run", pusht_zarr))
    check_debug_run(tmp_path / "run", name)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "config").glob("*.yaml")))
def test_debug_run_of_every_shipped_config_at_its_own_size(tmp_path, pusht_zarr, name):
    """What a user's smoke test runs; each takes 10-60 s on a 2-core CPU."""
    run_dir = tmp_path / "run"
    run_train(
        [
            f"--config-name={name}",
            f"task={task_of(name)}",
            f"task.dataset.zarr_path={pusht_zarr}",
            f"hydra.run.dir={run_dir}",
            "training.debug=True",
        ]
    )
    logs = read_json_log(run_dir / "logs.json.txt")
    assert [r["global_step"] for r in logs] == list(range(6))
    assert {"val_loss", "train_action_mse_error", "test/mean_score"} <= logs[-1].keys()
    assert len(list((run_dir / "media").glob("*.mp4"))) == 4
    latest = load_checkpoint(run_dir / "checkpoints" / "latest.ckpt")
    assert latest.state["optimizer_moments"] is False
    # eval.py samples with the configured number of steps, not debug's
    configured = OmegaConf.load(REPO / "config" / f"{name}.yaml").policy.num_inference_steps
    assert latest.cfg.policy.num_inference_steps == configured


@pytest.mark.slow
def test_multirun_sweep_writes_separate_runs(tmp_path, pusht_zarr):
    name = "train_diffusion_unet_lowdim_workspace"
    args = train_args(name, tmp_path / "unused", pusht_zarr)
    run_train(["-m", *args, "training.seed=1,2", f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    runs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert [p.name for p in runs] == ["0", "1"]
    seeds = []
    for run_dir in runs:
        check_debug_run(run_dir, name)
        seeds.append(load_checkpoint(run_dir / "checkpoints" / "latest.ckpt").cfg.training.seed)
    assert seeds == [1, 2]
    first, second = (read_json_log(r / "logs.json.txt")[0]["train_loss"] for r in runs)
    assert first != second
    assert (tmp_path / "sweep" / "multirun.yaml").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TINY))
def test_upstream_yaml_runs_unmodified(tmp_path, pusht_zarr, upstream_config_dir, name):
    run_dir = tmp_path / "run"
    run_train(["--config-dir", str(upstream_config_dir), *train_args(name, run_dir, pusht_zarr)])
    check_debug_run(run_dir, name)
    cfg = load_checkpoint(run_dir / "checkpoints" / "latest.ckpt").cfg
    # upstream's own file was used (ours says "gpu"), with its targets mapped to this package
    assert cfg.training.device == "cuda:0"
    assert cfg._target_.startswith("diffusion_policy_mlx.workspace.")


def test_copied_run_folder_resumes_without_touching_the_original(tmp_path, pusht_zarr):
    name = "train_diffusion_unet_lowdim_workspace"
    # every epoch displaces the last top-k checkpoint (k=1, the highest global_step wins)
    extra = [
        "training.debug=False",
        "training.max_train_steps=1",
        "training.max_val_steps=1",
        "training.checkpoint_every=1",
        "training.rollout_every=1000",
        "training.sample_every=1000",
        "checkpoint.topk.monitor_key=global_step",
        "checkpoint.topk.mode=max",
        "checkpoint.topk.k=1",
        "checkpoint.topk.format_str='epoch={epoch:04d}-global_step={global_step:.3f}.ckpt'",
    ]
    a, b = tmp_path / "A", tmp_path / "B"
    run_train(train_args(name, a, pusht_zarr, *extra, "training.num_epochs=2"))
    before = {p.name: p.read_bytes() for p in (a / "checkpoints").iterdir()}
    assert sorted(before) == ["epoch=0001-global_step=1.000.ckpt", "latest.ckpt"]
    shutil.copytree(a, b)

    run_train(train_args(name, b, pusht_zarr, *extra, "training.num_epochs=4"))
    assert {p.name: p.read_bytes() for p in (a / "checkpoints").iterdir()} == before
    assert sorted(p.name for p in (b / "checkpoints").iterdir()) == [
        "epoch=0003-global_step=3.000.ckpt",
        "latest.ckpt",
    ]
    state = load_checkpoint(b / "checkpoints" / "latest.ckpt").state
    assert state["topk"] == {"name_value_map": {"epoch=0003-global_step=3.000.ckpt": 3.0}}


@pytest.mark.slow
def test_kill_9_then_resume_continues_the_same_run(tmp_path, pusht_zarr):
    name = "train_diffusion_unet_lowdim_workspace"
    n_epochs = 24
    extra = [
        "training.debug=False",
        f"training.num_epochs={n_epochs}",
        "training.max_train_steps=3",
        "training.max_val_steps=1",
        "training.checkpoint_every=1",
        "training.rollout_every=1000",
        "training.sample_every=1000",
        "training.lr_warmup_steps=10",
    ]
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    run_train(train_args(name, reference, pusht_zarr, *extra))

    args = train_args(name, interrupted, pusht_zarr, *extra)
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=REPO,
        env={**os.environ, "WANDB_MODE": "disabled"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    log_path = interrupted / "logs.json.txt"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if log_path.exists() and any(r["epoch"] >= 4 for r in read_json_log(log_path)):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(interrupted / "checkpoints" / "latest.ckpt").state
    assert 0 < killed_at["epoch"] < n_epochs

    resumed = run_train(args)
    assert "Resuming from checkpoint" in resumed.stderr + (interrupted / "train.log").read_text()
    want, got = read_json_log(reference / "logs.json.txt"), read_json_log(log_path)
    assert [r["global_step"] for r in got] == list(range(n_epochs * 3))
    for a, b in zip(want, got, strict=True):
        assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"])
        assert b["lr"] == pytest.approx(a["lr"], rel=1e-12)
        # same batches, same noise, same weights: the resumed run is the uninterrupted one
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5, abs=1e-7)
    final = load_checkpoint(interrupted / "checkpoints" / "latest.ckpt").state
    assert (final["epoch"], final["global_step"]) == (n_epochs, n_epochs * 3)

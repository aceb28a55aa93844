"""Shared by the lever benchmarks (``bench_group_norm.py``, ``bench_film_tables.py``, ...): two
paths of a default policy's ``predict_action`` in one process, same weights and noise,
alternating call by call (a shared machine's speed drifts; on the 2-core development machine it
flips between two levels), each path with its own compiled-step cache. A path is a function
that sets the policy up for it, e.g. :func:`accel_path`."""

import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import diffusion_policy_mlx.accel as accel
from diffusion_policy_mlx.accel.cpu_streams import CpuStreams
from diffusion_policy_mlx.accel.low_precision import SamplingWeights

import hydra
import mlx.core as mx
import mlx.nn as nn
import numpy as np
from omegaconf import DictConfig, open_dict

from diffusion_policy_mlx.common.checkpoint_util import load_checkpoint
from diffusion_policy_mlx.config_trust import workspace_class
from diffusion_policy_mlx.policy.diffusion_common import CompiledStepCache
from diffusion_policy_mlx.policy.diffusion_policy_base import DiffusionPolicyBase

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_step import build, synthetic  # noqa: E402
from sides import (  # noqa: E402
    CONFIG_DIR,
    DDIM_CONFIG,
    compose_config,
    synthetic_obs,
    translate_config,
)

CASES = ("ddpm100_b1", "ddim16_b1", "ddim16_b56")
Path_ = Callable[[DiffusionPolicyBase], None]


def accel_path(config: accel.AccelConfig) -> Path_:
    """A path that runs the policy with ``config``'s fast paths (one set of sampling weights
    kept across its calls, so that their copies are made once)."""
    streams = CpuStreams(config.cpu_streams)
    weights = None if config.cpu_weights == mx.float32 else SamplingWeights(config.cpu_weights)

    def use(policy: DiffusionPolicyBase) -> None:
        accel.swap_layers(policy, config)
        policy.set_execution(streams, weights)

    return use


def untrained_policy(config: str, device: str) -> tuple[DictConfig, nn.Module, dict]:
    """A default policy of ``config`` with random weights, a normalizer fitted on synthetic
    data and 56 synthetic observations."""
    cfg, workspace = build(config, [f"training.device={device}"])
    _, normalizer = synthetic(cfg, 56)
    workspace.model.set_normalizer(normalizer)
    return cfg, workspace.model, synthetic_obs(cfg, 56, cfg.n_obs_steps, seed=3)


def trained_policy(
    checkpoint: str, device: str, zarr_path: str | None
) -> tuple[DictConfig, nn.Module, dict]:
    """The policy ``eval.py`` would roll out from ``checkpoint`` (EMA weights where the run kept
    them) and the observations of 56 windows spread over its task's training data (the zarr
    the checkpoint names, or ``zarr_path``)."""
    ckpt = load_checkpoint(checkpoint)
    cfg = ckpt.cfg
    with open_dict(cfg):
        cfg.training.device = device
        if zarr_path is not None:
            cfg.task.dataset.zarr_path = zarr_path
    accel.configure(device, cfg.get("accel"))
    workspace = workspace_class(cfg, ckpt.path)(cfg, output_dir="/tmp/predict_ab")
    workspace.load_payload(ckpt)
    workspace.accelerate(accel.apply)
    policy = workspace.ema_model if cfg.training.use_ema else workspace.model
    dataset = hydra.utils.instantiate(cfg.task.dataset)
    obs = dataset.__getitems__(np.linspace(0, len(dataset) - 1, 56).astype(int))["obs"]
    steps = cfg.n_obs_steps
    if isinstance(obs, dict):
        return cfg, policy, {k: v[:, :steps] for k, v in obs.items()}
    return cfg, policy, {"obs": obs[:, :steps]}


def compare_paths(
    config: str,
    device: str,
    repeats: int,
    paths: dict[str, Path_],
    cases: tuple[str, ...] = CASES,
    checkpoint: str | None = None,
    zarr_path: str | None = None,
) -> None:
    """For each of ``cases`` (of :data:`CASES`), time ``predict_action`` on each of ``paths``
    (name -> a function that sets the policy up for that path) and print one JSON line per case: each
    path's median in ms, the first path's time over the second's (``speedup``) and the largest
    difference between their actions. The policy is ``config``'s with random weights, or the
    trained one of ``checkpoint`` on observations from its data (:func:`trained_policy`)."""
    if checkpoint is None:
        cfg, policy, obs = untrained_policy(config, device)
    else:
        cfg, policy, obs = trained_policy(checkpoint, device, zarr_path)
        config = str(checkpoint)
    policy.eval()
    obs56 = {k: mx.array(v) for k, v in obs.items()}
    obs1 = {k: v[:1] for k, v in obs56.items()}
    ddim_cfg = translate_config(compose_config(CONFIG_DIR, DDIM_CONFIG, "pusht_image", []))
    ddim = hydra.utils.instantiate(ddim_cfg.policy.noise_scheduler)
    known = {
        "ddpm100_b1": ("DDPM", policy.noise_scheduler, 100, obs1),
        "ddim16_b1": ("DDIM", ddim, 16, obs1),
        "ddim16_b56": ("DDIM", ddim, 16, obs56),
    }

    names = list(paths)
    for label, scheduler, steps, obs in (known[case] for case in cases):
        policy.noise_scheduler = scheduler
        policy.num_inference_steps = steps
        # a path may change what the step traces, so each keeps its own compiled steps
        caches = {name: CompiledStepCache() for name in names}
        times: dict[str, list[float]] = {name: [] for name in names}
        actions: dict[str, np.ndarray] = {}
        for i in range(repeats + 2):
            for name in names:
                paths[name](policy)
                policy.step_cache = caches[name]
                mx.random.seed(0)
                start = time.perf_counter()
                action = policy.predict_action(obs)["action"]
                mx.eval(action)
                if i >= 2:
                    times[name].append(time.perf_counter() - start)
                actions[name] = np.array(action)
        medians = {name: statistics.median(times[name]) for name in names}
        first, second = names
        print(
            json.dumps(
                {
                    "config": config,
                    "device": str(mx.default_device()),
                    "scheduler": f"{label}{steps}",
                    "batch": next(iter(obs.values())).shape[0],
                    **{f"{name}_ms": round(1e3 * medians[name], 2) for name in names},
                    "speedup": round(medians[first] / medians[second], 3),
                    "max_action_diff": float(np.abs(actions[first] - actions[second]).max()),
                }
            ),
            flush=True,
        )

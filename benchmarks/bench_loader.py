"""Is the data loader fast enough? Batches per second against one training step of the policy.

For each PushT task, builds the dataset, the ``DataLoader`` and the default policy from the
workspace config that trains it (``train_diffusion_unet_lowdim_workspace`` with ``pusht_lowdim``,
batch 256; ``train_diffusion_unet_hybrid_workspace`` with ``pusht_image``, batch 64, whose policy
does the training-time random crop inside its observation encoder), then measures:

* ``loader``: batches per second of the loader alone, with the config's ``num_workers``;
* ``step``: one training step (loss, gradients, AdamW update) on loader batches;
* ``wait``: training with the loader in the background, the share of the time the loop waits for
  the next batch: the loader is no bottleneck when this is a few percent.

    python benchmarks/bench_loader.py                       # both tasks, data/pusht/...
    python benchmarks/bench_loader.py --task pusht_lowdim --zarr ../shared/data/pusht/pusht_cchi_v7_replay.zarr
    python benchmarks/bench_loader.py --synthetic /tmp/pusht_like.zarr   # no dataset needed

``--synthetic PATH`` writes (once) a zarr with PushT's keys, shapes and episode count filled
with generated values: gathers cost the same whatever the pixels hold.

Measured (compiled step, config batch sizes and workers; loader rate with the config's threads):

| machine | task | loader | step | loader / step | loop waits |
| --- | --- | --- | --- | --- | --- |
| 2-core x86 CPU (shared, busy) | lowdim | 1136 batch/s | 38.4 s | 0.002 % | 0.0 % |
| 2-core x86 CPU (shared, busy) | image | 6.3 batch/s | 53.1 s | 0.3 % | 0.03 % |
| H100, 16 cores (synthetic zarr) | lowdim | 2128 batch/s | 33.1 ms | 1.4 % | 0.3 % |
| H100, 16 cores (synthetic zarr) | image | 23.1 batch/s | 105 ms | 41 % | 0.1 % |

On the H100 the image loader needs 43 ms of background work per 105 ms step: it keeps up with
2.4x headroom. An image batch is 113 MB (16 frames, upstream's sample; the policy reads 2), of
which gathering takes ~50 ms and the copy into MLX memory ~25-30 ms, the latter partly under the
GIL, which is why 8 threads give only 1.4x one thread. On Linux CPUs MLX's default 32 MB buffer
cache makes each such copy page-fault afresh (~200 ms instead of ~25 ms); ``--cache-limit-gb``
shows the difference.
"""

import diffusion_policy_mlx.accel as accel

# isort: split
import argparse
import json
import os
import time
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

import diffusion_policy_mlx.config_compat  # noqa: F401  (registers the ${eval:...} resolver)
from diffusion_policy_mlx.common.pytree import dict_apply
from diffusion_policy_mlx.common.replay_buffer import ReplayBuffer
from diffusion_policy_mlx.data.registry import DATASETS
from diffusion_policy_mlx.dataset.loader import DataLoader

REPO = Path(__file__).resolve().parents[1]
WORKSPACES = {
    "pusht_lowdim": "train_diffusion_unet_lowdim_workspace",
    "pusht_image": "train_diffusion_unet_hybrid_workspace",
}


def write_synthetic_pusht(path: Path) -> Path:
    """A zarr shaped like upstream's PushT file (206 episodes, 25,650 steps), values generated."""
    if path.exists():
        return path
    arrays = DATASETS["pusht"].arrays
    n_steps, n_episodes = arrays["data/action"].shape[0], arrays["meta/episode_ends"].shape[0]
    ends = np.linspace(0, n_steps, n_episodes + 1).round().astype(np.int64)[1:]
    rng = np.random.default_rng(0)
    data = {
        name.removeprefix("data/"): rng.uniform(0, 512, digest.shape).astype(np.float32)
        for name, digest in arrays.items()
        if name.startswith("data/") and name != "data/img"
    }
    # smooth frames compress well, so writing 2.8 GB takes seconds
    t = np.arange(n_steps, dtype=np.float32)[:, None, None, None] % 256
    data["img"] = np.broadcast_to(t, arrays["data/img"].shape)
    buffer = ReplayBuffer({"data": data, "meta": {"episode_ends": ends}}, source="synthetic")
    return buffer.save_to_path(path)


def load_config(task: str, zarr_path: str):
    with initialize_config_dir(config_dir=str(REPO / "config"), version_base=None):
        return compose(
            config_name=WORKSPACES[task],
            overrides=[f"task={task}", f"task.dataset.zarr_path={zarr_path}"],
        )


def time_loader(loader: DataLoader, n_batches: int) -> float:
    """Batches per second of the loader alone (the first batch, which fills the pipe, excluded)."""
    it = iter(loader)
    mx.eval(next(it))
    start = time.perf_counter()
    for _ in range(n_batches):
        mx.eval(next(it))
    return n_batches / (time.perf_counter() - start)


def cache_limit_mb() -> float:
    """MLX's buffer cache limit (MLX can set it but not read it back without setting it)."""
    limit = mx.set_cache_limit(0)
    mx.set_cache_limit(limit)
    return limit / 2**20


def time_parts(dataset, batch_size: int, repeats: int = 5) -> tuple[float, float]:
    """Milliseconds to gather one batch in numpy, and to turn it into ``mx.array`` s."""
    indices = np.random.default_rng(0).permutation(len(dataset))[:batch_size]
    gather = convert = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        batch = dataset.__getitems__(indices)
        middle = time.perf_counter()
        mx.eval(dict_apply(batch, mx.array))
        gather += middle - start
        convert += time.perf_counter() - middle
    return 1000 * gather / repeats, 1000 * convert / repeats


def make_step(policy: nn.Module, optimizer, compiled: bool):
    loss_and_grad = nn.value_and_grad(policy, policy.compute_loss)

    def step(batch):
        loss, grads = loss_and_grad(batch)
        optimizer.update(policy, grads)
        return loss

    if not compiled:
        return step
    state = [policy.state, optimizer.state, mx.random.state]
    return mx.compile(step, inputs=state, outputs=state)


def time_training(loader, policy, optimizer, step, n_steps: int) -> tuple[float, float]:
    """Seconds per step and the share of the loop spent waiting for batches, loader running."""
    it = iter(loader)
    for _ in range(2):  # warm-up: compilation, allocations, optimizer state
        mx.eval(step(next(it)), policy.state, optimizer.state)
    waited = 0.0
    start = time.perf_counter()
    for _ in range(n_steps):
        before = time.perf_counter()
        batch = next(it)
        waited += time.perf_counter() - before
        mx.eval(step(batch), policy.state, optimizer.state)
    total = time.perf_counter() - start
    return total / n_steps, waited / total


def bench(task: str, zarr_path: str, n_batches: int, n_steps: int, compiled: bool) -> dict:
    cfg = load_config(task, zarr_path)
    start = time.perf_counter()
    dataset = instantiate(cfg.task.dataset)
    build_s = time.perf_counter() - start
    loader_kwargs = dict(cfg.dataloader)
    loader = DataLoader(dataset, seed=0, **loader_kwargs)
    serial = DataLoader(dataset, seed=0, **{**loader_kwargs, "num_workers": 0})
    gather_ms, convert_ms = time_parts(dataset, loader.batch_size)
    result = {
        "task": task,
        "device": str(mx.default_device()),
        "cpu_cores": len(os.sched_getaffinity(0)),
        "mlx_cache_limit_mb": cache_limit_mb(),
        "dataloader": loader_kwargs,
        "loader_threads": loader.n_threads,
        "dataset_build_s": round(build_s, 2),
        "batch_gather_ms": round(gather_ms, 1),
        "batch_to_mx_ms": round(convert_ms, 1),
        "loader_batches_per_s": round(time_loader(loader, n_batches), 2),
        "loader_serial_batches_per_s": round(time_loader(serial, n_batches), 2),
    }
    if n_steps > 0:
        accel.configure(None, cfg.get("accel"))
        policy = accel.apply(instantiate(cfg.policy))
        policy.set_normalizer(dataset.get_normalizer())
        policy.train()
        optimizer = instantiate(cfg.optimizer)
        step = make_step(policy, optimizer, compiled)
        step_s, wait_share = time_training(loader, policy, optimizer, step, n_steps)
        result |= {
            "compiled_step": compiled,
            "step_s": round(step_s, 4),
            "loader_s_per_batch": round(1 / result["loader_batches_per_s"], 4),
            "loader_over_step": round(1 / result["loader_batches_per_s"] / step_s, 4),
            "wait_share_while_training": round(wait_share, 4),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=[*WORKSPACES, "both"], default="both")
    parser.add_argument("--zarr", default="data/pusht/pusht_cchi_v7_replay.zarr")
    parser.add_argument("--synthetic", type=Path, help="write/use a generated PushT-like zarr here")
    parser.add_argument("--batches", type=int, default=30, help="batches timed for the loader")
    parser.add_argument("--steps", type=int, default=5, help="training steps timed (0: skip)")
    parser.add_argument("--eager", action="store_true", help="do not mx.compile the step")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    parser.add_argument(
        "--cache-limit-gb",
        type=float,
        help="raise MLX's buffer cache (Linux CPU default 32 MB) so batch buffers are reused",
    )
    args = parser.parse_args()
    if args.cache_limit_gb is not None:
        mx.set_cache_limit(int(args.cache_limit_gb * 2**30))

    zarr_path = str(write_synthetic_pusht(args.synthetic)) if args.synthetic else args.zarr
    tasks = list(WORKSPACES) if args.task == "both" else [args.task]
    results = []
    for task in tasks:
        result = bench(task, zarr_path, args.batches, args.steps, compiled=not args.eager)
        print(json.dumps(result), flush=True)
        results.append(result)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

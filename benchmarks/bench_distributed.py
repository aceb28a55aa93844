"""Data-parallel training throughput: the fused training step on N processes.

    python benchmarks/bench_distributed.py                                    # 1 process
    mlx.launch -n 2 --backend ring -- python benchmarks/bench_distributed.py  # 2 CPU processes
    mlx.launch -n 2 --backend nccl -- python benchmarks/bench_distributed.py --device gpu
    ... --config train_diffusion_unet_hybrid_workspace --batch 64

Every rank builds the config's policy (same seed, same weights), takes its shard of one
synthetic global batch of ``--batch`` samples and runs :class:`TrainStep` with gradients
averaged over the ranks, as ``train.py`` does. Rank 0 prints one JSON line: processes, global
batch, median ms per step and samples per second. Scaling efficiency is
``samples_per_s(N) / (N * samples_per_s(1))`` at the same per-process batch
(``--batch`` times N), or at the same global batch to see how far splitting one batch goes.
"""

import argparse
import json
import sys
from pathlib import Path

import diffusion_policy_mlx.accel  # noqa: F401  (loads the fast BLAS)

import mlx.core as mx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_step import build, synthetic, timed  # noqa: E402

from diffusion_policy_mlx.common import distributed  # noqa: E402
from diffusion_policy_mlx.common.distributed import Shard, shard_bounds  # noqa: E402
from diffusion_policy_mlx.common.pytree import dict_apply  # noqa: E402
from diffusion_policy_mlx.workspace.base_workspace import TrainStep  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="train_diffusion_unet_lowdim_workspace")
    parser.add_argument("--batch", type=int, default=256, help="global batch size")
    parser.add_argument("--device", default="cpu", help="cpu or gpu")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", type=Path, default=None, help="rank 0 appends its line here")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = parser.parse_args()

    group = distributed.init_group()
    rank, world = distributed.rank_of(group), distributed.world_size_of(group)
    cfg, workspace = build(args.config, [f"training.device={args.device}", *args.overrides])
    batch, normalizer = synthetic(cfg, args.batch)
    for policy in (workspace.model, workspace.ema_model):
        policy.set_normalizer(normalizer)
    workspace.policy_train_mode()
    start, stop = shard_bounds(args.batch, rank, world)
    shard = None if group is None else Shard(start, stop - start, args.batch)
    local = dict_apply(batch, lambda a: a[start:stop])
    step = TrainStep(
        workspace.model, workspace.optimizer, 1, workspace.ema, group, workspace.model.batch_split
    )

    def one() -> None:
        loss, _ = step(local, shard)
        mx.eval(loss, step.state)

    seconds = timed(one, args.warmup, args.repeats)
    distributed.check_replicas_agree(workspace.model, group)
    if rank == 0:
        line = json.dumps(
            {
                "config": args.config,
                "device": str(mx.default_device()),
                "processes": world,
                "global_batch": args.batch,
                "per_process_batch": stop - start,
                "ms_per_step": round(seconds * 1e3, 2),
                "samples_per_s": round(args.batch / seconds, 1),
            }
        )
        print(line, flush=True)
        if args.json is not None:
            with args.json.open("a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()

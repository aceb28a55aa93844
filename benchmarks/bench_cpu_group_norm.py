"""The CPU GroupNorm kernel (``accel/group_norm.py``) against MLX's GroupNorm, in one
process, alternating call by call:

    python benchmarks/bench_cpu_group_norm.py --ops          # the norm alone, forward and gradients
    python benchmarks/bench_cpu_group_norm.py                # predict_action, lowdim U-Net
    python benchmarks/bench_cpu_group_norm.py --config train_diffusion_unet_hybrid_workspace

``--ops`` times the norm with its activation at the shapes one CPU stream sees in the default
training steps (half of each batch): the lowdim U-Net's three levels (batch 128, Mish), the
hybrid U-Net's deepest level (batch 32) and the ResNet-18's stem and first stage (64 images of
84 x 84 crops, no activation), each ``mx.compile``d: the output alone and with its three
gradients. Without ``--ops``: whole ``predict_action`` calls of a default policy (DDPM 100 and
DDIM 16 at batch 1, DDIM 16 at batch 56), same weights and noise. One JSON line per row.

The training step with and without the kernel, each in its own process (the extension off
also turns off the few-row kernel, which training does not use):
``python benchmarks/bench_train_processes.py --against-env DP_MLX_CPU_KERNELS=off``.
"""

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import diffusion_policy_mlx.accel as accel
from diffusion_policy_mlx.accel import group_norm

import mlx.core as mx

from diffusion_policy_mlx.model.common.normalization import GroupNorm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from predict_ab import CASES, accel_path, compare_paths  # noqa: E402

# (name, (B, S, C), groups, activation): S flattens a sample's other axes
OP_SHAPES = [
    ("lowdim unet T=16", (128, 16, 256), 8, "mish"),
    ("lowdim unet T=8", (128, 8, 512), 8, "mish"),
    ("lowdim unet T=4", (128, 4, 1024), 8, "mish"),
    ("hybrid unet T=4", (32, 4, 2048), 8, "mish"),
    ("resnet18 stem 42x42", (64, 42 * 42, 64), 4, "relu"),
    ("resnet18 layer1 21x21", (64, 21 * 21, 64), 4, "none"),
]


def time_ops(repeats: int, kernels) -> None:
    for name, shape, groups, activation in OP_SHAPES:
        norm = GroupNorm(groups, shape[-1], pytorch_compatible=True)
        x = mx.random.normal(shape)
        dy = mx.random.normal(shape)
        # evaluated now: a captured lazy draw would be traced into, and redrawn by, every call
        mx.eval(x, dy, norm.parameters())

        def forward(x, w, b, kernel, norm=norm, activation=activation):
            norm.weight, norm.bias = w, b
            if kernel:
                return group_norm.group_norm(x, norm, kernels, activation)
            return norm(x, activation)

        params = (x, norm.weight, norm.bias)
        row: dict = {"shape": name, "size": list(shape), "activation": activation}
        for label, fn in (
            ("fwd", lambda k, *a, forward=forward: forward(*a, k)),
            (
                "fwd_bwd",
                lambda k, *a, forward=forward, dy=dy: mx.vjp(
                    lambda *a: forward(*a, k), list(a), [dy]
                ),
            ),
        ):
            times: dict[str, list[float]] = {"mlx": [], "kernel": []}
            compiled = {}
            for path in times:  # trace each path once, with its own compiled function
                on = path == "kernel"
                compiled[path] = mx.compile(lambda *a, fn=fn, on=on: fn(on, *a))
                mx.eval(compiled[path](*params))
            for _ in range(repeats):
                for path in times:
                    start = time.perf_counter()
                    mx.eval(compiled[path](*params))
                    times[path].append(time.perf_counter() - start)
            mlx_ms, kernel_ms = (statistics.median(times[p]) * 1e3 for p in ("mlx", "kernel"))
            row[f"{label}_mlx_ms"] = round(mlx_ms, 3)
            row[f"{label}_kernel_ms"] = round(kernel_ms, 3)
            row[f"{label}_speedup"] = round(mlx_ms / kernel_ms, 2)
        print(json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="train_diffusion_unet_lowdim_workspace")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--ops", action="store_true", help="the norm alone at training shapes")
    args = parser.parse_args()
    config = accel.configure("cpu")
    if config.kernels is None:
        sys.exit(f"the CPU kernels are not in use: {config.kernel_status}")
    if args.ops:
        time_ops(args.repeats, config.kernels)
        return
    compare_paths(
        args.config,
        "cpu",
        args.repeats,
        {
            "mlx": accel_path(dataclasses.replace(config, kernels=None)),
            "kernel": accel_path(config),
        },
        CASES,
    )


if __name__ == "__main__":
    main()

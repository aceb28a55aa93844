"""Time our MLX PushT policies against upstream's PyTorch ones, in one process, same weights.

    python benchmarks/bench_policy.py                       # lowdim + hybrid, every measurement
    python benchmarks/bench_policy.py --policies lowdim --measure predict_ddim16_b1 --repeats 9
    DP_UPSTREAM_PATH=~/src/diffusion_policy python benchmarks/bench_policy.py --json out.json
    python benchmarks/bench_policy.py --device gpu          # MLX GPU (Metal/CUDA), torch on CUDA

Measurements (medians after warm-up; ours and upstream alternate call by call so that load on a
shared machine hits both alike): the denoiser forward at batch 1; ``predict_action`` at batch 1
with DDPM 100 steps and DDIM 16 steps, and at batch 56 (a full evaluation's) with DDIM 16; one
training step (loss, gradients, AdamW, EMA) at the config's batch size, and its phases (the
loss alone; the loss and its gradients), for where a step's time goes; and each one's peak
memory. ``--torch-compile reduce-overhead`` runs upstream's denoiser under ``torch.compile``
(CUDA graphs on the GPU); every measurement's first call (compilation) is listed. Without upstream (no ``--upstream`` and no ``DP_UPSTREAM_PATH``) only ours is timed.

``OMP_WAIT_POLICY`` defaults to ``PASSIVE`` here (set it to measure otherwise; it is recorded).
torch's OpenMP workers otherwise spin after every parallel region, on every core, and steal
the CPU from whatever runs next in the process. Both libraries' host-bound calls pay for
it: on the H200 machine (16 cores), ours at DDPM 100 batch 1 took 197 ms right after a
``torch.compile``d upstream call with spinning workers and 134 ms with sleeping ones, and
upstream's own took 194 and 179 ms; on the 2-core CPU upstream's DDIM 16 at batch 1 took 2.4 s
with spinning workers and 0.58 s with sleeping ones.
"""

from __future__ import annotations  # noqa: I001

import os

# Read by torch's OpenMP runtime when torch is imported (see the docstring).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Before mlx.core: importing accel loads the fast CPU BLAS.
from diffusion_policy_mlx.accel import blas  # noqa: E402, I001

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import mlx.core as mx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sides import (  # noqa: E402
    SPECS,
    OursSide,
    PolicySpec,
    Side,
    UpstreamSide,
    import_upstream,
    synthetic_batch,
    synthetic_obs,
)


@dataclass(frozen=True)
class Measurement:
    key: str
    label: str
    build: Callable[[Side, Inputs], Callable[[], None]]


@dataclass
class Inputs:
    obs_b1: dict[str, np.ndarray]
    obs_b56: dict[str, np.ndarray]
    train_batch: dict
    train_batch_size: int


MEASUREMENTS = [
    Measurement("forward_b1", "denoiser forward, batch 1", lambda s, i: s.forward(1)),
    Measurement(
        "predict_ddpm100_b1",
        "predict_action, DDPM 100 steps, batch 1",
        lambda s, i: s.predict(i.obs_b1, "ddpm", 100),
    ),
    Measurement(
        "predict_ddim16_b1",
        "predict_action, DDIM 16 steps, batch 1",
        lambda s, i: s.predict(i.obs_b1, "ddim", 16),
    ),
    Measurement(
        "predict_ddim16_b56",
        "predict_action, DDIM 16 steps, batch 56",
        lambda s, i: s.predict(i.obs_b56, "ddim", 16),
    ),
    # A training step's phases, for where its time goes: the loss, then the loss and gradients
    # (the step less AdamW and EMA). Neither changes the weights.
    Measurement("train_loss", "train loss forward", lambda s, i: s.train_loss(i.train_batch)),
    Measurement(
        "train_loss_grad",
        "train loss + gradients",
        lambda s, i: s.train_loss_grad(i.train_batch),
    ),
    # Last: it changes the weights.
    Measurement(
        "train_step",
        "train step (loss, grads, AdamW, EMA)",
        lambda s, i: s.train_step(i.train_batch),
    ),
]
MEASUREMENT_KEYS = [m.key for m in MEASUREMENTS]


@dataclass
class Result:
    policy: str
    measurement: str
    label: str
    ours_s: list[float]
    upstream_s: list[float] = field(default_factory=list)
    ours_peak_bytes: int | None = None
    upstream_peak_bytes: int | None = None

    @property
    def ours(self) -> float:
        return statistics.median(self.ours_s)

    @property
    def upstream(self) -> float | None:
        return statistics.median(self.upstream_s) if self.upstream_s else None


def time_alternating(
    fns: dict[str, Callable[[], None]], warmup: int, repeats: int
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Wall-clock seconds of ``repeats`` calls of each function, interleaved, after warm-up,
    and of each function's first call (tracing, kernel compilation, ``torch.compile``)."""
    first: dict[str, float] = {}
    for name, fn in fns.items():
        for i in range(max(1, warmup)):
            start = time.perf_counter()
            fn()
            if i == 0:
                first[name] = time.perf_counter() - start
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times, first


def machine_info(args: argparse.Namespace, torch_module) -> dict[str, str]:
    info = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": str(os.cpu_count()),
        "python": platform.python_version(),
        "mlx": mx.__version__,
        "mlx_device": str(mx.default_device()),
        "blas": str(blas.blas_info().library or "MLX bundled"),
    }
    if hasattr(os, "getloadavg"):
        info["load_average"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    if torch_module is not None:
        info["torch"] = torch_module.__version__
        info["torch_compile"] = args.torch_compile or "off (eager)"
        info["torch_threads"] = str(torch_module.get_num_threads())
        # On a small CPU, whether torch's OpenMP threads spin or sleep between calls moves
        # upstream's batch-1 times (and ours, interleaved with them) by several times.
        info["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY", "unset (spin)")
        if args.device == "gpu":
            info["gpu"] = torch_module.cuda.get_device_name()
    return info


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _fmt_mem(nbytes: int | None) -> str:
    return "-" if nbytes is None else f"{nbytes / 2**20:,.0f} MiB"


def _ratio(upstream: float | None, ours: float | None) -> str:
    return "-" if upstream is None or not ours else f"{upstream / ours:.2f}x"


def markdown_table(results: list[Result]) -> str:
    lines = [
        "| policy | measurement | ours | upstream | upstream / ours |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r.policy} | {r.label} | {_fmt_time(r.ours)} | {_fmt_time(r.upstream)} | "
            f"{_ratio(r.upstream, r.ours)} |"
        )
    for r in results:
        if r.ours_peak_bytes is None:
            continue
        lines.append(
            f"| {r.policy} | peak memory, {r.label} | {_fmt_mem(r.ours_peak_bytes)} | "
            f"{_fmt_mem(r.upstream_peak_bytes)} | {_ratio(r.upstream_peak_bytes, r.ours_peak_bytes)} |"
        )
    return "\n".join(lines)


def parameter_count(side: OursSide) -> int:
    from mlx.utils import tree_flatten

    return sum(v.size for _, v in tree_flatten(side.policy.trainable_parameters()))


def bench_policy(
    spec: PolicySpec, args: argparse.Namespace, upstream_path: Path | None, notes: list[str]
) -> list[Result]:
    ours = OursSide(spec, args.device)
    theirs = UpstreamSide(spec, upstream_path, args.device) if upstream_path else None
    batch_size = args.train_batch or int(ours.cfg.dataloader.batch_size)
    train_batch = synthetic_batch(ours.cfg, batch_size, seed=1)
    if theirs is not None:
        theirs.fit_normalizer(train_batch)
        theirs.build_training()
        if spec.same_weights:
            ours.load_upstream(theirs.state_dict())
        else:
            ours.fit_normalizer(train_batch)
    else:
        ours.fit_normalizer(train_batch)
    n_obs = int(ours.cfg.n_obs_steps)
    inputs = Inputs(
        obs_b1=synthetic_obs(ours.cfg, 1, n_obs, seed=2),
        obs_b56=synthetic_obs(ours.cfg, 56, n_obs, seed=3),
        train_batch=train_batch,
        train_batch_size=batch_size,
    )
    notes.append(
        f"{spec.key}: {parameter_count(ours) / 1e6:.1f}M trainable parameters (ours), "
        f"train batch {batch_size}" + (f"; {spec.note}" if spec.note and theirs else "")
    )
    if theirs is not None and spec.same_weights:
        notes.append(
            f"{spec.key}: same weights; denoiser max |ours - upstream| = {_forward_gap(ours, theirs):.1e}"
        )
    if theirs is not None and args.torch_compile:
        # After the weights are shared: a compiled module's state_dict keys change.
        theirs.compile_model(args.torch_compile)
        notes.append(
            f"{spec.key}: upstream's denoiser under torch.compile(mode={args.torch_compile!r})"
        )

    results = []
    for m in MEASUREMENTS:
        if m.key not in args.measure:
            continue
        fns = {"ours": m.build(ours, inputs)}
        if theirs is not None:
            fns["upstream"] = m.build(theirs, inputs)
        slow = m.key.startswith(("predict_ddpm", "train"))
        repeats = max(1, args.repeats // 2) if slow and args.repeats > 3 else args.repeats
        times, first = time_alternating(fns, args.warmup, repeats)
        notes.append(
            f"{spec.key} {m.key}: first call "
            + ", ".join(f"{side} {_fmt_time(t)}" for side, t in first.items())
        )
        label = m.label + (f", batch {batch_size}" if m.key.startswith("train") else "")
        result = Result(spec.key, m.key, label, times["ours"], times.get("upstream", []))
        if not args.no_memory:
            result.ours_peak_bytes = ours.peak_memory(fns["ours"])
            if theirs is not None:
                result.upstream_peak_bytes = theirs.peak_memory(fns["upstream"])
        print(
            f"  {spec.key:7s} {m.key:20s} ours {_fmt_time(result.ours):>10s}  "
            f"upstream {_fmt_time(result.upstream):>10s}  {_ratio(result.upstream, result.ours)}",
            flush=True,
        )
        results.append(result)
    return results


def _forward_gap(ours: OursSide, theirs: UpstreamSide) -> float:
    import torch
    from sides import denoiser_inputs

    model = ours.policy.model
    x, t, cond = denoiser_inputs(1, ours.cfg.horizon, model.input_dim, model.global_cond_dim)
    ours.policy.eval()
    theirs.policy.eval()
    a = np.array(model(mx.array(x), mx.array(t), global_cond=mx.array(cond)))
    with torch.inference_mode():
        args = (torch.from_numpy(v).to(theirs.device) for v in (x, t, cond))
        xt, tt, ct = args
        b = theirs.policy.model(xt, tt, global_cond=ct).cpu().numpy()
    return float(np.abs(a - b).max())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--policies", nargs="+", choices=sorted(SPECS), default=["lowdim", "hybrid"])
    p.add_argument("--measure", nargs="+", choices=MEASUREMENT_KEYS, default=MEASUREMENT_KEYS)
    p.add_argument(
        "--repeats", type=int, default=5, help="timed calls per side (halved for slow ones)"
    )
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per side first")
    p.add_argument(
        "--upstream",
        type=Path,
        default=os.environ.get("DP_UPSTREAM_PATH"),
        help="upstream diffusion_policy checkout (default: $DP_UPSTREAM_PATH)",
    )
    p.add_argument("--no-upstream", action="store_true", help="time ours only")
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--train-batch", type=int, default=None, help="default: the config's batch size")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory calls")
    p.add_argument(
        "--torch-compile",
        default=None,
        metavar="MODE",
        help="run upstream's denoiser under torch.compile with this mode (e.g. reduce-overhead, "
        "CUDA graphs); its compile time shows as the first call",
    )
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    mx.set_default_device(mx.gpu if args.device == "gpu" else mx.cpu)
    upstream_path = (
        None if args.no_upstream or args.upstream is None else Path(args.upstream).expanduser()
    )
    torch_module = None
    if upstream_path is not None:
        import_upstream(upstream_path)
        import torch

        torch_module = torch
        if args.device == "cpu":
            torch.set_num_threads(args.threads)
    info = machine_info(args, torch_module)
    print("\n".join(f"{k}: {v}" for k, v in info.items()), flush=True)

    results: list[Result] = []
    notes: list[str] = []
    for key in args.policies:
        results.extend(bench_policy(SPECS[key], args, upstream_path, notes))

    print()
    print(markdown_table(results))
    print()
    print("\n".join(f"- {n}" for n in notes))
    if args.json is not None:
        payload = {
            "machine": info,
            "args": {k: str(v) for k, v in vars(args).items()},
            "notes": notes,
            "results": [
                asdict(r) | {"ours_median_s": r.ours, "upstream_median_s": r.upstream}
                for r in results
            ],
        }
        args.json.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()

"""MLX CPU matmul and conv1d speed with MLX's bundled BLAS and with the optimized ones we load.

    python benchmarks/bench_blas.py [--matmul-only] [--hide-system-blas]

The BLAS is chosen when the package is imported, so each mode runs in its own subprocess:
``bundled`` (``DP_MLX_BLAS=off``, MLX's reference BLAS), ``default`` (``DP_MLX_BLAS`` unset: the
system's OpenBLAS where there is one, else the scipy-openblas32 wheel's) and ``wheel``
(``DP_MLX_BLAS=wheel``). ``--hide-system-blas`` runs each subprocess in a private mount namespace
(``unshare -m``, root) where the system's OpenBLAS, MKL and BLIS files read as empty, as on a
machine without them; nothing changes outside that process. Medians of 10 calls after 3 warm-ups.

The second table is what bounds sampling at batch 1: the U-Net's convolutions at its deepest
level (1024 channels, kernel 5, 21 MB of float32 weights each) over 4 rows (batch 1 at T = 4,
16 rows (batch 1 at T = 16), through 12 such layers, 252 MB (the lowdim U-Net holds 263 MB),
more than any cache, as a forward pass streams them: by MLX's BLAS products (``BLAS``) and, where
it is built, by the package's few-row kernel (``kernel``, ``accel/few_row_matmul.py``);
then the same 4-row products with fewer bytes to read: float16 weights through the kernel,
bfloat16 and 8-bit (``mx.quantize``, groups of 64) weights through MLX's own CPU products.
Rates are bytes of weights as stored per second, next to numpy's plain read of 252 MB.
"""

import argparse
import dataclasses
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

N = 1024
STREAM_LAYERS = 12
MODES = {"bundled": {"DP_MLX_BLAS": "off"}, "default": {}, "wheel": {"DP_MLX_BLAS": "wheel"}}
# The system libraries the package's search can find (blas._CANDIDATES's families).
SYSTEM_BLAS = re.compile(r"lib(openblas|mkl_rt|blis)\S*\.so")


def measure(matmul_only: bool) -> None:
    """Runs inside one subprocess: print one JSON line of the chosen BLAS's figures."""
    import diffusion_policy_mlx.accel as accel
    from diffusion_policy_mlx.accel import blas, few_row_matmul
    from diffusion_policy_mlx.accel.conv1d import CpuConv1d

    import mlx.core as mx
    import mlx.nn as nn

    config = accel.configure("cpu")

    def median_seconds(fn) -> float:
        for _ in range(3):
            mx.eval(fn())
        times = []
        for _ in range(10):
            start = time.perf_counter()
            mx.eval(fn())
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    a, b = mx.random.normal((N, N)), mx.random.normal((N, N))
    x, w = mx.random.normal((1, 16, 1024)), mx.random.normal((1024, 5, 1024))
    mx.eval(a, b, x, w)
    result = {
        "library": blas.blas_info().library or "MLX bundled reference BLAS",
        "matmul_gflops": 2 * N**3 / median_seconds(lambda: a @ b) / 1e9,
        "conv1d_ms": median_seconds(lambda: mx.conv1d(x, w, padding=2)) * 1e3,
    }
    if matmul_only:
        print(json.dumps(result))
        return

    plain = [nn.Conv1d(1024, 1024, 5, padding=2) for _ in range(STREAM_LAYERS)]
    mx.eval([layer.parameters() for layer in plain])
    kernel = config.kernels is not None
    # the layers sampling runs: with the extension, and without it (MLX's products)
    paths = {"BLAS": dataclasses.replace(config, kernels=None)}
    if kernel:
        paths["kernel"] = config
    swapped = {
        path: [accel.swap_layers(layer, c).eval() for layer in plain] for path, c in paths.items()
    }
    stream = {}
    for rows in (4, 16):
        x = mx.random.normal((1, rows, 1024))
        for path, layers in swapped.items():
            # BLAS: weight @ columns^T at 4 rows, mx.conv1d at 16
            def run(x=x, layers=layers, path=path, rows=rows):
                if path == "BLAS" and rows > 4:
                    return [nn.Conv1d.__call__(layer, x) for layer in layers]
                return [layer.few_rows(x) for layer in layers]

            stream[f"float32, {rows} rows, {path}"] = (
                median_seconds(run),
                sum(layer.weight.nbytes for layer in layers),
            )
    assert all(isinstance(layer, CpuConv1d) for layer in swapped["BLAS"])
    # The same 4-row products with the weights in fewer bytes: (4, 5 * 1024) columns.
    cols = mx.random.normal((4, 5 * 1024))
    flat = [layer.weight.reshape(1024, -1) for layer in layers]
    half = [f.astype(mx.bfloat16) for f in flat]
    quant = [mx.quantize(f, group_size=64, bits=8) for f in flat]
    mx.eval(cols, half, quant)
    cols_half = cols.astype(mx.bfloat16)
    if kernel:
        halves = [f.astype(mx.float16) for f in flat]
        mx.eval(halves)
        stream["float16, 4 rows, kernel"] = (
            median_seconds(
                lambda: [few_row_matmul.matmul_wt(cols, h, config.kernels) for h in halves]
            ),
            sum(h.nbytes for h in halves),
        )
    stream["bfloat16, 4 rows, MLX"] = (
        median_seconds(lambda: [h @ cols_half.T for h in half]),
        sum(h.nbytes for h in half),
    )
    stream["8-bit, 4 rows, MLX"] = (
        median_seconds(
            lambda: [
                mx.quantized_matmul(cols, *q, transpose=True, group_size=64, bits=8) for q in quant
            ]
        ),
        sum(sum(part.nbytes for part in q) for q in quant),
    )
    result["stream"] = {k: (t * 1e3, nbytes / t / 1e9) for k, (t, nbytes) in stream.items()}
    print(json.dumps(result))


def read_rate() -> float:
    """GB/s of numpy summing 252 MB of float32: the machine's plain read rate."""
    import numpy as np

    a = np.ones(STREAM_LAYERS * 1024 * 5 * 1024, dtype=np.float32)
    a.sum()
    times = []
    for _ in range(10):
        start = time.perf_counter()
        a.sum()
        times.append(time.perf_counter() - start)
    return a.nbytes / statistics.median(times) / 1e9


def system_blas_files() -> list[str]:
    """The files behind every OpenBLAS, MKL or BLIS soname the dynamic loader's cache lists."""
    cache = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=True).stdout
    paths = {line.split(" => ")[-1].strip() for line in cache.splitlines() if " => " in line}
    return sorted({str(Path(p).resolve()) for p in paths if SYSTEM_BLAS.search(Path(p).name)})


def hidden_system_blas(command: list[str]) -> list[str]:
    """``command`` in a private mount namespace where the system BLAS files are empty."""
    mounts = "".join(f"mount --bind /dev/null {f} && " for f in system_blas_files())
    script = mounts + 'exec "$@"'
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *command]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--matmul-only", action="store_true", help="skip the weight-stream table")
    parser.add_argument(
        "--hide-system-blas",
        action="store_true",
        help="measure as if the system had no OpenBLAS, MKL or BLIS (needs root for unshare -m)",
    )
    args = parser.parse_args()
    child = [sys.executable, "-W", "ignore", __file__, "--child"]
    if args.matmul_only:
        child.append("--matmul-only")
    if args.hide_system_blas:
        print(f"system BLAS hidden: {', '.join(system_blas_files()) or '(none found)'}\n")
        child = hidden_system_blas(child)
    results = {}
    for name, env in MODES.items():
        out = subprocess.run(
            child,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        results[name] = json.loads(out.strip().splitlines()[-1])
    print(f"| BLAS | {N}x{N} float32 matmul | (1,16,1024)x(1024,5,1024) conv1d | library |")
    print("| --- | ---: | ---: | --- |")
    for name, r in results.items():
        print(
            f"| {name} | {r['matmul_gflops']:.1f} GFLOP/s | {r['conv1d_ms']:.2f} ms "
            f"| {r['library']} |"
        )
    if args.matmul_only:
        return
    print(
        f"\nBatch-1 weight stream, {STREAM_LAYERS} deepest-level layers (ms per pass, GB/s of "
        f"weights as stored); numpy reads 252 MB at {read_rate():.1f} GB/s\n"
    )
    print("| weights, rows | " + " | ".join(results) + " |")
    print("| --- |" + " ---: |" * len(results))
    for case in next(iter(results.values()))["stream"]:
        cells = [
            f"{r['stream'][case][0]:.1f} ms, {r['stream'][case][1]:.1f} GB/s"
            for r in results.values()
        ]
        print(f"| {case} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    if "--child" in sys.argv:
        measure(matmul_only="--matmul-only" in sys.argv)
    else:
        main()

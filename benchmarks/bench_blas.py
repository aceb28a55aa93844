"""MLX CPU matmul and conv1d speed with MLX's bundled BLAS and with the optimized one we load.

    python benchmarks/bench_blas.py

The BLAS is chosen when the package is imported, so each mode runs in its own subprocess
(``DP_MLX_BLAS=off`` for the bundled reference BLAS). Medians of 10 calls after 3 warm-ups.

The weight-stream columns are what bounds sampling at batch 1: the U-Net's convolutions at its
deepest level (1024 channels, kernel 5, 21 MB of weights each) over 4 rows (batch 1 at T = 4,
our ``conv1d_few_rows``) and 16 rows (``mx.conv1d``), through 12 such layers, 252 MB (the lowdim
U-Net holds 263 MB), more than any cache, as a forward pass streams them: weight bytes per
second. The machine's plain read rate, numpy summing 252 MB, is printed above the table.
"""

import os
import statistics
import subprocess
import sys
import time

N = 1024
STREAM_LAYERS = 12
MODES = {"bundled": {"DP_MLX_BLAS": "off"}, "optimized": {}}


def measure() -> None:
    """Runs inside one subprocess: print the chosen BLAS, matmul GFLOP/s, conv1d ms and the
    weight-stream GB/s at 4 and 16 rows."""
    import diffusion_policy_mlx  # noqa: I001  (before mlx.core: it loads the BLAS)
    import mlx.core as mx
    import mlx.nn as nn

    from diffusion_policy_mlx.model.diffusion.conv1d_components import FEW_ROWS, conv1d_few_rows

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
    gflops = 2 * N**3 / median_seconds(lambda: a @ b) / 1e9
    conv_ms = median_seconds(lambda: mx.conv1d(x, w, padding=2)) * 1e3
    lib = diffusion_policy_mlx.blas_info().library or "MLX bundled reference BLAS"

    layers = [nn.Conv1d(1024, 1024, 5, padding=2) for _ in range(STREAM_LAYERS)]
    mx.eval([layer.parameters() for layer in layers])
    weight_bytes = sum(layer.weight.nbytes for layer in layers)
    stream = []
    for rows in (4, 16):
        x = mx.random.normal((1, rows, 1024))
        conv = conv1d_few_rows if rows <= FEW_ROWS else nn.Conv1d.__call__
        seconds = median_seconds(lambda x=x, conv=conv: [conv(layer, x) for layer in layers])
        stream.append(f"{weight_bytes / seconds / 1e9:.1f}")
    print("\t".join([f"{gflops:.1f}", f"{conv_ms:.2f}", *stream, lib]))


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


def main() -> None:
    print(f"numpy read of 252 MB: {read_rate():.1f} GB/s\n")
    print(
        f"| BLAS | {N}x{N} float32 matmul | (1,16,1024)x(1024,5,1024) conv1d "
        "| weight stream, 4 rows | weight stream, 16 rows | library |"
    )
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for name, env in MODES.items():
        out = subprocess.run(
            [sys.executable, "-W", "ignore", __file__, "--child"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        gflops, conv_ms, rows4, rows16, lib = out.split("\t")
        print(
            f"| {name} | {gflops} GFLOP/s | {conv_ms} ms | {rows4} GB/s | {rows16} GB/s | {lib} |"
        )


if __name__ == "__main__":
    if "--child" in sys.argv:
        measure()
    else:
        main()

"""MLX CPU matmul and conv1d speed with MLX's bundled BLAS and with the optimized one we load.

    python benchmarks/bench_blas.py

The BLAS is chosen when the package is imported, so each mode runs in its own subprocess
(``DP_MLX_BLAS=off`` for the bundled reference BLAS). Medians of 10 calls after 3 warm-ups.
"""

import os
import statistics
import subprocess
import sys
import time

N = 1024
MODES = {"bundled": {"DP_MLX_BLAS": "off"}, "optimized": {}}


def measure() -> None:
    """Runs inside one subprocess: print the chosen BLAS, matmul GFLOP/s and conv1d ms."""
    import diffusion_policy_mlx  # noqa: I001  (before mlx.core: it loads the BLAS)
    import mlx.core as mx

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
    print(f"{gflops:.1f}\t{conv_ms:.2f}\t{lib}")


def main() -> None:
    print(f"| BLAS | {N}x{N} float32 matmul | (1,16,1024)x(1024,5,1024) conv1d | library |")
    print("| --- | ---: | ---: | --- |")
    for name, env in MODES.items():
        out = subprocess.run(
            [sys.executable, "-W", "ignore", __file__, "--child"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        gflops, conv_ms, lib = out.split("\t")
        print(f"| {name} | {gflops} GFLOP/s | {conv_ms} ms | {lib} |")


if __name__ == "__main__":
    if "--child" in sys.argv:
        measure()
    else:
        main()

"""The temporal U-Net's convolutions several ways, forward and forward+backward, at the shapes of the
default configs (lowdim: batch 256, dims 256/512/1024; hybrid: batch 64, dims 512/1024/2048).

    python benchmarks/bench_conv1d.py [--device gpu]

* ``conv1d``: ``mx.conv1d`` (what the U-Net runs), MLX's own gradients.
* ``im2col``: the K shifted copies of the input stacked and multiplied in one GEMM, autodiff.
* ``custom-vjp``: ``mx.conv1d`` forward; gradients as one forward convolution (dx) and one GEMM
  (dW) through ``mx.custom_function``.
* ``valid-taps``: one GEMM per tap over only the output steps whose input is not padding,
  summed, autodiff.
* ``conv1d-same``: what the U-Net trains with on the CPU, ``conv1d_same``: ``mx.conv1d`` forward,
  gradients that skip the padded taps (dx by runs of output steps reading the same taps, dW one
  GEMM per tap). At T = 4 with kernel 5, 6 of the 20 (step, tap) products read zeros, which
  the other variants multiply (PyTorch's oneDNN convolution skips them).

Each variant is ``mx.compile``d; medians of ``--repeats`` calls: the output alone, and the output
with both gradients (``fwd_bwd``). Prints one JSON line per shape.
"""

import argparse
import json
import statistics
import time

import diffusion_policy_mlx.accel as accel
from diffusion_policy_mlx.accel.conv1d import conv1d_same

import mlx.core as mx

SHAPES = {
    "lowdim": [(256, 16, 256), (256, 8, 512), (256, 4, 1024)],
    "hybrid": [(64, 16, 512), (64, 8, 1024), (64, 4, 2048)],
}
KERNEL = 5


def conv1d(x: mx.array, w: mx.array) -> mx.array:
    return mx.conv1d(x, w, padding=w.shape[1] // 2)


def shifted(x: mx.array, k: int) -> mx.array:
    """(B, T, C) -> (B, T, K, C): the K zero-padded windows of every step."""
    pad = k // 2
    padded = mx.pad(x, [(0, 0), (pad, pad), (0, 0)])
    return mx.stack([padded[:, j : j + x.shape[1]] for j in range(k)], axis=2)


def im2col(x: mx.array, w: mx.array) -> mx.array:
    c_out, k, c_in = w.shape
    return shifted(x, k).reshape(*x.shape[:2], k * c_in) @ w.reshape(c_out, -1).T


@mx.custom_function
def custom_vjp(x: mx.array, w: mx.array) -> mx.array:
    return conv1d(x, w)


@custom_vjp.vjp
def _custom_vjp_grads(primals, cotangent, output):
    x, w = primals
    c_out, k, c_in = w.shape
    dx = mx.conv1d(cotangent, w[:, ::-1, :].transpose(2, 1, 0), padding=k // 2)
    dw = cotangent.reshape(-1, c_out).T @ shifted(x, k).reshape(-1, k * c_in)
    return dx, dw.reshape(c_out, k, c_in)


def valid_taps(x: mx.array, w: mx.array) -> mx.array:
    _, length, _ = x.shape
    k = w.shape[1]
    taps = w.transpose(1, 0, 2)  # (K, C_out, C_in): each tap's matrix contiguous
    y = None
    for j in range(k):
        shift = j - k // 2  # output step t reads input step t + shift
        start, stop = max(0, -shift), min(length, length - shift)
        if stop <= start:
            continue
        part = x[:, start + shift : stop + shift] @ taps[j].T
        part = mx.pad(part, [(0, 0), (start, length - stop), (0, 0)])
        y = part if y is None else y + part
    return y


VARIANTS = {
    "conv1d": conv1d,
    "im2col": im2col,
    "custom-vjp": custom_vjp,
    "valid-taps": valid_taps,
    "conv1d-same": conv1d_same,
}


def median_s(fn, args, repeats: int) -> float:
    mx.eval(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        mx.eval(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or gpu")
    parser.add_argument("--configs", nargs="+", choices=sorted(SHAPES), default=sorted(SHAPES))
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    accel.configure(args.device)
    for config in args.configs:
        for batch, length, channels in SHAPES[config]:
            x = mx.random.normal((batch, length, channels))
            w = mx.random.normal((channels, KERNEL, channels)) * 0.02
            dy = mx.random.normal((batch, length, channels))
            flops = 2 * batch * length * KERNEL * channels * channels
            row = {"config": config, "shape": [batch, length, channels], "device": args.device}
            for name, fn in VARIANTS.items():
                fwd = mx.compile(fn)
                # the output too: a gradient alone would let compile drop the forward
                grads = mx.compile(lambda x, w, dy, fn=fn: mx.vjp(fn, [x, w], [dy]))
                t_fwd = median_s(fwd, (x, w), args.repeats)
                t_all = median_s(grads, (x, w, dy), args.repeats)
                row[name] = {
                    "fwd_ms": round(t_fwd * 1e3, 3),
                    "fwd_bwd_ms": round(t_all * 1e3, 3),
                    "fwd_bwd_tflops": round(3 * flops / t_all / 1e12, 2),
                }
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()

"""numpy transcriptions of torch's 1-D convolution blocks, and channels-last converters, for
the tests of the U-Net's blocks and of accel's CPU convolutions."""

import mlx.core as mx
import numpy as np

RNG = np.random.default_rng(0)


def conv1d_ref(x, w, b, stride=1, padding=0):
    """x (B, C_in, T), w (O, C_in, K) torch layout -> (B, O, T_out), cross-correlation."""
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding)))
    k = w.shape[-1]
    t_out = (xp.shape[-1] - k) // stride + 1
    out = np.empty((x.shape[0], w.shape[0], t_out))
    for t in range(t_out):
        window = xp[:, :, t * stride : t * stride + k]
        out[:, :, t] = np.einsum("bik,oik->bo", window, w)
    return out + b[None, :, None]


def conv_transpose1d_ref(x, w, b, stride, padding):
    """x (B, C_in, T), w (C_in, O, K) torch layout: each input step scatters a kernel."""
    k = w.shape[-1]
    full = np.zeros((x.shape[0], w.shape[1], (x.shape[-1] - 1) * stride + k))
    for t in range(x.shape[-1]):
        full[:, :, t * stride : t * stride + k] += np.einsum("bi,iok->bok", x[:, :, t], w)
    return full[:, :, padding : full.shape[-1] - padding] + b[None, :, None]


def group_norm_ref(x, groups, weight, bias, eps=1e-5):
    b, c, t = x.shape
    g = x.reshape(b, groups, -1)
    g = (g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + eps)
    return g.reshape(b, c, t) * weight[None, :, None] + bias[None, :, None]


def mish_ref(x):
    return x * np.tanh(np.log1p(np.exp(x)))


def to_cl(x):
    return mx.array(x.transpose(0, 2, 1).astype(np.float32))


def from_cl(y):
    return np.array(y).transpose(0, 2, 1)


def randn(*shape):
    return RNG.standard_normal(shape).astype(np.float32)

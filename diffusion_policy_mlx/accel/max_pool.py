"""Max pooling for the CPU as a running maximum of strided slices."""

import mlx.core as mx

from diffusion_policy_mlx.model.vision.resnet import MaxPool2d


class CpuMaxPool2d(MaxPool2d):
    """The ResNet stem's ``MaxPool2d`` as the running maximum of its kernel's strided slices.

    ``nn.MaxPool2d`` reduces over overlapping ``as_strided`` windows, whose gradient MLX's CPU
    backend scatters slowly (0.85 s of the stem's backward at the hybrid policy's batch). The
    two agree wherever a window's maximum is unique; ties, which after a ReLU sit at zero where
    no gradient flows back anyway, may pass the gradient to several entries instead of one.
    """

    def __call__(self, x: mx.array) -> mx.array:
        (kh, kw), (sh, sw) = self._kernel_size, self._stride
        (ph, _), (pw, _) = self._padding
        x = mx.pad(x, [(0, 0), (ph, ph), (pw, pw), (0, 0)], constant_values=self._padding_value)
        out_h = (x.shape[1] - kh) // sh + 1
        out_w = (x.shape[2] - kw) // sw + 1
        y = None
        for i in range(kh):
            for j in range(kw):
                window = x[:, i : i + sh * (out_h - 1) + 1 : sh, j : j + sw * (out_w - 1) + 1 : sw]
                y = window if y is None else mx.maximum(y, window)
        return y

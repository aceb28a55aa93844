"""Low-precision copies of convolution weights, read by the CPU kernels while sampling.

Opt-in (``accel.cpu_weights``), since the actions then differ from float32's by the rounding:
``float16`` copies for the few-row kernel (half the bytes to read at batch 1), or ``bfloat16``
weights packed for the AMX kernel (batched sampling). Both accumulate in float32.

A policy that :func:`diffusion_policy_mlx.accel.apply` set up holds a :class:`SamplingWeights`:
before each compiled denoising loop it refreshes the copies, declares :attr:`~SamplingWeights.arrays`
an input of the compiled step (so later refreshes reach it without retracing) and traces the
step inside :meth:`~SamplingWeights.active`. Only then do the layers of :mod:`.conv1d` read
the copies (:meth:`LowPrecisionLayer.weight_for`, :meth:`LowPrecisionLayer.packed_for`);
training and eager calls keep float32.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

from diffusion_policy_mlx.accel.amx_conv1d import pack_weight
from diffusion_policy_mlx.accel.few_row_matmul import MAX_ROWS

import mlx.core as mx
import mlx.nn as nn

DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}

# The weights whose copies the layers read while a compiled step is traced.
_active: SamplingWeights | None = None


class LowPrecisionLayer:
    """What a convolution layer of :mod:`.conv1d` needs to read a low-precision copy of its
    weight: the extension it calls (``kernels``, None for MLX's operations) and its key in
    :attr:`SamplingWeights.arrays` (its path in the model the weights were refreshed for)."""

    kernels: ModuleType | None = None
    weights_key: str = ""
    training: bool
    weight: mx.array

    def few_row_kernels(self, rows: int) -> ModuleType | None:
        """The extension for a product over ``rows`` rows: in eval mode up to
        :data:`~.few_row_matmul.MAX_ROWS` rows (training keeps MLX's products)."""
        if self.training or rows > MAX_ROWS:
            return None
        return self.kernels

    def weight_for(self, rows: int) -> mx.array:
        """The weight a product over ``rows`` rows multiplies: the float16 copy where the
        few-row kernel takes the product and float16 weights are active, else ``weight``."""
        if _active is None or _active.dtype != mx.float16 or self.few_row_kernels(rows) is None:
            return self.weight
        return _active.arrays.get(self.weights_key, self.weight)

    def packed_for(self, rows: int) -> mx.array | None:
        """The AMX-packed bfloat16 weight for a product over ``rows`` rows, where bfloat16
        weights are active, the product has more than ``MAX_ROWS`` rows and the layer is in eval
        mode; else None."""
        if _active is None or _active.dtype != mx.bfloat16 or rows <= MAX_ROWS or self.training:
            return None
        return _active.arrays.get(self.weights_key)

    def low_precision_weight(self, dtype: mx.Dtype) -> mx.array:
        """This layer's weight as the kernel for ``dtype`` reads it."""
        if dtype == mx.bfloat16:
            return pack_weight(self.weight)
        return self.weight.astype(dtype)


class SamplingWeights:
    """Low-precision copies (``dtype``: float16 or bfloat16) of every
    :class:`LowPrecisionLayer`'s weight in a model, in :attr:`arrays` by module path.

    :meth:`refresh` recomputes a copy when its layer's weight array has been replaced (MLX
    arrays are immutable, so training, EMA updates and checkpoint loads all replace them) and
    updates ``arrays`` in place, so that a compiled function declaring it as an input reads the
    new copies.
    """

    def __init__(self, dtype: mx.Dtype) -> None:
        self.dtype = dtype
        self.arrays: dict[str, mx.array] = {}
        self._sources: dict[str, mx.array] = {}

    @property
    def signature(self) -> tuple:
        """What a compiled step traced with these weights depends on."""
        return (str(self.dtype), len(self.arrays))

    def refresh(self, model: nn.Module) -> None:
        layers = {path: m for path, m in model.named_modules() if isinstance(m, LowPrecisionLayer)}
        for key in set(self.arrays) - set(layers):
            del self.arrays[key], self._sources[key]
        for path, layer in layers.items():
            layer.weights_key = path
            if self._sources.get(path) is layer.weight:
                continue
            self._sources[path] = layer.weight
            self.arrays[path] = layer.low_precision_weight(self.dtype)
            # one at a time: evaluated together, the hybrid U-Net's packs (pads, casts and
            # transposes of 244M entries) took 4.3 s; one by one, reusing the buffers, 0.9 s
            mx.eval(self.arrays[path])

    @contextmanager
    def active(self) -> Iterator[None]:
        """Within: the layers read these copies (inside ``mx.compile`` tracing, the tracers
        that stand for them)."""
        global _active
        previous, _active = _active, self
        try:
            yield
        finally:
            _active = previous

    def __deepcopy__(self, memo: dict) -> SamplingWeights:
        # a copied model (the EMA policy) has modules of its own
        return SamplingWeights(self.dtype)

"""GroupNorm that can apply its following activation, so that an accelerated norm can fuse the
two (``diffusion_policy_mlx.accel`` swaps in such a norm on the CPU)."""

from collections.abc import Callable

import mlx.core as mx
import mlx.nn as nn

from diffusion_policy_mlx.model.common.activation import mish

ACTIVATIONS: dict[str, Callable[[mx.array], mx.array]] = {
    "none": lambda x: x,
    "mish": mish,
    "relu": nn.relu,
}


class GroupNorm(nn.GroupNorm):
    """``mlx.nn.GroupNorm`` (same parameters and names); ``norm(x, activation="mish")`` is
    ``mish(norm(x))``, likewise ``"relu"``: (B, ..., C) -> (B, ..., C)."""

    def __call__(self, x: mx.array, activation: str = "none") -> mx.array:
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"GroupNorm: activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}"
            )
        return ACTIVATIONS[activation](super().__call__(x))

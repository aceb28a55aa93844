"""Put the accelerated layers into a built model, the way ``nn.quantize`` swaps in quantized
ones.

Each accelerated layer is a subclass of the plain one it replaces, sharing its parameters,
names and frozen state, so checkpoints, optimizers and EMA copies see the same arrays; a deep
copy (the EMA policy) keeps the swapped types, and so does a checkpoint load (it replaces
arrays, not modules). Swapping again with other settings first returns each layer to its plain
type.
"""

from __future__ import annotations

from typing import Any

from diffusion_policy_mlx.accel.conv1d import CpuConv1d, CpuStridedConv1d, GemmConvTranspose1d
from diffusion_policy_mlx.accel.cpu_streams import CpuStreams
from diffusion_policy_mlx.accel.extension import Shared
from diffusion_policy_mlx.accel.group_norm import CpuGroupNorm
from diffusion_policy_mlx.accel.group_norm_mish import FusedConv1dBlock
from diffusion_policy_mlx.accel.low_precision import SamplingWeights
from diffusion_policy_mlx.accel.max_pool import CpuMaxPool2d
from diffusion_policy_mlx.accel.settings import AccelConfig, current
from diffusion_policy_mlx.accel.strided_conv import CpuStridedConv2d

import mlx.core as mx
import mlx.nn as nn

from diffusion_policy_mlx.model.common.normalization import GroupNorm
from diffusion_policy_mlx.model.diffusion.conv1d_components import Conv1dBlock
from diffusion_policy_mlx.model.vision.resnet import MaxPool2d
from diffusion_policy_mlx.policy.diffusion_policy_base import DiffusionPolicyBase

# accelerated type -> the plain type it replaces
PLAIN = {
    CpuConv1d: nn.Conv1d,
    CpuStridedConv1d: nn.Conv1d,
    GemmConvTranspose1d: nn.ConvTranspose1d,
    CpuGroupNorm: GroupNorm,
    CpuStridedConv2d: nn.Conv2d,
    CpuMaxPool2d: MaxPool2d,
    FusedConv1dBlock: Conv1dBlock,
}
# what an accelerated layer carries besides its plain type's state
_SETTINGS = ("kernels", "weights_key")


def apply(module: nn.Module, config: AccelConfig | None = None) -> nn.Module:
    """Swap the fast paths of ``config`` (default: the current one) into ``module`` (a policy,
    or any model) and, for a diffusion policy, give it the CPU-stream batch split and the
    low-precision sampling weights; returns ``module``. Without any ``configure`` call it
    changes nothing: importing the package chooses no fast path."""
    config = current() if config is None else config
    if config is None:
        return module
    module = swap_layers(module, config)
    if isinstance(module, DiffusionPolicyBase):
        weights = None if config.cpu_weights == mx.float32 else SamplingWeights(config.cpu_weights)
        module.set_execution(CpuStreams(config.cpu_streams), weights)
    return module


def swap_layers(module: nn.Module, config: AccelConfig) -> nn.Module:
    """Replace, in place, every layer of ``module`` that ``config`` has a faster equivalent
    for; returns ``module`` (or its replacement, when ``module`` is such a layer itself)."""
    return _swap(module, config)


def _swap(value: Any, config: AccelConfig) -> Any:
    if isinstance(value, nn.Module):
        for key, child in list(value.items()):
            new = _swap(child, config)
            if new is not child:
                value[key] = new
        # after its children, so that a swapped container holds the swapped children
        return _accelerated(value, config)
    # modules keep children in lists (torch's Sequential) and dicts (ModuleDict: an obs
    # encoder's per-key networks), as MLX's own tree utilities walk them
    if isinstance(value, list):
        for i, child in enumerate(value):
            value[i] = _swap(child, config)
    elif isinstance(value, dict):
        for key, child in value.items():
            value[key] = _swap(child, config)
    return value


def _accelerated(layer: nn.Module, config: AccelConfig) -> nn.Module:
    plain = PLAIN.get(type(layer), type(layer))
    fast, settings = _choice(layer, plain, config)
    if fast is None:
        return layer if plain is type(layer) else _retype(layer, plain, {})
    return _retype(layer, fast, settings)


def _choice(
    layer: nn.Module, plain: type, config: AccelConfig
) -> tuple[type | None, dict[str, Any]]:
    """The accelerated type for ``layer`` (of plain type ``plain``) and its settings, or
    ``(None, {})`` to keep the plain layer."""
    kernels = {"kernels": None if config.kernels is None else Shared(config.kernels)}
    if plain is nn.ConvTranspose1d and _is_upsample(layer):
        return GemmConvTranspose1d, kernels
    if plain is Conv1dBlock and config.fused_group_norm:
        return FusedConv1dBlock, {}
    if not config.on_cpu:
        return None, {}
    if plain is nn.Conv1d and "bias" in layer and layer.groups == 1 and layer.dilation == 1:
        size = layer.weight.shape[1]
        if layer.stride == 1 and size % 2 and layer.padding == size // 2:
            return CpuConv1d, kernels
        if layer.stride > 1:
            return CpuStridedConv1d, kernels
    if plain is GroupNorm and config.kernels is not None:
        if layer.pytorch_compatible and "weight" in layer:
            return CpuGroupNorm, kernels
    if plain is nn.Conv2d and max(layer.stride) > 1:
        if layer.dilation in (1, (1, 1)) and layer.groups == 1:
            return CpuStridedConv2d, {}
    if plain is MaxPool2d:
        return CpuMaxPool2d, {}
    return None, {}


def _is_upsample(layer: nn.ConvTranspose1d) -> bool:
    """``Upsample1d``'s geometry, the one :class:`GemmConvTranspose1d` computes."""
    return (
        layer.weight.shape[1] == 4
        and (layer.stride, layer.padding, layer.dilation, layer.output_padding) == (2, 1, 1, 0)
        and "bias" in layer
    )


def _retype(layer: nn.Module, cls: type, settings: dict[str, Any]) -> nn.Module:
    """``layer`` as a ``cls``, sharing its arrays and children, with ``settings`` set."""
    new = cls.__new__(cls)
    state = {k: v for k, v in layer.__dict__.items() if k not in _SETTINGS}
    new.__dict__.update(state, _no_grad=set(layer._no_grad))
    dict.update(new, layer)
    for key, value in settings.items():
        setattr(new, key, value)
    return new

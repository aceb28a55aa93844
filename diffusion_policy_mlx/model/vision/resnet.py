"""torchvision's ResNet-18/34/50 in MLX, channels-last, with torchvision's parameter names.

Attribute names and list positions reproduce torchvision's ``state_dict`` keys (``conv1.weight``,
``bn1.running_mean``, ``layer1.0.conv1.weight``, ``layer2.0.downsample.0.weight``, ``fc.weight``)
so torchvision and upstream weights load by name once conv kernels are moved from torch's
``(O, I, H, W)`` to MLX's ``(O, H, W, I)``.
"""

import copy
import math
from collections.abc import Sequence

import mlx.core as mx
import mlx.nn as nn

from diffusion_policy_mlx.model.common.normalization import GroupNorm


def norm_relu(norm: nn.Module, x: mx.array) -> mx.array:
    """``relu(norm(x))``; a GroupNorm (``replace_bn_with_gn``) applies the ReLU itself, so that
    an accelerated norm fuses the two."""
    if isinstance(norm, GroupNorm):
        return norm(x, activation="relu")
    return nn.relu(norm(x))


def conv_init(conv: nn.Conv2d) -> nn.Conv2d:
    """Initialise a conv kernel as torchvision's ResNet does (He normal, fan_out, ReLU gain)."""
    conv.weight = nn.init.he_normal()(conv.weight, mode="fan_out", gain=math.sqrt(2.0))
    return conv


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return conv_init(nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False))


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return conv_init(nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False))


def apply_sequence(layers: Sequence, x: mx.array) -> mx.array:
    """Run ``x`` through ``layers`` in order; nested lists (a ResNet stage) run in order too.

    Lists stand in for torch's ``nn.Sequential`` because MLX names list items ``name.0``,
    ``name.1``, ... exactly as torch names Sequential children.
    """
    for layer in layers:
        x = apply_sequence(layer, x) if isinstance(layer, list) else layer(x)
    return x


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` that ``copy.deepcopy`` accepts (upstream deep-copies rgb models and EMA
    copies policies). The base class keeps ``mx.max``, a C++ function deepcopy cannot pickle; the
    pool holds no state, so a shallow copy is already independent.
    """

    def __deepcopy__(self, memo: dict) -> "MaxPool2d":
        return copy.copy(self)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (ResNet-18/34). ``(B, H, W, C) -> (B, H/s, W/s, P)``."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm(planes)
        if stride != 1 or inplanes != planes:
            self.downsample = [conv1x1(inplanes, planes, stride), nn.BatchNorm(planes)]

    def last_norm(self) -> nn.Module:
        return self.bn2

    def __call__(self, x: mx.array) -> mx.array:
        out = norm_relu(self.bn1, self.conv1(x))
        out = self.bn2(self.conv2(out))
        identity = apply_sequence(self.downsample, x) if "downsample" in self else x
        return nn.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided, torchvision's "V1.5") -> 1x1 with 4x expansion (ResNet-50)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        width = planes
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm(width)
        self.conv2 = conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm(planes * self.expansion)
        if stride != 1 or inplanes != planes * self.expansion:
            self.downsample = [
                conv1x1(inplanes, planes * self.expansion, stride),
                nn.BatchNorm(planes * self.expansion),
            ]

    def last_norm(self) -> nn.Module:
        return self.bn3

    def __call__(self, x: mx.array) -> mx.array:
        out = norm_relu(self.bn1, self.conv1(x))
        out = norm_relu(self.bn2, self.conv2(out))
        out = self.bn3(self.conv3(out))
        identity = apply_sequence(self.downsample, x) if "downsample" in self else x
        return nn.relu(out + identity)


class ResNet(nn.Module):
    """torchvision's ResNet on ``(B, H, W, 3)`` images.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
        num_classes: size of the ``fc`` head; ``None`` leaves it out, which is upstream's
            ``resnet.fc = Identity()``: the output is then the pooled feature ``(B, 512 * expansion)``.
        zero_init_residual: zero the last norm's scale in every block (torchvision's option).
        in_channels: channels of the input image.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        num_classes: int | None = 1000,
        zero_init_residual: bool = False,
        in_channels: int = 3,
    ):
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"ResNet needs 4 stage depths, got layers={list(layers)}")
        self.conv1 = conv_init(nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False))
        self.bn1 = nn.BatchNorm(64)
        self.maxpool = MaxPool2d(3, stride=2, padding=1)
        inplanes = 64
        for i, (planes, depth) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            stride = 1 if i == 0 else 2
            stage = []
            for j in range(depth):
                stage.append(block(inplanes, planes, stride if j == 0 else 1))
                inplanes = planes * block.expansion
            setattr(self, f"layer{i + 1}", stage)
        self.feature_dim = inplanes
        if num_classes is not None:
            self.fc = nn.Linear(inplanes, num_classes)
        if zero_init_residual:
            for stage in self.stages():
                for blk in stage:
                    norm = blk.last_norm()
                    norm.weight = mx.zeros_like(norm.weight)

    def stages(self) -> list[list[BasicBlock | Bottleneck]]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def forward_features(self, x: mx.array) -> mx.array:
        """Conv trunk without pooling: ``(B, H, W, C) -> (B, ceil(H/32), ceil(W/32), F)``."""
        x = self.maxpool(norm_relu(self.bn1, self.conv1(x)))
        return apply_sequence(self.stages(), x)

    def __call__(self, x: mx.array) -> mx.array:
        """``(B, H, W, C) -> (B, F)`` (no ``fc``) or ``(B, num_classes)``."""
        x = self.forward_features(x).mean(axis=(1, 2))
        return self.fc(x) if "fc" in self else x


def resnet18(**kwargs) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), **kwargs)


def resnet34(**kwargs) -> ResNet:
    return ResNet(BasicBlock, (3, 4, 6, 3), **kwargs)


def resnet50(**kwargs) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), **kwargs)


RESNETS = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50}


def _replace(value, make_norm):
    if isinstance(value, nn.BatchNorm):
        return make_norm(value), 1
    if isinstance(value, list):
        count = 0
        for i, item in enumerate(value):
            value[i], n = _replace(item, make_norm)
            count += n
        return value, count
    if isinstance(value, nn.Module):
        # children() maps non-module leaves to placeholders, so take the names only
        names = list(value.children())
    elif isinstance(value, dict):
        names = list(value)
    else:
        return value, 0
    count = 0
    for name in names:
        value[name], n = _replace(value[name], make_norm)
        count += n
    return value, count


def replace_bn_with_gn(module: nn.Module, features_per_group: int = 16) -> int:
    """Swap every ``BatchNorm`` in ``module`` for ``GroupNorm(C // features_per_group, C)`` in place.

    Upstream's ``obs_encoder_group_norm`` / ``use_group_norm``: the new norm keeps the old one's
    name, so ``layer1.0.bn1.weight`` stays ``layer1.0.bn1.weight``; running statistics go away.
    Returns how many norms were replaced.
    """

    def make_norm(bn: nn.BatchNorm) -> nn.GroupNorm:
        if bn.num_features % features_per_group != 0:
            raise ValueError(
                f"BatchNorm with {bn.num_features} channels cannot become a GroupNorm of "
                f"{features_per_group} channels per group"
            )
        groups = bn.num_features // features_per_group
        norm = GroupNorm(groups, bn.num_features, pytorch_compatible=True)
        norm.train(bn.training)
        return norm

    if isinstance(module, nn.BatchNorm):
        raise ValueError(
            "replace_bn_with_gn replaces norms inside a module; got a BatchNorm itself"
        )
    return _replace(module, make_norm)[1]

"""The observation encoder upstream's hybrid policies get from robomimic, without robomimic.

``DiffusionUnetHybridImagePolicy`` builds robomimic's (v0.2) ``ObservationEncoder`` from the
``bc_rnn`` image config: per rgb key a ``VisualCore`` (ResNet-18 conv trunk -> SpatialSoftmax with
32 keypoints -> flatten -> Linear to 64) followed by a ReLU, optionally preceded by a crop
randomizer; low-dim keys pass through flattened. Features are concatenated in ``shape_meta``
order. Module names reproduce the ``obs_encoder.`` part of an upstream checkpoint
(``obs_nets.<key>.nets.0.nets.4.0.conv1.weight``, ``obs_nets.<key>.nets.3.weight``, ...); see
:func:`drop_upstream_aliases` for the duplicate keys those checkpoints also hold.
"""

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from diffusion_policy_mlx.common.distributed import sharded_draw
from diffusion_policy_mlx.model.vision.crop_randomizer import CropRandomizer
from diffusion_policy_mlx.model.vision.resnet import apply_sequence, replace_bn_with_gn, resnet18


class ResNet18Conv(nn.Module):
    """ResNet-18 without average pool and fc: ``(B, H, W, C) -> (B, ceil(H/32), ceil(W/32), 512)``.

    ``nets`` lists torchvision's children in order (conv1, bn1, relu, maxpool, layer1..4), so
    parameters are named ``nets.0.weight``, ``nets.4.0.conv1.weight``, ... as in robomimic.
    """

    def __init__(self, input_channel: int = 3):
        super().__init__()
        trunk = resnet18(num_classes=None, in_channels=input_channel)
        self.nets = [
            trunk.conv1,
            trunk.bn1,
            nn.ReLU(),
            trunk.maxpool,
            trunk.layer1,
            trunk.layer2,
            trunk.layer3,
            trunk.layer4,
        ]

    def output_shape(self, input_shape: Sequence[int]) -> list[int]:
        """``(C, H, W) -> [512, ceil(H/32), ceil(W/32)]`` (channels-first, robomimic's convention)."""
        return [512, math.ceil(input_shape[1] / 32), math.ceil(input_shape[2] / 32)]

    def __call__(self, x: mx.array) -> mx.array:
        return apply_sequence(self.nets, x)


class SpatialSoftmax(nn.Module):
    """Keypoints as the softmax-weighted mean pixel position of each feature map.

    A 1x1 conv makes ``num_kp`` maps from the ``C`` input channels; each map's softmax over the
    ``H * W`` positions (divided by ``temperature``) weights a grid spanning ``[-1, 1]`` in x
    (columns) and y (rows). ``(B, H, W, C) -> (B, num_kp, 2)`` with ``(x, y)`` per keypoint.

    Args:
        input_shape: ``(C, H, W)`` of the feature map (robomimic's convention).
        num_kp: keypoints; ``None`` uses the input channels directly (no conv).
        temperature: softmax temperature; trained only if ``learnable_temperature``.
        output_variance: also return each keypoint's 2x2 covariance ``(B, num_kp, 2, 2)``.
        noise_std: std of Gaussian noise added to the keypoints in training.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_kp: int | None = 32,
        temperature: float = 1.0,
        learnable_temperature: bool = False,
        output_variance: bool = False,
        noise_std: float = 0.0,
    ):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(
                f"SpatialSoftmax input_shape must be (C, H, W), got {tuple(input_shape)}"
            )
        self.in_c, self.in_h, self.in_w = (int(v) for v in input_shape)
        if num_kp is not None:
            self.nets = nn.Conv2d(self.in_c, num_kp, kernel_size=1)
            # torch's default conv init draws the bias like the weight; MLX starts it at zero
            bound = 1.0 / math.sqrt(self.in_c)
            self.nets.bias = mx.random.uniform(-bound, bound, (num_kp,))
            self.num_kp = num_kp
        else:
            self.num_kp = self.in_c
        self.learnable_temperature = learnable_temperature
        self.output_variance = output_variance
        self.noise_std = noise_std
        # temperature and the grid are checkpointed by upstream (torch buffers), so they are
        # registered here too, and frozen unless the temperature is learnable.
        self.temperature = mx.array([temperature], dtype=mx.float32)
        pos_x, pos_y = np.meshgrid(
            np.linspace(-1.0, 1.0, self.in_w), np.linspace(-1.0, 1.0, self.in_h)
        )
        self.pos_x = mx.array(pos_x.reshape(1, -1).astype(np.float32))
        self.pos_y = mx.array(pos_y.reshape(1, -1).astype(np.float32))
        self._freeze_buffers()

    def _freeze_buffers(self) -> None:
        keys = (
            ["pos_x", "pos_y"] if self.learnable_temperature else ["pos_x", "pos_y", "temperature"]
        )
        self.freeze(keys=keys, recurse=False)

    def unfreeze(self, *args, **kwargs) -> "SpatialSoftmax":
        """Unfreeze like any module, but the grid (and a fixed temperature) stays frozen."""
        super().unfreeze(*args, **kwargs)
        self._freeze_buffers()
        return self

    def output_shape(self, input_shape: Sequence[int]) -> list[int]:
        return [self.num_kp, 2]

    def __call__(self, feature: mx.array) -> mx.array | tuple[mx.array, mx.array]:
        if tuple(feature.shape[1:]) != (self.in_h, self.in_w, self.in_c):
            raise ValueError(
                f"SpatialSoftmax expects (B, {self.in_h}, {self.in_w}, {self.in_c}) features, "
                f"got {tuple(feature.shape)}"
            )
        if "nets" in self:
            feature = self.nets(feature)
        # (B, H, W, K) -> (B, K, H * W): positions in row-major order, like pos_x / pos_y
        logits = feature.reshape(feature.shape[0], -1, self.num_kp).transpose(0, 2, 1)
        attention = mx.softmax(logits / self.temperature, axis=-1)
        expected_x = (self.pos_x * attention).sum(axis=-1)
        expected_y = (self.pos_y * attention).sum(axis=-1)
        keypoints = mx.stack([expected_x, expected_y], axis=-1)
        if self.training and self.noise_std > 0:
            noise = sharded_draw(lambda shape: mx.random.normal(shape), keypoints.shape)
            keypoints = keypoints + noise * self.noise_std
        if not self.output_variance:
            return keypoints
        var_x = (self.pos_x * self.pos_x * attention).sum(axis=-1) - expected_x * expected_x
        var_y = (self.pos_y * self.pos_y * attention).sum(axis=-1) - expected_y * expected_y
        var_xy = (self.pos_x * self.pos_y * attention).sum(axis=-1) - expected_x * expected_y
        covariance = mx.stack([var_x, var_xy, var_xy, var_y], axis=-1)
        return keypoints, covariance.reshape(*keypoints.shape[:2], 2, 2)


class Flatten(nn.Module):
    """``(B, ...) -> (B, prod(...))``."""

    def __call__(self, x: mx.array) -> mx.array:
        return x.reshape(x.shape[0], -1)


class VisualCore(nn.Module):
    """robomimic's image core: backbone -> SpatialSoftmax -> flatten -> Linear, as ``nets.0..3``.

    Args:
        input_shape: ``(C, H, W)`` of the (cropped) images.
        feature_dimension: size of the output feature.
        num_kp: keypoints of the SpatialSoftmax pool.
    """

    def __init__(self, input_shape: Sequence[int], feature_dimension: int = 64, num_kp: int = 32):
        super().__init__()
        self.input_shape = tuple(int(v) for v in input_shape)
        backbone = ResNet18Conv(input_channel=self.input_shape[0])
        feat_shape = backbone.output_shape(self.input_shape)
        pool = SpatialSoftmax(feat_shape, num_kp=num_kp)
        pooled = pool.output_shape(feat_shape)
        self.feature_dimension = feature_dimension
        self.nets = [backbone, pool, Flatten(), nn.Linear(int(np.prod(pooled)), feature_dimension)]

    @property
    def backbone(self) -> ResNet18Conv:
        return self.nets[0]

    @property
    def pool(self) -> SpatialSoftmax:
        return self.nets[1]

    def output_shape(self, input_shape: Sequence[int] | None = None) -> list[int]:
        return [self.feature_dimension]

    def __call__(self, x: mx.array) -> mx.array:
        """``(B, H, W, C) -> (B, feature_dimension)``."""
        c, h, w = self.input_shape
        if tuple(x.shape[1:]) != (h, w, c):
            raise ValueError(f"VisualCore expects (B, {h}, {w}, {c}) images, got {tuple(x.shape)}")
        return apply_sequence(self.nets, x)


class RobomimicObsEncoder(nn.Module):
    """The hybrid policy's observation encoder (robomimic ``ObservationEncoder`` equivalent).

    Args:
        shape_meta: ``{"obs": {key: {"shape": [...], "type": "rgb" | "low_dim"}}, ...}``.
        crop_shape: ``(h, w)`` crop of every rgb key; ``None`` feeds whole images.
        obs_encoder_group_norm: replace BatchNorm with GroupNorm(C // 16, C).
        eval_fixed_crop: center-crop in eval (upstream swaps in its own CropRandomizer);
            False keeps robomimic's random crops in eval too.

    The defaults are what upstream's hybrid workspace configs pass; the upstream policy
    class itself defaults both flags to False, so a policy should always pass them on.

    ``__call__`` takes ``{key: (B, C, H, W) image or (B, ...) low-dim}`` and returns
    ``(B, D)``: for each key in ``shape_meta`` order, ``relu(VisualCore(crop(image)))`` (64 wide)
    or the flattened low-dim value. PushT (image 3x96x96 + agent_pos 2) gives ``D = 66``.
    """

    def __init__(
        self,
        shape_meta: Mapping,
        crop_shape: Sequence[int] | None = (76, 76),
        obs_encoder_group_norm: bool = True,
        eval_fixed_crop: bool = True,
    ):
        super().__init__()
        obs_shapes: dict[str, tuple[int, ...]] = {}
        obs_nets: dict[str, VisualCore] = {}
        obs_randomizers: dict[str, CropRandomizer] = {}
        for key, attr in shape_meta["obs"].items():
            shape = tuple(int(v) for v in attr["shape"])
            obs_type = attr.get("type", "low_dim")
            obs_shapes[key] = shape
            if obs_type == "low_dim":
                continue
            if obs_type != "rgb":
                raise ValueError(
                    f"RobomimicObsEncoder: shape_meta.obs.{key}.type is {obs_type!r}; "
                    "use 'rgb' or 'low_dim'"
                )
            if len(shape) != 3:
                raise ValueError(
                    f"RobomimicObsEncoder: rgb key {key!r} needs shape (C, H, W), got {shape}"
                )
            core_shape = shape
            if crop_shape is not None:
                randomizer = CropRandomizer(
                    shape, int(crop_shape[0]), int(crop_shape[1]), fixed_eval_crop=eval_fixed_crop
                )
                obs_randomizers[key] = randomizer
                core_shape = tuple(randomizer.output_shape_in(shape))
            obs_nets[key] = VisualCore(core_shape)
        self.obs_shapes = obs_shapes
        self.obs_nets = obs_nets
        self.obs_randomizers = obs_randomizers
        if obs_encoder_group_norm:
            replace_bn_with_gn(self)

    def __call__(self, obs_dict: Mapping[str, mx.array]) -> mx.array:
        missing = [k for k in self.obs_shapes if k not in obs_dict]
        if missing:
            raise ValueError(
                f"RobomimicObsEncoder: obs_dict lacks keys {missing} (has {list(obs_dict)})"
            )
        feats = []
        for key, shape in self.obs_shapes.items():
            x = obs_dict[key]
            if tuple(x.shape[1:]) != shape:
                raise ValueError(
                    f"RobomimicObsEncoder: obs[{key!r}] has shape {tuple(x.shape)}, "
                    f"expected (B, {', '.join(map(str, shape))}) from shape_meta"
                )
            if key in self.obs_nets:
                # The layout boundary: upstream's (B, C, H, W) becomes channels-last here, once.
                x = x.transpose(0, 2, 3, 1)
                randomizer = self.obs_randomizers.get(key)
                if randomizer is not None:
                    x = randomizer.forward_in(x)
                x = nn.relu(self.obs_nets[key](x))
                if randomizer is not None:
                    x = randomizer.forward_out(x)
            feats.append(x.reshape(x.shape[0], -1))
        return mx.concatenate(feats, axis=-1)

    def output_shape(self) -> tuple[int]:
        """``(D,)``: 64 per rgb key plus the flattened size of every low-dim key."""
        dim = 0
        for key, shape in self.obs_shapes.items():
            dim += (
                self.obs_nets[key].output_shape()[0]
                if key in self.obs_nets
                else int(np.prod(shape))
            )
        return (dim,)


_ALIAS = re.compile(r"^(?P<core>(?:.*\.)?obs_nets\.[^.]+\.)(?P<alias>backbone|pool)\.(?P<rest>.+)$")


def drop_upstream_aliases(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Remove the second copy of each VisualCore's backbone and pool from an upstream state_dict.

    robomimic's VisualCore holds its backbone and pool both as attributes and inside ``nets``, and
    torch's ``state_dict`` writes shared modules under every name: ``...backbone.nets.0.weight``
    duplicates ``...nets.0.nets.0.weight`` and ``...pool.*`` duplicates ``...nets.1.*``. This
    module keeps the ``nets.*`` copy; the aliases are checked to agree and dropped, after which
    ``load_upstream_state_dict`` can load the result. Works with any key prefix
    (``obs_encoder.``, ``model.obs_encoder.``, ...).
    """
    out = {}
    for key, value in state_dict.items():
        match = _ALIAS.match(key)
        if match is None:
            out[key] = value
            continue
        index = "0" if match["alias"] == "backbone" else "1"
        twin = f"{match['core']}nets.{index}.{match['rest']}"
        if twin not in state_dict:
            raise ValueError(
                f"upstream state_dict has {key} but not its twin {twin}; is it a robomimic VisualCore?"
            )
        if not np.array_equal(np.asarray(value), np.asarray(state_dict[twin])):
            raise ValueError(
                f"upstream state_dict: {key} differs from {twin}, which should be the same tensor"
            )
    return out

"""Upstream's ``MultiImageObsEncoder``: per-camera CNN features concatenated with low-dim state."""

import copy
from collections.abc import Mapping, Sequence

import mlx.core as mx
import mlx.nn as nn

from diffusion_policy_mlx.model.vision.crop_randomizer import CropRandomizer
from diffusion_policy_mlx.model.vision.resnet import replace_bn_with_gn
from diffusion_policy_mlx.model.vision.transforms import CenterCrop, Normalize, Resize

HW = Sequence[int]


def _per_key(value: HW | Mapping[str, HW] | None, key: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        if key not in value:
            raise ValueError(
                f"MultiImageObsEncoder: no size given for rgb key {key!r} in {dict(value)}"
            )
        value = value[key]
    h, w = value
    return int(h), int(w)


class MultiImageObsEncoder(nn.Module):
    """Encode a dict of observations into one flat feature per sample.

    Every ``rgb`` key of ``shape_meta["obs"]`` goes through resize -> crop -> normalize -> its CNN;
    every ``low_dim`` key is passed through unchanged. Features are concatenated with the rgb keys
    first, then the low-dim keys, each group sorted by name (upstream's order).

    Args:
        shape_meta: ``{"obs": {key: {"shape": [...], "type": "rgb" | "low_dim"}}, ...}``.
        rgb_model: one module (copied per key unless shared) or ``{key: module}``; it maps
            ``(B, H, W, C)`` images to ``(B, D)``.
        resize_shape: ``(h, w)`` or ``{key: (h, w)}`` to resize images to first.
        crop_shape: ``(h, w)`` or ``{key: (h, w)}`` crop size.
        random_crop: random crops in training and center crops in eval (``CropRandomizer``);
            False always center-crops.
        use_group_norm: replace each per-key model's BatchNorms with GroupNorm(C // 16, C). As
            upstream, a shared model (``share_rgb_model``) keeps its BatchNorms.
        share_rgb_model: one model for all rgb keys, stored as ``key_model_map["rgb"]``.
        imagenet_norm: normalize ``[0, 1]`` images with ImageNet's mean and std.

    ``__call__`` takes images as upstream does, ``(B, C, H, W)``, and low-dim values ``(B, D)``;
    it returns ``(B, output_shape()[0])``.
    """

    def __init__(
        self,
        shape_meta: Mapping,
        rgb_model: nn.Module | Mapping[str, nn.Module],
        resize_shape: HW | Mapping[str, HW] | None = None,
        crop_shape: HW | Mapping[str, HW] | None = None,
        random_crop: bool = True,
        use_group_norm: bool = False,
        share_rgb_model: bool = False,
        imagenet_norm: bool = False,
    ):
        super().__init__()
        rgb_keys: list[str] = []
        low_dim_keys: list[str] = []
        key_model_map: dict[str, nn.Module] = {}
        key_transform_map: dict[str, list[nn.Module]] = {}
        key_shape_map: dict[str, tuple[int, ...]] = {}

        if share_rgb_model:
            if not isinstance(rgb_model, nn.Module):
                raise ValueError(
                    "MultiImageObsEncoder: share_rgb_model=True needs one rgb_model, not a dict"
                )
            key_model_map["rgb"] = rgb_model

        for key, attr in shape_meta["obs"].items():
            shape = tuple(int(v) for v in attr["shape"])
            obs_type = attr.get("type", "low_dim")
            key_shape_map[key] = shape
            if obs_type == "low_dim":
                low_dim_keys.append(key)
                continue
            if obs_type != "rgb":
                raise ValueError(
                    f"MultiImageObsEncoder: shape_meta.obs.{key}.type is {obs_type!r}; "
                    "use 'rgb' or 'low_dim'"
                )
            if len(shape) != 3:
                raise ValueError(
                    f"MultiImageObsEncoder: rgb key {key!r} needs shape (C, H, W), got {shape}"
                )
            rgb_keys.append(key)
            if not share_rgb_model:
                # nn.Module is itself a dict, so test for it before treating rgb_model as a map
                if isinstance(rgb_model, nn.Module):
                    this_model = copy.deepcopy(rgb_model)
                elif key in rgb_model:
                    this_model = rgb_model[key]
                else:
                    raise ValueError(
                        f"MultiImageObsEncoder: rgb_model has no entry for rgb key {key!r}"
                    )
                if use_group_norm:
                    replace_bn_with_gn(this_model)
                key_model_map[key] = this_model

            transforms: list[nn.Module] = []
            input_shape = shape
            resize = _per_key(resize_shape, key)
            if resize is not None:
                transforms.append(Resize(shape[1:], resize))
                input_shape = (shape[0], *resize)
            crop = _per_key(crop_shape, key)
            if crop is not None:
                if random_crop:
                    transforms.append(CropRandomizer(input_shape, crop[0], crop[1]))
                else:
                    transforms.append(CenterCrop(crop))
            if imagenet_norm:
                transforms.append(Normalize())
            key_transform_map[key] = transforms

        self.shape_meta = shape_meta
        self.key_model_map = key_model_map
        self.key_transform_map = key_transform_map
        self.share_rgb_model = share_rgb_model
        self.rgb_keys = sorted(rgb_keys)
        self.low_dim_keys = sorted(low_dim_keys)
        self.key_shape_map = key_shape_map

    def _check(self, key: str, value: mx.array, batch_size: int | None) -> int:
        expected = self.key_shape_map[key]
        if tuple(value.shape[1:]) != expected:
            raise ValueError(
                f"MultiImageObsEncoder: obs[{key!r}] has shape {tuple(value.shape)}, "
                f"expected (B, {', '.join(map(str, expected))}) from shape_meta"
            )
        if batch_size is not None and value.shape[0] != batch_size:
            raise ValueError(
                f"MultiImageObsEncoder: obs[{key!r}] has batch {value.shape[0]}, other keys {batch_size}"
            )
        return value.shape[0]

    def _transform(self, key: str, image: mx.array) -> mx.array:
        # The layout boundary: upstream's (B, C, H, W) becomes channels-last here, once.
        x = image.transpose(0, 2, 3, 1)
        for transform in self.key_transform_map[key]:
            x = transform(x)
        return x

    def __call__(self, obs_dict: Mapping[str, mx.array]) -> mx.array:
        missing = [k for k in self.rgb_keys + self.low_dim_keys if k not in obs_dict]
        if missing:
            raise ValueError(
                f"MultiImageObsEncoder: obs_dict lacks keys {missing} (has {list(obs_dict)})"
            )
        batch_size = None
        features = []
        if self.share_rgb_model:
            images = []
            for key in self.rgb_keys:
                batch_size = self._check(key, obs_dict[key], batch_size)
                images.append(self._transform(key, obs_dict[key]))
            if images:
                # (N * B, D) -> (B, N * D), each sample's cameras side by side in key order
                feature = self.key_model_map["rgb"](mx.concatenate(images, axis=0))
                feature = feature.reshape(len(images), batch_size, -1).transpose(1, 0, 2)
                features.append(feature.reshape(batch_size, -1))
        else:
            for key in self.rgb_keys:
                batch_size = self._check(key, obs_dict[key], batch_size)
                features.append(self.key_model_map[key](self._transform(key, obs_dict[key])))
        for key in self.low_dim_keys:
            batch_size = self._check(key, obs_dict[key], batch_size)
            features.append(obs_dict[key])
        return mx.concatenate(features, axis=-1)

    def output_shape(self) -> tuple[int, ...]:
        """Shape of one sample's feature, ``(D,)``."""
        example = {
            key: mx.zeros((1, *attr["shape"])) for key, attr in self.shape_meta["obs"].items()
        }
        # Shapes are known without evaluating anything (MLX is lazy); eval mode keeps the
        # BatchNorm running statistics untouched by this dummy pass.
        was_training = self.training
        self.eval()
        shape = tuple(self(example).shape[1:])
        self.train(was_training)
        return shape

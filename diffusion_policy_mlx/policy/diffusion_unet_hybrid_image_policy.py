"""Diffusion Policy with a 1-D conditional U-Net over robomimic-style image features.

The paper's main image policy: upstream builds its observation encoder through robomimic
(ResNet-18 trunk + spatial softmax per camera, low-dim keys concatenated); ours is
:class:`RobomimicObsEncoder`, with the same kwargs and parameter names. Sampling and training are
those of :class:`DiffusionUnetImagePolicy`.
"""

import logging
from collections.abc import Sequence
from typing import Any

import mlx.nn as nn
from mlx.utils import tree_flatten

from diffusion_policy_mlx.model.vision.robomimic_obs_encoder import RobomimicObsEncoder
from diffusion_policy_mlx.policy.diffusion_unet_image_policy import DiffusionUnetImagePolicy
from diffusion_policy_mlx.schedulers.generative_process import GenerativeProcess

logger = logging.getLogger(__name__)


class DiffusionUnetHybridImagePolicy(DiffusionUnetImagePolicy):
    """:class:`DiffusionUnetImagePolicy` whose encoder is built from ``shape_meta``.

    ``shape_meta["obs"]`` names the inputs (``type: rgb`` images (C, H, W), ``low_dim``
    vectors); ``crop_shape`` (None: no crop) is the random crop in training (the centre crop in
    eval, or always with ``eval_fixed_crop``); ``obs_encoder_group_norm`` replaces the ResNet's
    BatchNorm with GroupNorm. Extra ``kwargs`` go to ``noise_scheduler.step``.
    """

    def __init__(
        self,
        shape_meta: dict,
        noise_scheduler: GenerativeProcess,
        horizon: int,
        n_action_steps: int,
        n_obs_steps: int,
        num_inference_steps: int | None = None,
        obs_as_global_cond: bool = True,
        crop_shape: Sequence[int] | None = (76, 76),
        diffusion_step_embed_dim: int = 256,
        down_dims: Sequence[int] = (256, 512, 1024),
        kernel_size: int = 5,
        n_groups: int = 8,
        cond_predict_scale: bool = True,
        obs_encoder_group_norm: bool = False,
        eval_fixed_crop: bool = False,
        **kwargs: Any,
    ):
        obs_encoder = RobomimicObsEncoder(
            shape_meta,
            crop_shape=None if crop_shape is None else tuple(crop_shape),
            obs_encoder_group_norm=obs_encoder_group_norm,
            eval_fixed_crop=eval_fixed_crop,
        )
        super().__init__(
            shape_meta=shape_meta,
            noise_scheduler=noise_scheduler,
            obs_encoder=obs_encoder,
            horizon=horizon,
            n_action_steps=n_action_steps,
            n_obs_steps=n_obs_steps,
            num_inference_steps=num_inference_steps,
            obs_as_global_cond=obs_as_global_cond,
            diffusion_step_embed_dim=diffusion_step_embed_dim,
            down_dims=down_dims,
            kernel_size=kernel_size,
            n_groups=n_groups,
            cond_predict_scale=cond_predict_scale,
            **kwargs,
        )
        logger.info("Diffusion params: %e", _count(self.model))
        logger.info("Vision params: %e", _count(self.obs_encoder))


def _count(module: nn.Module) -> int:
    return sum(v.size for _, v in tree_flatten(module.parameters()))

"""The PushT simulator: pymunk physics, upstream's seeds, reward and pixel-exact rendering."""

from diffusion_policy_mlx.env.pusht.pusht_env import PushTEnv
from diffusion_policy_mlx.env.pusht.pusht_image_env import PushTImageEnv
from diffusion_policy_mlx.env.pusht.pusht_keypoints_env import PushTKeypointsEnv

__all__ = ["PushTEnv", "PushTImageEnv", "PushTKeypointsEnv"]

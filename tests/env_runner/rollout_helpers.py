"""Test helpers for the runners: seeded uniform-random policies that record every call, and a
video decoder."""

from pathlib import Path

import imageio_ffmpeg
import mlx.core as mx
import numpy as np

from diffusion_policy_mlx.policy.base_image_policy import BaseImagePolicy
from diffusion_policy_mlx.policy.base_lowdim_policy import BaseLowdimPolicy


class RandomPolicyMixin:
    """``predict_action`` returns ``(B, n_action_steps, 2)`` uniform actions in [0, 512)."""

    def __init__(self, n_action_steps: int, seed: int = 0):
        super().__init__()
        self.n_action_steps = n_action_steps
        self.rng = np.random.default_rng(seed)
        self.calls: list[tuple[dict[str, np.ndarray], np.ndarray]] = []
        self.n_resets = 0

    def predict_action(self, obs_dict: dict[str, mx.array]) -> dict[str, mx.array]:
        batch_size = next(iter(obs_dict.values())).shape[0]
        action = self.rng.uniform(0, 512, size=(batch_size, self.n_action_steps, 2))
        action = action.astype(np.float32)
        self.calls.append(({k: np.array(v) for k, v in obs_dict.items()}, action))
        return {"action": mx.array(action), "action_pred": mx.array(action)}

    def reset(self) -> None:
        self.n_resets += 1


class RandomImagePolicy(RandomPolicyMixin, BaseImagePolicy):
    pass


class RandomLowdimPolicy(RandomPolicyMixin, BaseLowdimPolicy):
    pass


def decode_video(path: str | Path) -> tuple[dict, np.ndarray]:
    """(ffmpeg's metadata, frames (N, H, W, 3) uint8) of a video file."""
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    frames = [np.frombuffer(f, dtype=np.uint8).reshape(height, width, 3) for f in reader]
    return meta, np.stack(frames)

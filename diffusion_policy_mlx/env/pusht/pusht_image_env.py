"""PushT observed through its rendered image (upstream's ``PushTImageEnv``)."""

from collections.abc import Sequence

import numpy as np
from gymnasium import spaces

from diffusion_policy_mlx.env.pusht.pusht_env import PushTEnv


class PushTImageEnv(PushTEnv):
    """PushT with observations ``{"image": (3, H, W) float32 in [0, 1], "agent_pos": (2,)}``.

    The image is the rendered scene without the action marker; :meth:`render` returns the same
    frame as uint8 ``(H, W, 3)`` with the last action drawn as a red cross.
    """

    metadata = {
        "render_modes": ["rgb_array"],
        "render_fps": 10,
        "render.modes": ["rgb_array"],
        "video.frames_per_second": 10,
    }

    def __init__(
        self,
        legacy: bool = False,
        block_cog: Sequence[float] | None = None,
        damping: float | None = None,
        render_size: int = 96,
        reset_to_state: Sequence[float] | None = None,
    ) -> None:
        super().__init__(
            legacy=legacy,
            block_cog=block_cog,
            damping=damping,
            render_size=render_size,
            render_action=False,
            reset_to_state=reset_to_state,
        )
        ws = self.window_size
        self.observation_space = spaces.Dict(
            {
                "image": spaces.Box(
                    low=0, high=1, shape=(3, render_size, render_size), dtype=np.float32
                ),
                "agent_pos": spaces.Box(low=0, high=ws, shape=(2,), dtype=np.float32),
            }
        )
        self.render_cache: np.ndarray | None = None

    def _get_obs(self) -> dict[str, np.ndarray]:
        img = super()._render_frame(mode="rgb_array")
        obs = {
            "image": np.moveaxis(img.astype(np.float32) / 255, -1, 0),
            "agent_pos": np.array(self.agent.position),
        }
        if self.latest_action is not None:
            self._draw_action(img)
        self.render_cache = img
        return obs

    def render(self, mode: str = "rgb_array") -> np.ndarray:
        if mode != "rgb_array":
            raise ValueError(f"PushTImageEnv renders only mode='rgb_array' (got {mode!r})")
        if self.render_cache is None:
            self._get_obs()
        return self.render_cache

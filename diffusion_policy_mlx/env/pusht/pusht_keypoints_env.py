"""PushT observed through block keypoints (upstream's ``PushTKeypointsEnv``)."""

from collections.abc import Mapping, Sequence

import numpy as np
from gymnasium import spaces

from diffusion_policy_mlx.env.pusht.pusht_env import PushTEnv
from diffusion_policy_mlx.env.pusht.pymunk_keypoint_manager import PymunkKeypointManager


class PushTKeypointsEnv(PushTEnv):
    """PushT with a flat keypoint observation and its visibility mask.

    Observation ``(2 * Do,)`` float64: ``Do`` values then their 0/1 mask. With the default map
    ``Do = 20``: the block's 9 keypoints (x, y) followed by the agent position (or, with
    ``agent_keypoints``, the agent's 3 keypoints, ``Do = 24``). Each keypoint is visible with
    probability ``keypoint_visible_rate``, drawn from ``np_random`` at every observation;
    hidden keypoints keep their value but get mask 0.

    Args:
        local_keypoint_map: ``{"block": (9, 2), "agent": (3, 2)}`` local keypoints; by default
            generated as upstream does (:meth:`genenerate_keypoint_manager_params`).
        color_map: colours for ``draw_keypoints``.
        Other arguments as :class:`PushTEnv`.
    """

    def __init__(
        self,
        legacy: bool = False,
        block_cog: Sequence[float] | None = None,
        damping: float | None = None,
        render_size: int = 96,
        keypoint_visible_rate: float = 1.0,
        agent_keypoints: bool = False,
        draw_keypoints: bool = False,
        reset_to_state: Sequence[float] | None = None,
        render_action: bool = True,
        local_keypoint_map: Mapping[str, np.ndarray] | None = None,
        color_map: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        super().__init__(
            legacy=legacy,
            block_cog=block_cog,
            damping=damping,
            render_size=render_size,
            reset_to_state=reset_to_state,
            render_action=render_action,
        )
        ws = self.window_size
        if local_keypoint_map is None:
            kp_kwargs = self.genenerate_keypoint_manager_params()
            local_keypoint_map = kp_kwargs["local_keypoint_map"]
            color_map = kp_kwargs["color_map"]
        missing = {"block", "agent"} - set(local_keypoint_map)
        if missing:
            raise ValueError(
                f"local_keypoint_map lacks {sorted(missing)}; it needs 'block' and 'agent' "
                "(N, 2) arrays, e.g. from PushTKeypointsEnv.genenerate_keypoint_manager_params()"
            )

        d_block = int(np.prod(np.shape(local_keypoint_map["block"])))
        d_agent = int(np.prod(np.shape(local_keypoint_map["agent"])))
        do = d_block + (d_agent if agent_keypoints else 2)
        low = np.zeros((2 * do,), dtype=np.float64)
        high = np.full_like(low, ws)
        high[do:] = 1.0
        self.observation_space = spaces.Box(low=low, high=high, shape=low.shape, dtype=np.float64)

        self.keypoint_visible_rate = keypoint_visible_rate
        self.agent_keypoints = agent_keypoints
        self.draw_keypoints = draw_keypoints
        self.kp_manager = PymunkKeypointManager(
            local_keypoint_map={k: np.asarray(v) for k, v in local_keypoint_map.items()},
            color_map=color_map,
        )
        self.draw_kp_map: dict[str, np.ndarray] | None = None

    @classmethod
    def genenerate_keypoint_manager_params(cls) -> dict[str, dict[str, np.ndarray]]:
        """Upstream's default keypoint map and colours (its spelling kept for compatibility)."""
        return PymunkKeypointManager.create_from_pusht_env(PushTEnv()).kwargs

    def _get_obs(self) -> np.ndarray:
        obj_map = {"block": self.block}
        if self.agent_keypoints:
            obj_map["agent"] = self.agent
        kp_map = self.kp_manager.get_keypoints_global(pose_map=obj_map, is_obj=True)
        kps = np.concatenate(list(kp_map.values()), axis=0)

        visible = self.np_random.random(size=(kps.shape[0],)) < self.keypoint_visible_rate
        kps_mask = np.repeat(visible[:, None], 2, axis=1)

        vis_kps = kps.copy()
        vis_kps[~visible] = 0
        n_block = len(kp_map["block"])
        self.draw_kp_map = {"block": vis_kps[:n_block]}
        if self.agent_keypoints:
            self.draw_kp_map["agent"] = vis_kps[n_block:]

        obs = kps.flatten()
        obs_mask = kps_mask.flatten()
        if not self.agent_keypoints:
            obs = np.concatenate([obs, np.array(self.agent.position)])
            obs_mask = np.concatenate([obs_mask, np.ones((2,), dtype=bool)])
        return np.concatenate([obs, obs_mask.astype(obs.dtype)], axis=0)

    def _render_frame(self, mode: str) -> np.ndarray:
        img = super()._render_frame(mode)
        if self.draw_keypoints:
            self.kp_manager.draw_keypoints(img, self.draw_kp_map, radius=int(img.shape[0] / 96))
        return img

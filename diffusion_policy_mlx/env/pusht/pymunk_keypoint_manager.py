"""Keypoints fixed to pymunk bodies (upstream's ``PymunkKeypointManager``).

Each object has a few keypoints in its local frame; their image positions follow the body pose.
The default map is made like upstream's: rasterise the object alone, keep its non-white pixels,
pick well-spread ones by farthest point sampling (``np.random.default_rng(0)``) and jitter them by
up to a pixel. With the pixel-exact rasteriser this reproduces upstream's map exactly.
"""

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pymunk

from diffusion_policy_mlx.env.pusht import raster
from diffusion_policy_mlx.env.pusht.pymunk_override import draw_shape

if TYPE_CHECKING:
    from diffusion_policy_mlx.env.pusht.pusht_env import PushTEnv

# matplotlib's 'tab10' palette as uint8 RGB, which upstream uses for keypoint colours.
TAB10 = np.array(
    [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
    ],
    dtype=np.uint8,
)


def farthest_point_sampling(points: np.ndarray, n_points: int, init_idx: int) -> np.ndarray:
    """Greedily pick ``n_points`` of ``points`` ``(N, 2)``, each farthest from those chosen so
    far, starting at ``points[init_idx]``; returns ``(n_points, 2)``."""
    if n_points < 1:
        raise ValueError(f"farthest_point_sampling needs n_points >= 1, got {n_points}")
    chosen = [points[init_idx]]
    min_dist = np.linalg.norm(points - points[init_idx], axis=-1)
    for _ in range(n_points - 1):
        nxt = int(np.argmax(min_dist))
        chosen.append(points[nxt])
        min_dist = np.minimum(min_dist, np.linalg.norm(points - points[nxt], axis=-1))
    return np.array(chosen)


def pose_matrix(pose: Sequence[float]) -> np.ndarray:
    """``(3, 3)`` homogeneous transform of a planar pose ``(x, y, angle)``, object to image."""
    x, y, a = pose
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, x], [s, c, y], [0.0, 0.0, 1.0]])


class PymunkKeypointManager:
    """Local keypoints per object name and their colours.

    Args:
        local_keypoint_map: ``name -> (N, 2)`` keypoints in the object's local frame.
        color_map: ``name -> (3,)`` uint8 colour for drawing; defaults to tab10 in key order.
    """

    def __init__(
        self,
        local_keypoint_map: Mapping[str, np.ndarray],
        color_map: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        if color_map is None:
            color_map = {key: TAB10[i % len(TAB10)] for i, key in enumerate(local_keypoint_map)}
        self.local_keypoint_map = dict(local_keypoint_map)
        self.color_map = dict(color_map)

    @property
    def kwargs(self) -> dict[str, dict[str, np.ndarray]]:
        return {"local_keypoint_map": self.local_keypoint_map, "color_map": self.color_map}

    @classmethod
    def create_from_pusht_env(
        cls,
        env: "PushTEnv",
        n_block_kps: int = 9,
        n_agent_kps: int = 3,
        seed: int = 0,
        **kwargs,
    ) -> "PymunkKeypointManager":
        """Sample keypoints on the block and agent as drawn by ``env`` (replaces its space)."""
        rng = np.random.default_rng(seed=seed)
        ws = env.window_size
        # Pixel centres as (x, y).
        xy_img = np.moveaxis(np.indices((ws, ws)), 0, -1)[:, :, ::-1].reshape(-1, 2)
        local_keypoint_map = {}
        for name in ["block", "agent"]:
            env.space = pymunk.Space()
            if name == "agent":
                env.agent = obj = env.add_circle((256, 400), 15)
                n_kps = n_agent_kps
            else:
                env.block = obj = env.add_tee((256, 300), 0)
                n_kps = n_block_kps
            canvas = np.full((ws, ws, 3), 255, dtype=np.uint8)
            for shape in obj.shapes:
                draw_shape(canvas, shape, shape.color)
            obj_mask = (canvas != 255).any(axis=-1).reshape(-1)

            to_local = np.linalg.inv(cls.get_tf_img_obj(obj))
            coords = xy_img[obj_mask].astype(np.float64)
            obj_local_coords = coords @ to_local[:2, :2].T + to_local[:2, 2]

            init_idx = rng.choice(len(obj_local_coords))
            obj_local_kps = farthest_point_sampling(obj_local_coords, n_kps, init_idx)
            obj_local_kps += rng.uniform(0, 1, size=obj_local_kps.shape)
            local_keypoint_map[name] = obj_local_kps
        return cls(local_keypoint_map=local_keypoint_map, **kwargs)

    @staticmethod
    def get_tf_img(pose: Sequence[float]) -> np.ndarray:
        return pose_matrix(pose)

    @classmethod
    def get_tf_img_obj(cls, obj: pymunk.Body) -> np.ndarray:
        return cls.get_tf_img((*obj.position, obj.angle))

    def get_keypoints_global(
        self, pose_map: Mapping[str, Sequence[float] | pymunk.Body], is_obj: bool = False
    ) -> dict[str, np.ndarray]:
        """Image-frame keypoints ``name -> (N, 2)`` for bodies (``is_obj``) or ``(x, y, angle)``."""
        kp_map = {}
        for key, value in pose_map.items():
            tf = self.get_tf_img_obj(value) if is_obj else self.get_tf_img(value)
            kp_map[key] = self.local_keypoint_map[key] @ tf[:2, :2].T + tf[:2, 2]
        return kp_map

    def draw_keypoints(
        self, img: np.ndarray, kps_map: Mapping[str, np.ndarray], radius: int = 1
    ) -> np.ndarray:
        """Draw keypoints given in 512-pixel coordinates as filled discs on ``img`` (in place)."""
        scale = np.array(img.shape[:2]) / np.array([512, 512])
        for key, value in kps_map.items():
            color = tuple(int(c) for c in self.color_map[key])
            for coord in (value * scale).astype(np.int32):
                raster.fill_circle_cv2(img, (int(coord[0]), int(coord[1])), radius, color)
        return img

    def draw_keypoints_pose(
        self,
        img: np.ndarray,
        pose_map: Mapping[str, Sequence[float] | pymunk.Body],
        is_obj: bool = False,
        **kwargs,
    ) -> np.ndarray:
        kp_map = self.get_keypoints_global(pose_map, is_obj=is_obj)
        return self.draw_keypoints(img, kps_map=kp_map, **kwargs)

"""The PushT task: push a T-shaped block onto a fixed goal pose with a round, position-controlled agent.

A faithful port of upstream's ``diffusion_policy.env.pusht.pusht_env`` to pymunk 7 and gymnasium:
the same space (100 Hz physics, 10 Hz control, PD gains, shapes, masses, zero shape friction),
the same seeded initial states (legacy ``np.random.RandomState``), the same coverage reward and the
same rendered pixels (see :mod:`.raster`). The recorded dataset replays through it to float32
precision.

Coordinates are pixels of the 512x512 canvas, y pointing down. States are
``(agent_x, agent_y, block_x, block_y, block_angle)``, where the block position is its body origin
(the middle of the crossbar's outer edge), not its centre of gravity.
"""

from collections.abc import Sequence
from functools import cache
from typing import Any

import gymnasium as gym
import numpy as np
import pymunk
from gymnasium import spaces

from diffusion_policy_mlx.env.pusht import raster
from diffusion_policy_mlx.env.pusht.pymunk_override import (
    COLORS,
    draw_fat_segment,
    draw_shape,
    to_pygame,
)

GOAL_POSE = (256.0, 256.0, np.pi / 4)
SUCCESS_THRESHOLD = 0.95  # coverage of the goal T needed for success
COLLISION_POINT_COLOR = (231, 76, 60)  # pymunk's default debug-draw colour for contacts


def _polygon_area(poly: np.ndarray) -> float:
    """Signed shoelace area of an ``(N, 2)`` polygon."""
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _clip_convex(subject: list[tuple[float, float]], clip: np.ndarray) -> list[tuple[float, float]]:
    """Sutherland-Hodgman: the part of convex ``subject`` inside convex ``clip`` (either winding)."""
    orient = 1.0 if _polygon_area(clip) > 0 else -1.0
    out = subject
    for i in range(len(clip)):
        if not out:
            break
        ax, ay = clip[i - 1]
        bx, by = clip[i]
        ex, ey = bx - ax, by - ay
        side = [orient * (ex * (py - ay) - ey * (px - ax)) for px, py in out]
        kept = []
        for j in range(len(out)):
            p, q = out[j - 1], out[j]
            sp, sq = side[j - 1], side[j]
            if sq >= 0:
                if sp < 0:
                    t = sp / (sp - sq)
                    kept.append((p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1])))
                kept.append(q)
            elif sp >= 0:
                t = sp / (sp - sq)
                kept.append((p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1])))
        out = kept
    return out


def overlap_area(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    """Area of the intersection of two unions of convex polygons whose parts do not overlap.

    The T is two boxes that only share an edge, so the intersection of two Ts is the sum of the
    pairwise box intersections (what upstream computes with shapely MultiPolygons).
    """
    total = 0.0
    for pa in a:
        for pb in b:
            inter = _clip_convex([tuple(p) for p in pa], pb)
            if len(inter) >= 3:
                total += abs(_polygon_area(np.asarray(inter)))
    return total


def world_polygons(body: pymunk.Body, shapes: Sequence[pymunk.Poly]) -> list[np.ndarray]:
    """Each poly shape's vertices, ``(N, 2)``, placed in the world by ``body``'s pose."""
    return [np.array([tuple(body.local_to_world(v)) for v in s.get_vertices()]) for s in shapes]


@cache
def _goal_canvas(
    size: int,
    goal_pose: tuple[float, float, float],
    tee: tuple[tuple[tuple[float, float], ...], ...],
    color: raster.Color,
) -> np.ndarray:
    """White canvas with the goal T (the block's local polygons placed at ``goal_pose``)."""
    body = pymunk.Body(1, pymunk.moment_for_box(1, (50, 100)))
    body.position = goal_pose[:2]
    body.angle = goal_pose[2]
    canvas = np.full((size, size, 3), 255, dtype=np.uint8)
    for verts in tee:
        points = [to_pygame(body.local_to_world(v)) for v in verts]
        raster.fill_polygon(canvas, points + [points[0]], color)
    canvas.setflags(write=False)
    return canvas


@cache
def _segments_pixels(
    size: int, segments: tuple[tuple[tuple[float, float], tuple[float, float], float], ...]
) -> np.ndarray:
    """Flat indices of the pixels covered by fat segments ``(a, b, radius)``, drawn as upstream
    draws the walls."""
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    for a, b, radius in segments:
        draw_fat_segment(canvas, a, b, radius, (255, 255, 255))
    pixels = np.flatnonzero(canvas[..., 0])
    pixels.setflags(write=False)
    return pixels


class PushTEnv(gym.Env):
    """Push a T block onto the goal; observation ``(5,)``: agent xy, block xy, block angle mod 2π.

    Actions are ``(2,)`` target positions for the agent, tracked by a PD controller over ten
    0.01 s physics substeps. Reward is ``clip(coverage / 0.95, 0, 1)``, where coverage is the
    fraction of the goal T covered by the block; an episode terminates when coverage > 0.95.

    Args:
        legacy: set the block pose as old upstream data did (position, then angle about the
            centre of gravity). Seeded resets of the recorded dataset used it; replaying a
            recorded state needs ``legacy=False``, which places the body origin exactly.
        block_cog: optional centre of gravity of the block in its local frame.
        damping: optional pymunk space damping (upstream default: none, i.e. 0).
        render_action: draw the last action as a red cross in :meth:`render`.
        render_size: side of the rendered square image.
        reset_to_state: fixed ``(5,)`` state every reset starts from instead of a seeded draw.
    """

    metadata = {
        "render_modes": ["rgb_array"],
        "render_fps": 10,
        "render.modes": ["rgb_array"],
        "video.frames_per_second": 10,
    }
    reward_range = (0.0, 1.0)

    def __init__(
        self,
        legacy: bool = False,
        block_cog: Sequence[float] | None = None,
        damping: float | None = None,
        render_action: bool = True,
        render_size: int = 96,
        reset_to_state: Sequence[float] | None = None,
    ) -> None:
        self._seed: int | None = None
        self.seed()
        self.window_size = ws = 512
        self.render_size = render_size
        self.render_mode = "rgb_array"
        self.sim_hz = 100
        self.k_p, self.k_v = 100, 20
        self.control_hz = self.metadata["video.frames_per_second"]
        self.legacy = legacy

        self.observation_space = spaces.Box(
            low=np.array([0, 0, 0, 0, 0], dtype=np.float64),
            high=np.array([ws, ws, ws, ws, np.pi * 2], dtype=np.float64),
            shape=(5,),
            dtype=np.float64,
        )
        self.action_space = spaces.Box(
            low=np.array([0, 0], dtype=np.float64),
            high=np.array([ws, ws], dtype=np.float64),
            shape=(2,),
            dtype=np.float64,
        )

        self.block_cog = block_cog
        self.damping = damping
        self.render_action = render_action
        self.reset_to_state = reset_to_state

        self.space: pymunk.Space | None = None
        self.latest_action: np.ndarray | None = None
        self.n_contact_points = 0

    # -- gymnasium API ---------------------------------------------------------------------

    def seed(self, seed: int | None = None) -> None:
        """Fix the seed of the next resets (upstream's API, called by its env runners).

        Without a seed one is drawn from numpy's global RNG, as upstream does.
        """
        if seed is None:
            seed = np.random.randint(0, 25536)
        self._seed = seed
        self.np_random = np.random.default_rng(seed)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Rebuild the scene and set the initial state; returns ``(obs, info)``.

        ``seed`` calls :meth:`seed` first. The state comes from ``options["reset_to_state"]``,
        else the constructor's ``reset_to_state``, else a draw from
        ``np.random.RandomState(seed)``: as upstream, resetting again without a new seed gives
        the same initial state.
        """
        if seed is not None:
            self.seed(seed)
        self._setup()
        if self.block_cog is not None:
            self.block.center_of_gravity = tuple(self.block_cog)
        if self.damping is not None:
            self.space.damping = self.damping

        state = (options or {}).get("reset_to_state", self.reset_to_state)
        if state is None:
            rs = np.random.RandomState(seed=self._seed)
            state = np.array(
                [
                    rs.randint(50, 450),
                    rs.randint(50, 450),
                    rs.randint(100, 400),
                    rs.randint(100, 400),
                    rs.randn() * 2 * np.pi - np.pi,
                ]
            )
        self._set_state(state)
        return self._get_obs(), self._get_info()

    def step(self, action: Sequence[float] | None) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        """Track ``action`` (target xy, ``(2,)``) for one control period; ``None`` leaves the
        world untouched. Returns ``(obs, reward, terminated, truncated, info)``."""
        dt = 1.0 / self.sim_hz
        self.n_contact_points = 0
        n_steps = self.sim_hz // self.control_hz
        if action is not None:
            action = np.asarray(action, dtype=np.float64)
            self.latest_action = action
            for _ in range(n_steps):
                # PD control towards the target, in upstream's operation order (bit-exact replay).
                acceleration = self.k_p * (action - np.array(self.agent.position)) + self.k_v * (
                    0 - np.array(self.agent.velocity)
                )
                self.agent.velocity += acceleration * dt
                self._step_space(dt)

        coverage = self._coverage()
        reward = float(np.clip(coverage / self.success_threshold, 0, 1))
        terminated = bool(coverage > self.success_threshold)
        return self._get_obs(), reward, terminated, False, self._get_info()

    def render(self, mode: str = "rgb_array") -> np.ndarray:
        """The scene as a ``(render_size, render_size, 3)`` uint8 RGB image."""
        return self._render_frame(mode)

    def close(self) -> None:
        self.space = None

    # -- upstream internals ------------------------------------------------------------------

    def _coverage(self) -> float:
        """Fraction of the goal T's area covered by the block."""
        shapes = list(self.block.shapes)
        goal = world_polygons(self._get_goal_pose_body(self.goal_pose), shapes)
        block = world_polygons(self.block, shapes)
        goal_area = sum(abs(_polygon_area(p)) for p in goal)
        return overlap_area(goal, block) / goal_area

    def _get_obs(self) -> Any:
        return np.array(
            tuple(self.agent.position)
            + tuple(self.block.position)
            + (self.block.angle % (2 * np.pi),)
        )

    def _get_goal_pose_body(self, pose: np.ndarray) -> pymunk.Body:
        body = pymunk.Body(1, pymunk.moment_for_box(1, (50, 100)))
        body.position = pose[:2].tolist()
        body.angle = pose[2]
        return body

    def _get_info(self) -> dict[str, Any]:
        n_steps = self.sim_hz // self.control_hz
        return {
            "pos_agent": np.array(self.agent.position),
            "vel_agent": np.array(self.agent.velocity),
            "block_pose": np.array(list(self.block.position) + [self.block.angle]),
            "goal_pose": self.goal_pose,
            "n_contacts": int(np.ceil(self.n_contact_points / n_steps)),
        }

    def _render_frame(self, mode: str) -> np.ndarray:
        if mode != "rgb_array":
            raise ValueError(
                f"{type(self).__name__} renders only mode='rgb_array' (got {mode!r}); "
                "there is no window to draw to"
            )
        canvas = self._draw_canvas()
        img = raster.resize_linear(canvas, (self.render_size, self.render_size))
        if self.render_action and self.latest_action is not None:
            self._draw_action(img)
        return img

    def _draw_canvas(self) -> np.ndarray:
        """The full-resolution ``(512, 512, 3)`` uint8 scene, drawn as upstream's pygame canvas."""
        goal = tuple(float(v) for v in self.goal_pose)
        tee = tuple(tuple(map(tuple, s.get_vertices())) for s in self.block.shapes)
        canvas = _goal_canvas(self.window_size, goal, tee, self.goal_color).copy()
        # Chipmunk's debug draw visits the moving shapes (block, then agent) and then the
        # static walls; later shapes paint over earlier ones where outlines touch. Walls never
        # move, so their pixels are drawn once and stamped.
        for shape in self._dynamic_shapes:
            draw_shape(canvas, shape, shape.color)
        segments = tuple((tuple(w.a), tuple(w.b), w.radius) for w in self._walls)
        canvas.reshape(-1, 3)[_segments_pixels(self.window_size, segments)] = self._walls[0].color
        # Upstream's pymunk debug draw also marks every contact of the last physics step with a
        # short anti-aliased red line (its default collision-point drawing); the recorded images
        # contain these marks, so they are part of the observation.
        for a, b in self.contact_segments:
            raster.draw_aaline(canvas, to_pygame(a), to_pygame(b), COLLISION_POINT_COLOR)
        return canvas

    def _draw_action(self, img: np.ndarray) -> None:
        """Red cross at the last action; upstream scales by 96 whatever the render size, which
        is only right at the default size, so here it scales by the image size."""
        size = img.shape[0]
        coord = (np.asarray(self.latest_action) / self.window_size * size).astype(np.int32)
        raster.draw_marker_cross(
            img, (int(coord[0]), int(coord[1])), int(8 / 96 * size), int(1 / 96 * size), (255, 0, 0)
        )

    def _step_space(self, dt: float) -> None:
        self.contact_segments = []
        self.space.step(dt)

    def _handle_collision(self, arbiter: pymunk.Arbiter, space: pymunk.Space, data: Any) -> None:
        contacts = arbiter.contact_point_set
        self.n_contact_points += len(contacts.points)
        # What pymunk's debug draw marks for each contact of the last step (see _draw_canvas).
        n = contacts.normal
        for p in contacts.points:
            self.contact_segments.append((p.point_a - 2 * n, p.point_b + 2 * n))

    def _set_state(self, state: Sequence[float]) -> None:
        state = np.asarray(state, dtype=np.float64).tolist()
        self.agent.position = state[:2]
        # Setting the angle rotates the body about its centre of gravity, which moves the
        # origin unless the angle is set first (legacy data was made the other way round).
        if self.legacy:
            self.block.position = state[2:4]
            self.block.angle = state[4]
        else:
            self.block.angle = state[4]
            self.block.position = state[2:4]
        # One physics step so that the new state takes effect.
        self._step_space(1.0 / self.sim_hz)

    def _set_state_local(self, state_local: Sequence[float]) -> np.ndarray:
        """Set the state from the agent position and block pose given in the goal's frame."""
        state_local = np.asarray(state_local, dtype=np.float64)
        gx, gy, ga = self.goal_pose
        bx, by, ba = state_local[2:5]
        rot = np.array([[np.cos(ga), -np.sin(ga)], [np.sin(ga), np.cos(ga)]])
        block_xy = rot @ np.array([bx, by]) + np.array([gx, gy])
        angle = ga + ba
        rot_new = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        agent_xy = rot_new @ state_local[:2] + block_xy
        # Upstream reads the rotation back from the composed matrix, i.e. wrapped to (-π, π].
        new_state = np.array([*agent_xy, *block_xy, np.arctan2(np.sin(angle), np.cos(angle))])
        self._set_state(new_state)
        return new_state

    def _setup(self) -> None:
        self.space = pymunk.Space()
        self.space.gravity = 0, 0
        self.space.damping = 0
        self.render_buffer = []

        walls = [
            self._add_segment((5, 506), (5, 5), 2),
            self._add_segment((5, 5), (506, 5), 2),
            self._add_segment((506, 5), (506, 506), 2),
            self._add_segment((5, 506), (506, 506), 2),
        ]
        self.space.add(*walls)

        self.agent = self.add_circle((256, 400), 15)
        self.block = self.add_tee((256, 300), 0)
        self.goal_color = COLORS["LightGreen"]
        self.goal_pose = np.array(GOAL_POSE)
        self._dynamic_shapes = [*self.block.shapes, *self.agent.shapes]
        self._walls = walls

        self.space.on_collision(0, 0, post_solve=self._handle_collision)
        self.n_contact_points = 0
        self.contact_segments: list[tuple[pymunk.Vec2d, pymunk.Vec2d]] = []

        self.max_score = 50 * 100
        self.success_threshold = SUCCESS_THRESHOLD

    def _add_segment(
        self, a: tuple[float, float], b: tuple[float, float], radius: float
    ) -> pymunk.Segment:
        shape = pymunk.Segment(self.space.static_body, a, b, radius)
        shape.color = COLORS["LightGray"]
        return shape

    def add_circle(self, position: tuple[float, float], radius: float) -> pymunk.Body:
        """The kinematic agent disc."""
        body = pymunk.Body(body_type=pymunk.Body.KINEMATIC)
        body.position = position
        shape = pymunk.Circle(body, radius)
        shape.color = COLORS["RoyalBlue"]
        self.space.add(body, shape)
        return body

    def add_box(self, position: tuple[float, float], height: float, width: float) -> pymunk.Body:
        """A dynamic box of mass 1 (unused by PushT; kept from upstream)."""
        body = pymunk.Body(1, pymunk.moment_for_box(1, (height, width)))
        body.position = position
        shape = pymunk.Poly.create_box(body, (height, width))
        shape.color = COLORS["LightSlateGray"]
        self.space.add(body, shape)
        return body

    def add_tee(
        self,
        position: tuple[float, float],
        angle: float,
        scale: float = 30,
        color: str = "LightSlateGray",
        mask: int = pymunk.ShapeFilter.ALL_MASKS(),
    ) -> pymunk.Body:
        """The T block: a 4x1 crossbar and a 1x3 stem (in units of ``scale``), mass 1.

        Upstream sums the crossbar's moment of inertia twice (not the stem's); kept, since the
        recorded dynamics depend on it. Shape friction stays at pymunk's default 0, as upstream
        (its ``body.friction = 1`` set an attribute pymunk never reads).
        """
        mass, length = 1, 4
        vertices1 = [
            (-length * scale / 2, scale),
            (length * scale / 2, scale),
            (length * scale / 2, 0),
            (-length * scale / 2, 0),
        ]
        vertices2 = [
            (-scale / 2, scale),
            (-scale / 2, length * scale),
            (scale / 2, length * scale),
            (scale / 2, scale),
        ]
        inertia1 = pymunk.moment_for_poly(mass, vertices=vertices1)
        body = pymunk.Body(mass, inertia1 + inertia1)
        shape1 = pymunk.Poly(body, vertices1)
        shape2 = pymunk.Poly(body, vertices2)
        for shape in (shape1, shape2):
            shape.color = COLORS[color]
            shape.filter = pymunk.ShapeFilter(mask=mask)
        body.center_of_gravity = (shape1.center_of_gravity + shape2.center_of_gravity) / 2
        body.position = position
        body.angle = angle
        self.space.add(body, shape1, shape2)
        return body

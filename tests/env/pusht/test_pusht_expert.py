"""The scripted PushT expert: its geometry helpers, its push model and its success."""

import numpy as np
import pytest

from diffusion_policy_mlx.env.pusht import PushTEnv
from diffusion_policy_mlx.env.pusht.pusht_expert import (
    PushTExpert,
    _shortest_path,
    grow_rectilinear,
)

SQUARE = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], dtype=float)


def test_grow_rectilinear_square_and_tee():
    np.testing.assert_allclose(
        grow_rectilinear(SQUARE, 2.0), [[-2, -2], [12, -2], [12, 12], [-2, 12]]
    )
    expert = PushTExpert()
    # The T grown by agent radius + clearance (19): the crossbar's bottom-left corner moves
    # diagonally out, the concave corner next to the stem moves diagonally in.
    np.testing.assert_allclose(expert.grown[0], [-79, -19])
    np.testing.assert_allclose(expert.grown[3], [34, 49])


def test_shortest_path_goes_around_the_obstacle():
    start, goal = np.array([5.0, -5.0]), np.array([5.0, 15.0])
    path = _shortest_path(SQUARE, start, goal)
    # Via two corners of the square grown by 1: (-1, -1) and (-1, 11) (or the mirror side).
    length = sum(np.linalg.norm(b - a) for a, b in zip([start, *path[:-1]], path, strict=True))
    assert length == pytest.approx(2 * np.hypot(6, 4) + 12)
    np.testing.assert_array_equal(path[-1], goal)
    direct = _shortest_path(SQUARE, start, np.array([5.0, -20.0]))
    assert len(direct) == 1 and np.array_equal(direct[0], [5.0, -20.0])
    # With every corner unusable there is no way round.
    assert _shortest_path(SQUARE, start, goal, np.zeros(4, dtype=bool)) is None


def test_push_model_matches_the_simulator():
    """A push under the crossbar's middle translates the block along +y without turning it;
    a push at the crossbar's end turns it, with the sign the expert's model predicts."""
    env = PushTEnv(legacy=False)
    env.reset(options={"reset_to_state": [256, 150, 256, 200, 0.0]})
    for _ in range(5):
        env.step([256, 200])
    assert env.block.position.y > 210 and abs(env.block.angle) < 1e-6
    env.reset(options={"reset_to_state": [306, 150, 256, 200, 0.0]})
    for _ in range(5):
        env.step([306, 200])
    # Contact at local (50, 0), pushing along +y, centre of mass at local (0, 45): the cross
    # product (50, -45) x (0, 1) = 50 > 0, a positive (clockwise on screen) turn.
    assert env.block.angle > 0.05


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_expert_solves_seeded_episodes(seed):
    env = PushTEnv(legacy=True)
    env.seed(seed)
    env.reset()
    expert = PushTExpert()
    expert.reset()
    for _ in range(300):
        *_, terminated, _, _ = env.step(expert.act(env))
        if terminated:
            break
    assert terminated and env._coverage() > 0.95

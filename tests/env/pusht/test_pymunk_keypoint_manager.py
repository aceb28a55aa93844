"""PymunkKeypointManager: farthest point sampling and pose transforms on hand-made numbers."""

import numpy as np
import pymunk
import pytest

from diffusion_policy_mlx.env.pusht.pymunk_keypoint_manager import (
    PymunkKeypointManager,
    farthest_point_sampling,
)


def test_farthest_point_sampling_picks_spread_points():
    points = np.array([[0, 0], [1, 0], [10, 0], [10, 10], [5, 5], [0, 9]], dtype=float)
    # From (0, 0): farthest is (10, 10); then the point farthest from both is (10, 0)
    # (distance 10 to each) ahead of (0, 9) (9 and ~10.05: min 9).
    picked = farthest_point_sampling(points, 3, init_idx=0)
    np.testing.assert_array_equal(picked, [[0, 0], [10, 10], [10, 0]])
    with pytest.raises(ValueError, match="n_points"):
        farthest_point_sampling(points, 0, 0)


def test_keypoints_follow_pose():
    manager = PymunkKeypointManager({"block": np.array([[10.0, 0.0], [0.0, 5.0]])})
    kps = manager.get_keypoints_global({"block": (100.0, 50.0, np.pi / 2)})["block"]
    np.testing.assert_allclose(kps, [[100.0, 60.0], [95.0, 50.0]], atol=1e-12)
    body = pymunk.Body(1, 1)
    body.position = (100.0, 50.0)
    body.angle = np.pi / 2
    from_body = manager.get_keypoints_global({"block": body}, is_obj=True)["block"]
    np.testing.assert_allclose(from_body, kps, atol=1e-12)
    # Default colours: matplotlib's tab10, first entry for the first key.
    np.testing.assert_array_equal(manager.color_map["block"], [31, 119, 180])
    assert set(manager.kwargs) == {"local_keypoint_map", "color_map"}


def test_draw_keypoints_scales_to_image():
    manager = PymunkKeypointManager(
        {"block": np.zeros((1, 2))}, color_map={"block": np.array([1, 2, 3], np.uint8)}
    )
    img = np.zeros((96, 96, 3), dtype=np.uint8)
    manager.draw_keypoints(img, {"block": np.array([[256.0, 128.0]])}, radius=1)
    hit = (img == [1, 2, 3]).all(axis=-1)
    expected = np.zeros((96, 96), dtype=bool)
    expected[24, 47:50] = expected[23:26, 48] = True
    np.testing.assert_array_equal(hit, expected)

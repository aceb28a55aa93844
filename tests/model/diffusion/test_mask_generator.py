import mlx.core as mx
import numpy as np
import pytest

from diffusion_policy_mlx.model.diffusion.mask_generator import LowdimMaskGenerator


def test_fixed_obs_steps_hand_derived():
    # action_dim 2, obs_dim 3, 2 obs steps: obs columns visible at t=0,1; actions never.
    mask = np.array(LowdimMaskGenerator(2, 3, max_n_obs_steps=2)((2, 4, 5)))
    row = np.array(
        [
            [0, 0, 1, 1, 1],
            [0, 0, 1, 1, 1],
            [0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0],
        ],
        dtype=bool,
    )
    assert mask.dtype == np.bool_ and mask.shape == (2, 4, 5)
    np.testing.assert_array_equal(mask, np.stack([row, row]))


def test_action_visible_shows_past_actions():
    # 3 obs steps: obs visible at t<3, actions at t<2 (the ones already executed).
    mask = np.array(LowdimMaskGenerator(1, 2, max_n_obs_steps=3, action_visible=True)((1, 5, 3)))
    expected = np.array([[1, 1, 1], [1, 1, 1], [0, 1, 1], [0, 0, 0], [0, 0, 0]], dtype=bool)
    np.testing.assert_array_equal(mask[0], expected)


def test_random_obs_steps_are_seeded_prefixes():
    gen = LowdimMaskGenerator(2, 4, max_n_obs_steps=3, fix_obs_steps=False, action_visible=True)
    shape = (400, 6, 6)
    mask = np.array(gen(shape, seed=3))
    np.testing.assert_array_equal(np.array(gen(shape, seed=3)), mask)
    np.testing.assert_array_equal(np.array(gen(shape, seed=mx.random.key(3))), mask)
    assert not np.array_equal(np.array(gen(shape, seed=4)), mask)

    n_obs = mask[:, :, 2].sum(axis=1)
    n_act = mask[:, :, 0].sum(axis=1)
    assert set(n_obs.tolist()) == {1, 2, 3}  # every count 1..3 occurs, nothing else
    np.testing.assert_array_equal(n_act, n_obs - 1)
    for b in range(shape[0]):
        # Each sample: all obs dims visible for exactly its first n_obs steps.
        assert mask[b, : n_obs[b], 2:].all() and not mask[b, n_obs[b] :, 2:].any()
        assert (mask[b, :, 0] == mask[b, :, 1]).all()


def test_unseeded_call_uses_global_rng():
    gen = LowdimMaskGenerator(1, 1, max_n_obs_steps=4, fix_obs_steps=False)
    mx.random.seed(11)
    first = np.array(gen((64, 5, 2)))
    mx.random.seed(11)
    np.testing.assert_array_equal(np.array(gen((64, 5, 2))), first)


def test_wrong_dim_is_rejected():
    with pytest.raises(ValueError, match=r"action_dim \+ obs_dim = 2 \+ 20 = 22"):
        LowdimMaskGenerator(2, 20)((1, 16, 21))

"""generate_demos: expert episodes in upstream's replay-buffer layout, consistent with the env."""

from pathlib import Path

import numpy as np
import pytest
import zarr

from diffusion_policy_mlx.env.pusht import PushTKeypointsEnv
from diffusion_policy_mlx.env.pusht.generate_demos import generate, main


@pytest.fixture(scope="module")
def demos(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("demos") / "pusht_expert.zarr"
    coverages = generate(path, episodes=2)
    assert len(coverages) == 2 and min(coverages) > 0.95
    return path


def test_layout_matches_the_recorded_dataset(demos, pusht_zarr):
    ours, theirs = zarr.open(demos, mode="r"), zarr.open(pusht_zarr, mode="r")
    assert ours.metadata.zarr_format == 2
    assert (
        set(ours["data"])
        == set(theirs["data"])
        == {"img", "state", "keypoint", "action", "n_contacts"}
    )
    n = int(ours["meta"]["episode_ends"][-1])
    for key in theirs["data"]:
        assert ours["data"][key].dtype == theirs["data"][key].dtype
        assert ours["data"][key].shape == (n, *theirs["data"][key].shape[1:])
    assert ours["meta"]["episode_ends"].dtype == np.int64


def test_rows_are_observations_before_actions(demos):
    """Replaying each episode from its seed: row t holds the state, keypoints and image seen
    before action t, and the last action reaches the goal."""
    z = zarr.open(demos, mode="r")
    ends = z["meta"]["episode_ends"][:]
    data = {k: z["data"][k][:] for k in z["data"]}
    env = PushTKeypointsEnv(legacy=True, render_action=False)
    for e, (start, end) in enumerate(zip([0, *ends[:-1]], ends, strict=True)):
        env.seed(e)
        obs, info = env.reset()
        for t in range(start, end):
            state = data["state"][t]
            np.testing.assert_allclose(
                state[:4], np.concatenate([info["pos_agent"], info["block_pose"][:2]]), atol=1e-4
            )
            assert 0 <= state[4] < 2 * np.pi
            np.testing.assert_allclose(state[4], info["block_pose"][2] % (2 * np.pi), atol=1e-5)
            np.testing.assert_allclose(data["keypoint"][t], obs[:18].reshape(9, 2), atol=1e-4)
            np.testing.assert_array_equal(data["img"][t], env.render())
            assert data["n_contacts"][t, 0] == info["n_contacts"]
            obs, _, terminated, _, info = env.step(data["action"][t].astype(np.float64))
            assert terminated == (t == end - 1)


def test_appending_continues_with_the_next_seed(tmp_path, capsys):
    path = tmp_path / "d.zarr"
    main(["--episodes", "1", "-o", str(path)])
    main(["--episodes", "1", "-o", str(path)])
    out = capsys.readouterr().out
    assert "seed 0:" in out and "seed 1:" in out and "(2 in total)" in out
    assert zarr.open(path, mode="r")["meta"]["episode_ends"].shape == (2,)
    with pytest.raises(SystemExit):
        main(["--episodes", "0", "-o", str(path)])

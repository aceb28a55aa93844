"""LinearNormalizer against upstream's PushT normalizer, plus hand-derived fits."""

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import zarr
from mlx.utils import tree_flatten
from safetensors.numpy import load_file

from diffusion_policy_mlx.model.common.normalize_util import get_image_range_normalizer
from diffusion_policy_mlx.model.common.normalizer import (
    LinearNormalizer,
    SingleFieldLinearNormalizer,
)

SAMPLES = ["train_sample_0", "train_sample_1", "train_sample_100", "train_sample_5000"]
SAMPLES += ["train_sample_10725"]


def _state_dict(path: Path) -> dict[str, np.ndarray]:
    return {
        k.removeprefix("state_dict."): v
        for k, v in load_file(path).items()
        if k.startswith("state_dict.")
    }


@pytest.fixture(scope="module")
def lowdim(fixtures_dir: Path) -> dict[str, np.ndarray]:
    return load_file(fixtures_dir / "normalizer_pusht.safetensors")


@pytest.fixture(scope="module")
def replay(pusht_zarr: Path) -> dict[str, np.ndarray]:
    data = zarr.open_group(str(pusht_zarr), mode="r")["data"]
    return {k: data[k][:] for k in ("keypoint", "state", "action")}


def _assert_params_match(ours: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> None:
    assert sorted(ours) == sorted(ref)
    for name, value in ref.items():
        assert ours[name].dtype == np.float32, name
        if name.endswith((".mean", ".std")):
            np.testing.assert_allclose(ours[name], value, rtol=1e-5, err_msg=name)
        else:
            np.testing.assert_allclose(ours[name], value, rtol=1e-6, atol=1e-6, err_msg=name)


def test_fit_on_all_episodes_reproduces_upstream_lowdim(lowdim, replay, fixtures_dir):
    n = replay["keypoint"].shape[0]
    obs = np.concatenate([replay["keypoint"].reshape(n, -1), replay["state"][:, :2]], axis=-1)
    normalizer = LinearNormalizer()
    normalizer.fit({"obs": obs, "action": replay["action"]}, last_n_dims=1, mode="limits")
    _assert_params_match(
        normalizer.state_dict(), _state_dict(fixtures_dir / "normalizer_pusht.safetensors")
    )


def test_fit_reproduces_upstream_image_normalizer(replay, fixtures_dir):
    normalizer = LinearNormalizer()
    normalizer.fit({"action": replay["action"], "agent_pos": replay["state"][:, :2]})
    normalizer["image"] = get_image_range_normalizer()
    ref_path = fixtures_dir / "normalizer_pusht_image.safetensors"
    _assert_params_match(normalizer.state_dict(), _state_dict(ref_path))
    ref = load_file(ref_path)
    for i in (0, 5000):
        sample = {"agent_pos": ref[f"output.train_sample_{i}.obs.agent_pos"]}
        sample["action"] = ref[f"output.train_sample_{i}.action"]
        for key, value in normalizer.normalize(sample).items():
            expected = ref[f"output.train_sample_{i}.normalized.{key}"]
            np.testing.assert_allclose(np.array(value), expected, atol=1e-5)
        image = ref[f"output.train_sample_{i}.obs.image_uint8"] / np.float32(255)
        np.testing.assert_array_equal(np.array(normalizer["image"].normalize(image)), image * 2 - 1)


def test_loaded_state_normalizes_samples_like_upstream(lowdim, fixtures_dir):
    normalizer = LinearNormalizer()
    normalizer.load_state_dict(_state_dict(fixtures_dir / "normalizer_pusht.safetensors"))
    for name in SAMPLES:
        batch = {k: lowdim[f"output.{name}.{k}"] for k in ("obs", "action")}
        out = normalizer.normalize(batch)
        for key in batch:
            assert isinstance(out[key], mx.array)
            np.testing.assert_allclose(
                np.array(out[key]), lowdim[f"output.{name}.normalized.{key}"], atol=1e-5
            )
    batch = {k: lowdim[f"output.train_sample_100.{k}"] for k in ("obs", "action")}
    back = normalizer.unnormalize(normalizer.normalize(batch))
    for key in batch:
        np.testing.assert_allclose(
            np.array(back[key]), lowdim[f"output.train_sample_100.roundtrip.{key}"], atol=1e-5
        )
    # a batch of samples (B, T, D) normalizes like each sample alone
    stacked = np.stack([lowdim[f"output.{n}.obs"] for n in SAMPLES])
    out = np.array(normalizer["obs"].normalize(mx.array(stacked)))
    for i, name in enumerate(SAMPLES):
        np.testing.assert_allclose(out[i], lowdim[f"output.{name}.normalized.obs"], atol=1e-5)


def test_parameter_names_are_upstream_state_dict_names(fixtures_dir):
    ref = _state_dict(fixtures_dir / "normalizer_pusht.safetensors")
    normalizer = LinearNormalizer()
    normalizer.load_state_dict(ref)
    names = [k for k, _ in tree_flatten(normalizer.parameters())]
    assert sorted(names) == sorted(ref)
    assert sorted(normalizer.state_dict()) == sorted(ref)


class _Policy(nn.Module):
    def __init__(self):
        super().__init__()
        self.normalizer = LinearNormalizer()
        self.head = nn.Linear(2, 2)


def test_normalizer_arrays_are_frozen_inside_a_policy():
    policy = _Policy()
    policy.normalizer.fit({"action": np.arange(12, dtype=np.float32).reshape(6, 2)})
    policy.normalizer["extra"] = SingleFieldLinearNormalizer.create_identity()
    trainable = [k for k, _ in tree_flatten(policy.trainable_parameters())]
    assert trainable == ["head.weight", "head.bias"]
    names = {k for k, _ in tree_flatten(policy.parameters())}
    assert "normalizer.params_dict.action.scale" in names
    assert "normalizer.params_dict.extra.input_stats.std" in names
    # gradients flow through normalize to the head only
    grads = nn.value_and_grad(policy, lambda x: policy.head(policy.normalizer["action"](x)).sum())(
        mx.ones((3, 2))
    )[1]
    assert [k for k, _ in tree_flatten(grads)] == ["head.weight", "head.bias"]
    # MLX's own update path (checkpoint loading) still reaches the normalizer arrays
    policy.update({"normalizer": {"params_dict": {"action": {"scale": mx.array([3.0, 4.0])}}}})
    np.testing.assert_array_equal(
        np.array(policy.normalizer["action"].params_dict["scale"]), [3, 4]
    )


def test_limits_fit_hand_derived():
    data = np.array([[0.0, 10.0], [2.0, 10.0], [4.0, 10.0]], dtype=np.float32)
    n = SingleFieldLinearNormalizer.create_fit(data)
    # column 0 spans [0, 4] -> scale 2/4, offset -1; column 1 is constant -> scale 1, offset 0-10
    np.testing.assert_allclose(np.array(n.params_dict["scale"]), [0.5, 1.0])
    np.testing.assert_allclose(np.array(n.params_dict["offset"]), [-1.0, -10.0])
    stats = n.get_input_stats()
    np.testing.assert_allclose(np.array(stats["mean"]), [2.0, 10.0])
    np.testing.assert_allclose(np.array(stats["std"]), [2.0, 0.0])  # unbiased (N-1)
    out = n.get_output_stats()
    np.testing.assert_allclose(np.array(out["min"]), [-1.0, 0.0])
    np.testing.assert_allclose(np.array(out["max"]), [1.0, 0.0])
    np.testing.assert_allclose(np.array(n.normalize(data))[:, 0], [-1.0, 0.0, 1.0])
    np.testing.assert_allclose(np.array(n.unnormalize(n.normalize(data))), data)


def test_gaussian_and_no_offset_fits_hand_derived():
    data = np.array([[0.0, 10.0], [2.0, 10.0], [4.0, 10.0]], dtype=np.float32)
    g = SingleFieldLinearNormalizer.create_fit(data, mode="gaussian")
    # std [2, 0]: the constant column keeps scale 1; offset = -mean*scale
    np.testing.assert_allclose(np.array(g.params_dict["scale"]), [0.5, 1.0])
    np.testing.assert_allclose(np.array(g.params_dict["offset"]), [-1.0, -10.0])
    z = SingleFieldLinearNormalizer.create_fit(
        np.array([[-2.0], [4.0]], dtype=np.float32), fit_offset=False
    )
    np.testing.assert_allclose(np.array(z.params_dict["scale"]), [0.25])
    np.testing.assert_allclose(np.array(z.params_dict["offset"]), [0.0])


def test_last_n_dims_and_bare_array_fit():
    rng = np.random.default_rng(0)
    data = rng.uniform(size=(50, 4, 3, 2)).astype(np.float32)
    data[..., 0, 0] = 0.5
    n = LinearNormalizer()
    n.fit(data, last_n_dims=2)
    assert n.params_dict["_default"]["scale"].shape == (6,)
    out = np.array(n.normalize(data))
    assert out.shape == data.shape
    flat = out.reshape(-1, 6)
    np.testing.assert_allclose(flat[:, 1:].min(0), -1.0, atol=1e-6)
    np.testing.assert_allclose(flat[:, 1:].max(0), 1.0, atol=1e-6)
    np.testing.assert_allclose(flat[:, 0], 0.0, atol=1e-7)  # constant feature -> middle
    np.testing.assert_allclose(np.array(n.unnormalize(out)), data, atol=1e-6)
    assert set(n.get_input_stats()) == {"min", "max", "mean", "std"}
    # last_n_dims=0 fits one scalar over everything
    s = SingleFieldLinearNormalizer.create_fit(data, last_n_dims=0, mode="gaussian")
    assert s.params_dict["scale"].shape == (1,)
    np.testing.assert_allclose(np.array(s.normalize(data)).std(ddof=1), 1.0, atol=1e-5)


def test_state_dict_round_trip_and_manual():
    n = LinearNormalizer()
    n["a"] = SingleFieldLinearNormalizer.create_manual(
        np.array([2.0, 4.0], np.float32),
        np.array([1.0, 0.0], np.float32),
        {k: np.array([v, v], np.float32) for v, k in enumerate(["min", "max", "mean", "std"])},
    )
    m = LinearNormalizer()
    m.load_state_dict(n.state_dict())
    x = np.array([[1.0, 1.0], [0.5, -1.0]], np.float32)
    np.testing.assert_array_equal(np.array(m.normalize({"a": x})["a"]), [[3.0, 4.0], [2.0, -4.0]])
    single = SingleFieldLinearNormalizer()
    single.load_state_dict(m["a"].state_dict())
    np.testing.assert_array_equal(np.array(single(x)), [[3.0, 4.0], [2.0, -4.0]])
    # float64 numpy input is computed in the normalizer's float32
    assert m.normalize({"a": x.astype(np.float64)})["a"].dtype == mx.float32


def test_errors_name_the_problem():
    n = LinearNormalizer()
    n.fit({"action": np.zeros((4, 2), np.float32)})
    with pytest.raises(KeyError, match="no field 'obs'"):
        n.normalize({"obs": np.zeros((1, 2), np.float32)})
    with pytest.raises(RuntimeError, match="bare array"):
        n.normalize(np.zeros((1, 2), np.float32))
    with pytest.raises(ValueError, match="'action' has 2 features"):
        n.normalize({"action": np.zeros((1, 3), np.float32)})
    with pytest.raises(ValueError, match="mode 'minmax'"):
        n.fit({"action": np.zeros((4, 2), np.float32)}, mode="minmax")
    with pytest.raises(KeyError, match="lacks input_stats.std"):
        n.load_state_dict({k: v for k, v in n.state_dict().items() if not k.endswith("std")})
    with pytest.raises(ValueError, match="offset has shape"):
        SingleFieldLinearNormalizer.create_manual(
            np.ones(2, np.float32),
            np.ones(3, np.float32),
            {k: np.ones(2, np.float32) for k in ["min", "max", "mean", "std"]},
        )

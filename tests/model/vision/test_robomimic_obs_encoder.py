"""The hybrid policy's robomimic-style encoder: PyTorch parity, checkpoint names, SpatialSoftmax."""

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten
from vision_reference import reference_state_dict

from diffusion_policy_mlx.common.upstream import load_upstream_state_dict, to_upstream_state_dict
from diffusion_policy_mlx.model.vision.robomimic_obs_encoder import (
    RobomimicObsEncoder,
    SpatialSoftmax,
    drop_upstream_aliases,
)

PUSHT = {
    "obs": {
        "image": {"shape": [3, 96, 96], "type": "rgb"},
        "agent_pos": {"shape": [2], "type": "low_dim"},
    },
    "action": {"shape": [2]},
}


def with_aliases(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What torch writes for robomimic's VisualCore: backbone and pool a second time."""
    out = dict(state_dict)
    for key, value in state_dict.items():
        for twin, alias in ((".nets.0.", ".backbone."), (".nets.1.", ".pool.")):
            head, sep, rest = key.partition(twin)
            if sep and head.count(".") == 1:  # obs_nets.<key>.nets.0....
                out[f"{head}{alias}{rest}"] = value
    return out


@pytest.mark.parametrize("norm", ["gn", "bn"])
def test_matches_torch_through_an_upstream_style_state_dict(vision_ref, vision_ref_keys, norm):
    encoder = RobomimicObsEncoder(
        PUSHT, crop_shape=(76, 76), obs_encoder_group_norm=norm == "gn", eval_fixed_crop=True
    )
    upstream = with_aliases(reference_state_dict(to_upstream_state_dict(encoder)))

    def names(keys):
        return {k for k in keys if not k.endswith("num_batches_tracked")}

    assert names(upstream) == names(vision_ref_keys[f"robomimic_{norm}"])

    load_upstream_state_dict(encoder, drop_upstream_aliases(upstream))
    encoder.eval()
    obs = {
        "image": mx.array(vision_ref["input.image"]),
        "agent_pos": mx.array(vision_ref["input.agent_pos"]),
    }
    out = encoder(obs)
    expected = vision_ref[f"output.robomimic_{norm}_eval"]
    assert out.shape == (2, 66) and encoder.output_shape() == (66,)
    np.testing.assert_allclose(np.array(out), expected, rtol=1e-4, atol=1e-5)
    # image features went through robomimic's ReLU; agent_pos is passed through raw
    assert float(out[:, :64].min()) == 0.0
    np.testing.assert_array_equal(np.array(out[:, 64:]), vision_ref["input.agent_pos"])


def test_checkpoint_names_and_trainable_set():
    encoder = RobomimicObsEncoder(PUSHT, obs_encoder_group_norm=True)
    names = {k for k, _ in tree_flatten(encoder.parameters())}
    assert "obs_nets.image.nets.0.nets.0.weight" in names  # resnet conv1
    assert "obs_nets.image.nets.0.nets.4.0.bn1.weight" in names  # layer1.0.bn1 (now GroupNorm)
    assert "obs_nets.image.nets.0.nets.4.0.bn1.running_mean" not in names
    assert {"obs_nets.image.nets.1.nets.weight", "obs_nets.image.nets.3.weight"} <= names
    trainable = {k for k, _ in tree_flatten(encoder.trainable_parameters())}
    buffers = {f"obs_nets.image.nets.1.{b}" for b in ("temperature", "pos_x", "pos_y")}
    assert buffers <= names and not buffers & trainable
    # like MLX's BatchNorm, the pool re-freezes its buffers when it is unfrozen itself
    pool = encoder.obs_nets["image"].pool
    pool.unfreeze()
    assert set(pool.trainable_parameters()) == {"nets"}
    assert encoder.obs_nets["image"].backbone is encoder.obs_nets["image"].nets[0]


def test_features_follow_shape_meta_order():
    shape_meta = {
        "obs": {
            "agent_pos": {"shape": [2], "type": "low_dim"},
            "image": {"shape": [3, 96, 96], "type": "rgb"},
            "extra": {"shape": [1, 3]},
        }
    }
    encoder = RobomimicObsEncoder(shape_meta)
    encoder.eval()
    obs = {
        "image": mx.zeros((2, 3, 96, 96)),
        "agent_pos": mx.array([[1.0, 2.0], [3.0, 4.0]]),
        "extra": mx.array([[[5.0, 6.0, 7.0]], [[8.0, 9.0, 10.0]]]),
    }
    out = np.array(encoder(obs))
    assert out.shape == (2, 2 + 64 + 3) and encoder.output_shape() == (69,)
    assert out[:, :2].tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert out[:, 66:].tolist() == [[5.0, 6.0, 7.0], [8.0, 9.0, 10.0]]


def test_crop_modes():
    images = mx.random.uniform(shape=(2, 3, 96, 96), key=mx.random.key(0))
    obs = {"image": images, "agent_pos": mx.zeros((2, 2))}
    fixed = RobomimicObsEncoder(PUSHT, eval_fixed_crop=True)
    fixed.eval()
    np.testing.assert_array_equal(np.array(fixed(obs)), np.array(fixed(obs)))
    fixed.train()
    assert not np.array_equal(np.array(fixed(obs)), np.array(fixed(obs)))
    wandering = RobomimicObsEncoder(PUSHT, eval_fixed_crop=False)
    wandering.eval()
    assert not np.array_equal(np.array(wandering(obs)), np.array(wandering(obs)))
    uncropped = RobomimicObsEncoder(PUSHT, crop_shape=None)
    assert uncropped.obs_nets["image"].input_shape == (3, 96, 96)
    assert uncropped(obs).shape == (2, 66)


def test_spatial_softmax_one_hot_maps_give_grid_points():
    pool = SpatialSoftmax((2, 3, 5), num_kp=None, temperature=1e-3)
    feature = np.zeros((1, 3, 5, 2), np.float32)
    feature[0, 2, 1, 0] = 1.0  # row 2 (y = 1), col 1 (x = -0.5)
    feature[0, 0, 4, 1] = 1.0  # row 0 (y = -1), col 4 (x = 1)
    out = np.array(pool(mx.array(feature)))
    np.testing.assert_allclose(out, [[[-0.5, 1.0], [1.0, -1.0]]], atol=1e-6)
    # uniform maps average the grid: the centre
    np.testing.assert_allclose(
        np.array(pool(mx.zeros((1, 3, 5, 2)))), np.zeros((1, 2, 2)), atol=1e-6
    )


def test_spatial_softmax_matches_torch(vision_ref):
    pool = SpatialSoftmax((8, 5, 7), num_kp=4, temperature=0.5)
    load_upstream_state_dict(pool, reference_state_dict(to_upstream_state_dict(pool)))
    out = pool(mx.array(vision_ref["input.features"].transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(
        np.array(out), vision_ref["output.spatial_softmax"], rtol=1e-5, atol=1e-6
    )


def test_spatial_softmax_variance_and_noise():
    pool = SpatialSoftmax((1, 1, 3), num_kp=None, output_variance=True, noise_std=0.5)
    pool.eval()
    # equal weight on x = -1, 0, 1: mean 0, var 2/3; y is constant (one row at y = -1)
    keypoints, covariance = pool(mx.zeros((1, 1, 3, 1)))
    np.testing.assert_allclose(np.array(keypoints), [[[0.0, -1.0]]], atol=1e-6)
    np.testing.assert_allclose(np.array(covariance), [[[[2 / 3, 0.0], [0.0, 0.0]]]], atol=1e-6)
    pool.train()
    noisy, _ = pool(mx.zeros((1, 1, 3, 1)))
    assert float(mx.abs(noisy - keypoints).max()) > 0


def test_drop_upstream_aliases_checks_twins():
    good = {
        "obs_encoder.obs_nets.image.nets.0.nets.0.weight": np.ones(3),
        "obs_encoder.obs_nets.image.backbone.nets.0.weight": np.ones(3),
        "obs_encoder.obs_nets.image.nets.1.pos_x": np.zeros(2),
        "obs_encoder.obs_nets.image.pool.pos_x": np.zeros(2),
        "model.final_conv.0.weight": np.ones(1),
    }
    assert list(drop_upstream_aliases(good)) == [
        "obs_encoder.obs_nets.image.nets.0.nets.0.weight",
        "obs_encoder.obs_nets.image.nets.1.pos_x",
        "model.final_conv.0.weight",
    ]
    bad = dict(good, **{"obs_encoder.obs_nets.image.pool.pos_x": np.ones(2)})
    with pytest.raises(ValueError, match="pool.pos_x differs from"):
        drop_upstream_aliases(bad)
    orphan = {"obs_nets.image.backbone.nets.0.weight": np.ones(3)}
    with pytest.raises(ValueError, match="not its twin obs_nets.image.nets.0.nets.0.weight"):
        drop_upstream_aliases(orphan)


def test_bad_inputs_are_named():
    encoder = RobomimicObsEncoder(PUSHT)
    with pytest.raises(ValueError, match=r"obs\['image'\] has shape \(2, 96, 96, 3\)"):
        encoder({"image": mx.zeros((2, 96, 96, 3)), "agent_pos": mx.zeros((2, 2))})
    with pytest.raises(ValueError, match="lacks keys"):
        encoder({"image": mx.zeros((2, 3, 96, 96))})
    with pytest.raises(ValueError, match="type is 'depth'"):
        RobomimicObsEncoder({"obs": {"d": {"shape": [1, 8, 8], "type": "depth"}}})


def test_compiles_with_random_crops():
    encoder = RobomimicObsEncoder(PUSHT)
    obs = {"image": mx.random.uniform(shape=(2, 3, 96, 96)), "agent_pos": mx.ones((2, 2))}
    encoder.eval()
    compiled = mx.compile(lambda o: encoder(o))
    np.testing.assert_allclose(np.array(compiled(obs)), np.array(encoder(obs)), atol=1e-6)
    encoder.train()
    state = [mx.random.state]
    compiled = mx.compile(lambda o: encoder(o), inputs=state, outputs=state)
    mx.random.seed(5)
    first, second = np.array(compiled(obs)), np.array(compiled(obs))
    mx.random.seed(5)
    np.testing.assert_array_equal(np.array(compiled(obs)), first)
    assert not np.array_equal(first, second)

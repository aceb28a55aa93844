"""MultiImageObsEncoder: PyTorch parity, upstream's key order, shared models and shape checks."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from diffusion_policy_mlx.model.vision.crop_randomizer import CropRandomizer
from diffusion_policy_mlx.model.vision.model_getter import get_resnet
from diffusion_policy_mlx.model.vision.multi_image_obs_encoder import MultiImageObsEncoder
from diffusion_policy_mlx.model.vision.transforms import CenterCrop

PUSHT = {
    "obs": {
        "image": {"shape": [3, 96, 96], "type": "rgb"},
        "agent_pos": {"shape": [2], "type": "low_dim"},
    },
    "action": {"shape": [2]},
}


class ChannelMeans(nn.Module):
    """A parameter-free "CNN": the mean of each channel, times a per-model factor."""

    def __init__(self, factor: float = 1.0):
        super().__init__()
        self.factor = factor

    def __call__(self, x: mx.array) -> mx.array:
        return x.mean(axis=(1, 2)) * self.factor


def test_pusht_resnet_matches_torch(vision_ref, vision_ref_keys, load_reference_weights):
    encoder = MultiImageObsEncoder(
        PUSHT,
        get_resnet("resnet18"),
        resize_shape=(80, 88),
        crop_shape=(72, 72),
        use_group_norm=True,
        imagenet_norm=True,
    )
    names = {k for k, _ in tree_flatten(encoder.parameters())}
    assert names == set(vision_ref_keys["multi_image_gn"])
    load_reference_weights(encoder)
    encoder.eval()
    obs = {
        "image": mx.array(vision_ref["input.image"]),
        "agent_pos": mx.array(vision_ref["input.agent_pos"]),
    }
    out = encoder(obs)
    expected = vision_ref["output.multi_image_gn_eval"]
    assert out.shape == (2, 514) and encoder.output_shape() == (514,)
    np.testing.assert_allclose(
        np.array(out), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max()
    )


def two_cameras(**kwargs) -> tuple[MultiImageObsEncoder, dict[str, mx.array]]:
    shape_meta = {
        "obs": {
            "wrist": {"shape": [3, 4, 4], "type": "rgb"},
            "state_b": {"shape": [1]},
            "agentview": {"shape": [3, 4, 4], "type": "rgb"},
            "state_a": {"shape": [2], "type": "low_dim"},
        }
    }
    # (B=2): camera pixels constant per channel, so channel means are easy to read
    obs = {
        "wrist": mx.broadcast_to(mx.array([1.0, 2.0, 3.0]).reshape(1, 3, 1, 1), (2, 3, 4, 4)),
        "agentview": mx.broadcast_to(
            mx.array([10.0, 20.0, 30.0]).reshape(1, 3, 1, 1), (2, 3, 4, 4)
        ),
        "state_a": mx.array([[100.0, 101.0], [102.0, 103.0]]),
        "state_b": mx.array([[200.0], [201.0]]),
    }
    return MultiImageObsEncoder(shape_meta, **kwargs), obs


def test_features_are_rgb_sorted_then_low_dim_sorted():
    encoder, obs = two_cameras(
        rgb_model={"wrist": ChannelMeans(1.0), "agentview": ChannelMeans(-1.0)}
    )
    out = encoder(obs)
    assert encoder.rgb_keys == ["agentview", "wrist"]
    assert encoder.low_dim_keys == ["state_a", "state_b"]
    assert out.tolist()[1] == [-10.0, -20.0, -30.0, 1.0, 2.0, 3.0, 102.0, 103.0, 201.0]


def test_shared_model_puts_cameras_side_by_side():
    encoder, obs = two_cameras(rgb_model=ChannelMeans(2.0), share_rgb_model=True)
    assert list(encoder.key_model_map) == ["rgb"]
    out = encoder(obs)
    assert out.tolist()[0] == [20.0, 40.0, 60.0, 2.0, 4.0, 6.0, 100.0, 101.0, 200.0]
    assert encoder.output_shape() == (9,)


def test_per_key_models_are_independent_copies():
    encoder, _ = two_cameras(rgb_model=get_resnet("resnet18"), use_group_norm=True)
    wrist, agentview = encoder.key_model_map["wrist"], encoder.key_model_map["agentview"]
    assert wrist is not agentview
    np.testing.assert_array_equal(np.array(wrist.conv1.weight), np.array(agentview.conv1.weight))
    assert isinstance(wrist.bn1, nn.GroupNorm) and wrist.bn1.num_groups == 4
    names = {k for k, _ in tree_flatten(encoder.parameters())}
    assert "key_model_map.wrist.layer1.0.bn1.weight" in names
    assert "key_model_map.agentview.layer4.1.conv2.weight" in names


def test_shared_model_keeps_batchnorm_like_upstream():
    encoder, _ = two_cameras(
        rgb_model=get_resnet("resnet18"), share_rgb_model=True, use_group_norm=True
    )
    assert isinstance(encoder.key_model_map["rgb"].bn1, nn.BatchNorm)


def test_crop_modes_and_output_shape_leaves_batchnorm_alone():
    resnet = get_resnet("resnet18")
    encoder = MultiImageObsEncoder(PUSHT, resnet, crop_shape=(76, 76))
    assert isinstance(encoder.key_transform_map["image"][0], CropRandomizer)
    before = np.array(encoder.key_model_map["image"].bn1.running_var)
    assert encoder.output_shape() == (514,)
    assert encoder.training
    np.testing.assert_array_equal(np.array(encoder.key_model_map["image"].bn1.running_var), before)
    fixed = MultiImageObsEncoder(PUSHT, resnet, crop_shape=(76, 76), random_crop=False)
    assert isinstance(fixed.key_transform_map["image"][0], CenterCrop)


def test_bad_observations_are_named():
    encoder = MultiImageObsEncoder(PUSHT, ChannelMeans())
    with pytest.raises(ValueError, match=r"obs\['image'\] has shape \(2, 96, 96, 3\)"):
        encoder({"image": mx.zeros((2, 96, 96, 3)), "agent_pos": mx.zeros((2, 2))})
    with pytest.raises(ValueError, match="lacks keys"):
        encoder({"image": mx.zeros((2, 3, 96, 96))})
    with pytest.raises(ValueError, match="batch 3"):
        encoder({"image": mx.zeros((2, 3, 96, 96)), "agent_pos": mx.zeros((3, 2))})
    bad = {"obs": {"depth": {"shape": [1, 8, 8], "type": "depth"}}}
    with pytest.raises(ValueError, match="shape_meta.obs.depth.type is 'depth'"):
        MultiImageObsEncoder(bad, ChannelMeans())
    with pytest.raises(ValueError, match="no entry for rgb key 'image'"):
        MultiImageObsEncoder(PUSHT, {"other": ChannelMeans()})

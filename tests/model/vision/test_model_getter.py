"""get_resnet: the trunk without fc, loading torchvision state_dicts from safetensors files."""

import mlx.core as mx
import numpy as np
import pytest
from safetensors.numpy import save_file
from vision_reference import reference_state_dict

from diffusion_policy_mlx.common.upstream import to_upstream_state_dict
from diffusion_policy_mlx.model.vision.model_getter import get_resnet
from diffusion_policy_mlx.model.vision.resnet import ResNet


def test_trunks_drop_the_classifier():
    x = mx.zeros((2, 64, 64, 3))
    for name, dim in (("resnet18", 512), ("resnet34", 512), ("resnet50", 2048)):
        model = get_resnet(name)
        assert isinstance(model, ResNet) and "fc" not in model
        model.eval()
        assert model(x).shape == (2, dim)


def test_loads_a_torchvision_safetensors_file(tmp_path, vision_ref):
    # A torchvision checkpoint: torch layout, a 1000-way fc, BatchNorm step counters.
    state_dict = reference_state_dict(to_upstream_state_dict(get_resnet("resnet18")))
    state_dict["fc.weight"] = np.ones((1000, 512), np.float32)
    state_dict["fc.bias"] = np.zeros(1000, np.float32)
    state_dict["bn1.num_batches_tracked"] = np.array(7, np.int64)
    path = tmp_path / "resnet18.safetensors"
    save_file(state_dict, str(path))

    model = get_resnet("resnet18", weights=str(path))
    model.eval()
    out = model(mx.array(vision_ref["input.image"].transpose(0, 2, 3, 1)))
    expected = vision_ref["output.resnet18_bn_eval"]
    np.testing.assert_allclose(
        np.array(out), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max()
    )


def test_bad_weights_are_explained(tmp_path):
    with pytest.raises(ValueError, match="unknown name 'resnet101'"):
        get_resnet("resnet101")
    with pytest.raises(ValueError, match="not downloaded"):
        get_resnet("resnet18", weights="IMAGENET1K_V1")
    with pytest.raises(ValueError, match="not downloaded"):
        get_resnet("resnet18", weights="r3m")
    with pytest.raises(FileNotFoundError, match="absent.safetensors"):
        get_resnet("resnet18", weights=tmp_path / "absent.safetensors")
    with pytest.raises(ValueError, match="num_classes"):
        get_resnet("resnet18", num_classes=10)

    wrong = tmp_path / "resnet50.safetensors"
    save_file(to_upstream_state_dict(get_resnet("resnet50")), str(wrong))
    with pytest.raises(ValueError, match=r"resnet50.safetensors is not a torchvision resnet18"):
        get_resnet("resnet18", weights=wrong)

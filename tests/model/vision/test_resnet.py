"""ResNet-18/50 against PyTorch outputs, torchvision's names, and the BatchNorm -> GroupNorm swap."""

import copy

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from diffusion_policy_mlx.model.vision.resnet import (
    BasicBlock,
    ResNet,
    replace_bn_with_gn,
    resnet18,
    resnet34,
    resnet50,
)


def nhwc(x: np.ndarray) -> mx.array:
    return mx.array(x.transpose(0, 2, 3, 1))


def assert_close(actual: mx.array, expected: np.ndarray, rtol: float = 1e-4) -> None:
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(np.array(actual), expected, rtol=rtol, atol=rtol * scale)


def names(module: nn.Module) -> set[str]:
    return {k for k, _ in tree_flatten(module.parameters())}


def torch_names(keys: list[str]) -> set[str]:
    return {k for k in keys if not k.endswith("num_batches_tracked")}


def test_parameter_names_are_torchvisions(vision_ref_keys):
    assert names(resnet18(num_classes=None)) == torch_names(vision_ref_keys["resnet18"])
    assert names(resnet50(num_classes=None)) == torch_names(vision_ref_keys["resnet50"])
    head = names(resnet18()) - names(resnet18(num_classes=None))
    assert head == {"fc.weight", "fc.bias"}


def test_resnet18_batchnorm_eval_matches_torch(vision_ref, load_reference_weights):
    model = resnet18(num_classes=None)
    load_reference_weights(model)
    model.eval()
    out = model(nhwc(vision_ref["input.image"]))
    assert out.shape == (2, 512)
    assert_close(out, vision_ref["output.resnet18_bn_eval"])


def test_resnet18_batchnorm_train_matches_torch_and_updates_running_stats(
    vision_ref, load_reference_weights
):
    model = resnet18(num_classes=None)
    load_reference_weights(model)
    model.train()
    out = model(nhwc(vision_ref["input.image"]))
    assert_close(out, vision_ref["output.resnet18_bn_train"])
    prefix = "output.resnet18_bn_train"
    for norm in (model.bn1, model.layer4[1].bn2):
        name = "bn1" if norm is model.bn1 else "layer4.1.bn2"
        assert_close(norm.running_mean, vision_ref[f"{prefix}.{name}.running_mean"])
        assert_close(norm.running_var, vision_ref[f"{prefix}.{name}.running_var"])


def test_resnet50_bottleneck_matches_torch(vision_ref, load_reference_weights):
    model = resnet50(num_classes=None)
    load_reference_weights(model)
    model.eval()
    out = model(nhwc(vision_ref["input.image"][:, :, :64, :64]))
    assert out.shape == (2, 2048)
    assert_close(out, vision_ref["output.resnet50_bn_eval"])


def test_group_norm_variant_matches_torch(vision_ref, vision_ref_keys, load_reference_weights):
    model = resnet18(num_classes=None)
    assert replace_bn_with_gn(model) == 20  # stem + 2 per block * 8 + 3 downsamples
    assert names(model) == torch_names(vision_ref_keys["resnet18_gn"])
    load_reference_weights(model)
    out = model(nhwc(vision_ref["input.image"]))
    assert_close(out, vision_ref["output.resnet18_gn"])


def test_replace_bn_with_gn_groups_and_counts():
    model = resnet50(num_classes=None)
    # 1 stem + 3 per bottleneck * 16 + 4 downsamples
    assert replace_bn_with_gn(model) == 53
    norms = [m for _, m in model.named_modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 53
    assert not any(isinstance(m, nn.BatchNorm) for _, m in model.named_modules())
    assert {(n.num_groups, n.dims) for n in norms} >= {(4, 64), (128, 2048), (16, 256)}
    assert all(n.pytorch_compatible for n in norms)
    assert "running_mean" not in model.bn1
    # the maxpool's configuration is untouched by the walk
    assert model.maxpool(mx.arange(16.0).reshape(1, 4, 4, 1)).reshape(-1).tolist() == [5, 7, 13, 15]


def test_replace_bn_with_gn_rejects_indivisible_channels():
    model = ResNet(BasicBlock, (1, 1, 1, 1), num_classes=None)
    model.bn1 = nn.BatchNorm(24)
    with pytest.raises(ValueError, match="24 channels"):
        replace_bn_with_gn(model)


def test_output_sizes_and_trunk_shape():
    x = mx.zeros((1, 76, 76, 3))
    assert resnet18(num_classes=None).forward_features(x).shape == (1, 3, 3, 512)
    assert resnet34(num_classes=None)(x).shape == (1, 512)
    assert resnet18(num_classes=10)(x).shape == (1, 10)


def test_init_follows_torchvision():
    model = resnet18(zero_init_residual=True)
    # He normal with fan_out: std sqrt(2 / (64 * 7 * 7))
    std = float(np.std(np.array(model.conv1.weight)))
    assert abs(std - np.sqrt(2 / (64 * 49))) < 0.1 * np.sqrt(2 / (64 * 49))
    assert float(mx.abs(model.layer1[0].bn2.weight).max()) == 0.0
    assert float(model.layer1[0].bn1.weight.min()) == 1.0
    trainable = {k for k, _ in tree_flatten(model.trainable_parameters())}
    assert "bn1.running_mean" not in trainable and "bn1.weight" in trainable


def test_deepcopy_gives_independent_weights():
    model = resnet18(num_classes=None)
    clone = copy.deepcopy(model)
    clone.conv1.weight = mx.zeros_like(clone.conv1.weight)
    assert float(mx.abs(model.conv1.weight).max()) > 0
    x = mx.ones((2, 64, 64, 3))
    assert clone(x).shape == model(x).shape == (2, 512)

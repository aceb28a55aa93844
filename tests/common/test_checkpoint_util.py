import json
import random
import struct

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten
from omegaconf import OmegaConf

from diffusion_policy_mlx.common import checkpoint_util as cu
from diffusion_policy_mlx.common.checkpoint_util import (
    CheckpointError,
    CheckpointMismatchError,
    TopKCheckpointManager,
)
from diffusion_policy_mlx.config_compat import AdamW
from diffusion_policy_mlx.model.common.normalizer import LinearNormalizer


class TinyPolicy(nn.Module):
    def __init__(self, width: int = 4):
        super().__init__()
        self.layers = [nn.Linear(2, width), nn.GroupNorm(2, width, pytorch_compatible=True)]
        self.normalizer = LinearNormalizer()

    def __call__(self, x):
        return self.layers[1](self.layers[0](x))


def _trained(width: int = 4) -> tuple[TinyPolicy, AdamW]:
    model = TinyPolicy(width)
    model.normalizer.fit({"action": np.arange(12, dtype=np.float32).reshape(6, 2)})
    optimizer = AdamW(lr=0.1)

    def loss_fn(x):
        return (model(x) ** 2).mean()

    grads = nn.value_and_grad(model, loss_fn)(mx.ones((3, 2)))[1]
    optimizer.update(model, grads)
    mx.eval(model.parameters(), optimizer.state)
    return model, optimizer


CFG = OmegaConf.create({"policy": {"width": 4, "n": "${eval:'2+2'}"}, "training": {"seed": 1}})


def _save(path, model, optimizer, state=None):
    tensors = {**cu.module_tensors(model, "model"), **cu.optimizer_tensors(optimizer)}
    return cu.save_checkpoint(path, tensors, CFG, state or {"epoch": 3, "global_step": 17})


def test_round_trip_restores_model_normalizer_optimizer_and_config(tmp_path):
    model, optimizer = _trained()
    path = _save(tmp_path / "latest.ckpt", model, optimizer)
    assert path == tmp_path / "latest.ckpt" and sorted(p.name for p in tmp_path.iterdir()) == [
        "latest.ckpt"
    ]

    ckpt = cu.load_checkpoint(path)
    assert ckpt.state == {"epoch": 3, "global_step": 17}
    assert ckpt.cfg.policy.n == 4  # stored resolved
    fresh, fresh_opt = TinyPolicy(), AdamW(lr=0.5)
    cu.load_module(fresh, ckpt.group("model"), "policy")
    cu.load_optimizer(fresh_opt, ckpt.group("optimizer"), fresh.trainable_parameters())
    expected, got = dict(tree_flatten(model.parameters())), dict(tree_flatten(fresh.parameters()))
    assert expected.keys() == got.keys()
    for k, a in expected.items():
        assert mx.array_equal(a, got[k]), k
    assert "normalizer.params_dict.action.scale" in dict(tree_flatten(fresh.parameters()))
    # normalizer stays frozen after loading, as fitted
    assert "normalizer" not in dict(tree_flatten(fresh.trainable_parameters(), destination={}))
    assert fresh_opt.step.item() == 1 and fresh_opt.learning_rate.item() == pytest.approx(0.1)
    for (k, a), (k2, b) in zip(
        tree_flatten(optimizer.state), tree_flatten(fresh_opt.state), strict=True
    ):
        assert k == k2 and mx.array_equal(a, b), k


def test_optimizer_state_is_updated_in_place(tmp_path):
    model, optimizer = _trained()
    path = _save(tmp_path / "a.ckpt", model, optimizer)
    fresh, fresh_opt = TinyPolicy(), AdamW(lr=0.5)
    state_obj = fresh_opt.state
    cu.load_optimizer(fresh_opt, cu.load_checkpoint(path).group("optimizer"), fresh.parameters())
    assert fresh_opt.state is state_obj and state_obj["step"].item() == 1


def test_optimizer_bookkeeping_scalars_are_restored(tmp_path):
    model, optimizer = _trained()
    optimizer.state["initial_lr"] = mx.array(0.25)  # what the LR scheduler records
    path = _save(tmp_path / "a.ckpt", model, optimizer)
    fresh, fresh_opt = TinyPolicy(), AdamW(lr=0.5)
    cu.load_optimizer(fresh_opt, cu.load_checkpoint(path).group("optimizer"), fresh.parameters())
    assert fresh_opt.state["initial_lr"].item() == 0.25


def test_rng_round_trip(tmp_path):
    np.random.seed(5), random.seed(5), mx.random.seed(5)
    tensors, state = cu.rng_state()
    expected = (np.random.rand(3), random.random(), mx.random.uniform(shape=(3,)))
    cu.save_checkpoint(tmp_path / "r.ckpt", tensors, CFG, {"rng": state})
    np.random.seed(0), random.seed(0), mx.random.seed(0)
    ckpt = cu.load_checkpoint(tmp_path / "r.ckpt")
    cu.restore_rng(ckpt.tensors, ckpt.state["rng"])
    got = (np.random.rand(3), random.random(), mx.random.uniform(shape=(3,)))
    np.testing.assert_array_equal(got[0], expected[0])
    assert got[1] == expected[1]
    assert mx.array_equal(got[2], expected[2])


def test_crash_during_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model, optimizer = _trained()
    path = _save(tmp_path / "latest.ckpt", model, optimizer)
    before = path.read_bytes()

    def crash(file, arrays, metadata):
        with open(file, "wb") as f:
            f.write(b"\x10\x00partial")
        raise KeyboardInterrupt  # as if killed mid-write

    monkeypatch.setattr(cu.mx, "save_safetensors", crash)
    with pytest.raises(KeyboardInterrupt):
        _save(path, model, optimizer, {"epoch": 4})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert cu.load_checkpoint(path).state["global_step"] == 17
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "latest.ckpt"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".latest.ckpt.")
    _save(path, model, optimizer)  # the next save clears the stale temporary file
    assert [p.name for p in tmp_path.iterdir()] == ["latest.ckpt"]


@pytest.fixture
def saved(tmp_path):
    model, optimizer = _trained()
    return _save(tmp_path / "latest.ckpt", model, optimizer)


def test_truncated_file_names_the_cut_tensor(saved):
    data = saved.read_bytes()
    saved.write_bytes(data[:-10])
    with pytest.raises(CheckpointError, match=r"is truncated: tensor '.+' ends at byte \d+"):
        cu.load_checkpoint(saved)
    saved.write_bytes(data[:100])
    with pytest.raises(CheckpointError, match="truncated: its header needs"):
        cu.load_checkpoint(saved)
    saved.write_bytes(data[:5])
    with pytest.raises(CheckpointError, match="truncated: 5 bytes"):
        cu.load_checkpoint(saved)


def test_flipped_bit_names_the_corrupt_tensor(saved):
    data = bytearray(saved.read_bytes())
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    name = "model.layers.0.weight"
    start = 8 + header_len + header[name]["data_offsets"][0]
    data[start + 1] ^= 0x40
    saved.write_bytes(bytes(data))
    with pytest.raises(
        CheckpointError, match=r"corrupt: tensor\(s\) model\.layers\.0\.weight fail"
    ):
        cu.load_checkpoint(saved)


def test_corrupt_header_and_foreign_files(saved, tmp_path):
    data = bytearray(saved.read_bytes())
    data[9] = ord("#")  # inside the JSON header
    saved.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt header"):
        cu.load_checkpoint(saved)
    data[8] = ord("#")  # the header's opening brace
    saved.write_bytes(bytes(data))
    with pytest.raises(
        CheckpointError, match="not a safetensors checkpoint, or its header is corrupt"
    ):
        cu.load_checkpoint(saved)

    torch_like = tmp_path / "upstream.ckpt"
    torch_like.write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    with pytest.raises(CheckpointError, match="zip archive.*PyTorch.*scripts.import_upstream"):
        cu.load_checkpoint(torch_like)

    plain = tmp_path / "plain.safetensors"
    mx.save_safetensors(str(plain), {"a": mx.zeros(3)})
    with pytest.raises(CheckpointError, match="not a diffusion_policy_mlx checkpoint"):
        cu.load_checkpoint(plain)

    with pytest.raises(CheckpointError, match="does not exist"):
        cu.load_checkpoint(tmp_path / "nope.ckpt")


def test_trailing_bytes_are_reported(saved):
    saved.write_bytes(saved.read_bytes() + b"junk")
    with pytest.raises(CheckpointError, match="4 unexpected bytes after the last tensor"):
        cu.load_checkpoint(saved)


def test_loading_into_a_different_model_names_the_keys(saved):
    ckpt = cu.load_checkpoint(saved)
    wider = TinyPolicy(width=6)
    with pytest.raises(CheckpointMismatchError) as info:
        cu.load_module(wider, ckpt.group("model"), "policy")
    message = str(info.value)
    assert "checkpoint does not fit the policy" in message
    assert "layers.0.weight: checkpoint (4, 2) vs model (6, 2)" in message
    assert "layers.1.bias: checkpoint (4,) vs model (6,)" in message

    class Other(TinyPolicy):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(4, 1)
            self.layers = self.layers[:1]

    with pytest.raises(CheckpointMismatchError) as info:
        cu.load_module(Other(), ckpt.group("model"), "policy")
    message = str(info.value)
    assert "missing from the checkpoint (2):\n    head.bias\n    head.weight" in message
    assert (
        "in the checkpoint but not in the model (2):\n    layers.1.bias\n    layers.1.weight"
        in (message)
    )

    opt = AdamW()
    with pytest.raises(CheckpointMismatchError, match="fit the optimizer"):
        cu.load_optimizer(opt, ckpt.group("optimizer"), wider.trainable_parameters())


def test_config_diff_names_structural_keys():
    saved = OmegaConf.create({"policy": {"down_dims": [8, 16], "k": 5}, "training": {"lr": 1}})
    current = OmegaConf.create({"policy": {"down_dims": [8, 32], "x": 1}, "training": {"lr": 2}})
    assert cu.config_diff(saved, current) == [
        "policy.down_dims: [8, 16] -> [8, 32]",
        "policy.k: 5 -> '<absent>'",
        "policy.x: '<absent>' -> 1",
    ]


def test_topk_keeps_best_and_resumes(tmp_path):
    fmt = "epoch={epoch:04d}-test_mean_score={test_mean_score:.3f}.ckpt"
    manager = TopKCheckpointManager(tmp_path, "test_mean_score", mode="max", k=2, format_str=fmt)
    paths = []
    for epoch, score in enumerate([0.1, 0.5, 0.3, 0.05, 0.9]):
        path = manager.get_ckpt_path({"epoch": epoch, "test_mean_score": score})
        paths.append(path)
        if path is not None:
            (tmp_path / path).write_text("x")
    assert paths[0].endswith("epoch=0000-test_mean_score=0.100.ckpt")
    assert paths[3] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "epoch=0001-test_mean_score=0.500.ckpt",
        "epoch=0004-test_mean_score=0.900.ckpt",
    ]
    resumed = TopKCheckpointManager(tmp_path, "test_mean_score", mode="max", k=2, format_str=fmt)
    resumed.load_state_dict(json.loads(json.dumps(manager.state_dict())))
    assert resumed.get_ckpt_path({"epoch": 5, "test_mean_score": 0.2}) is None
    assert resumed.get_ckpt_path({"epoch": 6, "test_mean_score": 0.7}).endswith("0.700.ckpt")
    assert not (tmp_path / "epoch=0001-test_mean_score=0.500.ckpt").exists()

    low = TopKCheckpointManager(tmp_path, "val_loss", mode="min", k=1, format_str="{val_loss}.ckpt")
    assert low.get_ckpt_path({"val_loss": 2.0}) is not None
    assert low.get_ckpt_path({"val_loss": 3.0}) is None
    assert low.get_ckpt_path({"val_loss": 1.0}).endswith("1.0.ckpt")
    assert TopKCheckpointManager(tmp_path, "x", k=0).get_ckpt_path({"x": 1}) is None

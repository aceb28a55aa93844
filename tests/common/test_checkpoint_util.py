import errno
import json
import logging
import os
import random
import struct

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from crafted_checkpoint import craft, save_raw
from mlx.utils import tree_flatten
from omegaconf import OmegaConf

from diffusion_policy_mlx.common import checkpoint_util as cu
from diffusion_policy_mlx.common.checkpoint_util import (
    CheckpointError,
    CheckpointMismatchError,
    TopKCheckpointManager,
)
from diffusion_policy_mlx.config_compat import AdamW, ConfigError
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
        file.write(b"\x10\x00partial")
        raise KeyboardInterrupt  # as if interrupted mid-write

    monkeypatch.setattr(cu.mx, "save_safetensors", crash)
    with pytest.raises(KeyboardInterrupt):
        _save(path, model, optimizer, {"epoch": 4})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert cu.load_checkpoint(path).state["global_step"] == 17
    assert [p.name for p in tmp_path.iterdir()] == ["latest.ckpt"]


def test_next_save_clears_the_temporary_file_of_a_killed_write(tmp_path):
    model, optimizer = _trained()
    stale = tmp_path / ".latest.ckpt.12345.tmp.safetensors"  # kill -9 leaves it behind
    stale.write_bytes(b"\x10\x00partial")
    _save(tmp_path / "latest.ckpt", model, optimizer)
    assert [p.name for p in tmp_path.iterdir()] == ["latest.ckpt"]


class _FullDisk:
    """A file that takes ``room`` bytes, then fails as a full disk does."""

    def __init__(self, file, room):
        self.file, self.room = file, room

    def __getattr__(self, name):  # seek, tell, ...: the real file's
        return getattr(self.file, name)

    def write(self, data):
        if len(data) > self.room:
            self.file.write(bytes(data)[: self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.file.write(data)


def test_disk_full_names_the_path_removes_the_partial_file_and_keeps_the_last(
    tmp_path, monkeypatch
):
    model, optimizer = _trained()
    path = _save(tmp_path / "latest.ckpt", model, optimizer)
    before = path.read_bytes()
    real = mx.save_safetensors
    partial_sizes = []

    def full_disk(file, arrays, metadata):
        try:
            real(_FullDisk(file, room=len(before) // 2), arrays, metadata=metadata)
        finally:
            file.flush()
            partial_sizes.append(os.path.getsize(file.name))

    monkeypatch.setattr(cu.mx, "save_safetensors", full_disk)
    with pytest.raises(CheckpointError) as info:
        _save(path, model, optimizer, {"epoch": 4, "global_step": 20})
    monkeypatch.undo()
    message = str(info.value)
    assert f"could not write checkpoint {path}: No space left on device (ENOSPC)" in message
    assert "partial file was removed" in message and "previous latest.ckpt is intact" in message
    assert "Free disk space" in message
    assert partial_sizes == [len(before) // 2]  # the disk filled up mid-tensors
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["latest.ckpt"]

    # a first checkpoint that fails says there is none to fall back on
    monkeypatch.setattr(cu.mx, "save_safetensors", full_disk)
    with pytest.raises(CheckpointError, match="no earlier one existed"):
        _save(tmp_path / "other.ckpt", model, optimizer)
    assert [p.name for p in tmp_path.iterdir()] == ["latest.ckpt"]


def test_an_unwritable_checkpoint_folder_is_refused_before_training(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    cu.check_checkpoint_folder(folder)  # created, and writable
    assert folder.is_dir() and list(folder.iterdir()) == []

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    # root ignores permission bits: a read-only file system is simulated
    monkeypatch.setattr(cu.atomic_file.tempfile, "TemporaryFile", read_only)
    with pytest.raises(CheckpointError) as info:
        cu.check_checkpoint_folder(folder)
    message = str(info.value)
    assert f"cannot write checkpoints to {folder}: Read-only file system (EROFS)" in message
    assert f"Make {folder} writable" in message


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


# ---------------------------------------------------------------------------------------------
# Metadata checksum, limits and the stored config
# ---------------------------------------------------------------------------------------------


def test_flipped_global_step_digit_is_refused(tmp_path):
    model, optimizer = _trained()
    path = _save(tmp_path / "latest.ckpt", model, optimizer, {"epoch": 5, "global_step": 15})
    data = path.read_bytes()
    assert data.count(b'global_step\\": 15') == 1
    path.write_bytes(data.replace(b'global_step\\": 15', b'global_step\\": 25'))
    with pytest.raises(CheckpointError, match="metadata .*fails its SHA-256 check") as info:
        cu.load_checkpoint(path)
    assert str(path) in str(info.value)


def test_every_flipped_header_byte_is_refused(saved):
    """Config, state, checksums, tensor table, length field: no single flipped byte loads."""
    data = saved.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    for i in range(0, 8 + header_len, 9):
        damaged = bytearray(data)
        damaged[i] ^= (0x01, 0x10, 0x80)[i % 3]
        saved.write_bytes(bytes(damaged))
        with pytest.raises(CheckpointError, match=str(saved)):
            cu.load_checkpoint(saved)


def _as_version_1(path, tmp_path, keep_digest=False):
    arrays, metadata = mx.load(str(path), format="safetensors", return_metadata=True)
    metadata["version"] = "1"
    if not keep_digest:
        del metadata["digest"]
    return save_raw(tmp_path / "v1.ckpt", arrays, metadata)


def test_version_1_checkpoints_load_with_a_warning(saved, tmp_path, caplog):
    old = _as_version_1(saved, tmp_path)
    with caplog.at_level(logging.WARNING):
        ckpt = cu.load_checkpoint(old)
    assert ckpt.state["global_step"] == 17
    assert "predates metadata checksums (format version 1)" in caplog.text
    # a version field flipped from 2 to 1 does not skip the check
    with pytest.raises(CheckpointError, match="fails its SHA-256 check"):
        cu.load_checkpoint(_as_version_1(saved, tmp_path, keep_digest=True))


def test_oversize_config_is_refused_before_anything_is_written(tmp_path):
    model, optimizer = _trained()
    tensors = cu.module_tensors(model, "model")
    # the 110 MB string of a real report: refused at once, without writing YAML
    huge = OmegaConf.create({"policy": {"notes": "x" * 110_000_000}})
    with pytest.raises(ConfigError, match=r"about 104\.9 MiB in a checkpoint.*at most 4 MiB"):
        cu.check_config_size(huge)
    with pytest.raises(ConfigError, match="very large value"):
        cu.save_checkpoint(tmp_path / "latest.ckpt", tensors, huge, {})
    assert list(tmp_path.iterdir()) == []


def test_writer_and_reader_agree_on_limits(tmp_path, monkeypatch):
    model, _ = _trained()
    tensors = cu.module_tensors(model, "model")
    monkeypatch.setattr(cu, "MAX_CONFIG_BYTES", 2**16)
    # near the limit the YAML decides: a control character takes 5 header bytes (\\x01, escaped)
    over = OmegaConf.create({"notes": "\x01" * 14_000})
    with pytest.raises(ConfigError, match="at most 0 MiB"):
        cu.check_config_size(over)
    near = OmegaConf.create({"notes": "\x01" * 10_000})
    path = cu.save_checkpoint(tmp_path / "near.ckpt", tensors, near, {})
    assert cu.load_checkpoint(path).cfg.notes == "\x01" * 10_000
    # whatever else grows the header: the writer refuses what the reader would
    monkeypatch.setattr(cu, "_MAX_HEADER_BYTES", 2**16)
    with pytest.raises(CheckpointError, match="not writing .*big.ckpt: its header would take"):
        cu.save_checkpoint(tmp_path / "big.ckpt", tensors, CFG, {"topk": ["x" * 2**16]})
    assert not (tmp_path / "big.ckpt").exists()


@pytest.mark.parametrize(
    "config, message",
    [
        (
            "a: &a [x, x, x, x, x, x, x, x, x]\n"
            + "".join(
                f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
                for p, c in zip("abcdefgh", "bcdefghi", strict=True)
            )
            + "policy: *i\n",
            "uses a YAML alias",
        ),
        ("policy: ${oc.env:HOME}\n", r"key policy: '\$\{oc.env:HOME\}' is an interpolation"),
        (
            "policy: {x: '${eval:${oc.decode:\"{_target_: os.system}\"}}'}\n",
            "key policy.x: .* is an interpolation",
        ),
        (  # references that would expand to 9**6 nodes when resolved
            "l0: [x, x, x, x, x, x, x, x, x]\n"
            + "".join(
                f"l{i + 1}: ['${{l{i}}}', '${{l{i}}}', '${{l{i}}}', '${{l{i}}}', "
                f"'${{l{i}}}', '${{l{i}}}', '${{l{i}}}', '${{l{i}}}', '${{l{i}}}']\n"
                for i in range(6)
            )
            + "policy: ${l6}\n",
            r"key l1\[0\]: '\$\{l0\}' is an interpolation",
        ),
        ("n: '${eval:''2*3''}'\n", "key n: .* is an interpolation"),
        ("policy: " + "[" * 100 + "]" * 100 + "\n", "nested more than 64 levels"),
        ("- policy\n", "not a mapping"),
    ],
)
def test_unsafe_stored_config_is_refused_on_load(saved, tmp_path, config, message):
    crafted = craft(saved, tmp_path / "crafted.ckpt", config=lambda _: config)
    with pytest.raises(CheckpointError, match=message) as info:
        cu.load_checkpoint(crafted)
    assert str(crafted) in str(info.value)


def test_stored_config_reads_back_as_written(tmp_path):
    """Stored resolved; strings that look like interpolations stay strings."""
    model, _ = _trained()
    # (as written in a config, the value it stands for)
    literals = [
        ("\\${oc.env:HOME}", "${oc.env:HOME}"),
        ("a \\${x} b", "a ${x} b"),
        ("\\\\\\${x}", "\\${x}"),
        ("x\\", "x\\"),
    ]
    cfg = OmegaConf.create(
        {"n": 3, "m": "${eval:'${n}*2'}", "k": "${n}", "lit": [src for src, _ in literals]}
    )
    assert list(cfg.lit) == [value for _, value in literals]
    path = cu.save_checkpoint(tmp_path / "a.ckpt", cu.module_tensors(model, "model"), cfg, {})
    stored = cu.load_checkpoint(path).cfg
    assert (stored.m, stored.k) == (6, 3)
    assert list(stored.lit) == [value for _, value in literals]


# ---------------------------------------------------------------------------------------------
# Top-k bookkeeping never deletes outside the run's checkpoints/ folder
# ---------------------------------------------------------------------------------------------

FMT = "epoch={epoch:04d}-test_mean_score={test_mean_score:.3f}.ckpt"


def _manager(save_dir, k=1):
    return TopKCheckpointManager(save_dir, "test_mean_score", mode="max", k=k, format_str=FMT)


def test_topk_state_holds_names_only(tmp_path):
    manager = _manager(tmp_path / "checkpoints", k=2)
    path = manager.get_ckpt_path({"epoch": 1, "test_mean_score": 0.5})
    assert path == str(tmp_path / "checkpoints" / "epoch=0001-test_mean_score=0.500.ckpt")
    assert manager.state_dict() == {
        "name_value_map": {"epoch=0001-test_mean_score=0.500.ckpt": 0.5}
    }


def test_crafted_topk_map_deletes_nothing_outside(tmp_path, caplog):
    save_dir, outside = tmp_path / "run" / "checkpoints", tmp_path / "outside"
    save_dir.mkdir(parents=True)
    outside.mkdir()
    victims = {
        name: outside / name
        for name in ("epoch=0001-test_mean_score=0.100.ckpt", "notes.txt", "linked.ckpt")
    }
    for victim in victims.values():
        victim.write_text("keep")
    (save_dir / "latest.ckpt").write_text("keep")
    (save_dir / "notes.txt").write_text("keep")
    link = save_dir / "epoch=0002-test_mean_score=0.000.ckpt"
    os.symlink(victims["linked.ckpt"], link)
    crafted = {
        str(victims["epoch=0001-test_mean_score=0.100.ckpt"]): 0.1,  # absolute, outside
        "../../outside/notes.txt": 0.0,
        "../outside/epoch=0001-test_mean_score=0.100.ckpt": 0.0,
        "latest.ckpt": 0.0,
        "notes.txt": 0.0,
        link.name: 0.0,
        "epoch=0003-test_mean_score=0.200.ckpt": "not a number",
    }
    manager = _manager(save_dir, k=len(crafted))
    with caplog.at_level(logging.WARNING):
        manager.load_state_dict({"name_value_map": crafted})
    assert "ignoring entry '../../outside/notes.txt'" in caplog.text
    assert set(manager.name_value_map) == {
        "epoch=0001-test_mean_score=0.100.ckpt",
        "epoch=0002-test_mean_score=0.000.ckpt",
    }
    for malformed in (["x"], {"name_value_map": "x"}):
        _manager(save_dir).load_state_dict(malformed)  # a warning, nothing else
    manager.k = 1
    for epoch in (10, 11, 12):
        manager.get_ckpt_path({"epoch": epoch, "test_mean_score": 0.9 + epoch / 100})
    assert all(v.read_text() == "keep" for v in victims.values())
    assert (save_dir / "latest.ckpt").read_text() == "keep"
    assert (save_dir / "notes.txt").read_text() == "keep"
    assert not link.is_symlink()  # the link itself was a top-k file of this folder


def test_copied_run_folder_never_touches_the_original(tmp_path):
    """A checkpoint written before names-only bookkeeping holds absolute paths into run A."""
    a_dir, b_dir = tmp_path / "A" / "checkpoints", tmp_path / "B" / "checkpoints"
    a_dir.mkdir(parents=True)
    names = ["epoch=0001-test_mean_score=0.100.ckpt", "epoch=0002-test_mean_score=0.200.ckpt"]
    for name in names:
        (a_dir / name).write_text("A")
    legacy = {"path_value_map": {str(a_dir / names[0]): 0.1, str(a_dir / names[1]): 0.2}}
    b_dir.parent.mkdir()
    os.system(f"cp -r {a_dir} {b_dir}")
    manager = _manager(b_dir, k=2)
    manager.load_state_dict(legacy)
    path = manager.get_ckpt_path({"epoch": 3, "test_mean_score": 0.3})
    assert path == str(b_dir / "epoch=0003-test_mean_score=0.300.ckpt")
    assert sorted(p.name for p in a_dir.iterdir()) == names
    assert sorted(p.name for p in b_dir.iterdir()) == names[1:]


@pytest.mark.parametrize(
    "format_str, message",
    [
        ("../epoch={epoch:04d}.ckpt", "must be a file name"),
        ("/tmp/epoch={epoch:04d}.ckpt", "must be a file name"),
        ("latest.ckpt", "has no {field}"),
    ],
)
def test_topk_format_must_name_a_file_of_the_folder(tmp_path, format_str, message):
    with pytest.raises(ValueError, match=message):
        TopKCheckpointManager(tmp_path, "x", format_str=format_str)

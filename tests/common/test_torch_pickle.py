"""The restricted reader of torch.save archives: tensors come back, code never runs, damage is
named."""

import builtins
import copyreg
import functools
import lzma
import operator
import os
import pickle
import struct
import subprocess
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from diffusion_policy_mlx.common.torch_pickle import (
    TorchFileError,
    UnsafePickleError,
    load_torch_file,
)
from diffusion_policy_mlx.config_compat import ConfigError
from diffusion_policy_mlx.workspace.upstream_checkpoint import (
    UpstreamCheckpointError,
    import_upstream_checkpoint,
    read_upstream_checkpoint,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "upstream_checkpoints"


def write_archive(path: Path, payload: bytes, storages: dict[str, bytes] | None = None) -> Path:
    """A file laid out like torch.save's zip archive."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", payload)
        z.writestr("archive/byteorder", "little")
        for key, raw in (storages or {}).items():
            z.writestr(f"archive/data/{key}", raw)
    return path


class Gadget:
    """Pickles as ``func(*args)``: what a malicious checkpoint embeds."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def payload(**extra) -> dict:
    return {"cfg": {"_target_": "x"}, "state_dicts": {"model": {}}, "pickles": {}, **extra}


@pytest.mark.parametrize(
    ("gadget", "named"),
    [
        (lambda m: Gadget(os.system, f"touch {m}"), "system"),
        (lambda m: Gadget(subprocess.Popen, ["touch", str(m)]), "subprocess.Popen"),
        (lambda m: Gadget(builtins.eval, f"open({str(m)!r}, 'w')"), "builtins.eval"),
        (lambda m: Gadget(builtins.exec, f"open({str(m)!r}, 'w')"), "builtins.exec"),
        (lambda m: Gadget(builtins.getattr, "text", "upper"), "builtins.getattr"),
        (lambda m: Gadget(operator.attrgetter("system"), "os"), "operator.attrgetter"),
        (lambda m: Gadget(functools.partial(os.system, f"touch {m}")), "functools.partial"),
        (lambda m: Gadget(copyreg._reconstructor, object, object, None), "copyreg._reconstructor"),
        (lambda m: Gadget(builtins.__import__, "os"), "builtins.__import__"),
    ],
)
def test_code_in_the_pickle_is_refused_and_never_runs(tmp_path, gadget, named):
    marker = tmp_path / "pwned"
    data = pickle.dumps(payload(evil=gadget(marker)), protocol=2)
    path = write_archive(tmp_path / "evil.ckpt", data)
    with pytest.raises(UnsafePickleError, match=named) as info:
        read_upstream_checkpoint(path)
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_code_in_a_nested_pickle_is_refused(tmp_path):
    """Upstream stores epoch and global_step as dill.dumps bytes: they go through the same
    allow-list."""
    marker = tmp_path / "pwned"
    inner = pickle.dumps(Gadget(os.system, f"touch {marker}"))
    path = write_archive(
        tmp_path / "evil.ckpt", pickle.dumps(payload(pickles={"epoch": inner}), protocol=2)
    )
    with pytest.raises(UnsafePickleError, match="pickles.epoch"):
        read_upstream_checkpoint(path)
    assert not marker.exists()


def test_a_config_target_outside_the_package_is_refused(tmp_path):
    cfg = {"_target_": "os.system", "policy": {"_target_": "subprocess.Popen"}}
    path = write_archive(tmp_path / "cfg.ckpt", pickle.dumps(payload(cfg=cfg), protocol=2))
    with pytest.raises(ConfigError, match="subprocess.Popen") as info:
        import_upstream_checkpoint(path, tmp_path / "out.ckpt")
    assert "_target_: 'os.system'" in str(info.value) and str(path) in str(info.value)
    assert not (tmp_path / "out.ckpt").exists()


def _text(value: str) -> bytes:
    raw = value.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _ints(values: tuple[int, ...]) -> bytes:
    return b"(" + b"".join(b"K" + bytes([v]) for v in values) + b"t"


def tensor_pickle(offset: int, size: tuple, stride: tuple, storage: str, numel: int) -> bytes:
    """Protocol-2 bytes of ``{'t': tensor}`` as torch writes them (opcode by opcode)."""
    storage_ref = (
        b"("
        + _text("storage")
        + f"ctorch\n{storage}\n".encode()
        + _text("0")
        + _text("cpu")
        + b"K"
        + bytes([numel])
        + b"tQ"
    )
    return (
        b"\x80\x02}"
        + _text("t")
        + b"ctorch._utils\n_rebuild_tensor_v2\n("
        + storage_ref
        + b"K"
        + bytes([offset])
        + _ints(size)
        + _ints(stride)
        + b"\x89ccollections\nOrderedDict\n)RtRs."
    )


@pytest.mark.parametrize("byteorder", ["little", "big"])
def test_tensors_are_rebuilt_with_offset_stride_and_byteorder(tmp_path, byteorder):
    values = np.arange(12, dtype="<f4" if byteorder == "little" else ">f4")
    path = tmp_path / "t.ckpt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", tensor_pickle(1, (2, 3), (1, 2), "FloatStorage", 12))
        z.writestr("archive/byteorder", byteorder)
        z.writestr("archive/data/0", values.tobytes())
    tensor = load_torch_file(path)["t"]
    # element [i, j] is storage[1 + i + 2 j]
    np.testing.assert_array_equal(tensor, [[1, 3, 5], [2, 4, 6]])
    assert tensor.dtype == np.float32 and tensor.flags.c_contiguous


def test_a_view_past_its_storage_is_refused(tmp_path):
    path = tmp_path / "t.ckpt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", tensor_pickle(4, (3, 3), (3, 1), "FloatStorage", 12))
        z.writestr("archive/data/0", np.zeros(12, np.float32).tobytes())
    with pytest.raises(TorchFileError, match="t.ckpt.*past the end of its storage"):
        load_torch_file(path)


def test_damaged_archives_name_the_file(tmp_path):
    good = tmp_path / "good.ckpt"
    good.write_bytes(lzma.decompress((FIXTURES / "unet_lowdim.ckpt.xz").read_bytes()))
    raw = good.read_bytes()

    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(TorchFileError, match="truncated.ckpt.*damaged zip"):
        load_torch_file(truncated)

    # flip a byte inside a storage record: the zip's CRC catches it and names the record
    with zipfile.ZipFile(good) as z:
        info = next(
            i for i in z.infolist() if i.filename.startswith("archive/data/") and i.file_size > 64
        )
    flipped = bytearray(raw)
    # the data follow the local header (30 bytes), its name and its own extra field
    name_len, extra_len = struct.unpack_from("<HH", raw, info.header_offset + 26)
    start = info.header_offset + 30 + name_len + extra_len + 8
    flipped[start] ^= 0xFF
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(bytes(flipped))
    with pytest.raises(TorchFileError, match=f"corrupt.ckpt.*{info.filename}"):
        load_torch_file(corrupt)

    not_torch = tmp_path / "notes.ckpt"
    not_torch.write_text("hello")
    with pytest.raises(TorchFileError, match="notes.ckpt is not a PyTorch checkpoint"):
        load_torch_file(not_torch)
    legacy = tmp_path / "legacy.ckpt"
    legacy.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2))
    with pytest.raises(TorchFileError, match="legacy.*save it again"):
        load_torch_file(legacy)


def test_a_short_storage_names_the_record(tmp_path):
    good = tmp_path / "good.ckpt"
    good.write_bytes(lzma.decompress((FIXTURES / "unet_lowdim.ckpt.xz").read_bytes()))
    short = tmp_path / "short.ckpt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(short, "w") as dst:
        victim = next(
            n
            for n in src.namelist()
            if n.startswith("archive/data/") and src.getinfo(n).file_size > 64
        )
        for name in src.namelist():
            data = src.read(name)
            dst.writestr(name, data[:-4] if name == victim else data)
    with pytest.raises(TorchFileError, match=f"short.ckpt: storage {victim} has .* truncated"):
        load_torch_file(short)


def test_not_a_workspace_checkpoint(tmp_path):
    path = write_archive(tmp_path / "weights.ckpt", pickle.dumps(OrderedDict(a=1), protocol=2))
    with pytest.raises(UpstreamCheckpointError, match="not an upstream workspace checkpoint"):
        read_upstream_checkpoint(path)

"""Read a ``torch.save`` file as data, without torch and without running its pickle.

A PyTorch checkpoint is a zip archive: ``<root>/data.pkl`` (a pickle) plus one raw file per
tensor storage, ``<root>/data/<key>``. Python's pickle calls whatever callable a file names, so
unpickling an untrusted checkpoint runs arbitrary code. :class:`RestrictedUnpickler` resolves
names through an explicit allow-list instead: tensors are rebuilt as numpy arrays from the raw
storage bytes, ``collections.OrderedDict`` and plain containers are kept, the OmegaConf classes
a pickled ``DictConfig`` is made of become inert :class:`ConfigNode` records (converted to plain
dicts and lists by :func:`config_to_container`), and every other global is refused with
:class:`UnsafePickleError` naming it, before anything is called.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from diffusion_policy_mlx.common.checkpoint_util import CheckpointError


class TorchFileError(CheckpointError):
    """A file is not a readable PyTorch checkpoint (damaged, truncated or another format)."""


class UnsafePickleError(TorchFileError):
    """A pickle names a global outside the allow-list: it could run code, so it is refused."""


# ---------------------------------------------------------------------------------------------
# Inert stand-ins for the objects a checkpoint may hold
# ---------------------------------------------------------------------------------------------


class ConfigNode:
    """What a pickled OmegaConf node (``DictConfig``, ``ListConfig``, ``AnyNode`` ...) leaves:
    its class name (``kind``) and the state ``BUILD`` gave it. Never an OmegaConf object, so no
    ``__setstate__`` of a config class runs on untrusted data."""

    kind: ClassVar[str] = "ConfigNode"
    state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


@dataclass(frozen=True)
class TypeName:
    """``dill``'s ``_load_type('dict')``: the name of a builtin type, not the type itself."""

    name: str


@dataclass(frozen=True)
class _Marker:
    """A harmless global that only labels data (``typing.Any`` in OmegaConf metadata)."""

    name: str


# The dtype each legacy storage class holds.
_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_OMEGACONF_CLASSES = {
    "omegaconf.dictconfig": {"DictConfig"},
    "omegaconf.listconfig": {"ListConfig"},
    "omegaconf.nodes": {
        "AnyNode",
        "StringNode",
        "IntegerNode",
        "FloatNode",
        "BooleanNode",
        "BytesNode",
        "PathNode",
        "EnumNode",
    },
    "omegaconf.base": {"ContainerMetadata", "Metadata"},
}
# What dill's _load_type may name: builtin value types, nothing callable in a harmful way.
_TYPE_NAMES = {"dict", "list", "tuple", "set", "str", "int", "float", "bool", "bytes", "NoneType"}


def _node_class(kind: str) -> type[ConfigNode]:
    # NEWOBJ needs a class; one subclass per OmegaConf name keeps the name without importing it.
    return type(kind, (ConfigNode,), {"kind": kind})


# ---------------------------------------------------------------------------------------------
# The unpickler
# ---------------------------------------------------------------------------------------------


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds only data: see the module docstring for the allow-list.

    ``storages(key, dtype_name, numel)`` returns the flat numpy array of one storage record; it is
    called for each persistent id ``('storage', torch.<Type>Storage, key, location, numel)``.
    Without it (a nested pickle), persistent ids are refused.
    """

    def __init__(
        self,
        file: io.BufferedIOBase,
        source: str,
        storages: Callable[[str, str, int], np.ndarray] | None = None,
    ):
        super().__init__(file)
        self.source = source
        self.storages = storages
        self._loaded: dict[str, np.ndarray] = {}
        # Callables are bound methods and classes are made per unpickler: a pickle's BUILD
        # can set attributes on what it is given, and must not change them for later loads.
        self._globals: dict[tuple[str, str], Any] = {
            ("collections", "OrderedDict"): self._ordered_dict,
            ("collections", "defaultdict"): self._defaultdict,
            ("typing", "Any"): _Marker("typing.Any"),
            ("dill._dill", "_load_type"): self._load_type,
            ("_codecs", "encode"): self._codecs_encode,
            ("torch._utils", "_rebuild_tensor_v2"): self._rebuild_tensor_v2,
            ("torch._utils", "_rebuild_tensor"): self._rebuild_tensor,
            ("torch._utils", "_rebuild_parameter"): self._rebuild_parameter,
        }
        for name in _STORAGE_DTYPES:
            self._globals[("torch", name)] = _node_class(name)
        for module, names in _OMEGACONF_CLASSES.items():
            for name in names:
                self._globals[(module, name)] = _node_class(name)
        self._storage_types = {self._globals[("torch", name)]: name for name in _STORAGE_DTYPES}

    def find_class(self, module: str, name: str) -> Any:
        # Protocol-2 pickles spell globals the Python 2 way (__builtin__, copy_reg): map them as
        # pickle itself would, so the allow-list and the messages use today's names.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        else:
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        try:
            return self._globals[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self.source}: the pickle asks for global {module}.{name}, which is not "
                "on the allow-list of a checkpoint's data types; refusing to load it (it could "
                "run code). Only load checkpoints from sources you trust."
            ) from None

    def persistent_load(self, pid: Any) -> np.ndarray:
        if self.storages is None:
            raise UnsafePickleError(f"{self.source}: unexpected persistent id {pid!r}")
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise TorchFileError(f"{self.source}: unsupported persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        type_name = (
            self._storage_types.get(storage_type) if isinstance(storage_type, type) else None
        )
        if type_name is None or not isinstance(key, str) or not isinstance(numel, int):
            raise TorchFileError(f"{self.source}: malformed storage reference {pid!r}")
        if key not in self._loaded:
            self._loaded[key] = self.storages(key, type_name, numel)
        return self._loaded[key]

    def _load_type(self, name: Any) -> TypeName:
        if name not in _TYPE_NAMES:
            raise UnsafePickleError(
                f"{self.source}: dill._dill._load_type({name!r}) is not an allowed type name"
            )
        return TypeName(name)

    def _defaultdict(self, default_factory: Any = None, *items: Any) -> dict:
        # OmegaConf's resolver cache; a plain dict holds the same data and calls nothing.
        return self._ordered_dict(*items)

    def _ordered_dict(self, *items: Any) -> OrderedDict:
        if len(items) > 1 or (items and not isinstance(items[0], list | tuple | dict)):
            raise UnsafePickleError(f"{self.source}: a dict built from {items!r:.80}")
        return OrderedDict(*items)

    def _codecs_encode(self, text: Any, encoding: Any = "utf-8") -> bytes:
        # Protocol-2 pickles write bytes as _codecs.encode(str, 'latin1').
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
            raise UnsafePickleError(
                f"{self.source}: _codecs.encode({type(text).__name__}, {encoding!r}): only "
                "latin1 strings are allowed"
            )
        return text.encode("latin1")

    def _rebuild_parameter(self, data: Any, *_: Any) -> np.ndarray:
        if not isinstance(data, np.ndarray):
            raise TorchFileError(f"{self.source}: a parameter that holds no tensor")
        return data

    def _rebuild_tensor_v2(
        self, storage: Any, storage_offset: Any, size: Any, stride: Any, *_: Any
    ) -> np.ndarray:
        # the rest (requires_grad, backward hooks, metadata) means nothing to a numpy array
        return self._rebuild_tensor(storage, storage_offset, size, stride)

    def _rebuild_tensor(
        self, storage: Any, storage_offset: Any, size: Any, stride: Any
    ) -> np.ndarray:
        """A tensor's view of its storage, copied into its own C-contiguous array."""
        if not isinstance(storage, np.ndarray) or storage.ndim != 1:
            raise TorchFileError(f"{self.source}: a tensor is rebuilt from something not a storage")
        ints = (storage_offset, *size, *stride)
        if len(size) != len(stride) or not all(isinstance(i, int) and i >= 0 for i in ints):
            raise TorchFileError(
                f"{self.source}: malformed tensor (offset {storage_offset!r}, size {size!r}, "
                f"stride {stride!r})"
            )
        if 0 in size:
            return np.zeros(size, storage.dtype)
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if last >= storage.size:
            raise TorchFileError(
                f"{self.source}: a tensor of size {tuple(size)} at offset {storage_offset} reads "
                f"past the end of its storage ({storage.size} elements): the file is damaged"
            )
        view = np.lib.stride_tricks.as_strided(
            storage[storage_offset:],
            shape=tuple(size),
            strides=tuple(s * storage.itemsize for s in stride),
            writeable=False,
        )
        return np.array(view, order="C")


def loads(data: bytes, source: str) -> Any:
    """Unpickle a nested pickle (e.g. a ``dill.dumps`` value) under the same allow-list."""
    return _load(RestrictedUnpickler(io.BytesIO(data), source), source)


def _load(unpickler: RestrictedUnpickler, source: str) -> Any:
    try:
        return unpickler.load()
    except TorchFileError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure of untrusted bytes is one clear error
        raise TorchFileError(
            f"{source}: the pickle is damaged or not a checkpoint ({type(e).__name__}: {e})"
        ) from None


# ---------------------------------------------------------------------------------------------
# The zip archive
# ---------------------------------------------------------------------------------------------


def _as_numpy(raw: bytes, type_name: str, byteorder: str) -> np.ndarray:
    kind = _STORAGE_DTYPES[type_name]
    order = "<" if byteorder == "little" else ">"
    if kind == "bfloat16":
        # bfloat16 is the top half of a float32: widen it exactly.
        bits = np.frombuffer(raw, np.dtype(f"{order}u2")).astype(np.uint32) << 16
        return bits.view(np.float32)
    dtype = np.dtype(kind).newbyteorder(order)
    return np.frombuffer(raw, dtype).astype(dtype.newbyteorder("="), copy=False)


def load_torch_file(path: str | Path) -> Any:
    """The object a ``torch.save`` zip archive holds, with tensors as numpy arrays.

    Raises :class:`UnsafePickleError` when the pickle names a global outside the allow-list and
    :class:`TorchFileError` naming ``path`` for a damaged, truncated or foreign file.
    """
    path = Path(path)
    if not path.is_file():
        raise TorchFileError(f"{path} does not exist")
    with open(path, "rb") as f:
        head = f.read(4)
    if not head.startswith(b"PK"):
        hint = (
            "a legacy (pre-1.6, non-zip) torch.save file: load it with torch and save it again "
            "with a current torch, then import that"
            if head[:1] == b"\x80"
            else "not a PyTorch checkpoint"
        )
        raise TorchFileError(f"{path} is {hint}")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise TorchFileError(
            f"{path} is a damaged zip archive ({e}): the file is truncated or "
            "corrupt; download or copy it again"
        ) from None
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise TorchFileError(
                f"{path} is a zip archive but not a torch.save checkpoint (no single "
                "<name>/data.pkl inside)"
            )
        root = pickles[0].removesuffix("data.pkl")
        names = set(archive.namelist())

        def read(name: str) -> bytes:
            try:
                return archive.read(name)
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise TorchFileError(
                    f"{path}: record {name} is damaged ({e}); the file is corrupt or truncated"
                ) from None

        byteorder = "little"
        if f"{root}byteorder" in names:
            byteorder = read(f"{root}byteorder").decode("ascii", "replace").strip()
            if byteorder not in ("little", "big"):
                raise TorchFileError(f"{path}: unknown byteorder {byteorder!r}")

        def storage(key: str, type_name: str, numel: int) -> np.ndarray:
            record = f"{root}data/{key}"
            if record not in names:
                raise TorchFileError(f"{path}: storage record {record} is missing")
            raw = read(record)
            itemsize = (
                2
                if _STORAGE_DTYPES[type_name] == "bfloat16"
                else np.dtype(_STORAGE_DTYPES[type_name]).itemsize
            )
            if len(raw) < numel * itemsize:
                raise TorchFileError(
                    f"{path}: storage {record} has {len(raw)} bytes but needs {numel * itemsize} "
                    f"({numel} x {type_name}): the file is truncated or damaged"
                )
            return _as_numpy(raw[: numel * itemsize], type_name, byteorder)

        source = f"{path} ({pickles[0]})"
        unpickler = RestrictedUnpickler(io.BytesIO(read(pickles[0])), source, storage)
        return _load(unpickler, source)


# ---------------------------------------------------------------------------------------------
# Pickled OmegaConf configs -> plain containers
# ---------------------------------------------------------------------------------------------


def config_to_container(node: Any, where: str = "cfg") -> Any:
    """Plain dicts, lists and scalars from a pickled ``DictConfig``'s :class:`ConfigNode` s.

    Interpolations stay strings (``'${eval:...}'``), as ``OmegaConf.to_container`` leaves them.
    """
    if isinstance(node, ConfigNode):
        state = node.state if isinstance(node.state, dict) else {}
        if node.kind in ("DictConfig", "ListConfig"):
            content = state.get("_content")
            if node.kind == "DictConfig" and isinstance(content, dict):
                return {
                    _key(k, where): config_to_container(v, f"{where}.{k}")
                    for k, v in content.items()
                }
            if node.kind == "ListConfig" and isinstance(content, list):
                return [config_to_container(v, f"{where}[{i}]") for i, v in enumerate(content)]
            if content is None or isinstance(content, str):
                # None, or an interpolation / '???' standing for the whole container
                return content
            raise TorchFileError(f"{where}: a pickled {node.kind} without content")
        if "_val" not in state:
            raise TorchFileError(f"{where}: a pickled {node.kind} without a value")
        return config_to_container(state["_val"], where)
    if isinstance(node, dict):
        return {_key(k, where): config_to_container(v, f"{where}.{k}") for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [config_to_container(v, f"{where}[{i}]") for i, v in enumerate(node)]
    if node is None or isinstance(node, str | int | float | bool | bytes):
        return node
    raise TorchFileError(f"{where}: a config value of type {type(node).__name__} is not data")


def _key(key: Any, where: str) -> str | int:
    if isinstance(key, str | int) and not isinstance(key, bool):
        return key
    raise TorchFileError(f"{where}: config key {key!r} is not a string")

"""Per-field affine normalizers (``x * scale + offset``), fitted on a dataset.

The parameter tree mirrors upstream's ``nn.ParameterDict`` layout, so
``tree_flatten(normalizer.parameters())`` yields upstream's state-dict names, for example
``params_dict.action.scale`` or ``params_dict.obs.input_stats.std``. Normalizer arrays are
statistics, not weights: the modules keep them frozen so that a policy holding a normalizer
never trains them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import zarr

from diffusion_policy_mlx.common.fitted_module import FittedModule
from diffusion_policy_mlx.common.pytree import dict_apply

ArrayLike = mx.array | np.ndarray
FitData = mx.array | np.ndarray | zarr.Array
Mode = Literal["limits", "gaussian"]

STAT_NAMES = ("min", "max", "mean", "std")
DEFAULT_KEY = "_default"
PREFIX = "params_dict."

# Statistics are reduced in numpy: float64 accumulation keeps mean/std as accurate as
# upstream's torch reductions regardless of the MLX device (GPUs have no float64).
_NUMPY_DTYPE = {mx.float16: np.float16, mx.float32: np.float32, mx.float64: np.float64}


def _fit(
    data: FitData,
    last_n_dims: int = 1,
    dtype: mx.Dtype | None = mx.float32,
    mode: Mode = "limits",
    output_max: float = 1.0,
    output_min: float = -1.0,
    range_eps: float = 1e-4,
    fit_offset: bool = True,
) -> dict[str, Any]:
    """Fit one field: ``data`` is ``(..., *F)`` with ``F`` the last ``last_n_dims`` dims."""
    if mode not in ("limits", "gaussian"):
        raise ValueError(f"normalizer mode {mode!r} is unknown: use 'limits' or 'gaussian'")
    if last_n_dims < 0:
        raise ValueError(f"last_n_dims must be >= 0, got {last_n_dims}")
    if output_max <= output_min:
        raise ValueError(f"output_max ({output_max}) must exceed output_min ({output_min})")

    if isinstance(data, zarr.Array):
        data = data[:]
    x = np.asarray(data)
    if dtype is not None:
        if dtype not in _NUMPY_DTYPE:
            raise ValueError(
                f"normalizer dtype {dtype} is unsupported: use one of {list(_NUMPY_DTYPE)}"
            )
        x = x.astype(_NUMPY_DTYPE[dtype], copy=False)
    dim = int(np.prod(x.shape[x.ndim - last_n_dims :])) if last_n_dims > 0 else 1
    if x.size == 0 or x.size % dim != 0:
        raise ValueError(
            f"cannot fit a normalizer on data of shape {x.shape} with last_n_dims={last_n_dims}"
        )
    x = x.reshape(-1, dim)

    input_min = x.min(axis=0)
    input_max = x.max(axis=0)
    input_mean = x.mean(axis=0, dtype=np.float64).astype(x.dtype)
    input_std = x.std(axis=0, ddof=1, dtype=np.float64).astype(x.dtype)

    if mode == "limits":
        if fit_offset:
            scale, offset = limits_scale_offset(
                input_min, input_max, output_min, output_max, range_eps
            )
        else:
            # for data that is already zero-centred: scale by the larger absolute limit only
            if not (output_max > 0 > output_min):
                raise ValueError("fit_offset=False needs output_min < 0 < output_max")
            output_abs = min(abs(output_min), abs(output_max))
            input_abs = np.maximum(np.abs(input_min), np.abs(input_max))
            ignore = input_abs < range_eps
            input_abs[ignore] = output_abs
            scale = output_abs / input_abs
            offset = np.zeros_like(input_mean)
    else:
        std = input_std.copy()
        std[std < range_eps] = 1
        scale = 1 / std
        offset = -input_mean * scale if fit_offset else np.zeros_like(input_mean)

    stats = {"min": input_min, "max": input_max, "mean": input_mean, "std": input_std}
    return _params(scale.astype(x.dtype), offset.astype(x.dtype), stats)


def limits_scale_offset(
    input_min: np.ndarray,
    input_max: np.ndarray,
    output_min: float,
    output_max: float,
    range_eps: float,
) -> tuple[np.ndarray, np.ndarray]:
    """``scale``, ``offset`` (F,) mapping each feature's ``[input_min, input_max]`` onto
    ``[output_min, output_max]``; features whose range is below ``range_eps`` are not scaled but
    shifted to the middle of the output range."""
    input_range = input_max - input_min
    ignore = input_range < range_eps
    input_range[ignore] = output_max - output_min
    scale = (output_max - output_min) / input_range
    offset = output_min - scale * input_min
    offset[ignore] = (output_max + output_min) / 2 - input_min[ignore]
    return scale, offset


def _params(scale: ArrayLike, offset: ArrayLike, stats: Mapping[str, ArrayLike]) -> dict[str, Any]:
    """One field's parameter dict, as flat 1-d ``mx.array`` s in upstream's layout."""
    return {
        "scale": mx.array(scale).flatten(),
        "offset": mx.array(offset).flatten(),
        "input_stats": {name: mx.array(stats[name]).flatten() for name in STAT_NAMES},
    }


def _normalize(x: ArrayLike, params: Mapping[str, Any], forward: bool, key: str) -> mx.array:
    """Apply (or invert) one field's affine map over the trailing ``D = scale.size`` values."""
    scale, offset = params["scale"], params["offset"]
    if isinstance(x, np.ndarray):
        # Cast in numpy: float64 input must not reach MLX devices without float64 support.
        x = mx.array(np.asarray(x, dtype=np.float32))
    x = x.astype(scale.dtype)
    if x.size % scale.shape[0] != 0:
        raise ValueError(
            f"normalizer field {key!r} has {scale.shape[0]} features, "
            f"which does not divide input of shape {tuple(x.shape)}"
        )
    shape = x.shape
    x = x.reshape(-1, scale.shape[0])
    x = x * scale + offset if forward else (x - offset) / scale
    return x.reshape(shape)


def _check_field(params: Mapping[str, Any], where: str) -> None:
    missing = [n for n in ("scale", "offset") if n not in params]
    missing += [f"input_stats.{n}" for n in STAT_NAMES if n not in params.get("input_stats", {})]
    if missing:
        raise KeyError(f"normalizer state for {where} lacks {', '.join(missing)}")


def _unflatten_field(flat: Mapping[str, ArrayLike], where: str) -> dict[str, Any]:
    """``{'scale': a, 'input_stats.min': b, ...}`` -> one field's nested parameter dict."""
    params: dict[str, Any] = {"input_stats": {}}
    for name, value in flat.items():
        if name in ("scale", "offset"):
            params[name] = mx.array(value)
        elif name.startswith("input_stats.") and name.removeprefix("input_stats.") in STAT_NAMES:
            params["input_stats"][name.removeprefix("input_stats.")] = mx.array(value)
        else:
            raise KeyError(f"normalizer state has an unknown entry {where}.{name}")
    _check_field(params, where)
    return params


def _flatten_field(params: Mapping[str, Any], prefix: str) -> dict[str, np.ndarray]:
    out = {
        f"{prefix}scale": np.array(params["scale"]),
        f"{prefix}offset": np.array(params["offset"]),
    }
    for name in STAT_NAMES:
        out[f"{prefix}input_stats.{name}"] = np.array(params["input_stats"][name])
    return out


class LinearNormalizer(FittedModule):
    """Named fields, each normalized as ``x * scale + offset`` over its trailing features.

    ``params_dict`` maps a field name (``'obs'``, ``'action'``, ...) to
    ``{'scale': (D,), 'offset': (D,), 'input_stats': {'min'|'max'|'mean'|'std': (D,)}}``.
    A normalizer fitted on a bare array (not a dict) stores it under ``'_default'``.
    """

    def __init__(self, params_dict: dict[str, dict[str, Any]] | None = None):
        super().__init__()
        self.params_dict = {} if params_dict is None else params_dict
        self.freeze_stats()

    def freeze_stats(self) -> None:
        """Exclude every normalizer array from ``trainable_parameters()`` (idempotent)."""
        self.freeze(recurse=False, keys="params_dict")

    def fit(
        self,
        data: Mapping[str, FitData] | FitData,
        last_n_dims: int = 1,
        dtype: mx.Dtype | None = mx.float32,
        mode: Mode = "limits",
        output_max: float = 1.0,
        output_min: float = -1.0,
        range_eps: float = 1e-4,
        fit_offset: bool = True,
    ) -> None:
        """Fit every field of ``data`` (a dict of ``(N, ..., *F)`` arrays) or one bare array.

        ``mode='limits'`` maps ``[min, max]`` of each feature to ``[output_min, output_max]``;
        ``mode='gaussian'`` maps to zero mean and unit std. Features whose range (or std) is
        below ``range_eps`` are shifted, not scaled.
        """
        kwargs = dict(
            last_n_dims=last_n_dims,
            dtype=dtype,
            mode=mode,
            output_max=output_max,
            output_min=output_min,
            range_eps=range_eps,
            fit_offset=fit_offset,
        )
        fields = data if isinstance(data, Mapping) else {DEFAULT_KEY: data}
        for key, value in fields.items():
            self.params_dict[key] = _fit(value, **kwargs)
        self.freeze_stats()

    def __call__(self, x: Mapping[str, ArrayLike] | ArrayLike) -> dict[str, mx.array] | mx.array:
        return self.normalize(x)

    # An MLX module is itself a dict holding its attributes, and MLX reads and writes them
    # with item access; names of module attributes ('params_dict') keep that meaning.
    def __getitem__(self, key: str) -> Any:
        """``normalizer['action']``: a single-field view sharing this normalizer's arrays."""
        if dict.__contains__(self, key):
            return super().__getitem__(key)
        return SingleFieldLinearNormalizer(self._field(key))

    def __setitem__(self, key: str, value: Any) -> None:
        """``normalizer['image'] = single_field_normalizer`` adds or replaces a field."""
        if not isinstance(value, SingleFieldLinearNormalizer):
            super().__setitem__(key, value)
            return
        _check_field(value.params_dict, f"field {key!r}")
        self.params_dict[key] = value.params_dict
        self.freeze_stats()

    def _field(self, key: str) -> dict[str, Any]:
        if key not in self.params_dict:
            raise KeyError(
                f"normalizer has no field {key!r} (it has {sorted(self.params_dict)}); "
                "fit it on data containing that key or load a state dict that has it"
            )
        return self.params_dict[key]

    def _apply(self, x: Mapping[str, ArrayLike] | ArrayLike, forward: bool):
        if isinstance(x, Mapping):
            return {k: _normalize(v, self._field(k), forward, k) for k, v in x.items()}
        if DEFAULT_KEY not in self.params_dict:
            raise RuntimeError(
                "normalizer was not fitted on a bare array: pass a dict keyed by field "
                f"({sorted(self.params_dict)}) or fit it on an array first"
            )
        return _normalize(x, self.params_dict[DEFAULT_KEY], forward, DEFAULT_KEY)

    def normalize(self, x: Mapping[str, ArrayLike] | ArrayLike) -> dict[str, mx.array] | mx.array:
        """``x * scale + offset`` per field; numpy or MLX in, ``mx.array`` out, same shapes."""
        return self._apply(x, forward=True)

    def unnormalize(self, x: Mapping[str, ArrayLike] | ArrayLike) -> dict[str, mx.array] | mx.array:
        """``(x - offset) / scale`` per field; the inverse of :meth:`normalize`."""
        return self._apply(x, forward=False)

    def get_input_stats(self) -> dict[str, Any]:
        """``{field: {'min','max','mean','std'}}``, or the bare stats of a ``'_default'``-only fit."""
        if not self.params_dict:
            raise RuntimeError("normalizer is empty: fit it or load a state dict first")
        if list(self.params_dict) == [DEFAULT_KEY]:
            return self.params_dict[DEFAULT_KEY]["input_stats"]
        return {k: v["input_stats"] for k, v in self.params_dict.items() if k != DEFAULT_KEY}

    def get_output_stats(self) -> dict[str, Any]:
        """The input stats pushed through :meth:`normalize` (same layout as get_input_stats)."""
        stats = self.get_input_stats()
        if "min" in stats:
            return dict_apply(stats, self.normalize)
        return {
            key: {name: self.normalize({key: value})[key] for name, value in group.items()}
            for key, group in stats.items()
        }

    def state_dict(self) -> dict[str, np.ndarray]:
        """Flat upstream names (``params_dict.<field>.scale`` ...) to numpy arrays."""
        out: dict[str, np.ndarray] = {}
        for key, params in self.params_dict.items():
            out.update(_flatten_field(params, f"{PREFIX}{key}."))
        return out

    def load_state_dict(self, state_dict: Mapping[str, ArrayLike]) -> None:
        """Replace all fields with those of a flat upstream-named state dict."""
        grouped: dict[str, dict[str, ArrayLike]] = {}
        for name, value in state_dict.items():
            if not name.startswith(PREFIX):
                raise KeyError(f"normalizer state key {name!r} does not start with {PREFIX!r}")
            rest = name.removeprefix(PREFIX)
            if ".input_stats." in rest:
                key, stat = rest.split(".input_stats.", 1)
                entry = f"input_stats.{stat}"
            else:
                key, _, entry = rest.rpartition(".")
            if not key:
                raise KeyError(f"normalizer state key {name!r} names no field")
            grouped.setdefault(key, {})[entry] = value
        self.params_dict = {
            key: _unflatten_field(flat, f"{PREFIX}{key}") for key, flat in grouped.items()
        }
        self.freeze_stats()


class SingleFieldLinearNormalizer(nn.Module):
    """One field's ``x * scale + offset`` over its trailing ``D`` features.

    ``params_dict`` is ``{'scale': (D,), 'offset': (D,), 'input_stats': {...}}``.
    """

    def __init__(self, params_dict: dict[str, Any] | None = None):
        super().__init__()
        self.params_dict = {} if params_dict is None else params_dict
        self.freeze_stats()

    def freeze_stats(self) -> None:
        """Exclude every normalizer array from ``trainable_parameters()`` (idempotent)."""
        self.freeze(recurse=False, keys="params_dict")

    def fit(
        self,
        data: FitData,
        last_n_dims: int = 1,
        dtype: mx.Dtype | None = mx.float32,
        mode: Mode = "limits",
        output_max: float = 1.0,
        output_min: float = -1.0,
        range_eps: float = 1e-4,
        fit_offset: bool = True,
    ) -> None:
        """Fit on ``(N, ..., *F)`` data; see :meth:`LinearNormalizer.fit`."""
        self.params_dict = _fit(
            data,
            last_n_dims=last_n_dims,
            dtype=dtype,
            mode=mode,
            output_max=output_max,
            output_min=output_min,
            range_eps=range_eps,
            fit_offset=fit_offset,
        )
        self.freeze_stats()

    @classmethod
    def create_fit(cls, data: FitData, **kwargs: Any) -> SingleFieldLinearNormalizer:
        """A normalizer fitted on ``data`` (``fit`` kwargs pass through)."""
        normalizer = cls()
        normalizer.fit(data, **kwargs)
        return normalizer

    @classmethod
    def create_manual(
        cls,
        scale: ArrayLike,
        offset: ArrayLike,
        input_stats_dict: Mapping[str, ArrayLike],
    ) -> SingleFieldLinearNormalizer:
        """A normalizer from explicit ``scale``/``offset`` and ``min|max|mean|std`` stats.

        Every array must have the shape and dtype of ``scale``; all are flattened to ``(D,)``.
        """
        scale, offset = mx.array(scale), mx.array(offset)
        stats = {name: mx.array(value) for name, value in input_stats_dict.items()}
        missing = set(STAT_NAMES) - set(stats)
        if missing:
            raise KeyError(f"input_stats_dict lacks {sorted(missing)}")
        for name, value in [
            ("offset", offset),
            *((f"input_stats.{n}", stats[n]) for n in STAT_NAMES),
        ]:
            if value.shape != scale.shape or value.dtype != scale.dtype:
                raise ValueError(
                    f"{name} has shape {tuple(value.shape)} and dtype {value.dtype}, but scale has "
                    f"shape {tuple(scale.shape)} and dtype {scale.dtype}: they must agree"
                )
        return cls(_params(scale, offset, stats))

    @classmethod
    def create_identity(cls, dtype: mx.Dtype = mx.float32) -> SingleFieldLinearNormalizer:
        """Scale 1, offset 0, with stats of a ``[-1, 1]`` field of mean 0 and std 1."""
        stats = {
            "min": mx.array([-1], dtype=dtype),
            "max": mx.array([1], dtype=dtype),
            "mean": mx.array([0], dtype=dtype),
            "std": mx.array([1], dtype=dtype),
        }
        return cls.create_manual(mx.array([1], dtype=dtype), mx.array([0], dtype=dtype), stats)

    def __call__(self, x: ArrayLike) -> mx.array:
        return self.normalize(x)

    def normalize(self, x: ArrayLike) -> mx.array:
        """``x * scale + offset`` over the trailing features; same shape as ``x``."""
        return _normalize(x, self.params_dict, True, "single field")

    def unnormalize(self, x: ArrayLike) -> mx.array:
        """``(x - offset) / scale``; the inverse of :meth:`normalize`."""
        return _normalize(x, self.params_dict, False, "single field")

    def get_input_stats(self) -> dict[str, mx.array]:
        """``{'min','max','mean','std'}`` of the fitted data, each ``(D,)``."""
        return self.params_dict["input_stats"]

    def get_output_stats(self) -> dict[str, mx.array]:
        """The input stats after :meth:`normalize`."""
        return dict_apply(self.params_dict["input_stats"], self.normalize)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Flat upstream names (``params_dict.scale`` ...) to numpy arrays."""
        return _flatten_field(self.params_dict, PREFIX)

    def load_state_dict(self, state_dict: Mapping[str, ArrayLike]) -> None:
        """Replace the parameters with those of a flat upstream-named state dict."""
        flat = {}
        for name, value in state_dict.items():
            if not name.startswith(PREFIX):
                raise KeyError(f"normalizer state key {name!r} does not start with {PREFIX!r}")
            flat[name.removeprefix(PREFIX)] = value
        self.params_dict = _unflatten_field(flat, "params_dict")
        self.freeze_stats()

"""Load and export upstream PyTorch ``state_dict``s into MLX modules with the same names.

Our modules reproduce torch's parameter names, so a key such as
``down_modules.0.0.blocks.0.block.0.weight`` names the same tensor on both sides. Only the
memory layout differs, and only for convolutions: torch stores conv kernels channels-first
``(O, I, *K)`` and transposed-conv kernels ``(I, O, *K)``; MLX stores both channels-last
``(O, *K, I)``. Which layout applies is decided by the type of the submodule that owns the key,
so one loader serves every model (U-Nets, transformers, torchvision ResNets) without a
per-model table.
"""

from collections.abc import Callable, Mapping
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten


def _torch_conv_to_mlx(w: np.ndarray) -> np.ndarray:
    # (O, I, *K) -> (O, *K, I)
    return w.transpose(0, *range(2, w.ndim), 1)


def _mlx_conv_to_torch(w: np.ndarray) -> np.ndarray:
    # (O, *K, I) -> (O, I, *K)
    return w.transpose(0, w.ndim - 1, *range(1, w.ndim - 1))


def _torch_conv_transpose_to_mlx(w: np.ndarray) -> np.ndarray:
    # (I, O, *K) -> (O, *K, I)
    return w.transpose(1, *range(2, w.ndim), 0)


def _mlx_conv_transpose_to_torch(w: np.ndarray) -> np.ndarray:
    # (O, *K, I) -> (I, O, *K)
    return w.transpose(w.ndim - 1, 0, *range(1, w.ndim - 1))


_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_TRANSPOSE = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _layout_converters(
    module: nn.Module,
) -> dict[str, tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]]:
    """Maps parameter name -> (torch->mlx, mlx->torch) for every parameter whose layout differs."""
    converters = {}
    for name, sub in module.named_modules():
        if isinstance(sub, _CONV):
            pair = (_torch_conv_to_mlx, _mlx_conv_to_torch)
        elif isinstance(sub, _CONV_TRANSPOSE):
            pair = (_torch_conv_transpose_to_mlx, _mlx_conv_transpose_to_torch)
        else:
            continue
        converters[f"{name}.weight" if name else "weight"] = pair
    return converters


def to_mlx_layout(module: nn.Module, arrays: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """``{upstream name: array in PyTorch layout}`` -> the same names in ``module``'s MLX layout.

    For tensors shaped like parameters that are not parameters, e.g. AdamW's moments.
    """
    converters = _layout_converters(module)
    out = {}
    for key, raw in arrays.items():
        value = np.asarray(raw)
        out[key] = np.ascontiguousarray(converters[key][0](value) if key in converters else value)
    return out


def _is_ignored(key: str, value: np.ndarray) -> bool:
    # Entries torch writes that carry no state for us: BatchNorm's step counter (only used
    # when momentum=None, which upstream never sets) and the zero-size placeholder upstream's
    # ModuleAttrMixin registers to find its device and dtype.
    last = key.rsplit(".", 1)[-1]
    return last == "num_batches_tracked" or (last == "_dummy_variable" and value.size == 0)


def load_upstream_state_dict(
    module: nn.Module, state_dict: Mapping[str, Any], strict: bool = True
) -> list[str]:
    """Load an upstream PyTorch ``state_dict`` into ``module`` in place.

    Args:
        module: an MLX module whose parameter names match upstream's (ours do).
        state_dict: upstream names -> arrays in PyTorch layout (numpy arrays, or anything
            ``np.asarray`` accepts, e.g. CPU torch tensors).
        strict: if True, raise one ``ValueError`` listing every missing, unexpected and
            wrong-shape key, and change nothing. If False, load the keys that match and skip
            the rest.

    Returns:
        The keys of ``module`` that were loaded.
    """
    ours = dict(tree_flatten(module.parameters()))
    converters = _layout_converters(module)

    loaded: list[tuple[str, mx.array]] = []
    unexpected: list[str] = []
    wrong_shape: dict[str, str] = {}
    for key, raw in state_dict.items():
        value = np.asarray(raw)
        if _is_ignored(key, value):
            continue
        if key not in ours:
            unexpected.append(key)
            continue
        if key in converters:
            value = converters[key][0](value)
        target = ours[key]
        if value.shape != target.shape:
            wrong_shape[key] = (
                f"upstream {np.shape(raw)} is {value.shape} in MLX layout, model has {target.shape}"
            )
            continue
        loaded.append((key, mx.array(np.ascontiguousarray(value)).astype(target.dtype)))
    present = {k for k, _ in loaded} | wrong_shape.keys()
    missing = [k for k in ours if k not in present]

    if strict and (missing or unexpected or wrong_shape):
        lines = [f"upstream state_dict does not match {type(module).__name__}:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): " + ", ".join(missing))
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): " + ", ".join(unexpected))
        if wrong_shape:
            lines.append(f"  wrong shapes ({len(wrong_shape)}):")
            lines.extend(f"    {k}: {why}" for k, why in wrong_shape.items())
        lines.append(
            "  build the model with the checkpoint's constructor kwargs "
            "(or pass strict=False to load only the matching keys)"
        )
        raise ValueError("\n".join(lines))

    module.update(tree_unflatten(loaded))
    return [k for k, _ in loaded]


def to_upstream_state_dict(module: nn.Module) -> dict[str, np.ndarray]:
    """Export ``module``'s parameters (frozen ones included) as an upstream-layout state_dict.

    Inverse of :func:`load_upstream_state_dict`: names unchanged, conv kernels transposed back
    to PyTorch layout, values as numpy arrays. BatchNorm layers also get torch's
    ``num_batches_tracked`` (0), so ``torch.nn.Module.load_state_dict`` accepts the result;
    upstream's zero-size ``_dummy_variable`` placeholders are not produced.
    """
    converters = _layout_converters(module)
    out = {}
    for key, value in tree_flatten(module.parameters()):
        array = np.array(value)
        if key in converters:
            array = np.ascontiguousarray(converters[key][1](array))
        out[key] = array
    for name, sub in module.named_modules():
        if isinstance(sub, nn.BatchNorm) and sub.track_running_stats:
            out[f"{name}.num_batches_tracked" if name else "num_batches_tracked"] = np.array(
                0, np.int64
            )
    return out

"""Exponential moving average of a model's weights, with upstream's warmup of the decay."""

from collections.abc import Iterator
from typing import Any, NamedTuple

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten


@mx.compile
def _average(
    decay: mx.array, one_minus_decay: mx.array, averaged: list[mx.array], new: list[mx.array]
) -> list[mx.array]:
    # One fused kernel per parameter, whatever the parameter count.
    return [
        a * decay + n.astype(a.dtype) * one_minus_decay for a, n in zip(averaged, new, strict=True)
    ]


class _Leaf(NamedTuple):
    path: str  # dotted name, as in tree_flatten(model.parameters())
    container: dict | list  # the module, dict or list holding the array
    key: str | int
    value: mx.array
    in_batch_norm: bool


def _leaves(tree: dict | list, prefix: str = "", in_batch_norm: bool = False) -> Iterator[_Leaf]:
    """The arrays of ``model.parameters()``, in its order, with where each one is stored.

    A direct walk: several times cheaper than ``tree_flatten(model.parameters())``.
    """
    if isinstance(tree, nn.Module):
        in_batch_norm = in_batch_norm or isinstance(tree, nn.BatchNorm)
        items = ((k, v) for k, v in tree.items() if not k.startswith("_"))
    elif isinstance(tree, dict):
        items = tree.items()
    else:
        items = enumerate(tree)
    for key, value in items:
        if isinstance(value, mx.array):
            yield _Leaf(f"{prefix}{key}", tree, key, value, in_batch_norm)
        elif isinstance(value, dict | list):
            yield from _leaves(value, f"{prefix}{key}.", in_batch_norm)


class EMAModel:
    """Keeps ``averaged_model`` an exponential moving average of a trained model.

    As upstream, ``model`` IS the averaged model (pass a deep copy of the policy, e.g.
    ``EMAModel(model=copy.deepcopy(policy))``); it is put in eval mode and frozen. Each
    :meth:`step` blends the trained model's parameters in with weight ``1 - decay``, except
    BatchNorm parameters and parameters frozen in the trained model (normalizer statistics,
    running means), which are copied.

    The decay warms up as ``1 - (1 + step / inv_gamma) ** -power``, clamped to
    ``[min_value, max_value]``, and is 0 for the first ``update_after_step + 1`` steps.
    """

    def __init__(
        self,
        model: nn.Module,
        update_after_step: int = 0,
        inv_gamma: float = 1.0,
        power: float = 2 / 3,
        min_value: float = 0.0,
        max_value: float = 0.9999,
    ):
        self.averaged_model = model
        self.averaged_model.eval()
        self.averaged_model.freeze()
        self.update_after_step = update_after_step
        self.inv_gamma = inv_gamma
        self.power = power
        self.min_value = min_value
        self.max_value = max_value
        self.decay = 0.0
        self.optimization_step = 0

    def get_decay(self, optimization_step: int) -> float:
        """The decay used by the update after ``optimization_step`` previous updates."""
        step = max(0, optimization_step - self.update_after_step - 1)
        if step <= 0:
            return 0.0
        value = 1 - (1 + step / self.inv_gamma) ** -self.power
        return max(self.min_value, min(value, self.max_value))

    def step(self, new_model: nn.Module) -> None:
        """Blend ``new_model``'s parameters into ``averaged_model`` (lazily, in one batch).

        The new averages are scheduled with ``mx.async_eval`` so the running average never
        grows into a long lazy graph, while the host goes on without waiting.
        """
        self.decay = self.get_decay(self.optimization_step)
        new = list(_leaves(new_model))
        averaged = list(_leaves(self.averaged_model))
        if [leaf.path for leaf in new] != [leaf.path for leaf in averaged]:
            new_paths = {leaf.path for leaf in new}
            avg_paths = {leaf.path for leaf in averaged}
            raise ValueError(
                "EMA model and trained model have different parameters: only in the trained "
                f"model {sorted(new_paths - avg_paths)[:5]}, only in the EMA model "
                f"{sorted(avg_paths - new_paths)[:5]}; build the EMA model as a deep copy of "
                "the trained one"
            )
        trainable = {k for k, _ in tree_flatten(new_model.trainable_parameters())}
        blend = [
            i for i, leaf in enumerate(new) if leaf.path in trainable and not leaf.in_batch_norm
        ]
        blended = _average(
            mx.array(self.decay, mx.float32),
            mx.array(1 - self.decay, mx.float32),
            [averaged[i].value for i in blend],
            [new[i].value for i in blend],
        )
        averages = dict(zip(blend, blended, strict=True))
        values = [
            averages[i] if i in averages else leaf.value.astype(averaged[i].value.dtype)
            for i, leaf in enumerate(new)
        ]
        # Write straight into the containers found by the walk, as Module.update would.
        for avg, value in zip(averaged, values, strict=True):
            avg.container[avg.key] = value
        mx.async_eval(values)
        self.optimization_step += 1

    def state_dict(self) -> dict[str, Any]:
        """The counters to resume with (the averaged weights live in ``averaged_model``)."""
        return {"optimization_step": self.optimization_step, "decay": self.decay}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self.optimization_step = int(state_dict["optimization_step"])
        self.decay = float(state_dict["decay"])

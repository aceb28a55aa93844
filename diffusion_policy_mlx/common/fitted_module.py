"""Modules whose arrays come from data, not from their constructor."""

from collections.abc import Mapping
from typing import Any

import mlx.nn as nn


class FittedModule(nn.Module):
    """A module that has no arrays until it is fitted (a normalizer), so a checkpoint loader
    rebuilds it from its saved entries (``load_state_dict``) before loading the rest strictly."""

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        raise NotImplementedError

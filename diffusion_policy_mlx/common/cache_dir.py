"""Where the package keeps files it can rebuild: never inside the data or run folders."""

import os
from collections.abc import Mapping
from pathlib import Path


def cache_home(environ: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_CACHE_HOME/diffusion_policy_mlx``, ``~/.cache/diffusion_policy_mlx`` without it."""
    base = environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "diffusion_policy_mlx"

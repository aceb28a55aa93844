"""Run upstream's own ``train.py`` (PyTorch) for ``train_side_by_side.py``.

Usage: ``python benchmarks/side_by_side_upstream.py HYDRA_OVERRIDES...`` with the upstream checkout
on ``DP_UPSTREAM_PATH`` (default ``upstream/`` in the repository root). Two things differ from
running upstream's script directly:

- diffusers 0.11.1 fails to import where newer JAX, Flax or transformers are installed beside it,
  so they are hidden from it (upstream's training needs none of them);
- upstream builds its environment runner at start, and its PushT runner needs gym 0.21. The
  side-by-side run evaluates every checkpoint afterwards with this package's runner instead, so
  a runner that rolls nothing out takes the place of upstream's ``PushTKeypointsRunner`` module
  during training. The config keeps upstream's own target, so its checkpoints import as any
  upstream checkpoint does.
"""

from __future__ import annotations

import os
import runpy
import sys
import types
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
UPSTREAM = Path(os.environ.get("DP_UPSTREAM_PATH", REPO / "upstream")).resolve()

for _name in ("jax", "flax", "transformers"):
    sys.modules.setdefault(_name, None)
os.environ.setdefault("USE_FLAX", "0")
os.environ.setdefault("USE_TORCH", "1")
if str(UPSTREAM) not in sys.path:
    sys.path.insert(0, str(UPSTREAM))

from diffusion_policy.env_runner.base_lowdim_runner import BaseLowdimRunner  # noqa: E402


class PushTKeypointsRunner(BaseLowdimRunner):
    """Takes the runner's config keys and rolls nothing out: the rollouts happen later, from
    the checkpoints, in this package's simulator."""

    def __init__(self, output_dir: str, **kwargs: Any):
        super().__init__(output_dir)

    def run(self, policy: Any) -> dict[str, float]:
        return {}


_runner_module = types.ModuleType("diffusion_policy.env_runner.pusht_keypoints_runner")
_runner_module.PushTKeypointsRunner = PushTKeypointsRunner
sys.modules[_runner_module.__name__] = _runner_module


def main(argv: list[str]) -> None:
    script = UPSTREAM / "train.py"
    sys.argv = [str(script), *argv]
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])

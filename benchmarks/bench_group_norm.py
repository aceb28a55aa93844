"""The fused GroupNorm + Mish + FiLM kernel (``model/common/group_norm_mish.py``) against MLX's
ops, in whole ``predict_action`` calls of the default policies, same process, same weights and
noise. Needs MLX's CUDA backend (the kernel's only home):

    python benchmarks/bench_group_norm.py                          # lowdim U-Net
    python benchmarks/bench_group_norm.py --config train_diffusion_unet_hybrid_workspace

Prints one JSON line per (scheduler steps, batch): median wall time of each path (the two
alternate call by call), their ratio and the largest difference between their actions.
"""

# Before mlx.core: the package loads the fast CPU BLAS on import.
import diffusion_policy_mlx  # noqa: F401, I001

import argparse
import sys
from pathlib import Path

from diffusion_policy_mlx.model.common import group_norm_mish
from diffusion_policy_mlx.model.diffusion import conv1d_components

sys.path.insert(0, str(Path(__file__).resolve().parent))
from predict_ab import compare_paths  # noqa: E402


def use_fused(on: bool) -> None:
    # Conv1dBlock asks this module-level name when a step is traced.
    conv1d_components.fused_available = lambda: on


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="train_diffusion_unet_lowdim_workspace")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    if not group_norm_mish.fused_available():
        sys.exit("bench_group_norm.py needs MLX's CUDA backend (pip install -e '.[cuda]')")
    compare_paths(
        args.config,
        "gpu",
        args.repeats,
        {"ops": lambda: use_fused(False), "fused": lambda: use_fused(True)},
    )


if __name__ == "__main__":
    main()

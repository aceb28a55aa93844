"""Interface of simulation runners for low-dimensional policies (upstream's BaseLowdimRunner)."""

from pathlib import Path

from diffusion_policy_mlx.policy.base_lowdim_policy import BaseLowdimPolicy


class BaseLowdimRunner:
    """Rolls a policy out in simulation; ``run`` returns a flat dict of metrics for logging."""

    def __init__(self, output_dir: str | Path):
        self.output_dir = Path(output_dir)

    def run(self, policy: BaseLowdimPolicy) -> dict:
        raise NotImplementedError

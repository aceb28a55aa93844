"""Interface of simulation runners for image policies (upstream's BaseImageRunner)."""

from pathlib import Path

from diffusion_policy_mlx.policy.base_image_policy import BaseImagePolicy


class BaseImageRunner:
    """Rolls a policy out in simulation; ``run`` returns a flat dict of metrics for logging."""

    def __init__(self, output_dir: str | Path):
        self.output_dir = Path(output_dir)

    def run(self, policy: BaseImagePolicy) -> dict:
        raise NotImplementedError

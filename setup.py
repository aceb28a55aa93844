from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="diffusion_policy_mlx",
    version="0.1.0",
    description="Diffusion Policy (Chi et al., RSS 2023) on Apple's MLX, Hydra-configured like upstream",
    long_description=Path(__file__).with_name("README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["diffusion_policy_mlx", "diffusion_policy_mlx.*"]),
    install_requires=[
        "mlx>=0.32; sys_platform == 'darwin'",
        "mlx[cpu]>=0.32; sys_platform == 'linux'",
        "hydra-core>=1.3",
        "omegaconf>=2.3",
        "zarr>=3.0",
        "numcodecs>=0.12",
        "numpy>=1.26",
        "pymunk>=7.0",
        "gymnasium>=1.1",
        "imageio-ffmpeg>=0.5",
        "wandb>=0.17",
        "tqdm>=4.66",
        "safetensors>=0.4",
    ],
    extras_require={
        "cuda": ["mlx[cuda13]>=0.32"],
        "plot": ["matplotlib>=3.8"],
        "launchers": ["hydra-joblib-launcher>=1.2", "hydra-submitit-launcher>=1.2"],
        "dev": [
            "pytest>=8",
            "pytest-xdist>=3.5",
            "ruff>=0.6",
            "matplotlib>=3.8",
            "hydra-joblib-launcher>=1.2",
            "hydra-submitit-launcher>=1.2",
        ],
    },
)

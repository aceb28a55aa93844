import os
import platform
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

# The CPU kernels (diffusion_policy_mlx/csrc) are x86 code: AVX-512 and AVX2.
BUILD_CPU_KERNELS = sys.platform == "linux" and platform.machine() in ("x86_64", "AMD64")
CPU_KERNELS = "diffusion_policy_mlx._cpu_kernels"
# On Linux MLX gets its fast BLAS from the scipy-openblas32 wheel, whose symbols are prefixed:
# this plain C library (no Python module) serves MLX the unprefixed names (see blas.py). It is
# linked without OpenBLAS, which blas.py loads first, hence undefined symbols are allowed.
BLAS_SHIM = Extension(
    "diffusion_policy_mlx.accel._blas_shim",
    sources=["diffusion_policy_mlx/csrc/blas_shim.c"],
    extra_compile_args=["-O2"],
    extra_link_args=["-Wl,-z,undefs"],
)


class CMakeBuild(build_ext):
    """Builds ``diffusion_policy_mlx._cpu_kernels`` with CMake against the MLX and nanobind of
    the build environment (pinned in pyproject.toml to the versions ``install_requires`` asks
    for, since an MLX extension is tied to the C++ ABI of one MLX release); the BLAS shim with
    the plain C compiler."""

    def build_extension(self, ext: Extension) -> None:
        if ext.name != CPU_KERNELS:
            super().build_extension(ext)
            return
        output = Path(self.get_ext_fullpath(ext.name)).resolve()
        build_dir = Path(self.build_temp).resolve() / ext.name
        source = Path(__file__).resolve().parent / "diffusion_policy_mlx" / "csrc"
        configure = [
            "cmake",
            "-S",
            str(source),
            "-B",
            str(build_dir),
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={output.parent}",
        ]
        subprocess.run(configure, check=True)
        jobs = str(os.cpu_count() or 1)
        subprocess.run(["cmake", "--build", str(build_dir), "-j", jobs], check=True)


setup(
    name="diffusion_policy_mlx",
    version="0.1.0",
    description="Diffusion Policy (Chi et al., RSS 2023) on Apple's MLX, Hydra-configured like upstream",
    long_description=Path(__file__).with_name("README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["diffusion_policy_mlx", "diffusion_policy_mlx.*"]),
    ext_modules=([Extension(CPU_KERNELS, sources=[])] if BUILD_CPU_KERNELS else [])
    + ([BLAS_SHIM] if sys.platform == "linux" else []),
    cmdclass={"build_ext": CMakeBuild},
    install_requires=[
        "mlx>=0.32; sys_platform == 'darwin'",
        # == the build requirement in pyproject.toml: the CPU kernels are built against it
        "mlx[cpu]==0.32.4; sys_platform == 'linux'",
        # MLX's fast CPU BLAS on Linux without a system OpenBLAS (blas.py): OpenBLAS with
        # prefixed symbols and LP64 (32-bit) integers, as MLX calls it; 8 MB, BSD licence
        "scipy-openblas32>=0.3.27; sys_platform == 'linux'",
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
        "cuda": ["mlx[cuda13]==0.32.4"],
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

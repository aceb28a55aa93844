"""glibc keeps MLX's freed CPU buffers for reuse: the second allocation of a large array does
not fault its pages in again. Counted with ``getrusage`` minor faults in a subprocess, so each
case gets the setting ``accel.configure`` applies."""

import os
import platform
import subprocess
import sys

from diffusion_policy_mlx.accel import malloc

import pytest

# Allocates and frees a 100 MB array three times; prints the third allocation's page faults.
PROBE = """
import resource
from diffusion_policy_mlx import accel
import mlx.core as mx
accel.configure("cpu")
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = mx.ones((25_000_000,))
    mx.eval(a)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del a
print(faults)
"""

glibc_cpu = pytest.mark.skipif(
    not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"),
    reason="the setting is glibc's",
)


def _faults(env_extra: dict[str, str]) -> int:
    env = {k: v for k, v in os.environ.items() if k != malloc.ENV_VAR}
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", PROBE],
        env={**env, **env_extra},
        capture_output=True,
        text=True,
        check=True,
    )
    return int(proc.stdout.strip().splitlines()[-1])


@glibc_cpu
def test_freed_buffers_are_reused_without_page_faults():
    import mlx.core as mx

    if mx.is_available(mx.gpu):
        pytest.skip("applies where MLX has no GPU")
    kept = _faults({})
    system = _faults({malloc.ENV_VAR: "system"})
    # 100 MB is 24,414 pages of 4 KiB: glibc's defaults map (and fault in) fresh ones each time
    assert kept < 1000
    assert kept * 10 < system


def test_system_and_gpu_leave_malloc_alone():
    assert not malloc.keep_freed_memory(False, {malloc.ENV_VAR: "system"})
    assert not malloc.keep_freed_memory(False, {malloc.ENV_VAR: " System "})
    assert not malloc.keep_freed_memory(True, {})


@glibc_cpu
def test_applies_on_glibc_without_gpu():
    assert malloc.keep_freed_memory(False, {})


def test_bad_value_names_the_variable():
    with pytest.raises(ValueError, match=r"DP_MLX_MALLOC='off'.*'system'"):
        malloc.keep_freed_memory(False, {malloc.ENV_VAR: "off"})

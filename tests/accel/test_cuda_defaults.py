"""The MLX CUDA defaults: applied only on CUDA, never over the user's own settings."""

import os
import subprocess
import sys
from pathlib import Path

from diffusion_policy_mlx.accel.cuda_defaults import (
    GRAPHS_VAR,
    PTX_CACHE_VAR,
    apply_cuda_defaults,
    default_ptx_cache_dir,
)


def bare_environment(home: Path) -> dict[str, str]:
    """An environment with none of the caller's settings but the ones that find Python's
    packages and MLX's libraries (an MLX unpacked beside the interpreter, as on a staged GPU
    host, is found only through them)."""
    kept = {k: os.environ[k] for k in ("PYTHONPATH", "LD_LIBRARY_PATH") if k in os.environ}
    return {"PATH": "", "HOME": str(home), "XDG_CACHE_HOME": str(home / "cache"), **kept}


def test_defaults_on_cuda_create_the_cache(tmp_path):
    environ = {"XDG_CACHE_HOME": str(tmp_path)}
    applied = apply_cuda_defaults(True, environ)
    cache = tmp_path / "diffusion_policy_mlx" / "ptx"
    assert applied == {GRAPHS_VAR: "0", PTX_CACHE_VAR: str(cache)}
    assert environ[GRAPHS_VAR] == "0" and environ[PTX_CACHE_VAR] == str(cache)
    assert cache.is_dir()


def test_user_settings_are_kept(tmp_path):
    environ = {GRAPHS_VAR: "1", PTX_CACHE_VAR: str(tmp_path / "mine")}
    assert apply_cuda_defaults(True, environ) == {}
    assert environ == {GRAPHS_VAR: "1", PTX_CACHE_VAR: str(tmp_path / "mine")}
    assert not (tmp_path / "mine").exists()


def test_nothing_without_cuda(tmp_path):
    environ = {"XDG_CACHE_HOME": str(tmp_path)}
    assert apply_cuda_defaults(False, environ) == {}
    assert environ == {"XDG_CACHE_HOME": str(tmp_path)}
    assert not any(tmp_path.iterdir())


def test_cache_dir_without_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_ptx_cache_dir({}) == tmp_path / ".cache" / "diffusion_policy_mlx" / "ptx"


def test_configure_applies_them_only_on_cuda(tmp_path):
    code = (
        "import os; from diffusion_policy_mlx import accel; import mlx.core as mx; "
        "accel.configure(); "
        f"print(mx.cuda.is_available(), os.environ.get('{GRAPHS_VAR}'), "
        f"os.environ.get('{PTX_CACHE_VAR}'))"
    )
    env = bare_environment(tmp_path)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    cuda, graphs, cache = out.stdout.split()
    if cuda == "True":
        assert (graphs, cache) == ("0", str(tmp_path / "cache" / "diffusion_policy_mlx" / "ptx"))
    else:
        assert (graphs, cache) == ("None", "None")
        assert not (tmp_path / "cache").exists()


def test_importing_the_package_sets_no_variable(tmp_path):
    code = (
        "import os; before = dict(os.environ); "
        "import diffusion_policy_mlx, diffusion_policy_mlx.accel, mlx.core; "
        "print(sorted(set(os.environ.items()) ^ set(before.items())))"
    )
    env = bare_environment(tmp_path)
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[]"

"""The package's layering, read from its import statements with ``ast`` (docs/ARCHITECTURE.md):
no cycles, no layer imports one above it, the simulator runs without MLX, and model and policy
code makes no device checks."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = "diffusion_policy_mlx"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

# Each layer and the layers it may import (besides itself). Entry points (train.py, eval.py,
# benchmarks, scripts/) stand above all of them; accel sits beside the stack and only they
# configure it.
ALLOWED = {
    "common": set(),
    "data": {"common"},
    "env": {"common"},
    "gym_util": {"common"},
    "model": {"common"},
    "schedulers": {"common"},
    "config_compat": {"common"},
    # what a checkpoint's stored config may build: above the resolver, below the workspaces
    "config_trust": {"config_compat", "common"},
    "policy": {"model", "schedulers", "common"},
    "dataset": {"model", "data", "common"},
    "env_runner": {"env", "gym_util", "policy", "common"},
    "workspace": {
        "policy",
        "dataset",
        "env_runner",
        "model",
        "schedulers",
        "common",
        "config_compat",
        "config_trust",
        "data",
    },
    "accel": {"policy", "model", "common", "config_compat"},
    # command-line tools (``python -m diffusion_policy_mlx.scripts.import_upstream``): entry
    # points, which configure accel and may build workspaces
    "scripts": {"common", "accel", "config_compat", "workspace"},
    # the package's __init__: the config resolver only
    "": {"config_compat"},
}
# Code that must import without MLX: the simulator and the gym helpers (numpy and pymunk).
MLX_FREE = ("env", "gym_util")
# Model code has no device checks: the fast paths are accel's, swapped in by configure.
NO_DEVICE_CHECKS = ("model", "policy")
DEVICE_NAMES = {"default_device", "gpu", "cpu", "set_default_device"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Every package module and the package modules it imports."""
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                submodules = {f"{node.module}.{a.name}" for a in node.names} & modules.keys()
                # `from pkg import submodule` runs the submodule, not a name of pkg's __init__
                deps |= submodules if len(submodules) == len(node.names) else {node.module}
        # a module's own packages are imported before it, whatever it imports
        ancestors = {name.rsplit(".", i)[0] for i in range(1, name.count(".") + 1)}
        graph[name] = {d for d in deps if d in modules and d != name and d not in ancestors}
    return graph


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_there_are_no_import_cycles():
    graph = _imports()
    state: dict[str, str] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                cycles.append(path[path.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_layer_imports_one_above_it():
    upward = [
        f"{module} imports {dep}"
        for module, deps in _imports().items()
        for dep in deps
        if _layer(dep) != _layer(module) and _layer(dep) not in ALLOWED[_layer(module)]
    ]
    assert upward == []


def test_every_layer_has_its_rule():
    assert {_layer(m) for m in _imports()} <= set(ALLOWED)


@pytest.mark.parametrize("layer", MLX_FREE)
def test_simulator_code_names_no_mlx(layer):
    users = [
        str(path.relative_to(ROOT))
        for path in (ROOT / layer).rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if (isinstance(node, ast.Import) and any(a.name.startswith("mlx") for a in node.names))
        or (isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mlx"))
    ]
    assert users == []


def test_the_pusht_simulator_imports_without_mlx():
    # mlx made unimportable, as on a machine without it
    code = (
        "import sys; sys.modules['mlx'] = None; "
        "import diffusion_policy_mlx.env.pusht.pusht_env as e; "
        "env = e.PushTEnv(); env.seed(0); env.reset(); "
        "assert 'mlx.core' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("layer", NO_DEVICE_CHECKS)
def test_model_code_has_no_device_checks(layer):
    checks = [
        f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)}"
        for path in (ROOT / layer).rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute)
        and node.attr in DEVICE_NAMES
        and isinstance(node.value, ast.Name)
        and node.value.id in {"mx", "Device", "DeviceType"}
    ]
    assert checks == []

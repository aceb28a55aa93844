"""The commands in README.md and docs/*.md: each is one a user can run, and the cheap ones run.

A command is a line of a fenced ``bash`` block (``\\`` continues it, ``#`` starts a comment) or,
in README.md, an inline code span that starts like one (`` `pip install -e ".[cuda]"` ``). It must
start with one of :data:`PROGRAMS`, and what it names must exist: the script, the ``python -m``
module and its ``__main__``, the ``--config-name``, the ``task=``, the ``pip`` extra, the
``pytest`` marker, the ``DP_MLX_*`` variable. Then each is checked the cheapest faithful way:

- ``train.py`` (also under ``mlx.launch``): Hydra composes it with ``--cfg job --resolve``
  appended, one composition per job of a sweep, so a misspelt override key or value fails;
- the argparse programs (``eval.py``, ``quickstart.py``, ``python -m ...``) run with ``--help``
  appended, which fails on an unknown subcommand or choice, and every option the command uses
  must be one the help lists;
- ``python -m diffusion_policy_mlx.accel`` and ``... data verify`` (where the data is) run for real.

README's ``eval.py`` commands must read a checkpoint that an earlier README command writes, and
their ``key=value`` overrides must be keys of that run's composed config; its install and test
commands are the ones ``.ci/run`` runs, and its ``python`` blocks run against a checkpoint that
``train.py`` writes. The README stays a few screens long, without dates or placeholders, and
every link of every doc reaches its file and heading.
"""

from __future__ import annotations

import ast
import importlib.util
import itertools
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from diffusion_policy_mlx.data.download import get_spec

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
# where upstream's config folder is, for a command that reads it
Upstream = Callable[[], Path]
DOCS = [README, *sorted((REPO / "docs").glob("*.md"))]
SHELL_FENCES = {"bash", "sh", "shell", "console"}
# What a command may start with; anything else is a typo or a program the docs do not support.
PROGRAMS = (
    "python train.py",
    "python eval.py",
    "python quickstart.py",
    "python -m diffusion_policy_mlx.",
    "python -c",
    "pip install",
    "mlx.launch",
    "pytest",
    "git clone",
    "wget",
)
# An inline code span that starts with one of these is a command too.
INLINE_STARTS = ("python ", "pip ", "pytest", "mlx.launch ", "git clone ")
UPSTREAM_REPO = "https://github.com/real-stanford/diffusion_policy"
MLX_LAUNCH = shutil.which("mlx.launch", path=str(Path(sys.executable).parent)) or "mlx.launch"
# Hydra launchers of the `launchers` extra: a command using one is composed only where it is
# installed (another launcher name is composed, and fails, everywhere)
LAUNCHER_PLUGINS = {
    "joblib": "hydra_plugins.hydra_joblib_launcher",
    "submitit_local": "hydra_plugins.hydra_submitit_launcher",
    "submitit_slurm": "hydra_plugins.hydra_submitit_launcher",
}
# mlx.launch --backend values (mlx/_distributed_utils/launch.py); its help does not list them
MLX_LAUNCH_BACKENDS = {"ring", "mpi", "nccl", "jaccl", "jaccl-ring"}
# Hydra's flags that take a value, by their long names
HYDRA_VALUE_FLAGS = {
    "--config-name": "--config-name",
    "-cn": "--config-name",
    "--config-dir": "--config-dir",
    "-cd": "--config-dir",
    "--config-path": "--config-path",
    "-cp": "--config-path",
}
# eval.py's flags that take a value
EVAL_VALUE_FLAGS = {"-c", "--checkpoint", "-o", "--output_dir", "-d", "--device"}
DATED = re.compile(r"\b(19|20)\d\d-\d\d-\d\d\b")
INTERNAL_WORDS = re.compile(r"\b(session|issue #?\d*|trial|helper|worktree)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Command:
    """One command of a doc: ``env`` assignments ahead of ``argv``."""

    doc: Path
    line: int
    env: tuple[tuple[str, str], ...]
    argv: tuple[str, ...]

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(REPO)}:{self.line}"

    @property
    def text(self) -> str:
        return shlex.join(self.argv)

    def __str__(self) -> str:
        return f"{self.where}: {self.text}"


def _split(doc: Path, line: int, text: str) -> list[Command]:
    """The commands of one shell line: ``&&``, ``;`` and ``|`` separate them."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split, lexer.commenters = True, "#"
    commands, current = [], []
    for token in [*lexer, ";"]:
        if token in ("&&", "||", ";", "|"):
            env = list(itertools.takewhile(lambda t: re.match(r"^[A-Z_][A-Z0-9_]*=", t), current))
            argv = current[len(env) :]
            if argv:
                pairs = tuple(tuple(e.split("=", 1)) for e in env)
                commands.append(Command(doc, line, pairs, tuple(argv)))
            current = []
        else:
            current.append(token)
    return commands


def fenced_commands(doc: Path) -> list[Command]:
    commands, language, pending, start = [], None, "", 0
    for number, line in enumerate(doc.read_text().splitlines(), 1):
        fence = re.fullmatch(r"\s*```\s*(\w*).*", line)
        if fence:
            assert not pending, f"{doc.name}:{start}: a command ends in '\\' at the block's end"
            language = None if language is not None else fence.group(1)
            continue
        if language not in SHELL_FENCES:
            continue
        if language == "console":
            line = line.removeprefix("$ ")
        start = start if pending else number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        commands += _split(doc, start, pending + line)
        pending = ""
    return commands


def prose(doc: Path) -> str:
    """The doc with its fenced blocks blanked out (line numbers kept)."""

    def blank(block: re.Match) -> str:
        return "\n" * block.group().count("\n")

    return re.sub(r"```.*?```", blank, doc.read_text(), flags=re.S)


def inline_commands(doc: Path) -> list[Command]:
    """Code spans of the prose that start like a command."""
    text = prose(doc)
    commands = []
    for match in re.finditer(r"(?<!`)`([^`]+)`(?!`)", text):
        span = " ".join(match.group(1).split())
        if span.startswith(INLINE_STARTS):
            line = text.count("\n", 0, match.start()) + 1
            commands += _split(doc, line, span)
    return commands


def doc_commands(doc: Path) -> list[Command]:
    inline = inline_commands(doc) if doc == README else []
    return sorted(fenced_commands(doc) + inline, key=lambda c: c.line)


ALL = [c for doc in DOCS for c in doc_commands(doc)]
README_COMMANDS = doc_commands(README)


def program(command: Command) -> str:
    text = command.text
    for known in PROGRAMS:
        if text == known or text.startswith(known if known.endswith(".") else known + " "):
            return known
    pytest.fail(f"{command}: not a known program; commands start with one of {PROGRAMS}")


def run(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=os.environ.copy()
    )


# -- what a command names -----------------------------------------------------------------------


def options(argv: tuple[str, ...]) -> list[str]:
    """The ``-x``/``--xx`` options in ``argv`` (without ``=value``); not negative numbers."""
    return [a.split("=", 1)[0] for a in argv if re.match(r"^--?[A-Za-z]", a)]


def hydra_args(argv: tuple[str, ...]) -> tuple[dict[str, str], list[str], list[str]]:
    """``train.py``'s arguments: ``{long flag: value}`` of the flags with a value, the other
    flags, the overrides."""
    valued, flags, overrides = {}, [], []
    args = iter(argv)
    for arg in args:
        name, eq, value = arg.partition("=")
        if name in HYDRA_VALUE_FLAGS:
            valued[HYDRA_VALUE_FLAGS[name]] = value if eq else next(args)
        elif arg.startswith("-"):
            flags.append(arg)
        else:
            overrides.append(arg)
    return valued, flags, overrides


def eval_args(argv: tuple[str, ...]) -> tuple[Path, list[str]]:
    """``eval.py``'s checkpoint and ``key=value`` overrides."""
    checkpoint, overrides = None, []
    args = iter(argv)
    for arg in args:
        if arg in EVAL_VALUE_FLAGS:
            value = next(args)
            if arg in ("-c", "--checkpoint"):
                checkpoint = Path(value)
        elif not arg.startswith("-"):
            overrides.append(arg)
    assert checkpoint is not None, f"eval.py {shlex.join(argv)}: no -c CHECKPOINT"
    return checkpoint, overrides


def setup_extras() -> set[str]:
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "extras_require":
            return set(ast.literal_eval(node.value))
    raise AssertionError("setup.py has no extras_require")


def pytest_markers() -> set[str]:
    ini = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    return {m.split(":", 1)[0].strip() for m in ini["markers"]}


@cache
def package_source() -> str:
    files = [*(REPO / "diffusion_policy_mlx").rglob("*.py"), REPO / "train.py", REPO / "eval.py"]
    return "\n".join(p.read_text() for p in files)


def module_has_main(name: str) -> bool:
    try:
        spec = importlib.util.find_spec(name)
    except ModuleNotFoundError as missing:  # a parent package is missing
        pytest.fail(f"no module {name}: {missing}")
    assert spec is not None, f"no module {name}"
    if spec.submodule_search_locations is not None:
        return importlib.util.find_spec(f"{name}.__main__") is not None
    return (
        re.search(r"""__name__\s*==\s*["']__main__["']""", Path(spec.origin).read_text())
        is not None
    )


def clones(doc: Path) -> dict[str, str]:
    """``{folder: url}`` of the doc's ``git clone URL FOLDER`` commands."""
    return {
        c.argv[3]: c.argv[2]
        for c in doc_commands(doc)
        if c.argv[:2] == ("git", "clone") and len(c.argv) == 4
    }


def config_dir(command: Command, given: str | None, upstream_config: Upstream) -> Path:
    """The config folder a ``train.py`` command reads: ``config/`` or its ``--config-dir``. A
    folder inside a checkout of upstream that an earlier ``git clone`` of the doc makes is read
    from the copy of upstream's config folder in the test fixtures."""
    if given is None:
        return REPO / "config"
    if (REPO / given).is_dir():
        return REPO / given
    for folder, url in clones(command.doc).items():
        inside = Path(given).relative_to(folder) if given.startswith(folder + "/") else None
        if url.removesuffix(".git") == UPSTREAM_REPO and inside == Path("diffusion_policy/config"):
            return upstream_config()
    pytest.fail(f"{command}: --config-dir {given} does not exist and no git clone makes it")


def check_names(command: Command, upstream_config: Upstream) -> None:
    """Everything the command names exists (no subprocess)."""
    argv, kind = command.argv, program(command)
    for name, _ in command.env:
        if name.startswith("DP_MLX_"):
            assert re.search(rf"\b{name}\b", package_source()), f"{command}: no {name} is read"
    if kind == "mlx.launch":
        assert "--" in argv, f"{command}: mlx.launch needs `--` before the program"
        inner = argv[argv.index("--") + 1 :]
        assert shlex.join(inner).startswith("python train.py"), f"{command}: launch train.py"
        check_names(Command(command.doc, command.line, (), inner), upstream_config)
        return
    if kind.startswith("python ") and argv[1].endswith(".py"):
        assert (REPO / argv[1]).is_file(), f"{command}: no script {argv[1]}"
    if kind == "python -m diffusion_policy_mlx.":
        assert module_has_main(argv[2]), f"{command}: {argv[2]} cannot run as `python -m`"
    if kind == "python -c":
        compile(argv[2], command.where, "exec")
    if kind == "python train.py":
        valued, _, overrides = hydra_args(argv[2:])
        folder = config_dir(command, valued.get("--config-dir"), upstream_config)
        name = valued.get("--config-name")
        assert name is not None, f"{command}: name a config with --config-name"
        assert (folder / f"{name.removesuffix('.yaml')}.yaml").is_file(), (
            f"{command}: no config {name} in {folder}"
        )
        for override in overrides:
            if override.startswith("task="):
                for task in override.removeprefix("task=").split(","):
                    assert (folder / "task" / f"{task}.yaml").is_file(), (
                        f"{command}: no task {task}"
                    )
    if kind == "pip install":
        targets = [a for a in argv[2:] if not a.startswith("-")]
        assert "-e" in argv and targets, (
            f"{command}: install this repository with `pip install -e .`"
        )
        for target in targets:
            match = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", target)
            assert match, f"{command}: {target!r} is not this repository ('.' or '.[extra]')"
            extras = set(match.group(1).split(",")) if match.group(1) else set()
            assert extras <= setup_extras(), f"{command}: no extra {extras - setup_extras()}"
    if kind == "pytest":
        args = list(argv[1:])
        while args:
            arg = args.pop(0)
            if arg == "-m":
                words = set(re.findall(r"\w+", args.pop(0))) - {"not", "and", "or"}
                assert words <= pytest_markers(), f"{command}: no marker {words - pytest_markers()}"
            elif not arg.startswith("-"):
                assert (REPO / arg.split("::")[0]).exists(), f"{command}: no test path {arg}"
    if kind == "git clone":
        assert len(argv) in (3, 4) and argv[2].startswith("https://"), (
            f"{command}: git clone URL [DIR]"
        )


# -- running them -------------------------------------------------------------------------------


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """A multirun's jobs: the product of its sweep overrides' values."""
    choices = []
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.is_sweep_override():
            key = override.get_key_element()
            choices.append([f"{key}={v}" for v in override.sweep_string_iterator()])
        else:
            choices.append([override.input_line])
    return [list(job) for job in itertools.product(*choices)]


@cache
def compose_job(args: tuple[str, ...]) -> DictConfig:
    """The job config ``python train.py *args`` composes (``--cfg job --resolve``)."""
    proc = run([sys.executable, "train.py", *args, "--cfg", "job", "--resolve"])
    assert proc.returncode == 0, (
        f"Hydra cannot compose train.py {shlex.join(args)}:\n{proc.stderr[-3000:]}"
    )
    return OmegaConf.create(proc.stdout)


def compose(command: Command, upstream_config: Upstream) -> list[DictConfig]:
    """Hydra's composition of a ``train.py`` command, one config per job of a sweep."""
    argv = command.argv
    if argv[0] == "mlx.launch":
        argv = argv[argv.index("--") + 1 :]
    valued, flags, overrides = hydra_args(argv[2:])
    given = valued.get("--config-dir")
    args = [f"--config-name={valued['--config-name']}"]
    if given is not None:
        args.append(f"--config-dir={config_dir(command, given, upstream_config)}")
    multirun = bool({"-m", "--multirun"} & set(flags))
    flags = [f for f in flags if f not in ("-m", "--multirun")]
    for override in overrides:
        plugin = LAUNCHER_PLUGINS.get(override.removeprefix("hydra/launcher="))
        if override.startswith("hydra/launcher=") and plugin is not None:
            pytest.importorskip(plugin, reason='pip install -e ".[launchers]"')
    jobs = sweep_jobs(overrides) if multirun else [overrides]
    return [compose_job((*args, *flags, *job)) for job in jobs]


@cache
def help_text(prefix: tuple[str, ...]) -> str:
    proc = run([*prefix, "--help"])
    assert proc.returncode == 0, f"{shlex.join(prefix)} --help failed:\n{proc.stderr[-3000:]}"
    assert "usage:" in proc.stdout
    return proc.stdout


def check_options(command: Command, used: tuple[str, ...], help_output: str) -> None:
    for option in options(used):
        assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", help_output), (
            f"{command}: its program has no option {option}"
        )


def check_help(command: Command) -> None:
    """The command with ``--help`` appended parses, and its help lists every option it uses."""
    head = 3 if command.argv[1] == "-m" else 2
    check_options(command, command.argv[head:], help_text((sys.executable, *command.argv[1:])))


def data_present(name: str) -> bool:
    return (REPO / "data" / get_spec(name).path).exists()


def check_runs(command: Command, upstream_config: Upstream) -> None:
    kind, argv = program(command), command.argv
    if kind in ("python train.py", "mlx.launch"):
        if kind == "mlx.launch":
            check_options(command, argv[1 : argv.index("--")], help_text((MLX_LAUNCH,)))
            backend = argv[argv.index("--backend") + 1] if "--backend" in argv else "ring"
            assert backend in MLX_LAUNCH_BACKENDS, f"{command}: no mlx.launch backend {backend}"
        assert compose(command, upstream_config)
    elif argv[:3] == ("python", "-m", "diffusion_policy_mlx.accel"):
        proc = run([sys.executable, *argv[1:]])
        assert proc.returncode == 0 and "BLAS: " in proc.stdout, proc.stderr[-3000:]
    elif argv[:4] == ("python", "-m", "diffusion_policy_mlx.data", "verify") and data_present(
        argv[4]
    ):
        proc = run([sys.executable, *argv[1:]], timeout=120)
        assert proc.returncode == 0 and "matches the published" in proc.stdout, proc.stderr[-3000:]
    elif kind.startswith("python ") and kind != "python -c":
        check_help(command)
    # pip install, pytest, git clone, wget, python -c: what they name was checked; running them
    # would install, test, or reach the network


# -- the tests ----------------------------------------------------------------------------------


def _ids(commands: list[Command]) -> list[str]:
    return [f"{c.where}-" + re.sub(r"[^\w./=-]+", "_", c.text[:50]) for c in commands]


@pytest.fixture
def upstream_config(request: pytest.FixtureRequest) -> Upstream:
    """Upstream's config folder (conftest's ``upstream_config_dir``), asked for only by the
    commands that read it: only those skip where it is missing."""
    return lambda: request.getfixturevalue("upstream_config_dir")


def test_the_docs_have_commands():
    assert len(README_COMMANDS) >= 20
    assert {program(c) for c in README_COMMANDS} >= {
        "python train.py",
        "python eval.py",
        "python quickstart.py",
        "pip install",
        "mlx.launch",
        "pytest",
    }


@pytest.mark.parametrize("command", ALL, ids=_ids(ALL))
def test_every_command_names_what_exists(command, upstream_config):
    check_names(command, upstream_config)


@pytest.mark.parametrize("command", ALL, ids=_ids(ALL))
def test_every_command_composes_parses_or_runs(command, upstream_config):
    check_runs(command, upstream_config)


def test_readme_evaluates_checkpoints_its_own_commands_write(upstream_config):
    written: dict[Path, list[DictConfig]] = {}  # run folder -> its composed configs
    evaluated = 0
    for command in README_COMMANDS:
        kind, argv = program(command), command.argv
        if kind == "python train.py":
            for override in hydra_args(argv[2:])[2]:
                if override.startswith("hydra.run.dir="):
                    run_dir = Path(override.split("=", 1)[1])
                    written[run_dir] = compose(command, upstream_config)
        elif argv[:3] == ("python", "-m", "diffusion_policy_mlx.scripts.import_upstream"):
            written[Path(argv[argv.index("-o") + 1]).parent.parent] = []  # config: upstream's
        elif kind == "python eval.py":
            evaluated += 1
            checkpoint, overrides = eval_args(argv[2:])
            run_dir = checkpoint.parent.parent
            assert checkpoint.parent.name == "checkpoints" and run_dir in written, (
                f"{command}: no README command before it writes {checkpoint} "
                f"(run folders written: {', '.join(map(str, written))})"
            )
            keys = [o.split("=", 1)[0] for o in overrides]
            for cfg in written[run_dir]:
                for key in keys:
                    if key != "trusted_targets":
                        missing = OmegaConf.select(cfg, key, default=KeyError) is KeyError
                        assert not missing, f"{command}: the run's config has no key {key}"
    assert evaluated >= 2


def test_readme_test_commands_are_what_ci_runs():
    readme = {tuple(a for a in c.argv if a != "-q") for c in README_COMMANDS}
    ci_lines = [
        line.strip()
        for line in (REPO / ".ci/run").read_text().splitlines()
        if re.match(r"\s*(pytest\b|python -m |pip install .*-e )", line)
    ]
    assert any(line.startswith("pytest") for line in ci_lines)
    for line in ci_lines:
        argv = tuple(a for a in shlex.split(line) if a != "-q")
        assert argv in readme, f".ci/run runs `{line}`, which README.md does not show"


def test_readme_is_a_few_screens_for_users():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    assert not INTERNAL_WORDS.search(text), INTERNAL_WORDS.search(text)
    assert not re.search(r"<\w+>|\b(TODO|TBD|FIXME|XXX)\b|\b[A-Z]+_(MINUTES|SCORE)\b", text)


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_docs_are_not_dated(doc):
    assert not DATED.search(doc.read_text()), f"{doc.name}: {DATED.search(doc.read_text())}"


def anchors(doc: Path) -> set[str]:
    """The anchors GitHub gives the doc's headings: lower case, punctuation dropped, spaces to
    hyphens."""
    headings = re.findall(r"^#+ (.+)$", prose(doc), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_links_and_images_point_at_files_and_headings(doc):
    for path, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", doc.read_text()):
        if re.match(r"^[a-z]+://", path):
            continue
        target = doc.parent / path if path else doc
        assert target.exists(), f"{doc.name}: {path} does not exist"
        if anchor:
            assert anchor in anchors(target), f"{doc.name}: no heading #{anchor} in {target.name}"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("pyhton train.py --config-name=x", "not a known program"),
        ("python train.py --config-name=train_diffusion_unet_lowdim_workspac", "no config"),
        (
            "python train.py --config-name=train_diffusion_unet_lowdim_workspace task=pusht",
            "no task",
        ),
        (
            "python train.py --config-name=train_diffusion_unet_lowdim_workspace training.num_epoch=3",
            "Hydra cannot compose",
        ),
        (
            "python train.py -m --config-name=train_diffusion_unet_lowdim_workspace "
            "training.seed=1,2 hydra/launcher=joblb",
            "Hydra cannot compose",
        ),
        (
            "mlx.launch -n 2 --backend rng -- python train.py "
            "--config-name=train_diffusion_unet_lowdim_workspace",
            "no mlx.launch backend",
        ),
        ("python eval.py -c run/checkpoints/latest.ckpt -o out --overwrit", "no option --overwrit"),
        ("python -m diffusion_policy_mlx.data downlaod pusht", "--help failed"),
        ("python -m diffusion_policy_mlx.acel", "no module"),
        ("python -m diffusion_policy_mlx.sripts.plot_training", "no module"),
        ("pip install -e '.[cud]'", "no extra"),
        ("pytest -m slw", "no marker"),
        ("DP_MLX_CPU_STREAM=1 python eval.py -c run/checkpoints/latest.ckpt -o out", "DP_MLX_"),
    ],
)
def test_a_typo_in_a_command_fails(line, message, upstream_config):
    (command,) = _split(README, 1, line)
    with pytest.raises((AssertionError, pytest.fail.Exception), match=message):
        check_names(command, upstream_config)
        check_runs(command, upstream_config)


def python_blocks(doc: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", doc.read_text(), flags=re.S | re.M)


def test_readme_python_runs_on_a_checkpoint_train_py_wrote(tiny_lowdim_checkpoint, tmp_path):
    """Each ``python`` block of the README runs as written, its checkpoint path pointed at a
    real run; the shapes its comments promise are checked on what it leaves behind."""
    blocks = python_blocks(README)
    assert blocks, "README.md has no python block"
    for block in blocks:
        paths = re.findall(r'"(outputs/[^"]+\.ckpt)"', block)
        assert paths, f"README python block names no checkpoint:\n{block}"
        for path in paths:
            block = block.replace(path, str(tiny_lowdim_checkpoint))
        script = tmp_path / "readme_block.py"
        script.write_text(block + "\nassert tuple(action.shape) == (1, 8, 2), action.shape\n")
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]

"""Compare ``bench_policy.py`` between two checkouts of this project, alternating runs.

    git worktree add --detach ../before OLD_COMMIT
    python benchmarks/before_after.py ../before . --rounds 3 -- --no-upstream --policies lowdim

Each round runs ``benchmarks/bench_policy.py`` once from checkout A and once from checkout B
(each in its own process, with that checkout first on ``PYTHONPATH``; A first in rounds 1, 3,
..., B first in rounds 2, 4, ...), so that a machine whose speed drifts hits both alike.
Arguments after ``--`` go to every ``bench_policy.py`` run; with ``--json`` the runs so far are
written after every round. The table gives, per policy and measurement, the median over rounds of each run's median and B/A.
A checkout needs its own built extension (``diffusion_policy_mlx/*.so``) where it uses one.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def run_once(tree: Path, bench_args: list[str], out: Path) -> dict:
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")])
    )
    cmd = [
        sys.executable,
        str(tree / "benchmarks/bench_policy.py"),
        *bench_args,
        "--json",
        str(out),
    ]
    subprocess.run(cmd, cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def rows(runs: dict[str, list[dict]]) -> list[dict]:
    """Per policy and measurement, every run's median of each side."""
    return [
        {
            "policy": res["policy"],
            "measurement": res["measurement"],
            "a": [run["results"][i]["ours_median_s"] for run in runs["A"]],
            "b": [run["results"][i]["ours_median_s"] for run in runs["B"]],
        }
        for i, res in enumerate(runs["A"][0]["results"])
    ]


def write_json(path: Path, trees: dict[str, Path], runs: dict[str, list[dict]]) -> None:
    trees_out = {k: str(v) for k, v in trees.items()}
    path.write_text(json.dumps({"trees": trees_out, "rows": rows(runs)}, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="checkout A (before)")
    parser.add_argument("b", type=Path, help="checkout B (after)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="write every run's results here")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    bench_args = argv[split + 1 :]
    trees = {"A": args.a.resolve(), "B": args.b.resolve()}

    runs: dict[str, list[dict]] = {"A": [], "B": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            # neither side always runs second
            for side in ("A", "B") if r % 2 == 0 else ("B", "A"):
                out = Path(tmp) / f"{side}{r}.json"
                runs[side].append(run_once(trees[side], bench_args, out))
                print(f"round {r + 1}/{args.rounds} {side} done", file=sys.stderr, flush=True)
            if args.json is not None:
                # after every round, so that a run cut short still leaves what it measured
                write_json(args.json, trees, runs)

    print(f"A: {trees['A']}\nB: {trees['B']}")
    for key, value in runs["B"][0]["machine"].items():
        print(f"{key}: {value}")
    print()
    print("| policy | measurement | A median (s) | B median (s) | B/A | A runs | B runs |")
    print("| --- | --- | ---: | ---: | ---: | --- | --- |")
    for res, row in zip(runs["A"][0]["results"], rows(runs), strict=True):
        a, b = row["a"], row["b"]
        ma, mb = statistics.median(a), statistics.median(b)
        fmt = " ".join(f"{x:.4f}" for x in a), " ".join(f"{x:.4f}" for x in b)
        print(
            f"| {res['policy']} | {res['label']} | {ma:.4f} | {mb:.4f} | {mb / ma:.2f} "
            f"| {fmt[0]} | {fmt[1]} |"
        )


if __name__ == "__main__":
    main()

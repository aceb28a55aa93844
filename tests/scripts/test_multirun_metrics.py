import json

import pytest

from diffusion_policy_mlx.scripts.multirun_metrics import main, sweep_metrics


def _job(sweep, name, overrides, scores):
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    lines = [{"train_loss": 1.0, "epoch": e} for e in range(2)]
    lines += [
        {"train_loss": 0.5, "epoch": 2 + i, "test/mean_score": s} for i, s in enumerate(scores)
    ]
    (job / "logs.json.txt").write_text("".join(json.dumps(r) + "\n" for r in lines))


def test_groups_seeds_and_aggregates_max_and_last_k(tmp_path):
    _job(tmp_path, "0", ["task=a", "training.seed=1"], [0.2, 0.9, 0.6, 0.8])
    _job(tmp_path, "1", ["task=a", "training.seed=2"], [0.4, 0.5, 0.7, 0.6])
    _job(tmp_path, "2", ["task=b", "training.seed=1"], [0.1, 0.3])
    a, b = sweep_metrics(tmp_path, k=2)
    assert (a.config, a.n_seeds, b.config, b.n_seeds) == ("task=a", 2, "task=b", 1)
    # seed 1: max 0.9, last two (0.6, 0.8) -> 0.7; seed 2: max 0.7, last two -> 0.65
    assert a.max_mean == pytest.approx(0.8) and a.max_std == pytest.approx(0.1)
    assert a.last_k_mean == pytest.approx(0.675) and a.last_k_std == pytest.approx(0.025)
    assert (b.max_mean, b.max_std, b.last_k_mean) == pytest.approx((0.3, 0.0, 0.2))


def test_cli_prints_a_markdown_table(tmp_path, capsys):
    _job(tmp_path, "0", ["training.seed=3"], [0.25, 0.75])
    main([str(tmp_path), "-k", "1"])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "| configuration | seeds | max test/mean_score | mean of last 1 |"
    assert out[2] == "| (defaults) | 1 | 0.750 ± 0.000 | 0.750 ± 0.000 |"


def test_fewer_values_than_k_says_how_many_were_averaged(tmp_path, capsys):
    _job(tmp_path, "0", ["task=a", "training.seed=1"], [0.2, 0.4])
    _job(tmp_path, "1", ["task=a", "training.seed=2"], [0.1, 0.3, 0.5])
    _job(tmp_path, "2", ["task=b", "training.seed=1"], [0.6, 0.8])
    a, b = sweep_metrics(tmp_path, k=10)
    assert (a.n_last, b.n_last) == ((2, 3), (2, 2))
    assert a.last_k_mean == pytest.approx((0.3 + 0.3) / 2)
    main([str(tmp_path), "-k", "10"])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "| configuration | seeds | max test/mean_score | mean of last k |"
    assert out[2] == "| task=a | 2 | 0.450 ± 0.050 | 0.300 ± 0.000 (k=2-3) |"
    assert out[3] == "| task=b | 1 | 0.800 ± 0.000 | 0.700 ± 0.000 (k=2) |"


def test_errors_name_the_folder_and_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no \\*/logs.json.txt"):
        sweep_metrics(tmp_path)
    _job(tmp_path, "0", ["training.seed=1"], [])
    with pytest.raises(ValueError, match="0/logs.json.txt: no 'test/mean_score' values"):
        sweep_metrics(tmp_path)

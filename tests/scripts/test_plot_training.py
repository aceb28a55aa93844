import json

import numpy as np
import pytest

from diffusion_policy_mlx.scripts.plot_training import main, read_curves, read_eval_score


def _write_log(path, records, partial_tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + partial_tail)


def test_read_curves_takes_each_epochs_last_record(tmp_path):
    log = tmp_path / "logs.json.txt"
    records = [
        {"train_loss": 1.0, "global_step": 0, "epoch": 0},
        {"train_loss": 0.8, "global_step": 1, "epoch": 0, "test/mean_score": 0.1},
        {"train_loss": 0.5, "global_step": 2, "epoch": 1},
        {"train_loss": 0.4, "global_step": 3, "epoch": 1, "val_loss": 0.3},
        {"train_loss": 0.2, "global_step": 4, "epoch": 2, "test/mean_score": 0.7},
    ]
    _write_log(log, records, partial_tail='{"train_loss": 9')  # crash mid-line is ignored
    curves = read_curves(log)
    np.testing.assert_array_equal(curves.epochs, [0, 1, 2])
    np.testing.assert_allclose(curves.train_loss, [0.8, 0.4, 0.2])
    np.testing.assert_array_equal(curves.score_epochs, [0, 2])
    np.testing.assert_allclose(curves.test_mean_score, [0.1, 0.7])
    np.testing.assert_array_equal(curves.val_epochs, [1])
    np.testing.assert_allclose(curves.val_loss, [0.3])


def test_cli_writes_a_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    log = tmp_path / "logs.json.txt"
    _write_log(log, [{"train_loss": 0.5, "epoch": 0, "test/mean_score": 0.25}])
    out = tmp_path / "plots" / "curves.png"
    main([str(log), "-o", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "best test/mean_score 0.250" in capsys.readouterr().out


def test_a_file_without_training_records_is_refused(tmp_path):
    log = tmp_path / "logs.json.txt"
    _write_log(log, [{"val_loss": 1.0}])
    with pytest.raises(ValueError, match="no records with 'train_loss'"):
        read_curves(log)


def test_cli_adds_eval_scores(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    log = tmp_path / "logs.json.txt"
    _write_log(log, [{"train_loss": 0.5, "epoch": e, "val_loss": 0.4} for e in range(3)])
    eval_log = tmp_path / "eval_log.json"
    eval_log.write_text(json.dumps({"test/mean_score": 0.8125, "train/mean_score": 0.5}))
    out = tmp_path / "curves.png"
    main([str(log), "-o", str(out), "--eval", f"3={eval_log}"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "eval.py 0.812 (epoch 3)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "spec, message",
    [("eval_log.json", "expected EPOCH=PATH"), ("x=eval_log.json", "expected EPOCH=PATH")],
)
def test_bad_eval_spec_is_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        read_eval_score(spec)


def test_eval_log_without_score_is_refused(tmp_path):
    path = tmp_path / "logs.json.txt"
    path.write_text(json.dumps({"train_loss": 1.0}))
    with pytest.raises(ValueError, match="has no 'test/mean_score'"):
        read_eval_score(f"5={path}")

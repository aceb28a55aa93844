import json
import logging

import numpy as np
import pytest

from diffusion_policy_mlx.common.json_logger import JsonLogger, read_json_log


def test_logs_numbers_one_line_each(tmp_path):
    path = tmp_path / "logs.json.txt"
    with JsonLogger(path) as logger:
        logger.log({"train_loss": np.float32(0.5), "global_step": np.int64(3), "video": "a.mp4"})
        logger.log({"train_loss": 0.25, "global_step": 4, "flag": True})
        assert logger.get_last_log() == {"train_loss": 0.25, "global_step": 4, "flag": 1}
    lines = path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"train_loss": 0.5, "global_step": 3},
        {"train_loss": 0.25, "global_step": 4, "flag": 1},
    ]
    assert isinstance(json.loads(lines[0])["global_step"], int)


def test_appends_and_drops_partial_line_from_a_crash(tmp_path):
    path = tmp_path / "logs.json.txt"
    path.write_text('{"global_step": 0}\n{"global_step": 1}\n{"global_st')
    with JsonLogger(path) as logger:
        assert logger.get_last_log() == {"global_step": 1}
        logger.log({"global_step": 2})
    assert read_json_log(path) == [{"global_step": s} for s in range(3)]


def test_resume_step_drops_records_logged_after_the_checkpoint(tmp_path):
    path = tmp_path / "logs.json.txt"
    path.write_text("".join(json.dumps({"global_step": s, "x": s * 0.5}) + "\n" for s in range(6)))
    with JsonLogger(path, resume_step=4) as logger:
        assert logger.get_last_log() == {"global_step": 3, "x": 1.5}
        logger.log({"global_step": 4, "x": 9.0})
    assert [r["global_step"] for r in read_json_log(path)] == [0, 1, 2, 3, 4]
    assert read_json_log(path)[-1]["x"] == 9.0


def test_intact_file_is_not_rewritten(tmp_path):
    path = tmp_path / "logs.json.txt"
    path.write_text('{"global_step": 0}\n')
    inode = path.stat().st_ino
    with JsonLogger(path, resume_step=5):
        pass
    assert path.stat().st_ino == inode
    assert path.read_text() == '{"global_step": 0}\n'


def test_read_json_log_filters_by_keys(tmp_path):
    path = tmp_path / "logs.json.txt"
    path.write_text('{"a": 1}\n{"b": 2}\n\n{"a": 3, "b": 4}\n{"a": 5')
    assert read_json_log(path, required_keys=["b"]) == [{"b": 2}, {"a": 3, "b": 4}]
    assert read_json_log(path) == [{"a": 1}, {"b": 2}, {"a": 3, "b": 4}]


def test_log_before_start_is_an_error(tmp_path):
    with pytest.raises(RuntimeError, match="not started"):
        JsonLogger(tmp_path / "x").log({"a": 1})


def _lines(*records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def test_resume_skips_damaged_lines_with_a_warning(tmp_path, caplog):
    path = tmp_path / "logs.json.txt"
    damaged = '{"global_step": 2, "x"\n'  # complete line, broken JSON (e.g. a torn write)
    path.write_text(
        _lines({"global_step": 0}, {"global_step": 1})
        + damaged
        + _lines({"global_step": 2}, [3], {"global_step": "4"})
        + "\x00\x00\x00\n"
    )
    with caplog.at_level(logging.WARNING), JsonLogger(path, resume_step=3) as logger:
        assert logger.get_last_log() == {"global_step": 2}
        logger.log({"global_step": 3})
    assert "4 damaged line(s)" in caplog.text and "line 3, 5, 6, 7)" in caplog.text
    assert str(path) in caplog.text
    assert read_json_log(path) == [{"global_step": s} for s in range(4)]


def test_resume_truncates_past_the_step_even_after_a_damaged_last_line(tmp_path, caplog):
    path = tmp_path / "logs.json.txt"
    path.write_text(_lines(*({"global_step": s} for s in range(8))) + "}{\n")
    with caplog.at_level(logging.WARNING), JsonLogger(path, resume_step=5):
        pass
    assert read_json_log(path) == [{"global_step": s} for s in range(5)]


def test_read_json_log_skips_damaged_lines_with_one_warning(tmp_path, caplog):
    path = tmp_path / "logs.json.txt"
    path.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with caplog.at_level(logging.WARNING):
        assert read_json_log(path) == [{"a": 1}, {"a": 2}]
    assert len(caplog.records) == 1 and "line 2" in caplog.text


def test_a_fresh_log_sets_the_old_one_aside(tmp_path, caplog):
    path = tmp_path / "logs.json.txt"
    old = _lines(*({"global_step": s} for s in range(7)))
    path.write_text(old)
    (tmp_path / "logs.json.txt.1").write_text("an even older run\n")
    with caplog.at_level(logging.WARNING), JsonLogger(path, fresh=True) as logger:
        assert logger.get_last_log() is None
        logger.log({"global_step": 0})
    assert read_json_log(path) == [{"global_step": 0}]
    assert (tmp_path / "logs.json.txt.2").read_text() == old
    assert (tmp_path / "logs.json.txt.1").read_text() == "an even older run\n"
    assert "kept as" in caplog.text and "logs.json.txt.2" in caplog.text


def test_a_fresh_log_over_an_empty_file_keeps_no_copy(tmp_path):
    path = tmp_path / "logs.json.txt"
    path.write_text("")
    with JsonLogger(path, fresh=True) as logger:
        logger.log({"global_step": 0})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs.json.txt"]

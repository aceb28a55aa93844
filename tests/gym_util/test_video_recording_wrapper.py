"""VideoRecorder writes decodable h264 mp4s; VideoRecordingWrapper records the right frames."""

from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from counter_env import FRAME_SIZE, CounterEnv

from diffusion_policy_mlx.gym_util.video_recording_wrapper import (
    VideoRecorder,
    VideoRecordingWrapper,
)


def decode(path: Path) -> tuple[dict, np.ndarray]:
    """(ffmpeg's metadata, frames (N, H, W, 3) uint8) of a video file."""
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = reader.__next__()
    width, height = meta["size"]
    frames = [np.frombuffer(f, dtype=np.uint8).reshape(height, width, 3) for f in reader]
    return meta, np.stack(frames)


def test_recorder_writes_h264(tmp_path):
    recorder = VideoRecorder.create_h264(fps=10, crf=22)
    path = tmp_path / "a.mp4"
    recorder.start(path)
    assert recorder.is_ready()
    levels = [0, 60, 120, 180, 240]
    for level in levels:
        recorder.write_frame(np.full((32, 48, 3), level, dtype=np.uint8))
    recorder.stop()
    assert not recorder.is_ready()

    meta, frames = decode(path)
    assert meta["codec"] == "h264"
    assert meta["fps"] == 10
    assert frames.shape == (5, 32, 48, 3)
    # flat grey frames survive yuv420p + x264 within a couple of levels
    np.testing.assert_allclose(frames.mean(axis=(1, 2, 3)), levels, atol=2)


def test_recorder_rejects_bad_frames(tmp_path):
    recorder = VideoRecorder.create_h264(fps=10)
    with pytest.raises(RuntimeError, match="start"):
        recorder.write_frame(np.zeros((8, 8, 3), np.uint8))
    recorder.start(tmp_path / "b.mp4")
    with pytest.raises(ValueError, match="uint8"):
        recorder.write_frame(np.zeros((8, 8, 3), np.float32))
    recorder.write_frame(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="same size"):
        recorder.write_frame(np.zeros((16, 8, 3), np.uint8))
    recorder.stop()


def test_wrapper_records_every_second_step(tmp_path):
    path = tmp_path / "media" / "ep.mp4"
    env = VideoRecordingWrapper(
        CounterEnv(goal=100),
        VideoRecorder.create_h264(fps=10),
        file_path=path,
        steps_per_render=2,
    )
    env.reset()
    for _ in range(5):
        env.step(np.array([1.0]))
    # upstream's count: reset is step 1, so steps t = 1, 3, 5 are recorded
    assert env.stop_recording() == str(path)
    meta, frames = decode(path)
    assert frames.shape == (3, *FRAME_SIZE, 3)
    np.testing.assert_allclose(frames.mean(axis=(1, 2, 3)), [40, 120, 200], atol=2)


def test_reset_finishes_the_video_and_none_records_nothing(tmp_path):
    path = tmp_path / "ep.mp4"
    env = VideoRecordingWrapper(CounterEnv(goal=100), VideoRecorder.create_h264(fps=10))
    env.reset()
    env.step(np.array([1.0]))
    assert env.stop_recording() is None
    assert list(tmp_path.iterdir()) == []

    env.file_path = path
    env.reset()
    for _ in range(4):
        env.step(np.array([1.0]))
    env.reset()  # closes the file; nothing recorded until the next step
    _, frames = decode(path)
    assert len(frames) == 4

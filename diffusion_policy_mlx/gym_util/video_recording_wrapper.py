"""Record an env's rendered frames to an h264 mp4 (upstream's VideoRecordingWrapper, VideoRecorder).

Encoding runs in an ``ffmpeg`` subprocess (the binary that ships with ``imageio-ffmpeg``), which
is fed raw RGB frames through a pipe, so recording costs the env process little more than a copy.
"""

from collections.abc import Generator
from pathlib import Path
from typing import Any

import gymnasium as gym
import imageio_ffmpeg
import numpy as np


class VideoRecorder:
    """Writes ``(H, W, 3)`` uint8 frames to a video file, one file per ``start``/``stop``.

    ``output_params`` are extra ffmpeg output options (e.g. ``["-crf", "22"]``); use
    :meth:`create_h264` for upstream's h264 settings.
    """

    def __init__(
        self,
        fps: float,
        codec: str = "libx264",
        input_pix_fmt: str = "rgb24",
        output_pix_fmt: str = "yuv420p",
        output_params: list[str] | None = None,
    ):
        self.fps = fps
        self.codec = codec
        self.input_pix_fmt = input_pix_fmt
        self.output_pix_fmt = output_pix_fmt
        self.output_params = list(output_params or [])
        self.file_path: Path | None = None
        self.writer: Generator[None, bytes, None] | None = None
        self.shape: tuple[int, ...] | None = None

    @classmethod
    def create_h264(
        cls,
        fps: float,
        input_pix_fmt: str = "rgb24",
        output_pix_fmt: str = "yuv420p",
        crf: int = 18,
        profile: str = "high",
        thread_count: int = 1,
    ) -> "VideoRecorder":
        """An H.264 recorder; ``crf`` is x264's constant rate factor (lower: better, larger)."""
        return cls(
            fps=fps,
            codec="libx264",
            input_pix_fmt=input_pix_fmt,
            output_pix_fmt=output_pix_fmt,
            output_params=["-crf", str(crf), "-profile:v", profile, "-threads", str(thread_count)],
        )

    def is_ready(self) -> bool:
        """Whether a file is open for writing."""
        return self.file_path is not None

    def start(self, file_path: str | Path) -> None:
        """Open ``file_path`` for writing; the encoder starts with the first frame."""
        if self.is_ready():
            self.stop()
        self.file_path = Path(file_path)

    def write_frame(self, img: np.ndarray) -> None:
        """Append one ``(H, W, 3)`` uint8 frame; every frame of a file has the same size."""
        if not self.is_ready():
            raise RuntimeError("VideoRecorder.write_frame called before start(file_path)")
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3:
            raise ValueError(
                f"VideoRecorder expects (H, W, 3) uint8 frames, got {img.shape} {img.dtype} "
                f"for {self.file_path}"
            )
        if self.writer is None:
            self.shape = img.shape
            height, width = img.shape[:2]
            self.writer = imageio_ffmpeg.write_frames(
                str(self.file_path),
                (width, height),
                pix_fmt_in=self.input_pix_fmt,
                pix_fmt_out=self.output_pix_fmt,
                fps=self.fps,
                codec=self.codec,
                # quality=None leaves the rate control to output_params (crf).
                quality=None,
                # yuv420p needs even sizes; ffmpeg pads odd ones up by a pixel.
                macro_block_size=2,
                ffmpeg_log_level="error",
                output_params=self.output_params,
            )
            self.writer.send(None)
        elif img.shape != self.shape:
            raise ValueError(
                f"frame size changed from {self.shape} to {img.shape} while recording "
                f"{self.file_path}; all frames of one video must have the same size"
            )
        self.writer.send(np.ascontiguousarray(img).tobytes())

    def stop(self) -> None:
        """Finish and close the current file (no-op when not recording)."""
        if self.writer is not None:
            self.writer.close()
        self.file_path = None
        self.writer = None
        self.shape = None

    def __del__(self) -> None:
        self.stop()


class VideoRecordingWrapper(gym.Wrapper):
    """Records ``env.render()`` after every ``steps_per_render``-th step to ``file_path``.

    With ``file_path=None`` nothing is recorded. ``reset`` closes the previous video; the new one
    starts with the first recorded step. As upstream counts (the reset counts as step 1), an
    episode of ``N`` steps gives ``(N + 1) // steps_per_render`` frames: all ``N`` when
    ``steps_per_render=1``; the reset itself is not recorded. The wrapped env must render
    ``(H, W, 3)`` uint8 frames (``render_mode="rgb_array"``).
    """

    def __init__(
        self,
        env: gym.Env,
        video_recorder: VideoRecorder,
        file_path: str | Path | None = None,
        steps_per_render: int = 1,
    ):
        super().__init__(env)
        if steps_per_render < 1:
            raise ValueError(f"steps_per_render must be >= 1, got {steps_per_render}")
        self.video_recorder = video_recorder
        self.file_path = file_path
        self.steps_per_render = steps_per_render
        self.step_count = 0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        result = self.env.reset(seed=seed, options=options)
        self.step_count = 1
        self.video_recorder.stop()
        return result

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        result = self.env.step(action)
        self.step_count += 1
        if self.file_path is not None and self.step_count % self.steps_per_render == 0:
            if not self.video_recorder.is_ready():
                Path(self.file_path).parent.mkdir(parents=True, exist_ok=True)
                self.video_recorder.start(self.file_path)
            self.video_recorder.write_frame(self.env.render())
        return result

    def stop_recording(self) -> str | None:
        """Finish the current video; returns its path, or ``None`` when no video was written.

        Upstream overloads ``render()`` for this; here ``render()`` keeps gymnasium's meaning.
        """
        self.video_recorder.stop()
        if self.file_path is None or not Path(self.file_path).is_file():
            return None
        return str(self.file_path)

    def close(self) -> None:
        self.video_recorder.stop()
        super().close()

"""PushT image demonstrations as ``(obs, action)`` windows (upstream's ``PushTImageDataset``)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from diffusion_policy_mlx.common.data_checks import image_scale
from diffusion_policy_mlx.dataset.base_dataset import BaseImageDataset
from diffusion_policy_mlx.dataset.sequence_dataset import ReplaySequenceDataset
from diffusion_policy_mlx.model.common.normalize_util import get_image_range_normalizer
from diffusion_policy_mlx.model.common.normalizer import LinearNormalizer


class PushTImageDataset(ReplaySequenceDataset, BaseImageDataset):
    """Windows of ``horizon`` steps: ``obs.image`` ``(T, 3, H, W)`` float32 in ``[0, 1]``,
    ``obs.agent_pos`` ``(T, 2)`` and ``action`` ``(T, 2)``, from the zarr keys ``img``
    (``(N, H, W, 3)``: uint8 or float 0..255, or float already in ``[0, 1]``, see
    :func:`~diffusion_policy_mlx.common.data_checks.image_scale`), ``state`` and ``action``.

    Split and ``zarr_path`` semantics: :class:`ReplaySequenceDataset`. With
    ``n_obs_steps`` (not an upstream argument; ``None`` keeps upstream's windows) the
    observations hold only the first ``To = n_obs_steps`` steps, ``(To, 3, H, W)`` and
    ``(To, 2)``, equal to the full window's first ``To``: all a policy reads of them.
    """

    def __init__(
        self,
        zarr_path: str,
        horizon: int = 1,
        pad_before: int = 0,
        pad_after: int = 0,
        seed: int = 42,
        val_ratio: float = 0.0,
        max_train_episodes: int | None = None,
        n_obs_steps: int | None = None,
    ):
        super().__init__()
        self.open_buffer(zarr_path, ["img", "state", "action"])
        for key, rule, ok in [
            ("img", "(N, H, W, 3) RGB frames", lambda s: len(s) == 4 and s[-1] == 3),
            ("state", "(N, D>=2) with the agent (x, y) first", lambda s: len(s) == 2 and s[1] >= 2),
            ("action", "(N, Da)", lambda s: len(s) == 2),
        ]:
            shape = self.replay_buffer[key].shape
            if not ok(shape):
                raise ValueError(
                    f"{self.zarr_path}: data/{key} has shape {shape}; expected {rule}."
                )
        # what to divide the images by: uint8 and float 0..255 by 255, float [0, 1] by 1
        self.image_scale = image_scale(self.replay_buffer["img"], "img", self.replay_buffer.source)

        # The policies only see the first n_obs_steps observations; reading only those cuts the
        # image batch (the loader's and the host-to-device copy's main cost) by horizon/n_obs_steps.
        first_steps = {} if n_obs_steps is None else {"img": n_obs_steps, "state": n_obs_steps}
        self.split_episodes(
            horizon, pad_before, pad_after, seed, val_ratio, max_train_episodes, first_steps
        )

    def get_normalizer(self, mode: str = "limits", **kwargs) -> LinearNormalizer:
        """``action`` and ``agent_pos`` fitted on all episodes; ``image`` maps ``[0, 1]`` to
        ``[-1, 1]``."""
        normalizer = LinearNormalizer()
        normalizer.fit(
            data={
                "action": self.replay_buffer["action"],
                "agent_pos": self.replay_buffer["state"][..., :2],
            },
            last_n_dims=1,
            mode=mode,
            **kwargs,
        )
        normalizer["image"] = get_image_range_normalizer()
        return normalizer

    def _sample_to_data(self, sample: Mapping[str, np.ndarray]) -> dict:
        """Sampled arrays with leading axes ``(...)`` -> the sample dict.

        Scales the sampled ``img`` to ``[0, 1]`` in place (the sampler's gather is a fresh copy)
        rather than allocating a second image array; the channel axis moves by a view.
        """
        image = sample["img"].astype(np.float32, copy=False)
        if self.image_scale != 1:
            np.divide(image, self.image_scale, out=image)
        return {
            "obs": {
                "image": np.moveaxis(image, -1, -3),
                "agent_pos": sample["state"][..., :2].astype(np.float32),
            },
            "action": sample["action"].astype(np.float32),
        }

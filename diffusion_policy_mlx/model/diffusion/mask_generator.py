"""Which entries of a (B, T, action_dim + obs_dim) trajectory the lowdim policies condition on."""

import mlx.core as mx


class LowdimMaskGenerator:
    """Boolean conditioning mask over a trajectory whose last axis is ``[action, obs]``.

    Observation dims are visible for the first ``n_obs`` steps of each sample, ``n_obs`` being
    ``max_n_obs_steps`` (``fix_obs_steps``) or drawn uniformly from ``1..max_n_obs_steps`` per
    sample. With ``action_visible``, action dims are visible for the first ``n_obs - 1`` steps
    (the actions already taken).
    """

    def __init__(
        self,
        action_dim: int,
        obs_dim: int,
        max_n_obs_steps: int = 2,
        fix_obs_steps: bool = True,
        action_visible: bool = False,
    ):
        if max_n_obs_steps < 1:
            raise ValueError(
                f"LowdimMaskGenerator: max_n_obs_steps must be >= 1, got {max_n_obs_steps}"
            )
        self.action_dim = action_dim
        self.obs_dim = obs_dim
        self.max_n_obs_steps = max_n_obs_steps
        self.fix_obs_steps = fix_obs_steps
        self.action_visible = action_visible

    def __call__(self, shape: tuple[int, int, int], seed: int | mx.array | None = None) -> mx.array:
        """Mask of ``shape`` (B, T, D), dtype bool; True marks a conditioning entry.

        ``seed``: an int or an ``mx.random.key`` for the random observation counts
        (``fix_obs_steps=False``); None draws from MLX's global generator.
        """
        batch, horizon, dim = shape
        if dim != self.action_dim + self.obs_dim:
            raise ValueError(
                f"LowdimMaskGenerator: last dim of shape {tuple(shape)} must be action_dim + "
                f"obs_dim = {self.action_dim} + {self.obs_dim} = {self.action_dim + self.obs_dim}"
            )
        is_action_dim = mx.arange(dim) < self.action_dim  # (D,)

        if self.fix_obs_steps:
            obs_steps = mx.full((batch,), self.max_n_obs_steps)
        else:
            key = mx.random.key(seed) if isinstance(seed, int) else seed
            obs_steps = mx.random.randint(1, self.max_n_obs_steps + 1, (batch,), key=key)

        steps = mx.arange(horizon)[None, :, None]  # (1, T, 1)
        mask = (steps < obs_steps[:, None, None]) & ~is_action_dim
        if self.action_visible:
            action_steps = mx.maximum(obs_steps - 1, 0)
            mask = mask | ((steps < action_steps[:, None, None]) & is_action_dim)
        return mx.broadcast_to(mask, (batch, horizon, dim))

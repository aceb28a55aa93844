"""Workspaces: a config in, a trained policy out (see :mod:`.base_workspace`).

Importing this package registers the safe ``${eval:...}`` resolver (via ``config_compat``), so
configs resolve in any process that builds a workspace, Hydra launcher workers included.
"""

from diffusion_policy_mlx import config_compat  # noqa: F401  (registers the eval resolver)

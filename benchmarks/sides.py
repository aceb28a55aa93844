"""Build the same PushT policy twice, ours (MLX) and upstream's (PyTorch), for side-by-side timing.

Each side is built from its own configs with Hydra: ours from ``config/``, upstream's from
``diffusion_policy/config`` in the upstream checkout. Where both sides have the same
architecture, upstream's freshly initialized weights (and its fitted normalizer) are copied into
ours with :func:`load_upstream_state_dict`, so both compute the same function.

A :class:`Side` exposes the four things the benchmark times as zero-argument callables that
block until the result is computed: a denoiser forward, ``predict_action``, and one training step
(loss, gradients, AdamW, EMA) on a fixed batch.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
import tempfile
import types
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import diffusion_policy_mlx.accel as accel

import hydra
import mlx.core as mx
import mlx.nn as nn
import numpy as np
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from diffusion_policy_mlx.common.batch_split import batch_rows
from diffusion_policy_mlx.common.upstream import load_upstream_state_dict
from diffusion_policy_mlx.config_compat import translate_config
from diffusion_policy_mlx.workspace.base_workspace import TrainStep

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "config"
DDIM_CONFIG = "train_diffusion_unet_ddim_hybrid_workspace"


@dataclass(frozen=True)
class PolicySpec:
    """Which configs build a benchmarked policy on each side."""

    key: str
    config_name: str
    task: str
    upstream_config_name: str
    # False when upstream's side is a stand-in of another architecture (no weight copy).
    same_weights: bool
    note: str = ""


SPECS = {
    "lowdim": PolicySpec(
        "lowdim",
        "train_diffusion_unet_lowdim_workspace",
        "pusht_lowdim",
        "train_diffusion_unet_lowdim_workspace",
        same_weights=True,
    ),
    "hybrid": PolicySpec(
        "hybrid",
        "train_diffusion_unet_hybrid_workspace",
        "pusht_image",
        "train_diffusion_unet_image_workspace",
        same_weights=False,
        note=(
            "upstream's hybrid policy needs robomimic; its side is upstream's "
            "DiffusionUnetImagePolicy with MultiImageObsEncoder (ResNet-18, GroupNorm) and the "
            "same U-Net, the comparable image policy (own weights)"
        ),
    ),
    "image": PolicySpec(
        "image",
        "train_diffusion_unet_image_workspace",
        "pusht_image",
        "train_diffusion_unet_image_workspace",
        same_weights=True,
    ),
}


def compose_config(config_dir: Path, name: str, task: str, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        return compose(name, overrides=[f"task={task}", *overrides])


# ---------------------------------------------------------------------------------------------
# Synthetic data, the same numpy arrays for both sides
# ---------------------------------------------------------------------------------------------


def synthetic_obs(cfg: DictConfig, batch: int, steps: int, seed: int) -> dict[str, np.ndarray]:
    """Observations shaped as the task's: ``{"obs": (B, T, Do)}`` for lowdim tasks, else one
    array per ``shape_meta.obs`` key (images (B, T, C, H, W) in [0, 1], low-dim in pixels)."""
    rng = np.random.default_rng(seed)
    if "shape_meta" not in cfg.task:
        return {"obs": rng.uniform(0, 512, (batch, steps, cfg.task.obs_dim)).astype(np.float32)}
    obs = {}
    for key, meta in cfg.task.shape_meta.obs.items():
        shape = (batch, steps, *meta.shape)
        high = 1.0 if meta.get("type", "low_dim") == "rgb" else 512.0
        obs[key] = rng.uniform(0, high, shape).astype(np.float32)
    return obs


def synthetic_batch(cfg: DictConfig, batch: int, seed: int) -> dict[str, Any]:
    """A training batch over the whole horizon, as the task's dataset returns it."""
    obs = synthetic_obs(cfg, batch, cfg.horizon, seed)
    action_dim = (
        cfg.task.action_dim if "action_dim" in cfg.task else cfg.task.shape_meta.action.shape[0]
    )
    action = np.random.default_rng(seed + 1).uniform(0, 512, (batch, cfg.horizon, action_dim))
    action = action.astype(np.float32)
    if "shape_meta" not in cfg.task:
        return {"obs": obs["obs"], "action": action}
    return {"obs": obs, "action": action}


# ---------------------------------------------------------------------------------------------
# Our side
# ---------------------------------------------------------------------------------------------


class Side:
    """One implementation's policy, EMA copy, optimizer and the calls the benchmark times."""

    name: str

    def forward(self, batch: int) -> Callable[[], None]:
        raise NotImplementedError

    def predict(self, obs: dict[str, np.ndarray], scheduler: str, steps: int) -> Callable[[], None]:
        raise NotImplementedError

    def train_loss(self, batch: dict[str, Any]) -> Callable[[], None]:
        """The training loss alone (train mode, random noise and timesteps), as the first phase
        of a training step."""
        raise NotImplementedError

    def train_loss_grad(self, batch: dict[str, Any]) -> Callable[[], None]:
        """The training loss and its gradients: a training step without AdamW and EMA."""
        raise NotImplementedError

    def train_step(self, batch: dict[str, Any]) -> Callable[[], None]:
        raise NotImplementedError

    def peak_memory(self, fn: Callable[[], None]) -> int:
        """Bytes held at the peak of one call of ``fn``."""
        raise NotImplementedError


class OursSide(Side):
    """Our MLX policy, built by the workspace class its config names (as ``train.py`` does)."""

    name = "ours"

    def __init__(self, spec: PolicySpec, device: str):
        overrides = [f"training.device={device}"]
        self.cfg = translate_config(
            compose_config(CONFIG_DIR, spec.config_name, spec.task, overrides)
        )
        ddim_cfg = translate_config(compose_config(CONFIG_DIR, DDIM_CONFIG, "pusht_image", []))
        self.ddim = hydra.utils.instantiate(ddim_cfg.policy.noise_scheduler)
        self.tmp = tempfile.TemporaryDirectory(prefix="bench_policy_")
        workspace_cls = hydra.utils.get_class(self.cfg._target_)
        accel.configure(device, self.cfg.get("accel"))
        self.workspace = workspace_cls(self.cfg, output_dir=self.tmp.name)
        self.workspace.accelerate(accel.apply)
        self.policy = self.workspace.model
        self.ddpm = self.policy.noise_scheduler
        self.ddpm_steps = self.policy.num_inference_steps

    def load_upstream(self, state_dict: dict[str, np.ndarray]) -> None:
        """Copy upstream's policy weights and normalizer into the policy and its EMA copy."""
        prefix = "normalizer."
        normalizer = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        for policy in (self.policy, self.workspace.ema_model):
            policy.normalizer.load_state_dict(normalizer)
            load_upstream_state_dict(policy, state_dict)

    def fit_normalizer(self, batch: dict[str, Any]) -> None:
        """Fit the normalizer on ``batch`` the way the task's dataset does (images: [0,1] range)."""
        from diffusion_policy_mlx.model.common.normalize_util import get_image_range_normalizer
        from diffusion_policy_mlx.model.common.normalizer import LinearNormalizer

        normalizer = LinearNormalizer()
        flat = {"action": batch["action"]}
        obs = batch["obs"]
        images = []
        if isinstance(obs, dict):
            for key, value in obs.items():
                if self.cfg.task.shape_meta.obs[key].get("type", "low_dim") == "rgb":
                    images.append(key)
                else:
                    flat[key] = value
        else:
            flat["obs"] = obs
        normalizer.fit(flat)
        for key in images:
            normalizer[key] = get_image_range_normalizer()
        self.policy.set_normalizer(normalizer)
        self.workspace.ema_model.set_normalizer(normalizer)

    def global_cond_dim(self) -> int:
        return self.policy.model.global_cond_dim

    def forward(self, batch: int) -> Callable[[], None]:
        model = self.policy.model
        x, t, cond = denoiser_inputs(
            batch, self.cfg.horizon, model.input_dim, model.global_cond_dim
        )
        x, t, cond = mx.array(x), mx.array(t), mx.array(cond)
        self.policy.eval()

        def run() -> None:
            mx.eval(model(x, t, global_cond=cond))

        return run

    def predict(self, obs: dict[str, np.ndarray], scheduler: str, steps: int) -> Callable[[], None]:
        policy = self.policy
        policy.eval()
        policy.noise_scheduler = self.ddim if scheduler == "ddim" else self.ddpm
        policy.num_inference_steps = steps
        obs_mx = {k: mx.array(v) for k, v in obs.items()}
        key = mx.random.key(0)

        def run() -> None:
            mx.eval(policy.predict_action(obs_mx, key=key)["action"])

        return run

    def _train_phase(self, batch: dict[str, Any], fn: Callable) -> Callable[[], None]:
        """``fn(batch)`` compiled as the training step compiles it: the batch split over the
        CPU streams, model and random state as inputs and outputs."""
        self.workspace.policy_train_mode()
        model = self.workspace.model
        split = model.batch_split
        state = [model.state, mx.random.state]
        compiled = mx.compile(partial(split.chunked_mean, fn), inputs=state, outputs=state)
        batch_mx = _tree_map(mx.array, batch)
        rows = batch_rows(batch_mx)

        def run() -> None:
            split.use_blas_threads(rows)
            mx.eval(compiled(batch_mx))

        return run

    def train_loss(self, batch: dict[str, Any]) -> Callable[[], None]:
        return self._train_phase(batch, self.workspace.model.compute_loss)

    def train_loss_grad(self, batch: dict[str, Any]) -> Callable[[], None]:
        model = self.workspace.model
        return self._train_phase(batch, nn.value_and_grad(model, model.compute_loss))

    def train_step(self, batch: dict[str, Any]) -> Callable[[], None]:
        ws = self.workspace
        ws.policy_train_mode()
        step = TrainStep(ws.model, ws.optimizer, 1, split=ws.model.batch_split)
        batch_mx = _tree_map(mx.array, batch)

        def run() -> None:
            loss, _ = step(batch_mx)
            ws.ema.step(ws.model)
            mx.eval(loss, step.state, ws.ema_model.parameters())

        return run

    def peak_memory(self, fn: Callable[[], None]) -> int:
        mx.reset_peak_memory()
        fn()
        return mx.get_peak_memory()


def denoiser_inputs(
    batch: int, horizon: int, input_dim: int, global_cond_dim: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noisy trajectory (B, T, Da), timesteps (B,) = 50 and global condition (B, G)."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((batch, horizon, input_dim)).astype(np.float32)
    cond = rng.standard_normal((batch, global_cond_dim)).astype(np.float32)
    return x, np.full((batch,), 50, np.int64), cond


def _tree_map(fn: Callable, tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _tree_map(fn, v) for k, v in tree.items()}
    return fn(tree)


# ---------------------------------------------------------------------------------------------
# Upstream's side
# ---------------------------------------------------------------------------------------------


def import_upstream(path: Path) -> None:
    """Put the upstream checkout on ``sys.path`` and import torch (and torchvision if present).

    PyPI's Linux torchvision wheels are CUDA builds; next to a CPU-only torch their compiled
    operators cannot load, and ``import torchvision`` then fails while registering fake kernels
    for those operators. Upstream uses only torchvision's Python models and transforms, so in
    that case the fake-kernel registrations are skipped.
    """
    if (
        not (path / "diffusion_policy" / "__init__.py").is_file()
        and not (path / "diffusion_policy" / "config").is_dir()
    ):
        raise FileNotFoundError(
            f"--upstream / DP_UPSTREAM_PATH={path}: no diffusion_policy package there; point it "
            "at a checkout of real-stanford/diffusion_policy"
        )
    sys.path.insert(0, str(path))
    import torch  # noqa: F401

    if importlib.util.find_spec("torchvision") is None:
        return
    try:
        import torchvision  # noqa: F401
    except RuntimeError as e:
        if "does not exist" not in str(e):
            raise
        for name in [m for m in sys.modules if m.startswith("torchvision")]:
            del sys.modules[name]
        sys.modules["torchvision._meta_registrations"] = types.ModuleType(
            "torchvision._meta_registrations"
        )
        import torchvision  # noqa: F401, F811


class UpstreamSide(Side):
    """Upstream's PyTorch policy, EMA and optimizer, built as its workspace builds them."""

    name = "upstream"

    def __init__(self, spec: PolicySpec, upstream_path: Path, device: str, seed: int = 0):
        import torch

        self.torch = torch
        self.device = torch.device("cuda" if device == "gpu" else "cpu")
        config_dir = upstream_path / "diffusion_policy" / "config"
        self.cfg = compose_config(config_dir, spec.upstream_config_name, spec.task, [])
        ddim_cfg = compose_config(config_dir, DDIM_CONFIG, "pusht_image", [])
        torch.manual_seed(seed)
        self.policy = hydra.utils.instantiate(self.cfg.policy)
        self.ddpm = self.policy.noise_scheduler
        self.ddim = hydra.utils.instantiate(ddim_cfg.policy.noise_scheduler)
        self.policy.to(self.device)
        self.ema_model = None
        self.ema = None
        self.optimizer = None

    def fit_normalizer(self, batch: dict[str, Any]) -> None:
        """Fit the normalizer on ``batch`` as upstream's PushT datasets do."""
        from diffusion_policy.common.normalize_util import get_image_range_normalizer
        from diffusion_policy.model.common.normalizer import LinearNormalizer

        torch = self.torch
        flat = {"action": torch.from_numpy(batch["action"])}
        images = []
        obs = batch["obs"]
        if isinstance(obs, dict):
            for key, value in obs.items():
                if self.cfg.task.shape_meta.obs[key].get("type", "low_dim") == "rgb":
                    images.append(key)
                else:
                    flat[key] = torch.from_numpy(value)
        else:
            flat["obs"] = torch.from_numpy(obs)
        normalizer = LinearNormalizer()
        normalizer.fit(flat, last_n_dims=1, mode="limits")
        for key in images:
            normalizer[key] = get_image_range_normalizer()
        self.policy.set_normalizer(normalizer)
        self.policy.to(self.device)

    def build_training(self) -> None:
        """EMA copy and optimizer, made after the normalizer is set (as the workspace does)."""
        self.ema_model = copy.deepcopy(self.policy)
        self.ema = hydra.utils.instantiate(self.cfg.ema, model=self.ema_model)
        self.optimizer = hydra.utils.instantiate(
            self.cfg.optimizer, params=self.policy.parameters()
        )

    def state_dict(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy() for k, v in self.policy.state_dict().items()}

    def compile_model(self, mode: str) -> None:
        """Put the denoiser under ``torch.compile(mode=mode)``, as a user would for inference."""
        self.policy.model = self.torch.compile(self.policy.model, mode=mode)

    def sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def forward(self, batch: int) -> Callable[[], None]:
        torch = self.torch
        model = self.policy.model
        x, t, cond = denoiser_inputs(
            batch, self.cfg.horizon, self.policy.model.final_conv[1].out_channels, cond_dim(model)
        )
        x, t, cond = (torch.from_numpy(a).to(self.device) for a in (x, t, cond))
        self.policy.eval()

        def run() -> None:
            with torch.inference_mode():
                model(x, t, global_cond=cond)
            self.sync()

        return run

    def predict(self, obs: dict[str, np.ndarray], scheduler: str, steps: int) -> Callable[[], None]:
        torch = self.torch
        policy = self.policy
        policy.eval()
        policy.noise_scheduler = self.ddim if scheduler == "ddim" else self.ddpm
        policy.num_inference_steps = steps
        obs_t = {k: torch.from_numpy(v).to(self.device) for k, v in obs.items()}

        def run() -> None:
            with torch.inference_mode():
                policy.predict_action(obs_t)
            self.sync()

        return run

    def _batch_tensors(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The numpy training batch as torch tensors on this side's device."""
        return _tree_map(lambda a: self.torch.from_numpy(a).to(self.device), batch)

    def train_loss(self, batch: dict[str, Any]) -> Callable[[], None]:
        policy = self.policy
        policy.train()
        batch_t = self._batch_tensors(batch)

        def run() -> None:
            policy.compute_loss(batch_t)  # with autograd recording, as in training
            self.sync()

        return run

    def train_loss_grad(self, batch: dict[str, Any]) -> Callable[[], None]:
        policy, optimizer = self.policy, self.optimizer
        policy.train()
        batch_t = self._batch_tensors(batch)

        def run() -> None:
            policy.compute_loss(batch_t).backward()
            optimizer.zero_grad()
            self.sync()

        return run

    def train_step(self, batch: dict[str, Any]) -> Callable[[], None]:
        policy, optimizer, ema = self.policy, self.optimizer, self.ema
        policy.train()
        batch_t = self._batch_tensors(batch)

        def run() -> None:
            loss = policy.compute_loss(batch_t)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            ema.step(policy)
            self.sync()

        return run

    def peak_memory(self, fn: Callable[[], None]) -> int:
        torch = self.torch
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            fn()
            return torch.cuda.max_memory_allocated()
        # CPU torch keeps no allocator statistics: the tensors torch holds (weights, EMA copy,
        # optimizer moments) plus how far the process's resident set grew during the call.
        held = _tensor_bytes(self.policy.state_dict().values())
        if self.optimizer is not None:
            held += _tensor_bytes(self.ema_model.state_dict().values())
            for state in self.optimizer.state.values():
                held += _tensor_bytes(v for v in state.values() if torch.is_tensor(v))
        status = Path("/proc/self/status")
        Path("/proc/self/clear_refs").write_text("5")  # resets the peak resident set (VmHWM)
        before = _status_kib(status, "VmRSS")
        fn()
        return held + max(0, _status_kib(status, "VmHWM") - before) * 1024


def cond_dim(model: Any) -> int:
    """Global-condition width of an upstream ConditionalUnet1D (its first FiLM input)."""
    dsed = model.diffusion_step_encoder[1].in_features
    return model.mid_modules[0].cond_encoder[1].in_features - dsed


def _tensor_bytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _status_kib(path: Path, field: str) -> int:
    for line in path.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(f"{path} has no {field} line")

"""The workspace: builds everything a config names and runs the one training loop.

Upstream copies its training loop into every ``train_*_workspace.py``; here it lives once, in
:meth:`BaseWorkspace.run`, and the five diffusion workspaces only say which policy, dataset and
runner types they expect. The loop keeps upstream's semantics: resume from
``checkpoints/latest.ckpt``, LR schedule stepped per optimizer update, gradient accumulation,
EMA, ``val_every`` validation loss, ``sample_every`` train-batch action MSE, ``rollout_every``
env rollouts, ``checkpoint_every`` top-k + latest checkpoints, ``training.debug``,
``max_train_steps``/``max_val_steps``, ``logs.json.txt`` and wandb.
"""

from __future__ import annotations

import copy
import logging
import os
import random
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import hydra
import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import tqdm
from hydra.core.hydra_config import HydraConfig
from mlx.utils import tree_flatten, tree_map, tree_unflatten
from omegaconf import DictConfig, OmegaConf, open_dict

from diffusion_policy_mlx import config_trust
from diffusion_policy_mlx.common import checkpoint_util, distributed
from diffusion_policy_mlx.common.batch_split import BatchSplit, batch_rows
from diffusion_policy_mlx.common.checkpoint_util import (
    Checkpoint,
    CheckpointMismatchError,
    TopKCheckpointManager,
)
from diffusion_policy_mlx.common.distributed import Shard
from diffusion_policy_mlx.common.json_logger import JsonLogger
from diffusion_policy_mlx.common.run_lock import run_lock
from diffusion_policy_mlx.common.wandb_run import WandbRun, init_wandb
from diffusion_policy_mlx.config_compat import translate_config
from diffusion_policy_mlx.dataset.base_dataset import BaseImageDataset, BaseLowdimDataset
from diffusion_policy_mlx.dataset.loader import DataLoader
from diffusion_policy_mlx.env_runner.base_image_runner import BaseImageRunner
from diffusion_policy_mlx.env_runner.base_lowdim_runner import BaseLowdimRunner
from diffusion_policy_mlx.model.common.lr_scheduler import get_scheduler
from diffusion_policy_mlx.model.diffusion.ema_model import EMAModel
from diffusion_policy_mlx.policy.base_image_policy import BaseImagePolicy
from diffusion_policy_mlx.policy.base_lowdim_policy import BaseLowdimPolicy
from diffusion_policy_mlx.workspace.config_checks import validate_workspace_config
from diffusion_policy_mlx.workspace.loss_guard import require_finite_loss

log = logging.getLogger(__name__)

Policy = BaseImagePolicy | BaseLowdimPolicy
# Config keys whose change makes a checkpoint's tensors meaningless for the current run.
CHECKPOINT_CONFIG_KEYS = (*checkpoint_util.STRUCTURAL_KEYS, "training.use_ema")

# training.debug: every part of the loop (training, validation, sampling, rollouts, top-k and
# latest checkpoints) runs, on a few small batches, in under 2 minutes on a 2-core CPU
# whatever the config. The rollout and batch settings are caps on the config's values.
DEBUG_TRAINING = {
    "num_epochs": 2,
    "max_train_steps": 3,
    "max_val_steps": 3,
    "rollout_every": 1,
    "checkpoint_every": 1,
    "val_every": 1,
    "sample_every": 1,
}
DEBUG_ROLLOUT_CAPS = {"n_train": 1, "n_train_vis": 1, "n_test": 1, "n_test_vis": 1, "max_steps": 16}
# Batches of the training and validation loaders are capped too: a step of the 263M-parameter
# image U-Nets at their batch of 64 takes ~10 s on 2 cores.
DEBUG_BATCH_SIZE = 16
# The sampling MSE runs on this many rows of its batch, and every sample (rollouts too) takes
# at most this many denoising steps; the checkpoint keeps the configured number for eval.py.
DEBUG_SAMPLE_ROWS = 4
DEBUG_INFERENCE_STEPS = 4


class TrainStep:
    """One training step, ``mx.compile``d over the model's, optimizer's, EMA's and RNG's state.

    Loss, gradients, the AdamW update and the EMA update are one compiled call, evaluated once
    per step by the caller. With ``gradient_accumulate_every == n``, gradients of ``n``
    consecutive batches (each scaled by ``1/n``, as upstream divides the loss) are summed and
    applied together on the ``n``-th; the EMA still follows every batch, as upstream's does.

    The EMA update is :class:`EMAModel`'s: its decay schedule and counter stay on ``ema``
    (the decay enters the compiled function as an input), parameters frozen in the trained
    model and BatchNorm parameters are copied, all others averaged.

    With a ``group`` of data-parallel processes each call gets this rank's :class:`Shard` of the
    global batch: per-sample random draws are those of the global batch, gradients are
    averaged over ranks weighted by shard size, and the returned loss is the global batch's.
    ``split`` lays each batch's work out (the policy's ``batch_split``: whole, or over accel's
    CPU streams, with the same loss and gradients).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: optim.Optimizer,
        gradient_accumulate_every: int,
        ema: EMAModel | None = None,
        group: mx.distributed.Group | None = None,
        split: BatchSplit | None = None,
    ):
        if gradient_accumulate_every < 1:
            raise ValueError(
                f"training.gradient_accumulate_every must be >= 1, got {gradient_accumulate_every}"
            )
        self.model = model
        self.optimizer = optimizer
        self.ema = ema
        self.group = group
        self.split = BatchSplit() if split is None else split
        self.accumulate = gradient_accumulate_every
        self.pending: dict | None = None
        self.n_pending = 0
        # Initialize now so the state tree captured below already holds every moment buffer.
        optimizer.init(model.trainable_parameters())
        ema_state = [] if ema is None else [ema.averaged_model.state]
        self.state = [model.state, optimizer.state, mx.random.state, *ema_state]
        loss_and_grad = nn.value_and_grad(model, model.compute_loss)
        scale = 1.0 / gradient_accumulate_every
        copied = set() if ema is None else _ema_copied_keys(model)

        def ema_update(decay: mx.array) -> None:
            if ema is None:
                return
            new = dict(tree_flatten(model.parameters()))
            averaged = dict(tree_flatten(ema.averaged_model.parameters()))
            spread = self.split.spread()
            blended = []
            for k, v in new.items():
                with spread.on(v):
                    v = v.astype(averaged[k].dtype)
                    blended.append((k, v if k in copied else averaged[k] * decay + v * (1 - decay)))
            ema.averaged_model.update(tree_unflatten(blended))

        def optimizer_update(grads: dict) -> None:
            with self.split.spread().optimizer_updates(optimizer):
                optimizer.update(model, grads)

        # (loss, grads) of the batch, or of this rank's shard, split as the policy lays it out
        shard_loss_and_grad = partial(self.split.chunked_mean, loss_and_grad)

        # The shard's three ints are compile-time constants: a new shard shape retraces.
        def fused(batch: dict, decay: mx.array, *shard_ints: int) -> mx.array:
            shard = Shard(*shard_ints) if shard_ints else None
            loss, grads = shard_loss_and_grad(batch, shard)
            if group is not None:
                grads = distributed.average_gradients(grads, shard, group)
                loss = distributed.global_mean(loss, shard, group)
            optimizer_update(grads)
            ema_update(decay)
            return loss

        def grads_only(batch: dict, *shard_ints: int) -> tuple[mx.array, dict]:
            shard = Shard(*shard_ints) if shard_ints else None
            loss, grads = shard_loss_and_grad(batch, shard)
            factor = scale
            if group is not None:
                # summed over ranks when applied: this rank's share of the global mean
                factor = scale * shard.weight * group.size()
                loss = distributed.global_mean(loss, shard, group)
            return loss, nn.utils.tree_map(lambda g: g * factor, grads)

        def apply(grads: dict) -> None:
            if group is not None:
                grads = nn.average_gradients(grads, group=group)
            optimizer_update(grads)

        self.fused = mx.compile(fused, inputs=self.state, outputs=self.state)
        # value_and_grad swaps tracers into the model, so its state is an output here too.
        model_state = [model.state, mx.random.state]
        self.grads_only = mx.compile(grads_only, inputs=model_state, outputs=model_state)
        self.apply = mx.compile(apply, inputs=self.state, outputs=self.state)
        self.ema_update = mx.compile(ema_update, inputs=self.state, outputs=self.state)

    def _next_decay(self) -> mx.array:
        if self.ema is None:
            return mx.array(0.0)
        self.ema.decay = self.ema.get_decay(self.ema.optimization_step)
        self.ema.optimization_step += 1
        return mx.array(self.ema.decay, mx.float32)

    def __call__(self, batch: dict, shard: Shard | None = None) -> tuple[mx.array, bool]:
        """Train on ``batch`` (this rank's ``shard`` of the global batch when data-parallel);
        returns the (lazy) loss and whether the optimizer stepped.

        The batch's rows may be split (``split``), with the same loss and gradients."""
        if (shard is None) != (self.group is None):
            raise ValueError("TrainStep: pass a shard exactly when training data-parallel")
        self.split.use_blas_threads(batch_rows(batch))
        shard_ints = () if shard is None else (shard.offset, shard.size, shard.global_size)
        if self.accumulate == 1:
            return self.fused(batch, self._next_decay(), *shard_ints), True
        loss, grads = self.grads_only(batch, *shard_ints)
        self.pending = (
            grads
            if self.pending is None
            else nn.utils.tree_map(lambda a, b: a + b, self.pending, grads)
        )
        self.n_pending += 1
        stepped = self.n_pending == self.accumulate
        if stepped:
            self.apply(self.pending)
            self.pending, self.n_pending = None, 0
        if self.ema is not None:
            self.ema_update(self._next_decay())
        return loss, stepped


def _ema_copied_keys(model: nn.Module) -> set[str]:
    """Parameters :class:`EMAModel` copies instead of averaging: those frozen in the trained
    model (normalizer statistics, a frozen encoder) and BatchNorm's."""
    trainable = {k for k, _ in tree_flatten(model.trainable_parameters())}
    batch_norms = tuple(
        f"{name}." for name, m in model.named_modules() if isinstance(m, nn.BatchNorm) and name
    )
    return {
        k
        for k, _ in tree_flatten(model.parameters())
        if k not in trainable or (batch_norms and k.startswith(batch_norms))
    }


class BaseWorkspace:
    """Owns the policy, its EMA copy and the optimizer; saves, loads and trains them.

    ``cfg`` may be an upstream config: its ``_target_`` s are translated to this package.
    ``output_dir`` defaults to Hydra's run directory. Subclasses name the types they expect
    (``policy_type``, ``dataset_type``, ``runner_type``) and may override
    :meth:`build_optimizer`.
    """

    policy_type: ClassVar[tuple[type, ...]] = (BaseLowdimPolicy, BaseImagePolicy)
    dataset_type: ClassVar[tuple[type, ...]] = (BaseLowdimDataset, BaseImageDataset)
    runner_type: ClassVar[tuple[type, ...]] = (BaseLowdimRunner, BaseImageRunner)

    def __init__(self, cfg: DictConfig, output_dir: str | Path | None = None):
        self.cfg = translate_config(cfg)
        validate_workspace_config(self.cfg)
        self._output_dir = None if output_dir is None else Path(output_dir)
        self.global_step = 0
        self.epoch = 0
        self.topk_state: dict[str, Any] | None = None
        # Checkpoints without the optimizer's moments (about half the bytes): training.debug's.
        self.light_checkpoints = False

        seed = self.cfg.training.seed
        np.random.seed(seed)
        random.seed(seed)
        mx.random.seed(seed)

        self.model: Policy = hydra.utils.instantiate(self.cfg.policy)
        _require_type(self.model, self.policy_type, "policy")
        self.ema_model: Policy | None = None
        self.ema: EMAModel | None = None
        if self.cfg.training.use_ema:
            self.ema_model = copy.deepcopy(self.model)
            # Partial first: instantiate would turn the module (a dict) into a config node.
            self.ema = hydra.utils.instantiate(self.cfg.ema, _partial_=True)(model=self.ema_model)
        self.optimizer: optim.Optimizer = self.build_optimizer()

    def accelerate(self, apply: Callable[[Policy], Policy]) -> None:
        """Put the fast paths into the policy and its EMA copy alike (``accel.apply``)."""
        self.model = apply(self.model)
        if self.ema_model is not None:
            self.ema_model = apply(self.ema_model)

    def build_optimizer(self) -> optim.Optimizer:
        """``cfg.optimizer`` instantiated; upstream passes the parameters, MLX needs none."""
        return hydra.utils.instantiate(self.cfg.optimizer, params=None)

    @property
    def output_dir(self) -> Path:
        if self._output_dir is None:
            return Path(HydraConfig.get().runtime.output_dir)
        return self._output_dir

    # ----------------------------------------------------------------------------------------
    # Checkpoints
    # ----------------------------------------------------------------------------------------

    def get_checkpoint_path(self, tag: str = "latest") -> Path:
        return self.output_dir / "checkpoints" / f"{tag}.ckpt"

    def checkpoint_tensors(self) -> dict[str, mx.array]:
        """What :meth:`save_checkpoint` writes besides the RNG state: the model, the EMA model
        and the optimizer state (with ``light_checkpoints``, without its per-parameter
        moments)."""
        tensors = checkpoint_util.module_tensors(self.model, "model")
        if self.ema_model is not None:
            tensors |= checkpoint_util.module_tensors(self.ema_model, "ema_model")
        optimizer = checkpoint_util.optimizer_tensors(self.optimizer, "optimizer")
        if self.light_checkpoints:
            # the step count and learning rates, where the LR schedule resumes; not the moments
            optimizer = {k: v for k, v in optimizer.items() if v.ndim == 0}
        return tensors | optimizer

    def save_checkpoint(self, path: str | Path | None = None, tag: str = "latest") -> Path:
        """Write model, EMA model, optimizer, counters and RNG state atomically to ``path``."""
        path = self.get_checkpoint_path(tag) if path is None else Path(path)
        tensors = self.checkpoint_tensors()
        rng_tensors, rng_state = checkpoint_util.rng_state()
        tensors |= rng_tensors
        state = {
            "workspace": type(self).__name__,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "rng": rng_state,
            "topk": self.topk_state,
            "ema": None if self.ema is None else self.ema.state_dict(),
            "optimizer_moments": not self.light_checkpoints,
        }
        return checkpoint_util.save_checkpoint(path, tensors, self.cfg, state)

    def load_checkpoint(self, path: str | Path | None = None, tag: str = "latest") -> Checkpoint:
        """Load ``path`` (default ``checkpoints/<tag>.ckpt``) into this workspace.

        Its stored config may name only targets :mod:`~diffusion_policy_mlx.config_trust`
        admits, or those this workspace's own (trusted) config names or trusts."""
        path = self.get_checkpoint_path(tag) if path is None else Path(path)
        ckpt = checkpoint_util.load_checkpoint(path)
        config_trust.check_stored_config(ckpt.cfg, path, config_trust.trusted_by(self.cfg))
        self.load_payload(ckpt)
        return ckpt

    def load_payload(self, ckpt: Checkpoint) -> None:
        """Restore everything :meth:`save_checkpoint` wrote; mismatches name their keys."""
        diff = checkpoint_util.config_diff(ckpt.cfg, self.cfg, CHECKPOINT_CONFIG_KEYS)
        try:
            checkpoint_util.load_module(self.model, ckpt.group("model"), "policy")
            if self.ema_model is not None:
                checkpoint_util.load_module(self.ema_model, ckpt.group("ema_model"), "EMA policy")
            moments = ckpt.state.get("optimizer_moments", True)
            checkpoint_util.load_optimizer(
                self.optimizer,
                ckpt.group("optimizer"),
                self.model.trainable_parameters(),
                moments=moments,
            )
        except CheckpointMismatchError as e:
            changed = "\n  ".join(diff) if diff else "(no differences in the policy config)"
            raise CheckpointMismatchError(
                f"{ckpt.path} was written by a different configuration.\n"
                f"Config changes (checkpoint -> current):\n  {changed}\n{e}"
            ) from None
        if not moments:
            log.info(
                "%s holds no optimizer moments (a training.debug checkpoint): they start from zero",
                ckpt.path,
            )
        if diff:
            log.warning(
                "checkpoint %s was written with a different policy config (tensors still fit):"
                "\n  %s",
                ckpt.path,
                "\n  ".join(diff),
            )
        self.epoch = int(ckpt.state["epoch"])
        self.global_step = int(ckpt.state["global_step"])
        self.topk_state = ckpt.state.get("topk")
        if self.ema is not None and ckpt.state.get("ema") is not None:
            self.ema.load_state_dict(ckpt.state["ema"])
        checkpoint_util.restore_rng(ckpt.tensors, ckpt.state["rng"])

    @classmethod
    def create_from_checkpoint(
        cls,
        path: str | Path,
        output_dir: str | Path | None = None,
        trusted_targets: Sequence[str] = (),
    ) -> BaseWorkspace:
        """A workspace rebuilt from the config stored in ``path``, with its state loaded.

        Every ``_target_`` in that config is checked (:mod:`~diffusion_policy_mlx.config_trust`)
        before anything is imported; ``trusted_targets`` are module prefixes to admit too."""
        ckpt = checkpoint_util.load_checkpoint(path)
        workspace_cls = config_trust.workspace_class(ckpt.cfg, ckpt.path, trusted_targets)
        if not issubclass(workspace_cls, cls):
            raise TypeError(f"{path} holds a {workspace_cls.__name__}, not a {cls.__name__}")
        workspace = workspace_cls(ckpt.cfg, output_dir=output_dir)
        workspace.load_payload(ckpt)
        return workspace

    # ----------------------------------------------------------------------------------------
    # Hooks for subclasses
    # ----------------------------------------------------------------------------------------

    def policy_train_mode(self) -> None:
        """Put the policies in training mode (the image workspace keeps a frozen encoder in eval)."""
        self.model.train()
        if self.ema_model is not None:
            self.ema_model.train()

    def sample_action_mse(self, policy: Policy, batch: Mapping[str, Any]) -> mx.array:
        """Mean squared error of the policy's sampled actions on a training batch."""
        if isinstance(policy, BaseLowdimPolicy):
            result = policy.predict_action({"obs": batch["obs"]})
        else:
            result = policy.predict_action(dict(batch["obs"]))
        pred_action, gt_action = policy.action_error_pair(result, batch["action"])
        return mx.mean(mx.square(pred_action - gt_action))

    # ----------------------------------------------------------------------------------------
    # The training loop
    # ----------------------------------------------------------------------------------------

    def run(self) -> None:
        """Train for ``training.num_epochs`` epochs (in total, across resumes).

        Rank 0 holds the run folder's lock throughout (data-parallel ranks share its folder
        and write nothing), and checks that checkpoints can be written before any work."""
        checkpoint_util.check_config_size(self.cfg)  # a run that could not save must not start
        group = distributed.init_group()
        if distributed.rank_of(group) != 0:
            self._train(group)
            return
        with run_lock(self.output_dir):
            checkpoint_util.check_checkpoint_folder(self.get_checkpoint_path().parent)
            self._train(group)

    def _train(self, group: mx.distributed.Group | None) -> None:
        cfg = copy.deepcopy(self.cfg)
        if cfg.training.debug:
            self._apply_debug(cfg)
        latest = self.get_checkpoint_path()
        resumed = bool(cfg.training.resume) and latest.is_file()
        if resumed:
            log.info("Resuming from checkpoint %s", latest)
            epoch = self.load_checkpoint(path=latest).finished_epoch
            log.info(
                "Resumed %s (%d training steps done)",
                "before the first epoch" if epoch is None else f"after epoch {epoch}",
                self.global_step,
            )

        rank, world_size = distributed.rank_of(group), distributed.world_size_of(group)
        main = rank == 0
        dataset = hydra.utils.instantiate(cfg.task.dataset)
        _require_type(dataset, self.dataset_type, "task.dataset")
        # The data must fit the shapes the policy was built for, named in the task config.
        if isinstance(dataset, BaseImageDataset):
            dataset.check_shape_meta(cfg.task.shape_meta)
        else:
            dataset.check_dims(cfg.task.obs_dim, cfg.task.action_dim)
        train_kwargs = _loader_kwargs(cfg.dataloader, cfg.training.seed)
        if group is not None:
            train_kwargs["batch_size"] = _global_batch_size(cfg, world_size)
            train_kwargs |= {"rank": rank, "world_size": world_size}
        train_loader = DataLoader(dataset, **train_kwargs)
        normalizer = dataset.get_normalizer()
        self.model.set_normalizer(normalizer)
        if self.ema_model is not None:
            self.ema_model.set_normalizer(normalizer)

        accumulate = int(cfg.training.gradient_accumulate_every)
        lr_scheduler = get_scheduler(
            cfg.training.lr_scheduler,
            optimizer=self.optimizer,
            num_warmup_steps=cfg.training.lr_warmup_steps,
            num_training_steps=(len(train_loader) * cfg.training.num_epochs) // accumulate,
            # optimizer updates done so far; the schedule resumes where it stopped
            last_epoch=self.global_step // accumulate - 1,
        )
        # Validation, rollouts, logs and checkpoints are rank 0's; the other ranks only train.
        val_loader = env_runner = topk_manager = None
        if main:
            val_loader = DataLoader(
                dataset.get_validation_dataset(),
                **_loader_kwargs(cfg.val_dataloader, cfg.training.seed),
            )
            env_runner = hydra.utils.instantiate(
                cfg.task.env_runner, output_dir=str(self.output_dir)
            )
            _require_type(env_runner, self.runner_type, "task.env_runner")
            topk_manager = TopKCheckpointManager(
                save_dir=self.output_dir / "checkpoints", **cfg.checkpoint.topk
            )
            if self.topk_state is not None:
                topk_manager.load_state_dict(self.topk_state)
        if group is not None and main:
            log.info(
                "data-parallel training on %d processes, global batch %d; if one process "
                "exits, mlx.launch stops the others: run the same command again to resume "
                "from %s",
                world_size,
                train_loader.batch_size,
                latest,
            )

        training = cfg.training

        self.policy_train_mode()
        split = self.model.batch_split
        train_step = TrainStep(self.model, self.optimizer, accumulate, self.ema, group, split)
        val_loss_fn = mx.compile(
            partial(split.chunked_mean, self.model.compute_loss),
            inputs=[self.model.state, mx.random.state],
            outputs=[mx.random.state],
        )
        # The first batch of epoch 0, also after a resume, so the metric means the same thing.
        sampling_batch = train_loader.load_batch(train_loader.batch_indices(0)[0]) if main else None
        if main and cfg.training.debug:
            sampling_batch = tree_map(lambda x: x[:DEBUG_SAMPLE_ROWS], sampling_batch)
        if main:
            self._report_checkpoint_size()
        wandb_run = init_wandb(cfg, self.output_dir) if main else WandbRun(None)
        resume_step = self.global_step if resumed else None
        logs = self.output_dir / "logs.json.txt"
        try:
            log_file = JsonLogger(logs, resume_step=resume_step, fresh=not resumed)
            with log_file if main else _NoLog() as logger:
                while self.epoch < training.num_epochs:
                    step_log = self._train_epoch(
                        train_loader, train_step, lr_scheduler, training, wandb_run, logger
                    )
                    # ========= eval for this epoch ==========
                    policy = self.ema_model if self.ema_model is not None else self.model
                    policy.eval()
                    if main and self.epoch % training.rollout_every == 0:
                        step_log.update(env_runner.run(policy))
                    if main and self.epoch % training.val_every == 0:
                        val_loss = self._validation_loss(val_loader, val_loss_fn, training)
                        if val_loss is not None:
                            step_log["val_loss"] = val_loss
                    if main and self.epoch % training.sample_every == 0:
                        mse = self.sample_action_mse(policy, sampling_batch)
                        step_log["train_action_mse_error"] = mse.item()
                    self.policy_train_mode()

                    wandb_run.log(step_log, step=self.global_step)
                    logger.log(step_log)
                    completed_epoch = self.epoch
                    self.global_step += 1
                    self.epoch += 1
                    # Saved after the counters advance: a resumed run starts at the next epoch.
                    if completed_epoch % training.checkpoint_every == 0:
                        distributed.check_replicas_agree(self.model, group)
                        if main:
                            self._checkpoint(cfg, topk_manager, step_log)
                    elif self.epoch == training.num_epochs and cfg.checkpoint.save_last_ckpt:
                        distributed.check_replicas_agree(self.model, group)
                        # Unlike upstream, the final weights are never lost to checkpoint_every.
                        if main:
                            self.save_checkpoint()
                    # no rank starts the next epoch (or exits) before rank 0's evaluations
                    # and checkpoint are done; it also hands on rank 0's random state
                    distributed.sync_random_state(group)
        finally:
            wandb_run.finish()

    def _apply_debug(self, cfg: DictConfig) -> None:
        """``training.debug``: shorten the run (:data:`DEBUG_TRAINING`), cap the rollouts, the
        batches and the sampling steps, and write checkpoints without the optimizer's moments."""
        with open_dict(cfg):
            cfg.training.update(DEBUG_TRAINING)
            caps = [(cfg.task.env_runner, DEBUG_ROLLOUT_CAPS)] + [
                (loader, {"batch_size": DEBUG_BATCH_SIZE})
                for loader in (cfg.dataloader, cfg.val_dataloader)
            ]
            for node, node_caps in caps:
                for key, cap in node_caps.items():
                    if node.get(key) is not None:
                        node[key] = min(int(node[key]), cap)
        for policy in (self.model, self.ema_model):
            if policy is not None:
                policy.num_inference_steps = min(policy.num_inference_steps, DEBUG_INFERENCE_STEPS)
        self.light_checkpoints = True

    def _report_checkpoint_size(self) -> None:
        """Say once, before training, how large each checkpoint will be and where they go."""
        nbytes = sum(v.nbytes for v in self.checkpoint_tensors().values())
        parts = ["model"] + (["EMA"] if self.ema_model is not None else [])
        parts.append(
            "no optimizer moments: training.debug" if self.light_checkpoints else "optimizer"
        )
        log.info(
            "checkpoints: %s each (%s) in %s",
            _human_bytes(nbytes),
            ", ".join(parts),
            self.output_dir / "checkpoints",
        )

    def _train_epoch(
        self,
        loader: DataLoader,
        train_step: TrainStep,
        lr_scheduler: Any,
        training: DictConfig,
        wandb_run: WandbRun,
        logger: JsonLogger,
    ) -> dict[str, Any]:
        """One epoch of training steps; returns the last step's log with the epoch-mean loss
        (data-parallel: the global batches' losses, on every rank).

        Steps are pipelined: step ``k`` is dispatched (``mx.async_eval``) before step ``k-1``'s
        loss is read and logged, so the host prepares the next step while the device runs
        this one instead of idling at a sync after every step. At most two steps are in flight.
        """
        loader.set_epoch(self.epoch)
        shards = loader.shards(self.epoch) if train_step.group is not None else None
        n_batches = len(loader)
        if training.max_train_steps is not None:
            n_batches = min(n_batches, training.max_train_steps)
        losses: list[float] = []
        # the step dispatched last: its lazy loss and its log, waiting for the loss's value
        in_flight: tuple[mx.array, dict[str, Any]] | None = None

        def finish(loss: mx.array, step_log: dict[str, Any], last: bool) -> None:
            step_log["train_loss"] = loss.item()
            require_finite_loss(
                step_log["train_loss"],
                step_log["global_step"],
                step_log["epoch"],
                self.get_checkpoint_path().parent,
            )
            losses.append(step_log["train_loss"])
            tepoch.set_postfix(loss=step_log["train_loss"], refresh=False)
            if not last:
                # the epoch's last step is logged together with its evaluations
                wandb_run.log(step_log, step=step_log["global_step"])
                logger.log(step_log)

        with tqdm.tqdm(
            loader,
            total=n_batches,
            desc=f"Training epoch {self.epoch}",
            leave=False,
            mininterval=training.tqdm_interval_sec,
            disable=loader.rank != 0,
        ) as tepoch:
            for batch_idx, batch in enumerate(tepoch):
                loss, stepped = train_step(batch, None if shards is None else shards[batch_idx])
                if stepped:
                    lr_scheduler.step()
                mx.async_eval(loss, train_step.state)
                if in_flight is not None:
                    finish(*in_flight, last=False)
                in_flight = (
                    loss,
                    {
                        "train_loss": None,
                        "global_step": self.global_step,
                        "epoch": self.epoch,
                        "lr": lr_scheduler.get_last_lr()[0],
                    },
                )
                if batch_idx == n_batches - 1:
                    break
                self.global_step += 1
            if in_flight is None:
                return {}
            finish(*in_flight, last=True)
        step_log = in_flight[1]
        step_log["train_loss"] = float(np.mean(losses))
        return step_log

    def _checkpoint(
        self, cfg: DictConfig, topk_manager: TopKCheckpointManager, step_log: dict[str, Any]
    ) -> None:
        """Save latest.ckpt and, when the monitored metric makes the top k, a top-k copy."""
        metrics = {k.replace("/", "_"): v for k, v in step_log.items()}
        topk_path = None
        if topk_manager.monitor_key in metrics:
            topk_path = topk_manager.get_ckpt_path(metrics)
        else:
            log.warning(
                "epoch %d: checkpoint.topk.monitor_key=%s was not logged (rollouts run every %d "
                "epochs), so only latest.ckpt is saved",
                metrics["epoch"],
                topk_manager.monitor_key,
                cfg.training.rollout_every,
            )
        self.topk_state = topk_manager.state_dict()
        if cfg.checkpoint.save_last_ckpt:
            latest = self.save_checkpoint()
            if topk_path is not None:
                _link_or_save(latest, Path(topk_path), self.save_checkpoint)
        elif topk_path is not None:
            self.save_checkpoint(path=topk_path)

    def _validation_loss(
        self, loader: DataLoader, loss_fn: Any, training: DictConfig
    ) -> float | None:
        n_batches = len(loader)
        if training.max_val_steps is not None:
            n_batches = min(n_batches, training.max_val_steps)
        if n_batches == 0:
            return None
        losses = []
        with tqdm.tqdm(
            loader,
            total=n_batches,
            desc=f"Validation epoch {self.epoch}",
            leave=False,
            mininterval=training.tqdm_interval_sec,
        ) as tepoch:
            for batch_idx, batch in enumerate(tepoch):
                self.model.batch_split.use_blas_threads(batch_rows(batch))
                loss = loss_fn(batch)
                mx.eval(loss)
                losses.append(loss.item())
                if batch_idx == n_batches - 1:
                    break
        return float(np.mean(losses))


class _NoLog:
    """What ranks other than 0 have instead of the JSON logger."""

    def __enter__(self) -> _NoLog:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def log(self, *args: Any, **kwargs: Any) -> None:
        pass


def _link_or_save(latest: Path, path: Path, save: Any) -> None:
    """``path`` as a hard link to the ``latest`` checkpoint just written (the same bytes: a
    second 1 GB write saved); a later ``latest`` replaces its own name only. Where the file
    system has no hard links, ``save(path=path)`` writes it."""
    path.unlink(missing_ok=True)
    try:
        os.link(latest, path)
    except OSError:
        save(path=path)


def _human_bytes(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def _global_batch_size(cfg: DictConfig, world_size: int) -> int:
    """The global batch of data-parallel training, per ``training.batch_size_scope``."""
    scope = cfg.training.get("batch_size_scope", "global")
    batch_size = int(cfg.dataloader.batch_size)
    if scope == "global":
        return batch_size
    if scope == "rank":
        return batch_size * world_size
    raise ValueError(
        f"training.batch_size_scope={scope!r}: use 'global' (dataloader.batch_size is split "
        "across processes) or 'rank' (each process takes dataloader.batch_size samples)"
    )


def _require_type(obj: Any, expected: tuple[type, ...], key: str) -> None:
    if not isinstance(obj, expected):
        names = " or ".join(t.__name__ for t in expected)
        raise TypeError(
            f"config {key} built a {type(obj).__name__}; this workspace needs a {names}"
        )


def _loader_kwargs(loader_cfg: DictConfig, seed: int) -> dict[str, Any]:
    # An explicit seed, so a resumed run shuffles exactly as the interrupted one did.
    return {"seed": seed, **OmegaConf.to_container(loader_cfg, resolve=True)}

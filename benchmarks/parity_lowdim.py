"""Our lowdim U-Net policy against upstream's PyTorch one on a real PushT batch, same weights,
same noise: loss, every gradient, parameters after AdamW + EMA steps, and a DDIM sample.

    DP_UPSTREAM_PATH=~/src/diffusion_policy python benchmarks/parity_lowdim.py

Fixture tests pin the pieces (U-Net, schedulers, normalizer, EMA, LR schedule); this checks that
they add up to the same training step and the same sampled actions as upstream's policy, so a gap
in trained scores cannot come from the step itself. Both sides draw their noise and timesteps
from the arrays given here (each side's random calls are patched for the duration of a call;
ours runs uncompiled so that the patch is seen on every step). Prints the largest errors; exits
non-zero when one exceeds its tolerance. Measured on the 2-core CPU, 20 steps of batch 64:
loss 1.2e-6 and gradients 2.1e-6 relative, DDIM16 actions 1.4e-3 px, parameter updates 2.9e-4
and EMA weights 7.3e-6 relative.
"""

import argparse
import contextlib
import copy
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import diffusion_policy_mlx.accel  # noqa: F401  (loads the fast BLAS)

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sides import SPECS, OursSide, UpstreamSide, import_upstream  # noqa: E402

from diffusion_policy_mlx.common.upstream import to_upstream_state_dict  # noqa: E402
from diffusion_policy_mlx.dataset.pusht_dataset import PushTLowdimDataset  # noqa: E402


@contextlib.contextmanager
def patched(module: object, **values: object) -> Iterator[None]:
    saved = {k: getattr(module, k) for k in values}
    for k, v in values.items():
        setattr(module, k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(module, k, v)


def relative_error(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-12))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", type=Path, default=os.environ.get("DP_UPSTREAM_PATH"))
    parser.add_argument("--zarr", default="data/pusht/pusht_cchi_v7_replay.zarr")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="AdamW + EMA steps compared")
    args = parser.parse_args()
    if args.upstream is None:
        parser.error("pass --upstream or set DP_UPSTREAM_PATH to an upstream checkout")
    import_upstream(args.upstream)
    import torch

    torch.set_num_threads(2)
    spec = SPECS["lowdim"]
    ours, up = OursSide(spec, "cpu"), UpstreamSide(spec, args.upstream, "cpu")
    cfg = ours.cfg
    dataset = PushTLowdimDataset(args.zarr, horizon=cfg.horizon, pad_before=1, pad_after=7)
    rng = np.random.default_rng(0)
    batches = [
        dataset.__getitems__(rng.choice(len(dataset), args.batch, replace=False))
        for _ in range(args.steps)
    ]
    up.fit_normalizer(batches[0])
    up.build_training()
    ours.load_upstream(up.state_dict())
    n_train = cfg.policy.noise_scheduler.num_train_timesteps
    draws = [
        (
            rng.standard_normal((args.batch, cfg.horizon, cfg.action_dim)).astype(np.float32),
            rng.integers(0, n_train, args.batch),
        )
        for _ in batches
    ]

    def up_loss(batch: dict, noise: np.ndarray, t: np.ndarray) -> "torch.Tensor":
        with patched(
            torch,
            randn=lambda *a, **k: torch.from_numpy(noise),
            randint=lambda *a, **k: torch.from_numpy(t),
        ):
            return up.policy.compute_loss({k: torch.from_numpy(v) for k, v in batch.items()})

    def our_loss(model: nn.Module, batch: dict, noise: np.ndarray, t: np.ndarray) -> mx.array:
        with patched(
            mx.random,
            normal=lambda *a, **k: mx.array(noise),
            randint=lambda *a, **k: mx.array(t),
        ):
            return model.compute_loss({k: mx.array(v) for k, v in batch.items()})

    failures = []

    def report(what: str, err: float, tol: float) -> None:
        print(f"{what:55s} {err:10.3e}  (tolerance {tol:.0e})")
        if not err <= tol:
            failures.append(what)

    # Loss and gradients of the first batch.
    policy = ours.policy
    policy.train()
    up.policy.train()
    loss_t = up_loss(batches[0], *draws[0])
    loss_t.backward()
    up_grads = {
        k: p.grad.numpy().copy() for k, p in up.policy.named_parameters() if p.grad is not None
    }
    up.optimizer.zero_grad()
    loss_m, grads = nn.value_and_grad(policy, lambda b: our_loss(policy, b, *draws[0]))(batches[0])
    report("loss, relative", abs(loss_m.item() - loss_t.item()) / loss_t.item(), 1e-5)
    grad_module = copy.deepcopy(policy)
    grad_module.update(grads)
    our_grads = to_upstream_state_dict(grad_module)
    worst = max(
        (relative_error(our_grads[k], g), k) for k, g in up_grads.items() if np.abs(g).max() > 0
    )
    report(f"gradients, worst tensor ({worst[1]})", worst[0], 1e-3)

    # A deterministic sample (DDIM, eta 0) from the same initial noise with the same (initial) weights.
    obs = batches[0]["obs"][:8, : cfg.n_obs_steps]
    init = rng.standard_normal((8, cfg.horizon, cfg.action_dim)).astype(np.float32)
    for side in (ours, up):
        side.policy.noise_scheduler = side.ddim
        side.policy.num_inference_steps = 16
        side.policy.eval()
    with patched(torch, randn=lambda *a, **k: torch.from_numpy(init)):
        with torch.inference_mode():
            act_t = up.policy.predict_action({"obs": torch.from_numpy(obs)})["action_pred"]
    with patched(mx.random, normal=lambda *a, **k: mx.array(init)):
        act_m = policy.predict_action({"obs": mx.array(obs)})["action_pred"]
    report(
        "DDIM16 action_pred, max |diff| in pixels",
        float(np.abs(np.array(act_m) - act_t.numpy()).max()),
        1e-2,
    )
    # Training steps: AdamW, LR schedule (warmup), EMA, on both sides.
    from diffusion_policy_mlx.model.common.lr_scheduler import get_scheduler
    from diffusion_policy_mlx.workspace.base_workspace import TrainStep

    ws = ours.workspace
    # Eager: a compiled step would keep the first call's patched noise as a traced constant.
    mx.disable_compile()
    step = TrainStep(ws.model, ws.optimizer, 1, ws.ema, split=ws.model.batch_split)
    sched_m = get_scheduler("cosine", ws.optimizer, num_warmup_steps=500, num_training_steps=10**5)
    from diffusion_policy.model.common.lr_scheduler import get_scheduler as upstream_scheduler

    sched_t = upstream_scheduler(
        "cosine", up.optimizer, num_warmup_steps=500, num_training_steps=10**5
    )
    start = {k: v.copy() for k, v in up.state_dict().items()}
    for batch, draw in zip(batches, draws, strict=True):
        loss_t = up_loss(batch, *draw)
        loss_t.backward()
        up.optimizer.step()
        up.optimizer.zero_grad()
        sched_t.step()
        up.ema.step(up.policy)
        with patched(
            mx.random,
            normal=lambda *a, n=draw[0], **k: mx.array(n),
            randint=lambda *a, t=draw[1], **k: mx.array(t),
        ):
            loss_m, _ = step({k: mx.array(v) for k, v in batch.items()})
            mx.eval(loss_m, step.state)
        sched_m.step()
    theirs = up.state_dict()
    ours_params = to_upstream_state_dict(ws.model)
    # Adam divides by sqrt(v): entries whose gradients are at float noise level move by up to lr
    # in either direction on either side, so the updates are compared as whole tensors.
    worst = max(
        (
            float(
                np.linalg.norm(ours_params[k] - start[k] - (v - start[k]))
                / max(np.linalg.norm(v - start[k]), 1e-30)
            ),
            k,
        )
        for k, v in theirs.items()
        if k in ours_params and np.abs(v - start[k]).max() > 0
    )
    report(f"update after {args.steps} steps, worst relative ({worst[1]})", worst[0], 1e-2)
    ema_t = {k: v.detach().numpy() for k, v in up.ema_model.state_dict().items()}
    ema_m = to_upstream_state_dict(ws.ema_model)
    worst = max((relative_error(ema_m[k], v), k) for k, v in ema_t.items() if k in ema_m and v.size)
    report(f"EMA params after {args.steps} steps, worst relative ({worst[1]})", worst[0], 1e-4)

    print("parameters compared:", len(tree_flatten(ws.model.trainable_parameters())))
    if failures:
        print("FAILED:", ", ".join(failures))
        return 1
    print("ours and upstream agree")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Data-parallel helpers: shards, sharded random draws, sharded loading, the distributed step."""

import copy

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from diffusion_policy_mlx.common.distributed import (
    Shard,
    batch_shard,
    broadcast_int,
    broadcast_str,
    check_replicas_agree,
    shard_bounds,
    sharded_draw,
)
from diffusion_policy_mlx.dataset.loader import DataLoader


def test_shard_bounds_by_hand():
    assert [shard_bounds(10, r, 3) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]
    assert [shard_bounds(2, r, 2) for r in range(2)] == [(0, 1), (1, 2)]
    assert [shard_bounds(256, r, 2) for r in range(2)] == [(0, 128), (128, 256)]
    assert Shard(4, 3, 10).weight == pytest.approx(0.3)


@pytest.mark.parametrize("rows_per_sample", [1, 3])
def test_sharded_draws_are_the_global_draws_rows(rows_per_sample):
    def draw(shape):
        return mx.random.normal(shape)

    shape = (10 * rows_per_sample, 4)
    mx.random.seed(7)
    whole = np.array(sharded_draw(draw, shape))
    parts = []
    for rank in range(3):
        start, stop = shard_bounds(10, rank, 3)
        mx.random.seed(7)  # every rank holds the same generator state
        with batch_shard(Shard(start, stop - start, 10)):
            parts.append(np.array(draw_shard(draw, (stop - start) * rows_per_sample)))
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def draw_shard(draw, rows):
    return sharded_draw(draw, (rows, 4))


def test_sharded_draw_rejects_other_batch_sizes():
    with batch_shard(Shard(0, 4, 8)), pytest.raises(ValueError, match="5 rows"):
        sharded_draw(lambda shape: mx.zeros(shape), (5, 2))


class Indices:
    """A dataset whose samples are their own indices."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"i": np.array(i)}


def test_ranks_load_contiguous_shards_of_the_same_global_batches():
    full = DataLoader(Indices(13), batch_size=6, shuffle=True, seed=3)
    ranks = [
        DataLoader(Indices(13), batch_size=6, shuffle=True, seed=3, rank=r, world_size=2)
        for r in range(2)
    ]
    # 13 = 6 + 6 + 1: the last batch is smaller than the 2 processes and is dropped
    assert len(full) == 3 and [len(d) for d in ranks] == [2, 2]
    global_batches = [np.array(b["i"]) for b in full]
    local = [[np.array(b["i"]) for b in d] for d in ranks]
    for k in range(2):
        np.testing.assert_array_equal(np.concatenate([local[0][k], local[1][k]]), global_batches[k])
    assert [s for s in ranks[1].shards(0)] == [Shard(3, 3, 6), Shard(3, 3, 6)]
    with pytest.raises(ValueError, match="batch_size=1 is smaller than the 2"):
        DataLoader(Indices(13), batch_size=1, world_size=2, rank=0)


def _tiny_policy():
    from diffusion_policy_mlx.model.common.normalizer import LinearNormalizer
    from diffusion_policy_mlx.model.diffusion.conditional_unet1d import ConditionalUnet1D
    from diffusion_policy_mlx.policy.diffusion_unet_lowdim_policy import (
        DiffusionUnetLowdimPolicy,
    )
    from diffusion_policy_mlx.schedulers.ddpm import DDPMScheduler

    mx.random.seed(0)
    model = ConditionalUnet1D(
        input_dim=2, global_cond_dim=8, down_dims=[8, 16], diffusion_step_embed_dim=8
    )
    policy = DiffusionUnetLowdimPolicy(
        model=model,
        noise_scheduler=DDPMScheduler(num_train_timesteps=10),
        horizon=8,
        obs_dim=4,
        action_dim=2,
        n_action_steps=4,
        n_obs_steps=2,
        obs_as_global_cond=True,
    )
    rng = np.random.default_rng(0)
    batch = {"obs": rng.normal(size=(6, 8, 4)), "action": rng.normal(size=(6, 8, 2))}
    normalizer = LinearNormalizer()
    normalizer.fit(batch)
    policy.set_normalizer(normalizer)
    return policy, {k: mx.array(v.astype(np.float32)) for k, v in batch.items()}


@pytest.mark.parametrize("accumulate", [1, 2])
def test_distributed_step_on_one_process_equals_the_plain_step(accumulate):
    import mlx.optimizers as optim

    from diffusion_policy_mlx.workspace.base_workspace import TrainStep

    policy, batch = _tiny_policy()
    results = []
    for group in (None, mx.distributed.init()):  # a 1-process group runs the distributed path
        p = copy.deepcopy(policy)
        step = TrainStep(p, optim.AdamW(1e-3), accumulate, group=group)
        mx.random.seed(1)
        losses = []
        for _ in range(2 * accumulate):
            loss, _ = step(batch, None if group is None else Shard(0, 6, 6))
            mx.eval(loss, step.state)
            losses.append(loss.item())
        results.append((losses, dict(tree_flatten(p.trainable_parameters()))))
    (losses_a, params_a), (losses_b, params_b) = results
    np.testing.assert_allclose(losses_b, losses_a, rtol=1e-6)
    for k, v in params_a.items():
        np.testing.assert_allclose(params_b[k], v, rtol=1e-6, atol=1e-7)
    check_replicas_agree(p, mx.distributed.init())


def test_batch_size_scope():
    from omegaconf import OmegaConf

    from diffusion_policy_mlx.workspace.base_workspace import _global_batch_size

    def cfg(**training):
        return OmegaConf.create({"dataloader": {"batch_size": 64}, "training": training})

    assert _global_batch_size(cfg(), 4) == 64  # upstream configs: the global batch
    assert _global_batch_size(cfg(batch_size_scope="global"), 4) == 64
    assert _global_batch_size(cfg(batch_size_scope="rank"), 4) == 256
    with pytest.raises(ValueError, match="training.batch_size_scope='node'"):
        _global_batch_size(cfg(batch_size_scope="node"), 4)


def test_single_process_helpers_pass_values_through():
    assert broadcast_int(5, None) == 5 and broadcast_str("run/dir", None) == "run/dir"
    group = mx.distributed.init()
    assert broadcast_int(5, group) == 5 and broadcast_str("run/dir", group) == "run/dir"

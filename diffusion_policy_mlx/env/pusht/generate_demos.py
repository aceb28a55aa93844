"""Record PushT demonstrations from the scripted expert, in upstream's replay-buffer layout.

    python -m diffusion_policy_mlx.env.pusht.generate_demos --episodes 200 -o data/pusht/pusht_expert_replay.zarr

Like upstream's ``demo_pusht.py`` (a human at the mouse), every row holds the observation before
the action of the same row: ``img`` (96x96x3, float32 0..255, as the recorded dataset stores it),
``state`` (agent xy, block xy, block angle in [0, 2π)), ``keypoint`` (9x2 block keypoints),
``action`` (agent target) and ``n_contacts``; ``meta/episode_ends`` closes each episode. Episode
``i`` starts from ``env.seed(i)`` with the legacy reset, as the recorded data did; the store is
opened for appending, so a second run continues with the next seeds. Episodes end on success
(coverage > 0.95); the expert's rare failures are skipped unless ``--keep-failures``.
"""

import argparse
from pathlib import Path

import numpy as np

from diffusion_policy_mlx.common.replay_buffer import ReplayBuffer
from diffusion_policy_mlx.env.pusht.pusht_expert import PushTExpert
from diffusion_policy_mlx.env.pusht.pusht_keypoints_env import PushTKeypointsEnv


def record_episode(
    env: PushTKeypointsEnv, expert: PushTExpert, seed: int, max_steps: int
) -> tuple[dict[str, np.ndarray], float, bool]:
    """Roll the expert out from ``env.seed(seed)``; returns the rows, final coverage, success."""
    env.seed(seed)
    obs, info = env.reset()
    expert.reset()
    rows: dict[str, list[np.ndarray]] = {
        k: [] for k in ("img", "state", "keypoint", "action", "n_contacts")
    }
    terminated = False
    for _ in range(max_steps):
        action = expert.act(env)
        state = np.concatenate([info["pos_agent"], info["block_pose"]])
        state[4] %= 2 * np.pi
        rows["img"].append(env.render().astype(np.float32))
        rows["state"].append(state.astype(np.float32))
        rows["keypoint"].append(obs[:18].reshape(9, 2).astype(np.float32))
        rows["action"].append(action.astype(np.float32))
        rows["n_contacts"].append(np.float32([info["n_contacts"]]))
        obs, _, terminated, _, info = env.step(action)
        if terminated:
            break
    episode = {k: np.stack(v) for k, v in rows.items()}
    return episode, env._coverage(), terminated


def generate(
    output: Path,
    episodes: int,
    seed: int | None = None,
    max_steps: int = 300,
    keep_failures: bool = False,
) -> list[float]:
    """Append ``episodes`` expert episodes to the zarr at ``output``; returns their final
    coverages (of the episodes written)."""
    buffer = ReplayBuffer.create_from_path(output, mode="a")
    next_seed = buffer.n_episodes if seed is None else seed
    kp_kwargs = PushTKeypointsEnv.genenerate_keypoint_manager_params()
    env = PushTKeypointsEnv(legacy=True, render_size=96, render_action=False, **kp_kwargs)
    expert = PushTExpert()
    coverages = []
    while len(coverages) < episodes:
        episode, coverage, success = record_episode(env, expert, next_seed, max_steps)
        status = "success" if success else "failed"
        if success or keep_failures:
            buffer.add_episode(episode, compressors="disk")
            coverages.append(coverage)
        else:
            status += ", skipped"
        print(
            f"seed {next_seed}: {len(episode['action'])} steps, coverage {coverage:.3f} ({status})",
            flush=True,
        )
        next_seed += 1
    print(
        f"wrote {len(coverages)} episodes to {output} ({buffer.n_episodes} in total); "
        f"mean final coverage {np.mean(coverages):.3f}"
    )
    return coverages


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Record scripted-expert PushT demonstrations into a zarr replay buffer."
    )
    parser.add_argument("--episodes", type=int, required=True, help="episodes to add")
    parser.add_argument("-o", "--output", type=Path, required=True, help="zarr store (appended)")
    parser.add_argument(
        "--seed", type=int, default=None, help="first seed (default: episodes already stored)"
    )
    parser.add_argument("--max-steps", type=int, default=300, help="control steps per episode")
    parser.add_argument(
        "--keep-failures", action="store_true", help="also store episodes that did not succeed"
    )
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error(f"--episodes must be at least 1, got {args.episodes}")
    generate(args.output, args.episodes, args.seed, args.max_steps, args.keep_failures)


if __name__ == "__main__":
    main()

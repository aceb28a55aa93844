"""Settings the tests' tiny runs share."""

# eval.py's smallest honest rollout: one train and two test seeds, 16 steps, videos on
TINY_EVAL = [
    "task.env_runner.n_train=1",
    "task.env_runner.n_train_vis=1",
    "task.env_runner.n_test=2",
    "task.env_runner.n_test_vis=1",
    "task.env_runner.max_steps=16",
]

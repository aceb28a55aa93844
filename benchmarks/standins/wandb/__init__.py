"""Stand-in for wandb on a machine without it: runs log nothing (see ../README.md)."""

from types import SimpleNamespace
from typing import Any


class _Config(dict):
    def update(self, *args: Any, **kwargs: Any) -> None:  # wandb's config accepts extra kwargs
        super().update(*args)


class Run:
    def __init__(self, **kwargs: Any):
        self.settings = kwargs
        self.config = config

    def log(self, *args: Any, **kwargs: Any) -> None:
        pass

    def finish(self, *args: Any, **kwargs: Any) -> None:
        pass


class Settings(SimpleNamespace):
    base_url = "https://api.wandb.ai"


class Video:
    def __init__(self, path: str, **kwargs: Any):
        self.path = path


class Error(Exception):
    pass


errors = SimpleNamespace(Error=Error, UsageError=Error, CommError=Error)
config = _Config()
run = None


def init(**kwargs: Any) -> Run:
    global run
    run = Run(**kwargs)
    return run


def log(*args: Any, **kwargs: Any) -> None:
    pass


def finish(*args: Any, **kwargs: Any) -> None:
    pass

"""wandb for a training run, which it never takes down.

An online run first asks wandb's server (``WANDB_BASE_URL``, through the usual proxy variables)
for any HTTP answer, within :data:`PROBE_TIMEOUT_S`; ``wandb.init`` is bounded by
:data:`INIT_TIMEOUT_S` (or ``WANDB_INIT_TIMEOUT``). If the server is silent, unreachable or not a wandb server, or
``wandb.init`` fails for any reason (credentials, resume, a proxy's error page), the run logs
offline under ``<run>/wandb`` with one warning; should offline fail too, it trains without
wandb (``logs.json.txt`` has every metric). A failing ``log`` or ``finish`` later costs one
warning and ends wandb logging, not training.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

# How long wandb's server may take to answer the reachability probe.
PROBE_TIMEOUT_S = 5.0
# wandb.init's limit unless WANDB_INIT_TIMEOUT says otherwise. wandb's login and shutdown add
# ~15 s to it: a server that answers the probe but stalls wandb costs ~20 s, then offline.
INIT_TIMEOUT_S = 5.0


class WandbRun:
    """A wandb run, or none (``run=None``): ``log`` and ``finish`` never raise."""

    def __init__(self, run: Any | None):
        self.run = run

    @property
    def mode(self) -> str | None:
        """``'online'``, ``'offline'``, ``'disabled'``, or None without a wandb run."""
        return None if self.run is None else self.run.settings.mode

    def log(self, data: Mapping[str, Any], step: int) -> None:
        if self.run is None:
            return
        try:
            self.run.log(_for_wandb(data), step=step)
        # wandb's errors are of many types (its own, protobuf, OS, ...); none may stop training
        except Exception as e:
            self._give_up("log", e)

    def finish(self) -> None:
        if self.run is None:
            return
        try:
            self.run.finish()
        except Exception as e:
            self._give_up("finish", e)

    def _give_up(self, what: str, error: Exception) -> None:
        log.warning(
            "wandb: %s failed (%s); training continues without wandb, every metric is still "
            "in logs.json.txt",
            what,
            _first_line(error),
        )
        self.run = None


def _for_wandb(step_log: Mapping[str, Any]) -> dict[str, Any]:
    """Rollout videos arrive as mp4 paths; wandb wants ``wandb.Video`` objects."""
    import wandb

    return {
        k: wandb.Video(v, format="mp4") if isinstance(v, str) and v.endswith(".mp4") else v
        for k, v in step_log.items()
    }


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def base_url() -> str:
    """The wandb server this process would talk to: ``WANDB_BASE_URL`` or wandb's default."""
    import wandb

    return os.environ.get("WANDB_BASE_URL") or wandb.Settings().base_url


def _ask(url: str, timeout: float) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as e:
        status = e.code  # an HTTP answer all the same
    except (OSError, http.client.HTTPException, ValueError) as e:
        # urllib wraps a socket timeout in URLError; either way the host is silent
        if isinstance(e, TimeoutError) or isinstance(getattr(e, "reason", None), TimeoutError):
            return _silent(url, timeout)
        return f"cannot reach {url} ({_first_line(e)})"
    if status >= 500:
        return f"{url} answered HTTP {status}"
    return None


def unreachable(url: str, timeout: float) -> str | None:
    """Why the server at ``url`` cannot be used now, or None when it answers HTTP (below 500)
    within ``timeout`` seconds, name lookup included. Honours the ``*_PROXY`` variables."""
    outcome: list[str | None] = []
    # A thread, because no socket timeout bounds the name lookup.
    probe = threading.Thread(target=lambda: outcome.append(_ask(url, timeout)), daemon=True)
    probe.start()
    probe.join(timeout)
    return outcome[0] if outcome else _silent(url, timeout)


def _silent(url: str, timeout: float) -> str:
    return f"{url} did not answer within {timeout:g} s"


def _teardown() -> None:
    """End wandb's service process, freeing the run ID a failed ``wandb.init`` still holds
    (else the offline run is refused: "run ID ... is in use")."""
    import wandb

    # wandb.teardown calls sys.exit when its service exited badly: that must not end training.
    with contextlib.suppress(Exception, SystemExit):
        wandb.teardown()


def _clear_empty_wandb_variables() -> None:
    """An empty ``WANDB_*`` variable means unset (wandb's own settings refuse ``WANDB_MODE=""``)."""
    for name in [k for k, v in os.environ.items() if k.startswith("WANDB_") and not v]:
        del os.environ[name]


def init_wandb(cfg: DictConfig, output_dir: Path) -> WandbRun:
    """Start the wandb run ``cfg.logging`` describes, falling back as the module says.

    ``WANDB_MODE`` in the environment overrides ``logging.mode``.
    """
    # Imported here: loading a checkpoint or evaluating (eval.py) needs no wandb.
    import wandb

    _clear_empty_wandb_variables()
    kwargs = OmegaConf.to_container(cfg.logging, resolve=True)
    mode = os.environ.get("WANDB_MODE") or kwargs.get("mode") or "online"
    config = OmegaConf.to_container(cfg, resolve=True) | {"output_dir": str(output_dir)}
    output_dir.mkdir(parents=True, exist_ok=True)

    def start(mode: str) -> Any:
        timeout = float(os.environ.get("WANDB_INIT_TIMEOUT", INIT_TIMEOUT_S))
        settings = wandb.Settings(init_timeout=timeout)
        return wandb.init(
            dir=str(output_dir), config=config, **(kwargs | {"mode": mode, "settings": settings})
        )

    problem = None
    if mode == "online":
        problem = unreachable(base_url(), PROBE_TIMEOUT_S)
        if problem is None:
            try:
                return WandbRun(start("online"))
            except Exception as e:  # any failure: credentials, resume, a proxy, a timeout
                problem = f"wandb.init failed ({_first_line(e)})"
                _teardown()
        mode = "offline"
    try:
        run = start(mode)
    except Exception as e:
        _teardown()
        failures = [p for p in (problem, f"a {mode} run failed ({_first_line(e)})") if p]
        log.warning(
            "wandb: %s; training continues without wandb, every metric is in %s",
            "; ".join(failures),
            output_dir / "logs.json.txt",
        )
        return WandbRun(None)
    if problem is not None:
        log.warning(
            "wandb: %s; logging offline to %s (upload later with `wandb sync`)",
            problem,
            output_dir / "wandb",
        )
    return WandbRun(run)

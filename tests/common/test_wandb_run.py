"""wandb never takes a run down: silent servers, proxies, failing init/log, odd environments."""

import logging
import socket
import time
from pathlib import Path

import pytest
import wandb
from fake_server import FakeServer
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from diffusion_policy_mlx.common import wandb_run
from diffusion_policy_mlx.common.wandb_run import WandbRun, init_wandb, unreachable

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
DEFAULT_TIMEOUTS = {
    "PROBE_TIMEOUT_S": wandb_run.PROBE_TIMEOUT_S,
    "INIT_TIMEOUT_S": wandb_run.INIT_TIMEOUT_S,
}


def _cfg(*overrides):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose("train_diffusion_unet_lowdim_workspace", overrides=list(overrides))
    OmegaConf.resolve(cfg)
    return cfg


@pytest.fixture
def server(request):
    fake = FakeServer(request.param)
    yield fake
    fake.close()


@pytest.fixture
def online(monkeypatch, tmp_path):
    """An environment that asks for online wandb with an API key, in a private config dir;
    short timeouts keep the tests fast."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_INIT_TIMEOUT", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    monkeypatch.setattr(wandb_run, "PROBE_TIMEOUT_S", 0.5)
    monkeypatch.setattr(wandb_run, "INIT_TIMEOUT_S", 2.0)
    yield _cfg("logging.mode=online")
    # wandb's service process keeps the settings it started with (the server's address)
    wandb_run._teardown()


def _start(cfg, out, caplog):
    with caplog.at_level(logging.WARNING, logger=wandb_run.__name__):
        t0 = time.monotonic()
        run = init_wandb(cfg, out)
        elapsed = time.monotonic() - t0
    warnings = [r.getMessage() for r in caplog.records if r.name == wandb_run.__name__]
    return run, elapsed, warnings


@pytest.mark.parametrize(
    ("server", "reason"),
    [
        ("silent", "did not answer within 0.5 s"),
        ("garbage", "cannot reach"),
        (502, "answered HTTP 502"),
    ],
    indirect=["server"],
)
def test_a_silent_broken_or_failing_wandb_host_means_offline_at_once(
    server, reason, online, tmp_path, monkeypatch, caplog
):
    monkeypatch.setenv("WANDB_BASE_URL", server.url)
    run, elapsed, warnings = _start(online, tmp_path, caplog)
    try:
        assert run.mode == "offline"
        assert elapsed < 10
        assert len(warnings) == 1 and reason in warnings[0] and server.url in warnings[0]
        assert "logging offline" in warnings[0]
    finally:
        run.finish()
    assert any((tmp_path / "wandb").glob("offline-run-*"))


@pytest.mark.parametrize("server", [403], indirect=True)
def test_a_proxy_that_answers_http_gets_offline_after_wandb_init_fails(
    server, online, tmp_path, monkeypatch, caplog
):
    """The probe passes (an HTTP answer) but wandb.init is refused: the failed init's run ID
    must not block the offline run ("run ID ... is in use")."""
    monkeypatch.setenv("WANDB_BASE_URL", server.url)
    run, elapsed, warnings = _start(online, tmp_path, caplog)
    try:
        assert run.mode == "offline"
        assert len(warnings) == 1 and "wandb.init failed" in warnings[0]
        assert elapsed < 10
    finally:
        run.finish()


@pytest.mark.slow
@pytest.mark.parametrize("server", ["stalls_wandb"], indirect=True)
def test_a_host_that_stalls_wandb_init_costs_well_under_30_seconds(
    server, online, tmp_path, monkeypatch, caplog
):
    """The probe cannot tell; wandb.init's own limit (the real one) ends the wait."""
    for name, value in DEFAULT_TIMEOUTS.items():
        monkeypatch.setattr(wandb_run, name, value)
    monkeypatch.setenv("WANDB_BASE_URL", server.url)
    run, elapsed, warnings = _start(online, tmp_path, caplog)
    try:
        assert run.mode == "offline" and len(warnings) == 1
        assert elapsed < 25  # the first training step comes within 30 s
    finally:
        run.finish()


def test_any_wandb_error_at_init_falls_back_to_offline(online, tmp_path, monkeypatch, caplog):
    # e.g. logging.resume=False against a run that exists: a bare wandb.errors.Error
    real_init = wandb.init
    modes = []

    def init(**kwargs):
        modes.append(kwargs["mode"])
        if kwargs["mode"] == "online":
            raise wandb.errors.Error("resume='never' but run 1a2b3c already exists")
        return real_init(**kwargs)

    monkeypatch.setattr(wandb_run, "unreachable", lambda url, timeout: None)
    monkeypatch.setattr(wandb, "init", init)
    cfg = _cfg("logging.mode=online", "logging.resume=False")
    run, _, warnings = _start(cfg, tmp_path, caplog)
    try:
        assert modes == ["online", "offline"] and run.mode == "offline"
        assert len(warnings) == 1 and "already exists" in warnings[0]
    finally:
        run.finish()


def test_when_offline_fails_too_the_run_goes_on_without_wandb(
    online, tmp_path, monkeypatch, caplog
):
    def init(**kwargs):
        raise wandb.errors.Error(f"{kwargs['mode']} broken")

    monkeypatch.setattr(wandb_run, "unreachable", lambda url, timeout: None)
    monkeypatch.setattr(wandb, "init", init)
    run, _, warnings = _start(online, tmp_path, caplog)
    assert run.mode is None
    assert len(warnings) == 1
    assert "online broken" in warnings[0] and "offline broken" in warnings[0]
    assert "without wandb" in warnings[0] and "logs.json.txt" in warnings[0]
    run.log({"train_loss": 1.0}, step=0)  # no-ops
    run.finish()


def test_a_failing_log_warns_once_and_stops_wandb_logging(caplog):
    class Broken:
        calls = 0

        def log(self, data, step):
            Broken.calls += 1
            raise wandb.errors.CommError("connection reset")

        def finish(self):
            raise AssertionError("a run whose log failed is not finished again")

    run = WandbRun(Broken())
    with caplog.at_level(logging.WARNING, logger=wandb_run.__name__):
        for step in range(3):
            run.log({"train_loss": 1.0}, step=step)
        run.finish()
    assert Broken.calls == 1 and run.mode is None
    assert len(caplog.records) == 1 and "connection reset" in caplog.text


def test_the_probe_honours_wandb_base_url(online, tmp_path, monkeypatch):
    asked = []
    monkeypatch.setenv("WANDB_BASE_URL", "http://wandb.internal.example:8080")
    monkeypatch.setattr(wandb_run, "unreachable", lambda url, timeout: asked.append(url) or "no")
    init_wandb(online, tmp_path).finish()
    assert asked == ["http://wandb.internal.example:8080"]


def test_the_probe_is_bounded_name_lookup_included(monkeypatch):
    def slow_lookup(*args, **kwargs):
        # a resolver that hangs, then fails as a real one does (the probe thread outlives the test)
        time.sleep(5)
        raise socket.gaierror("Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", slow_lookup)
    t0 = time.monotonic()
    assert unreachable("http://wandb.example", 0.3) == (
        "http://wandb.example did not answer within 0.3 s"
    )
    assert time.monotonic() - t0 < 1
    assert unreachable("not a url", 0.3).startswith("cannot reach not a url")


def test_an_empty_wandb_mode_means_unset(online, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("WANDB_MODE", "")
    monkeypatch.setattr(wandb_run, "unreachable", lambda url, timeout: "no network")
    run, _, warnings = _start(online, tmp_path, caplog)  # logging.mode=online applies
    try:
        assert run.mode == "offline" and len(warnings) == 1 and "no network" in warnings[0]
    finally:
        run.finish()


def test_falls_back_to_offline_without_credentials(online, tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setattr(wandb_run, "unreachable", lambda url, timeout: None)
    run, _, warnings = _start(online, tmp_path, caplog)
    try:
        assert run.mode == "offline"
        assert len(warnings) == 1 and "API key" in warnings[0]
    finally:
        run.finish()


def test_wandb_mode_env_overrides_config(online, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    run = init_wandb(online, tmp_path)
    assert run.mode == "disabled"
    run.finish()


def test_wandb_init_timeout_is_bounded_unless_the_user_sets_one(online, tmp_path, monkeypatch):
    timeouts = []

    def init(**kwargs):
        timeouts.append(kwargs["settings"].init_timeout)
        raise wandb.errors.Error("stop here")

    monkeypatch.setattr(wandb_run, "unreachable", lambda url, timeout: None)
    monkeypatch.setattr(wandb, "init", init)
    init_wandb(online, tmp_path)
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "42")
    init_wandb(online, tmp_path)
    assert timeouts == [2.0, 2.0, 42.0, 42.0]  # online, then offline, each time

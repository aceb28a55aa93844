import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from diffusion_policy_mlx.common.run_lock import RunFolderInUseError, run_lock

HOLD = """
import sys, time
from diffusion_policy_mlx.common.run_lock import run_lock
with run_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock on ``tmp_path / 'run'``."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "locked"
    yield proc
    proc.kill()
    proc.wait()


def test_a_second_process_is_refused_with_the_holders_pid_and_host(tmp_path, holder):
    with pytest.raises(RunFolderInUseError) as info:
        with run_lock(tmp_path / "run"):
            pass
    message = str(info.value)
    assert f"process {holder.pid} on host {socket.gethostname()}" in message
    assert str(tmp_path / "run") in message and "hydra.run.dir" in message


def test_a_killed_holder_does_not_block_the_next_run(tmp_path, holder):
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    # the dead process's record is still in the file, but the kernel dropped its lock
    assert json.loads((tmp_path / "run" / "run.lock").read_text())["pid"] == holder.pid
    with run_lock(tmp_path / "run") as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()


def test_the_lock_is_released_and_its_record_cleared_at_the_end(tmp_path):
    with run_lock(tmp_path / "run") as path:
        record = json.loads(path.read_text())
        assert (record["pid"], record["host"]) == (os.getpid(), socket.gethostname())
        # a second holder in this very process is refused too (one open file per lock)
        with pytest.raises(RunFolderInUseError, match=f"process {os.getpid()}"):
            with run_lock(tmp_path / "run"):
                pass
    assert path.read_text() == ""
    with run_lock(tmp_path / "run"):
        pass

"""Downloading PushT from a local HTTP server that serves an archive of the shared data."""

import shutil
import socket
import subprocess
import sys
import threading
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import zarr

from diffusion_policy_mlx.common.replay_buffer import ReplayBuffer
from diffusion_policy_mlx.data import DATASETS, RemoteDataset, download
from diffusion_policy_mlx.data.__main__ import main

PUSHT = DATASETS["pusht"]
# the published digests of every array but the 2.8 GB images: the fast tests skip those
SMALL = RemoteDataset(
    name="pusht",
    url=PUSHT.url,
    path=PUSHT.path,
    arrays={k: v for k, v in PUSHT.arrays.items() if k != "data/img"},
)


class Handler(SimpleHTTPRequestHandler):
    """Serves files; ``/cut/NAME`` announces NAME's full size but sends only half of it."""

    def do_GET(self):
        if not self.path.startswith("/cut/"):
            return super().do_GET()
        body = (Path(self.directory) / self.path.removeprefix("/cut/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.close_connection = True

    def log_message(self, *args):
        pass


def _zip_zarr(zarr_dir: Path, archive: Path, skip: tuple[str, ...] = ()) -> Path:
    """An archive laid out like upstream's: ``pusht/pusht_cchi_v7_replay.zarr/...``."""
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
        for file in sorted(zarr_dir.rglob("*")):
            rel = file.relative_to(zarr_dir)
            if file.is_file() and not any(rel.as_posix().startswith(s) for s in skip):
                z.write(file, Path("pusht") / "pusht_cchi_v7_replay.zarr" / rel)
    return archive


@pytest.fixture(scope="module")
def server(pusht_zarr, tmp_path_factory):
    served = tmp_path_factory.mktemp("served")
    _zip_zarr(pusht_zarr, served / "small.zip", skip=("data/img",))
    corrupt = tmp_path_factory.mktemp("corrupt") / "pusht_cchi_v7_replay.zarr"
    shutil.copytree(pusht_zarr, corrupt, ignore=shutil.ignore_patterns("img"))
    action = zarr.open_group(str(corrupt), mode="r+")["data/action"]
    action[7, 1] = action[7, 1] + 1
    _zip_zarr(corrupt, served / "corrupt.zip")
    (served / "page.html").write_text("<html>not an archive</html>")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}", served
    httpd.shutdown()


def _leftovers(root: Path) -> list[str]:
    """Temporary download folders (``.<name>.download-*``) left under ``root``."""
    return sorted(p.name for p in root.rglob("*.download-*"))


def test_download_verifies_and_places_the_zarr(server, pusht_zarr, tmp_path):
    url, _ = server
    path = download(SMALL, root=tmp_path / "data", url=f"{url}/small.zip", progress=False)
    assert path == tmp_path / "data" / "pusht" / "pusht_cchi_v7_replay.zarr"
    got = ReplayBuffer.copy_from_path(path)
    want = ReplayBuffer.copy_from_path(
        pusht_zarr, keys=["action", "keypoint", "n_contacts", "state"]
    )
    assert sorted(got.keys()) == sorted(want.keys())
    for key in want.keys():
        np.testing.assert_array_equal(got[key], want[key])
    np.testing.assert_array_equal(got.episode_ends, want.episode_ends)
    assert _leftovers(tmp_path / "data") == []


def test_corrupt_download_leaves_nothing(server, tmp_path):
    url, _ = server
    with pytest.raises(ValueError, match="data/action has sha256 .* expected 6691b085"):
        download(SMALL, root=tmp_path, url=f"{url}/corrupt.zip", progress=False)
    assert not (tmp_path / PUSHT.path).exists()
    assert _leftovers(tmp_path) == []


def test_interrupted_transfer_leaves_nothing(server, tmp_path):
    url, _ = server
    with pytest.raises(ConnectionError, match=r"stopped after \d+ of \d+ bytes"):
        download(SMALL, root=tmp_path, url=f"{url}/cut/small.zip", progress=False)
    assert not (tmp_path / PUSHT.path).exists()
    assert _leftovers(tmp_path) == []


def test_bad_addresses(server, tmp_path):
    url, _ = server
    with pytest.raises(ValueError, match="did not return a zip archive"):
        download(SMALL, root=tmp_path, url=f"{url}/page.html", progress=False)
    with pytest.raises(ConnectionError, match="Could not download .*missing.zip"):
        download(SMALL, root=tmp_path, url=f"{url}/missing.zip", progress=False)
    with pytest.raises(KeyError, match="Unknown dataset 'pushy'"):
        download("pushy", root=tmp_path)
    assert _leftovers(tmp_path) == []


def test_existing_dataset_is_kept_unless_forced(server, tmp_path, capsys):
    url, _ = server
    target = tmp_path / PUSHT.path
    target.mkdir(parents=True)
    (target / "mine").write_text("keep")
    download(SMALL, root=tmp_path, url=f"{url}/small.zip", progress=False)
    assert (target / "mine").exists()
    assert "already at" in capsys.readouterr().out
    # a failed forced download keeps the old copy too
    with pytest.raises(ValueError):
        download(SMALL, root=tmp_path, url=f"{url}/corrupt.zip", force=True, progress=False)
    assert (target / "mine").exists()
    download(SMALL, root=tmp_path, url=f"{url}/small.zip", force=True, progress=False)
    assert not (target / "mine").exists() and (target / "data" / "action").is_dir()
    assert _leftovers(tmp_path) == []


def test_command_line(server, tmp_path, monkeypatch, capsys):
    url, _ = server
    monkeypatch.setitem(DATASETS, "pusht", SMALL)
    root = tmp_path / "d"
    assert (
        main(["download", "pusht", "--root", str(root), "--url", f"{url}/small.zip", "--quiet"])
        == 0
    )
    assert main(["verify", "pusht", "--root", str(root)]) == 0
    assert "matches the published pusht dataset" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["verify", "pusht", "--root", str(tmp_path / "empty")])
    assert "python -m diffusion_policy_mlx.data download pusht --root" in capsys.readouterr().err


def test_failed_download_is_one_line_that_says_how_to_place_the_data(tmp_path):
    with socket.socket() as s:  # a port nothing listens on: the connection is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = tmp_path / "d"
    proc = subprocess.run(
        [sys.executable, "-m", "diffusion_policy_mlx.data", "download", "pusht", "--quiet"]
        + ["--root", str(root), "--url", f"http://127.0.0.1:{port}/pusht.zip"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if "Warning" not in line]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("python -m diffusion_policy_mlx.data: downloading pusht failed: ")
    assert f"Could not download http://127.0.0.1:{port}/pusht.zip" in lines[0]
    assert str((root / PUSHT.path).resolve()) in lines[0]
    assert f"verify pusht --root {root}" in lines[0]
    assert _leftovers(root) == [] and not (root / PUSHT.path).exists()


@pytest.mark.slow
def test_full_pusht_archive(pusht_zarr, tmp_path, monkeypatch):
    """The whole published layout, images included, through the command line."""
    served = tmp_path / "served"
    served.mkdir()
    _zip_zarr(pusht_zarr, served / "pusht.zip")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(served)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        monkeypatch.chdir(tmp_path)
        url = f"http://127.0.0.1:{httpd.server_port}/pusht.zip"
        assert main(["download", "pusht", "--url", url, "--quiet"]) == 0
    finally:
        httpd.shutdown()
    img = zarr.open_group(str(tmp_path / "data" / PUSHT.path), mode="r")["data/img"]
    assert img.shape == (25650, 96, 96, 3)
    assert _leftovers(tmp_path / "data") == []

"""The built wheel as a user installs it: one top-level package (`cape_track`), the embedded model, the samples and
the LICENSE inside; installed into a fresh virtual environment and run from a folder that holds its own `model.py`,
`tracker.py` and `training.py` (which used to shadow ours), it tracks the bundled sample and its exports load in the
field's readers; `cape-track app` listens on 127.0.0.1 only.

The fresh environment borrows this one's third-party packages through a path file (so no 5 GB torch install), but
not its editable install of cape-track: the wheel's copy is the one imported."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        pytest.fail(f"pip wheel failed: {done.stderr[-2000:]}")
    return next(out.glob("cape_track-*.whl"))


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    site = next((root / "lib").glob("python*/site-packages"))
    ours = next(p for p in map(Path, sys.path) if p.name == "site-packages" and (p / "torch").is_dir())
    (site / "borrowed.pth").write_text(f"{ours}\n")  # third-party packages only: its .pth files are not run
    install = [sys.executable, "-m", "pip", "--python", str(root / "bin" / "python"), "install", "--no-deps", "-q"]
    done = subprocess.run([*install, str(wheel)], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:  # pip before 22.3 has no --python: install with the target's own path
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--prefix", str(root), str(wheel)],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert done.returncode == 0, done.stderr
    return root


def test_the_wheel_installs_one_namespace_with_its_data(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"cape_track"}
    for needed in (
        "cape_track/model/weights/default.safetensors",
        "cape_track/samples/sample.mp4",
        "cape_track/samples/sample.json",
        "cape_track/streamlit_app/app.py",
        "cape_track/tracker/cli.py",
    ):
        assert needed in names, needed
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in names)


def test_tracks_and_exports_from_a_folder_with_clashing_module_names(venv: Path, tmp_path: Path) -> None:
    work = tmp_path / "project"
    work.mkdir()
    for clash in ("model.py", "tracker.py", "training.py"):
        (work / clash).write_text("raise RuntimeError('the user module was imported instead of cape_track')\n")
    python = venv / "bin" / "python"
    code = "import cape_track, cape_track.tracker.cli as c; print(cape_track.__file__)"
    where = subprocess.run([python, "-c", code], cwd=work, capture_output=True, text=True, timeout=120)
    assert where.returncode == 0, where.stderr
    assert str(venv) in where.stdout  # the wheel's copy, not the repository's
    sample = next((venv / "lib").glob("python*/site-packages/cape_track/samples"))
    command = [python, "-m", "cape_track.tracker.cli", str(sample / "sample.mp4")]
    command += ["--support", str(sample / "sample.jpg"), "--out", "out", "--export", "dlc,sleap,coco", "-q"]
    done = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    frames = len(json.loads((work / "out" / "sample.keypoints.json").read_text())["frames"])
    names = json.loads((sample / "sample.json").read_text())["names"]
    assert frames == 132

    import pandas as pd

    dlc = pd.read_csv(work / "out" / "sample.dlc.csv", header=[0, 1, 2], index_col=0)
    assert len(dlc) == frames and list(dlc.columns.get_level_values("bodyparts").unique()) == names
    load_poses = pytest.importorskip("movement.io.load_poses")
    assert load_poses.from_dlc_file(work / "out" / "sample.dlc.h5", fps=25).sizes["time"] == frames
    sio = pytest.importorskip("sleap_io")
    labels = sio.load_file(str(work / "out" / "sample.slp"))
    assert labels.skeletons[0].node_names == names
    coco = pytest.importorskip("pycocotools.coco").COCO(str(work / "out" / "sample.coco.json"))
    assert len(coco.getImgIds()) == frames and coco.loadCats(1)[0]["keypoints"] == names


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> set[str]:
    """Local addresses listening on `port`, from /proc/net/tcp{,6} ("0100007F" is 127.0.0.1, zeros: every address)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def test_the_app_launcher_listens_on_loopback_only(venv: Path, tmp_path: Path) -> None:
    port = _free_port()
    command = [venv / "bin" / "python", "-m", "cape_track.tracker.cli", "app", "--port", str(port)]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, process.communicate(timeout=5)
                time.sleep(0.5)
        assert _listening(port) == {"0100007F"}, _listening(port)
    finally:
        process.terminate()
        process.wait(timeout=30)
    # SIGTERM to the launcher ends the server it started too (no orphan keeps the port)
    deadline = time.monotonic() + 30
    while _listening(port) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _listening(port) and process.returncode == 143

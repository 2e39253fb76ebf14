"""End to end in a real headless Chromium (Debian's, driven by Playwright): `streamlit run` the page, upload a
support image, click three keypoints, choose a checkpoint, upload a clip, track, and find the result video. The
screenshot lands in test-artifacts/ (git-ignored)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import cv2
import pytest
from fixtures_media import write_clip

from cape_track.model import CapeModel

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "streamlit_app" / "app.py"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = Path(os.environ.get("CAPE_CHROMIUM", "/usr/bin/chromium"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.is_file(), reason=f"no Chromium at {CHROMIUM} (apt-get install -y chromium, or set CAPE_CHROMIUM)"
    ),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 45_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, server: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"streamlit exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"streamlit did not answer on {url} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """`streamlit run streamlit_app/app.py` on a free localhost port; yields its URL and stops it afterwards."""
    port = _free_port()
    log = tmp_path / "streamlit.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.port", str(port), "--server.address", "127.0.0.1", "--server.headless", "true",
        "--server.fileWatcherType", "none", "--global.developmentMode", "false", "--browser.gatherUsageStats", "false",
    ]  # fmt: skip
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process, log)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_click_keypoints_track_and_watch(server: str, tmp_path: Path) -> None:
    clip = write_clip(tmp_path, frames=24, size=(160, 120))
    support = tmp_path / "square.png"
    cv2.imwrite(str(support), cv2.cvtColor(clip.render(0), cv2.COLOR_RGB2BGR))
    checkpoint = tmp_path / "test.pt"
    CapeModel.from_preset("test").save(checkpoint)
    ARTIFACTS.mkdir(exist_ok=True)

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh --user-data-dir
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1440, "height": 2200},
        )
        try:
            page = browser.pages[0] if browser.pages else browser.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(server)
            expect = sync_api.expect
            expect.set_options(timeout=TIMEOUT_MS)
            expect(page.get_by_role("heading", name="cape-track")).to_be_visible()

            uploader = page.get_by_test_id("stFileUploader").filter(has_text="Add a support image")
            uploader.locator("input[type=file]").set_input_files(str(support))
            image = page.frame_locator("iframe[title*='streamlit_image_coordinates']").locator("#image")
            expect(image).to_be_visible()
            expect(page.get_by_text("Keypoints · 0")).to_be_visible()
            box = image.bounding_box()
            assert box is not None and box["width"] > 100
            for n, (u, v) in enumerate([(0.3, 0.3), (0.6, 0.35), (0.45, 0.7)], start=1):
                image.click(position={"x": u * box["width"], "y": v * box["height"]})
                expect(page.get_by_text(f"Keypoints · {n}")).to_be_visible()
            page.get_by_role("button", name="Link", exact=True).click()  # kp0 - kp1, the default pair
            expect(page.get_by_text("Skeleton · 1 edge")).to_be_visible()

            page.get_by_test_id("stRadioGroup").get_by_text("File on this machine", exact=True).click()
            path_box = page.get_by_label("Checkpoint path")
            path_box.fill(str(checkpoint))
            path_box.press("Enter")
            expect(page.get_by_text("Model: test.pt")).to_be_visible()

            uploader = page.get_by_test_id("stFileUploader").filter(has_text="Upload a video")
            uploader.locator("input[type=file]").set_input_files(str(clip.path))
            expect(page.get_by_text("160×120, 24 frames")).to_be_visible()

            page.get_by_test_id("stBaseButton-primary").filter(has_text="Track").click()
            video = page.locator("video")
            expect(video).to_be_visible(timeout=60_000)
            expect(page.get_by_text("Tracked 24 frames")).to_be_visible()
            expect(page.get_by_test_id("stVegaLiteChart").first).to_be_visible()
            expect(page.get_by_role("button", name="Cancel")).to_have_count(0)  # the run's progress is gone
            page.wait_for_function("document.querySelector('video').readyState >= 2", timeout=15_000)
            assert page.get_by_test_id("stException").count() == 0
            page.screenshot(path=str(ARTIFACTS / "streamlit_after_tracking.png"), full_page=True)
        finally:
            browser.close()

"""End to end in a real headless Chromium (Debian's, driven by Playwright): `streamlit run` the page, upload a
support image, click three keypoints, choose a checkpoint, upload a clip, track, and find the result video. The
screenshot lands in test-artifacts/ (git-ignored)."""

from __future__ import annotations

import json
import os
import re
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
    (tmp_path / "tmp").mkdir()  # the page's session folders land here, where a test can read its runs' files
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TMPDIR": str(tmp_path / "tmp")}
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
            page.get_by_role("tab", name="Plots").click()
            expect(page.get_by_test_id("stVegaLiteChart").first).to_be_visible()
            expect(page.get_by_role("button", name="Cancel")).to_have_count(0)  # the run's progress is gone
            page.wait_for_function("document.querySelector('video').readyState >= 2", timeout=15_000)
            assert page.get_by_test_id("stException").count() == 0
            page.screenshot(path=str(ARTIFACTS / "streamlit_after_tracking.png"), full_page=True)
        finally:
            browser.close()


def _slide_to(page, label: str, value: int) -> None:
    """Move the Streamlit slider labelled `label` to `value` with the keyboard, as a user can."""
    thumb = page.get_by_test_id("stSlider").filter(has_text=label).get_by_role("slider")
    thumb.focus()
    thumb.press("Home")
    for _ in range(value):
        thumb.press("ArrowRight")
    sync_api.expect(thumb).to_have_attribute("aria-valuetext", str(value))


def _idle(page) -> None:
    """Wait until the page has finished its rerun (Streamlit shows a running indicator meanwhile)."""
    page.wait_for_timeout(300)
    sync_api.expect(page.get_by_test_id("stStatusWidget")).to_have_count(0)


def _canvas(page, n: int = 0):
    return page.frame_locator("iframe[title*='streamlit_image_coordinates']").nth(n).locator("#image")


def test_label_a_video_frame_rename_track_correct_and_compare(server: str, tmp_path: Path) -> None:
    """The workflow of a user with their own clip, on the 720p sample and the embedded default model: pick frame
    36, click the ten keypoints on it, rename the keypoint of the skeleton's "to" box, link two by clicking,
    track, correct frame 90 by dragging a point, re-track with it as a second shot and compare the two runs;
    screenshots at 1440 and 1024 px wide."""
    sample = json.loads((ROOT / "samples" / "sample.json").read_text())
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1440, "height": 2400},  # the page scrolls inside: the screenshots show this much
        )
        try:
            page = browser.pages[0] if browser.pages else browser.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            expect = sync_api.expect
            expect.set_options(timeout=TIMEOUT_MS)
            page.goto(server)
            page.get_by_role("button", name="Use the sample clip").click()
            expect(page.get_by_text("1280×720, 132 frames")).to_be_visible()
            _slide_to(page, "Frame to label", 36)
            page.get_by_role("button", name="Use frame 36 as a support image").click()
            image = _canvas(page)
            expect(image).to_be_visible()
            box = image.bounding_box()
            assert box is not None and box["width"] > 300
            for n, (x, y) in enumerate(sample["keypoints"], start=1):
                image.click(position={"x": (x + 0.5) / 1280 * box["width"], "y": (y + 0.5) / 720 * box["height"]})
                expect(page.get_by_text(f"Keypoints · {n}")).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "page_frame_picker.png"), full_page=True)

            names = page.get_by_test_id("stTextInput").locator("input")
            _idle(page)
            names.nth(1).click()
            names.nth(1).fill("right_ear")  # the keypoint shown in the skeleton's "to" box: this used to crash
            names.nth(1).press("Enter")
            _idle(page)
            expect(page.get_by_role("combobox", name="to", exact=True)).to_have_value("right_ear")  # shown renamed
            page.get_by_text("Link by clicking").click()
            for x, y in (sample["keypoints"][2], sample["keypoints"][3]):  # left eye, right eye
                image.click(position={"x": (x + 0.5) / 1280 * box["width"], "y": (y + 0.5) / 720 * box["height"]})
                page.wait_for_timeout(300)
            expect(page.get_by_text("Skeleton · 1 edge")).to_be_visible()
            page.get_by_role("button", name="Link", exact=True).click()  # the selectors: kp0 - right_ear
            expect(page.get_by_text("Skeleton · 2 edges")).to_be_visible()
            assert page.get_by_test_id("stException").count() == 0

            page.get_by_test_id("stBaseButton-primary").filter(has_text="Track").click()
            expect(page.get_by_text("Tracked 132 frames")).to_be_visible(timeout=180_000)
            page.get_by_role("tab", name="Step and correct").click()
            _slide_to(page, "Frame to check", 90)
            correct = _canvas(page, 1)
            expect(correct).to_be_visible()
            page.wait_for_timeout(500)
            frame_box = correct.bounding_box()
            assert frame_box is not None
            # drag the first keypoint run 1 shows on frame 90 by 30 display px to the right
            (tracks,) = (tmp_path / "tmp").glob("cape-track-page-*/run1/sample.keypoints.json")  # the session's
            record = json.loads(tracks.read_text())["frames"][90]
            x, y = record["keypoints"][record["visible"].index(True)]
            sx, sy = frame_box["width"] / 1280, frame_box["height"] / 720
            start = (frame_box["x"] + (x + 0.5) * sx, frame_box["y"] + (y + 0.5) * sy)
            page.mouse.move(*start)
            page.mouse.down()
            page.mouse.move(start[0] + 15, start[1], steps=4)
            page.mouse.move(start[0] + 30, start[1], steps=4)
            page.mouse.up()
            _idle(page)
            page.screenshot(path=str(ARTIFACTS / "page_correction.png"), full_page=True)
            page.get_by_role("button", name="Add this frame as a support shot and re-track").click()
            run = page.get_by_role("combobox", name="Run", exact=True)
            expect(run).to_have_value(re.compile(r"^Run 2 · 2 support images · 132 frames"), timeout=180_000)
            expect(page.get_by_text("Tracked 132 frames")).to_be_visible()
            page.get_by_role("tab", name="Compare runs").click()
            _slide_to(page, "Frame to compare", 90)
            expect(page.get_by_test_id("stDataFrame")).to_be_visible()
            expect(page.get_by_text("mean px apart (all frames)")).to_have_count(1)
            assert page.get_by_test_id("stException").count() == 0
            page.screenshot(path=str(ARTIFACTS / "page_correction_compare.png"), full_page=True)

            page.set_viewport_size({"width": 1024, "height": 2400})
            page.get_by_role("tab", name="Plots").click()
            page.wait_for_timeout(1500)
            page.get_by_role("heading", name="4 · Results").scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "page_results_1024.png"), full_page=True)
            width = page.evaluate("document.querySelector('[data-testid=stMain]').scrollWidth")
            assert width <= 1024  # nothing runs off the side at 1024 px
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "page_workflow_failed.png"), full_page=True)  # what went wrong
            raise
        finally:
            browser.close()

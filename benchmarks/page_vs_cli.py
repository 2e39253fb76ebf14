"""The page against the CLI on the same clip, support and model, measured in one run: the page as a user meets it
(`cape-track app`, driven in a real headless Chromium: upload, Track, wait for the result) and `cape-track VIDEO
--support IMAGE` in a terminal, runs interleaved. Both report the rate over the same span (first frame to last,
after the support is encoded). Also how long Cancel takes to stop a page run (click to the "Cancelled" message)
and how long `cape-track --help` takes to answer.

    python -m cape_track.benchmarks.page_vs_cli --video samples/sample.mp4 --support samples/sample.jpg \
        --json cape_track/benchmarks/data/page_vs_cli_sample_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PROG = "cape_track.benchmarks.page_vs_cli"
RATIO_TARGET = 1.3  # page time / CLI time on the same clip (issue 13)
CANCEL_TARGET_S = 1.0
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
RATE = re.compile(r"(\d+) frames in ([\d.]+) s \(([\d.]+) fps\)")  # the CLI's summary and the page's message


def cli_rate(video: Path, support: Path, out: Path) -> float:
    """fps of one `cape-track` run, from its summary line."""
    command = [_cape_track(), str(video), "--support", str(support), "--out", str(out), "--overwrite", "-q"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    match = RATE.search(done.stdout)
    if done.returncode or match is None:
        raise SystemExit(f"{PROG}: the CLI failed: {(done.stderr or done.stdout).strip()[-300:]}")
    return float(match.group(3))


def help_seconds(repeat: int = 5) -> float:
    """Median wall time of `cape-track --help` (a new process each time, as a user types it)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([_cape_track(), "--help"], capture_output=True, timeout=60, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@contextmanager
def page_server() -> Iterator[str]:
    """`cape-track app` on a free port (the launcher's settings: no per-rerun GC); yields its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [_cape_track(), "app", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit(f"{PROG}: the page did not start") from None
                time.sleep(0.3)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


class Page:
    """The page in Chromium with the clip and support loaded; `track()` runs it once and returns its fps."""

    def __init__(self, browser: object, url: str, video: Path, support: Path, keypoints: Path) -> None:
        from playwright.sync_api import expect

        self.expect = expect
        self.page = browser.new_page(viewport={"width": 1440, "height": 2000})
        self.page.set_default_timeout(120_000)
        expect.set_options(timeout=120_000)
        self.page.goto(url)
        self._upload("Upload a video", video)
        expect(self.page.get_by_text(re.compile(r"\d+×\d+, .* fps"))).to_be_visible()
        self._upload("Add a support image", support)
        canvas = self.page.frame_locator("iframe[title*='streamlit_image_coordinates']").locator("#image")
        expect(canvas).to_be_visible()
        self._upload("Load keypoints", keypoints, test_id_text="JSON")
        expect(self.page.get_by_text(re.compile(r"Loaded \d+ keypoints"))).to_be_visible()
        self.runs = 0

    def _upload(self, label: str, path: Path, test_id_text: str | None = None) -> None:
        uploaders = self.page.get_by_test_id("stFileUploader")
        uploader = uploaders.filter(has_text=test_id_text or label).last
        uploader.locator("input[type=file]").set_input_files(str(path))

    def _track_button(self) -> object:
        return self.page.get_by_role("button", name="Track", exact=True)

    def track(self) -> float:
        self.runs += 1
        self._track_button().click()
        if self.runs > 1:
            self.expect(self.page.get_by_role("combobox", name="Run", exact=True)).to_have_value(
                re.compile(rf"^Run {self.runs} · .* · done$")
            )
        message = self.page.get_by_test_id("stAlertContentSuccess").filter(has_text="Tracked")
        self.expect(message).to_be_visible()
        match = RATE.search(message.inner_text())
        if match is None:
            raise SystemExit(f"{PROG}: unexpected page message {message.inner_text()!r}")
        return float(match.group(3))

    def cancel_seconds(self) -> float:
        """Start a run, click Cancel once frames are coming, and time until the page says it stopped."""
        self.runs += 1
        self._track_button().click()
        self.expect(self.page.get_by_text(re.compile(r"Tracking .*: [1-9]\d* / "))).to_be_visible()
        start = time.perf_counter()
        self.page.get_by_role("button", name="Cancel").click()
        self.expect(self.page.get_by_text(re.compile(r"^Cancelled after \d+ frames"))).to_be_visible()
        return time.perf_counter() - start


def _cape_track() -> str:
    found = shutil.which("cape-track") or str(Path(sys.executable).with_name("cape-track"))
    if not Path(found).exists():
        raise SystemExit(f"{PROG}: no cape-track command (pip install -e .)")
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--video", type=Path, required=True)
    p.add_argument("--support", type=Path, required=True, help="support image, its keypoints in IMAGE.json")
    p.add_argument("--repeat", type=int, default=3, help="runs of each, interleaved")
    p.add_argument("--chromium", type=Path, default=Path(os.environ.get("CAPE_CHROMIUM", "/usr/bin/chromium")))
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args(argv)
    keypoints = args.support.with_suffix(".json")
    for path in (args.video, args.support, keypoints, args.chromium):
        if not path.is_file():
            return _fail(f"{path}: no such file")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return _fail("needs playwright (pip install -e '.[dev]')")

    cli, page_fps = [], []
    with tempfile.TemporaryDirectory() as tmp, page_server() as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(args.chromium), headless=True, args=CHROMIUM_ARGS)
        try:
            page = Page(browser, url, args.video, args.support, keypoints)
            page.track()  # warm-up: the page's first run builds the model's ONNX session, as the CLI's first does
            cli_rate(args.video, args.support, Path(tmp))
            for _ in range(args.repeat):
                cli.append(cli_rate(args.video, args.support, Path(tmp)))
                page_fps.append(page.track())
            cancel = page.cancel_seconds()
        finally:
            browser.close()
    figures = {
        "video": str(args.video),
        "support": str(args.support),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "cli_fps": cli,
        "page_fps": page_fps,
        "cli_fps_median": statistics.median(cli),
        "page_fps_median": statistics.median(page_fps),
        "page_vs_cli_time_ratio": statistics.median(cli) / statistics.median(page_fps),
        "page_vs_cli_target": RATIO_TARGET,
        "cancel_seconds": cancel,
        "cancel_target_seconds": CANCEL_TARGET_S,
        "help_seconds": help_seconds(),
    }
    print(f"CLI   {figures['cli_fps_median']:6.1f} fps  (runs: {', '.join(f'{v:.1f}' for v in cli)})")
    print(f"page  {figures['page_fps_median']:6.1f} fps  (runs: {', '.join(f'{v:.1f}' for v in page_fps)})")
    ratio = figures["page_vs_cli_time_ratio"]
    print(f"page time / CLI time: {ratio:.2f} (target <= {RATIO_TARGET})")
    print(f"Cancel: {cancel:.2f} s from the click to the page saying so (target <= {CANCEL_TARGET_S:.0f} s)")
    print(f"cape-track --help: {figures['help_seconds'] * 1000:.0f} ms")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    return 0


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

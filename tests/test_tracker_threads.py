"""Helper threads: the decoder runs below the main thread's priority, the encoder at it; the caller's stays as it
was."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest
from fixtures_media import write_clip

from cape_track.tracker import threads
from cape_track.tracker.frames import TrackInfo
from cape_track.tracker.sinks import VideoSink
from cape_track.tracker.sources import VideoFileSource

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")


def _nice(thread: threading.Thread | None = None) -> int:
    tid = thread.native_id if thread is not None else threading.get_native_id()
    return os.getpriority(os.PRIO_PROCESS, tid)


def _lowered(before: int) -> int:
    return min(19, before + threads.HELPER_NICENESS)  # the kernel caps nice values at 19


@linux
def test_a_helper_runs_lowered_and_the_caller_keeps_its_priority() -> None:
    before = _nice()
    seen: list[int] = []
    thread = threads.start_helper(lambda: seen.append(_nice()), "cape-test")
    thread.join()
    assert thread.name == "cape-test" and thread.daemon
    assert seen == [_lowered(before)]
    assert _nice() == before


@linux
def test_a_helper_asked_for_no_lowering_keeps_the_callers_priority() -> None:
    before = _nice()
    seen: list[int] = []
    threads.start_helper(lambda: seen.append(_nice()), "cape-test", niceness=0).join()
    assert seen == [before]


def test_no_lowering_where_asked_for_none_or_off_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    before = _nice()
    assert threads.lower_priority(0) is False
    monkeypatch.setattr(sys, "platform", "darwin")
    assert threads.lower_priority(5) is False
    assert _nice() == before


@linux
def test_the_decoder_runs_lowered_and_the_encoder_at_the_callers_priority(tmp_path: Path) -> None:
    before = _nice()
    source = VideoFileSource(write_clip(tmp_path, frames=30).path, queue_size=2)  # the decoder stays alive, waiting
    sink = VideoSink(tmp_path / "out.mp4")
    try:
        sink.open(TrackInfo("clip", source.fps, source.width, source.height, ("a",), ()))
        helpers = [t for t in threading.enumerate() if t.name.startswith(("cape-decode", "cape-encode"))]
        nice = {t.name.split("-")[1]: _nice(t) for t in helpers}
        assert nice == {"decode": _lowered(before), "encode": before}
    finally:
        sink.close()
        source.close()
    assert _nice() == before

"""Sources: the decode thread delivers every frame in order, respects its queue bound, stops cleanly, honours
rotation and variable frame rate, forwards failures; the webcam keeps only the newest frame."""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from fixtures_media import FakeCapture, write_clip

from cape_track.tracker.errors import SourceError, TrackerWarning
from cape_track.tracker.flow import FlowImage
from cape_track.tracker.frames import Frame
from cape_track.tracker.sources import (
    ImageFolderSource,
    VideoFileSource,
    WebcamSource,
    frame_rgb,
    open_source,
    read_frames,
)


def _wait_until(condition, timeout: float = 10.0) -> None:
    """Poll a condition (never a timing assertion: the timeout only guards against hanging)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.01)


def test_every_frame_in_order_with_stream_times(tmp_path: Path) -> None:
    clip = write_clip(tmp_path, frames=12)
    with VideoFileSource(clip.path, queue_size=3) as source:
        assert (source.width, source.height, source.fps, source.frame_count) == (160, 120, 25.0, 12)
        frames = list(source)
    assert [f.index for f in frames] == list(range(12))
    np.testing.assert_allclose([f.time for f in frames], clip.times)
    for frame in frames:
        assert frame.image.shape == (120, 160, 3) and frame.image.dtype == np.uint8
        assert np.abs(frame.image.astype(int) - clip.render(frame.index)).mean() < 4  # RGB order, right frame
    assert not source.alive and source.busy_seconds > 0


def test_variable_frame_rate_uses_stream_timestamps(tmp_path: Path) -> None:
    times = [0.0, 0.04, 0.07, 0.2, 0.21, 0.5]
    clip = write_clip(tmp_path, frames=6, times=times)
    with VideoFileSource(clip.path) as source:
        np.testing.assert_allclose([f.time for f in source], times, atol=1e-3)


def test_read_frames_gives_a_short_clip_as_the_tracker_sees_it(tmp_path: Path) -> None:
    times = [0.0, 0.04, 0.07, 0.2]
    clip = write_clip(tmp_path, frames=4, times=times, rotation=90)
    frames, stamps, fps = read_frames(clip.path)
    assert len(frames) == 4 and fps > 0
    np.testing.assert_allclose(stamps, times, atol=1e-3)
    for t, image in enumerate(frames):
        assert np.abs(image.astype(int) - clip.render(t)).mean() < 4  # rotated upright, RGB
    with pytest.raises(SourceError, match="no such file"):
        read_frames(tmp_path / "missing.mp4")


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation_metadata_is_honoured(tmp_path: Path, rotation: int) -> None:
    clip = write_clip(tmp_path, frames=3, rotation=rotation)
    with VideoFileSource(clip.path) as source:
        assert (source.width, source.height) == clip.size
        for frame in source:
            assert np.abs(frame.image.astype(int) - clip.render(frame.index)).mean() < 4


def test_prepare_runs_in_the_reader_thread_on_the_frames_it_has_yet_to_read(tmp_path: Path) -> None:
    clip = write_clip(tmp_path, frames=12)
    calls: list[tuple[int, str]] = []

    def mark(frame: Frame) -> Frame:
        calls.append((frame.index, threading.current_thread().name))
        return replace(frame, flow=FlowImage.from_rgb(frame.image))

    with VideoFileSource(clip.path, queue_size=2) as source:
        source.prepare = mark
        frames = list(source)
    assert [f.index for f in frames] == list(range(12))
    # The first frame (read by the constructor) and those read before the hook come as they were; every later one
    # was prepared once, in order, by the decode thread, and is the frame handed out.
    indices = [i for i, _ in calls]
    assert indices == list(range(indices[0], 12)) and 0 < indices[0] <= 4
    assert {name for _, name in calls} == {f"cape-decode-{clip.path}"}
    assert [f.flow is not None for f in frames] == [i >= indices[0] for i in range(12)]


class _CountingSource(VideoFileSource):
    """Counts frames the decode thread has produced."""

    produced = 0

    def _produce(self) -> Iterator[Frame]:
        for frame in super()._produce():
            self.produced += 1
            yield frame


def test_queue_bound_holds_and_close_joins(tmp_path: Path) -> None:
    clip = write_clip(tmp_path, frames=30)
    source = _CountingSource(clip.path, queue_size=2)
    _wait_until(source._queue.full)
    time.sleep(0.2)  # give a runaway producer the chance to run ahead
    # two queued, plus the first frame held back by the constructor, plus one blocked in put()
    assert source.produced <= 2 + 2
    assert source.alive
    first = next(iter(source))
    assert first.index == 0
    source.close()
    assert not source.alive


def test_close_mid_stream_stops_the_thread(tmp_path: Path) -> None:
    clip = write_clip(tmp_path, frames=20)
    with VideoFileSource(clip.path, queue_size=1) as source:
        frames = iter(source)
        next(frames), next(frames)
    assert not source.alive


def test_reopen_reads_the_file_again(tmp_path: Path) -> None:
    clip = write_clip(tmp_path, frames=4)
    with VideoFileSource(clip.path) as source, source.reopen() as again:
        assert len(list(source)) == len(list(again)) == 4


class _FailingSource(VideoFileSource):
    def _produce(self) -> Iterator[Frame]:
        for frame in super()._produce():
            if frame.index == 3:
                raise av.InvalidDataError(1094995529, "Invalid data found when processing input")
            yield frame


def test_decode_failure_is_reraised_in_the_consumer_chained(tmp_path: Path) -> None:
    clip = write_clip(tmp_path, frames=8)
    seen = []
    with _FailingSource(clip.path) as source, pytest.raises(SourceError, match="cannot decode frame 3") as info:
        for frame in source:
            seen.append(frame.index)
    assert seen == [0, 1, 2]
    assert isinstance(info.value.__cause__, av.InvalidDataError)
    assert "\n" not in str(info.value)


def test_bad_files_raise_one_line_source_errors(tmp_path: Path) -> None:
    clip = write_clip(tmp_path, frames=10)
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "notes.mp4").write_text("not a video\n" * 20)
    (tmp_path / "cut.mp4").write_bytes(clip.path.read_bytes()[: clip.path.stat().st_size // 2])  # moov at the end
    cases = {
        "missing.mp4": "no such file",
        "empty.mp4": "empty file",
        "notes.mp4": "not a readable video file",
        "cut.mp4": "not a readable video file",
    }
    for name, message in cases.items():
        with pytest.raises(SourceError, match=message) as info:
            VideoFileSource(tmp_path / name)
        assert str(info.value).startswith(str(tmp_path / name)) and "\n" not in str(info.value)


def test_no_video_stream(tmp_path: Path) -> None:
    path = tmp_path / "tone.wav"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with pytest.raises(SourceError, match="no video stream"):
        VideoFileSource(path)


@pytest.mark.parametrize("cores", [2, 8])  # one decoding thread, FFmpeg's frame threads
def test_truncated_file_warns_how_far_it_got(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cores: int) -> None:
    from cape_track.tracker import sources

    monkeypatch.setattr(sources, "usable_cores", lambda: cores)
    clip = write_clip(tmp_path, frames=30)
    faststart = tmp_path / "fast.mp4"  # index first, so a cut file still opens
    with av.open(str(clip.path)) as src, av.open(str(faststart), "w", options={"movflags": "+faststart"}) as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(faststart.read_bytes()[: faststart.stat().st_size * 2 // 3])
    with warnings.catch_warnings(record=True) as caught, VideoFileSource(cut) as source:
        warnings.simplefilter("always")
        count = len(list(source))
    assert 0 < count < 30
    assert any(issubclass(w.category, TrackerWarning) and f"after {count} of 30" in str(w.message) for w in caught)


class _Packet:
    """A demuxed packet as `VideoFileSource._decoded` sees it: its size, and what decoding it gives or raises."""

    def __init__(self, size: int, frames: list[str] | None = None) -> None:
        self.size, self.frames = size, frames

    def decode(self) -> list[str]:
        if self.frames is None:
            raise av.InvalidDataError(1094995529, "Invalid data found when processing input")
        return self.frames


def _decoded(packets: list[_Packet]) -> tuple[list[str], bool]:
    reader = VideoFileSource.__new__(VideoFileSource)  # only the packet loop: no file, no thread
    reader._container = type("Container", (), {"demux": staticmethod(lambda stream: iter(packets))})()
    reader._stream = None
    return list(reader._decoded()), reader._cut


def test_a_failing_last_packet_ends_the_stream_and_the_held_frames_still_come() -> None:
    # the cut packet, then the flush packet (size 0) that drains what the decoder holds
    frames, cut = _decoded([_Packet(9, ["f0"]), _Packet(9, ["f1"]), _Packet(4), _Packet(0, ["f2"])])
    assert (frames, cut) == (["f0", "f1", "f2"], True)
    assert _decoded([_Packet(9, ["f0"]), _Packet(0, [])]) == (["f0"], False)


def test_a_failing_packet_with_data_after_it_is_an_error() -> None:
    with pytest.raises(av.InvalidDataError):
        _decoded([_Packet(9, ["f0"]), _Packet(9), _Packet(9, ["f2"]), _Packet(0, [])])


def test_a_cut_stream_of_unknown_length_warns(tmp_path: Path) -> None:
    clip = write_clip(tmp_path, frames=4)
    with VideoFileSource(clip.path) as source:
        _wait_until(lambda: not source.alive)  # the reader has read to the end (its queue holds the 4 frames)
        source.frame_count, source._cut = None, True  # as a stream without a count whose last packet failed
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert len(list(source)) == 4
    assert any("ended after 4 frames on a packet that did not decode" in str(w.message) for w in caught)


def test_image_folder_in_natural_order(tmp_path: Path) -> None:
    clip = write_clip(tmp_path, frames=3)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, name in enumerate(["f2.png", "f10.png", "f1.png"]):
        cv2.imwrite(str(folder / name), np.full((20, 30, 3), 10 * (i + 1), np.uint8))
    (folder / "notes.txt").write_text("ignored")
    with open_source(folder) as source:
        assert isinstance(source, ImageFolderSource)
        frames = list(source)
    assert [int(f.image[0, 0, 0]) for f in frames] == [30, 10, 20]  # f1, f2, f10
    np.testing.assert_allclose([f.time for f in frames], [0.0, 0.04, 0.08])
    assert isinstance(open_source(clip.path), VideoFileSource)


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no images found"):
        ImageFolderSource(tmp_path)
    cv2.imwrite(str(tmp_path / "a1.png"), np.zeros((20, 30, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "a2.png"), np.zeros((21, 30, 3), np.uint8))
    (tmp_path / "a3.png").write_bytes(b"junk")
    with ImageFolderSource(tmp_path) as source, pytest.raises(SourceError, match="differs from the first image"):
        list(source)
    (tmp_path / "a2.png").unlink()
    with ImageFolderSource(tmp_path) as source, pytest.raises(SourceError, match="a3.png: not a readable image"):
        list(source)


def test_webcam_keeps_only_the_newest_frame() -> None:
    capture = FakeCapture(0)
    with WebcamSource(0, open_capture=lambda index: capture) as source:
        assert source.live and (source.width, source.height, source.fps) == (32, 24, 30.0)
        got = []
        for frame in source:
            got.append(frame)
            time.sleep(0.02)  # a slow model: the camera runs ahead
            if len(got) == 5:
                break
    assert capture.released.is_set() and not source.alive
    assert [f.index for f in got] == list(range(5))
    values = [int(f.image[0, 0, 0]) for f in got]
    assert all(b > a for a, b in zip(values, values[1:], strict=False))
    assert source.dropped > 0 and values[-1] - values[0] > 4  # stale frames were skipped, not queued
    assert all(b.time >= a.time for a, b in zip(got, got[1:], strict=False))


def test_webcam_stream_ends_when_the_camera_stops() -> None:
    with WebcamSource(0, open_capture=lambda index: FakeCapture(index, limit=3, period=0.0)) as source:
        frames = list(source)
    assert 1 <= len(frames) <= 3


def test_webcam_read_failure_is_reraised() -> None:
    class Broken(FakeCapture):
        def read(self):
            if self.count == 2:
                raise RuntimeError("USB disconnected")
            return super().read()

    with WebcamSource(0, open_capture=Broken) as source, pytest.raises(SourceError, match="USB disconnected"):
        list(source)


def test_webcam_errors() -> None:
    with pytest.raises(SourceError, match="webcam 4: cannot be opened"):
        WebcamSource(4, open_capture=lambda index: FakeCapture(index, opened=False))
    with pytest.raises(SourceError, match="delivers no frames"):
        WebcamSource(0, open_capture=lambda index: FakeCapture(index, limit=0))


def test_open_source_digit_means_webcam(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("cape_track.tracker.sources._open_camera", FakeCapture)
    with open_source("0") as source:
        assert isinstance(source, WebcamSource) and source.name == "webcam0"


def test_missing_camera_is_one_quiet_line(capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SourceError, match="webcam 97: cannot be opened"):
        open_source(97)
    assert capfd.readouterr().err == ""  # OpenCV's probing logs are silenced


def test_frames_convert_to_rgb_as_swscale_does(tmp_path: Path) -> None:
    """OpenCV's fast path stays within rounding of swscale on BT.601 limited-range 4:2:0; a BT.709 or full-range frame
    and an odd-sized one are swscale's exactly (it reads the matrix and the range from the frame)."""
    rng = np.random.default_rng(0)
    picture = cv2.GaussianBlur(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), (5, 5), 0)
    picture[:16, :16] = (255, 0, 0)  # saturated: where the matrices differ most
    frame = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(format="yuv420p")
    fast = frame_rgb(frame)
    assert fast.shape == (48, 64, 3) and fast.dtype == np.uint8
    assert np.array_equal(fast, cv2.cvtColor(frame.to_ndarray(), cv2.COLOR_YUV2RGB_I420))  # the fast path ran
    assert np.abs(fast.astype(int) - frame.to_ndarray(format="rgb24")).max() <= 3
    for colorspace, color_range in ((1, 1), (2, 2)):  # BT.709 limited, unspecified full range
        frame.colorspace, frame.color_range = colorspace, color_range
        assert np.array_equal(frame_rgb(frame), frame.to_ndarray(format="rgb24"))
    odd = av.VideoFrame.from_ndarray(picture[:47, :63].copy(), format="rgb24").reformat(format="yuv420p")
    assert np.array_equal(frame_rgb(odd), odd.to_ndarray(format="rgb24"))

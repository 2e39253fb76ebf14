"""Sinks: the exact JSON/CSV formats of DESIGN.md, files valid after every frame, and an H.264 video of the right
frame count and (even) size."""

from __future__ import annotations

import csv
import json
import threading
import time
from dataclasses import replace
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from cape_track.model.transforms import SquareBox
from cape_track.tracker.errors import SinkError
from cape_track.tracker.frames import Frame, FrameResult, TrackInfo
from cape_track.tracker.sinks import (
    CsvSink,
    JsonSink,
    VideoSink,
    WindowSink,
    encoder_queue_frames,
    file_sinks,
    output_paths,
)

NAMES = ("nose", "left_eye", "tail, tip")


def _info(width: int = 64, height: int = 48) -> TrackInfo:
    return TrackInfo("clip.mp4", 25.0, width, height, NAMES, ((0, 1), (1, 2)))


def _frames(count: int, width: int = 64, height: int = 48, times: list[float] | None = None):
    rng = np.random.default_rng(0)
    for i in range(count):
        t = times[i] if times else i / 25
        xy = rng.uniform(0, min(width, height), (3, 2))
        result = FrameResult(i, t, xy, np.array([0.9, 0.5, 0.1]), np.array([True, True, False]), SquareBox(0, 0, 64))
        yield Frame(i, t, np.full((height, width, 3), 40, np.uint8)), result


def test_json_has_the_design_schema_and_is_valid_after_every_frame(tmp_path: Path) -> None:
    sink = JsonSink(tmp_path / "clip.keypoints.json", every=2)
    sink.open(_info())
    assert json.loads(sink.path.read_text())["frames"] == []
    written = []
    for frame, result in _frames(7):
        sink.write(frame, result)
        written.append(result)
        on_disk = json.loads(sink.path.read_text())  # valid JSON at any moment
        assert len(on_disk["frames"]) <= len(written)
    sink.close()
    data = json.loads(sink.path.read_text())
    assert list(data) == ["video", "fps", "width", "height", "names", "skeleton", "frames"]
    assert data["video"] == "clip.mp4" and data["fps"] == 25.0 and (data["width"], data["height"]) == (64, 48)
    assert data["names"] == list(NAMES) and data["skeleton"] == [[0, 1], [1, 2]]
    assert len(data["frames"]) == 7
    for record, result in zip(data["frames"], written, strict=True):
        assert list(record) == ["index", "time", "keypoints", "scores", "visible"]
        assert record["index"] == result.index and record["time"] == pytest.approx(result.time)
        np.testing.assert_allclose(record["keypoints"], result.xy_frame, atol=1e-3)
        np.testing.assert_allclose(record["scores"], result.scores, atol=1e-4)
        assert record["visible"] == [True, True, False]
    assert not list(tmp_path.glob(".*.tmp"))


def test_json_rewrites_grow_geometrically(tmp_path: Path) -> None:
    sink = JsonSink(tmp_path / "t.json", every=4)
    sink.open(_info())
    saved = []
    for frame, result in _frames(60):
        sink.write(frame, result)
        saved.append(len(json.loads(sink.path.read_text())["frames"]))
    sink.close()
    checkpoints = sorted(set(saved))
    gaps = np.diff(checkpoints)
    assert checkpoints[:3] == [0, 4, 8] and gaps.max() > 4  # every 4 frames at first, then 25 % more each time
    assert len(json.loads(sink.path.read_text())["frames"]) == 60


def test_csv_columns_and_rows(tmp_path: Path) -> None:
    sink = CsvSink(tmp_path / "t.csv")
    sink.open(_info())
    results = []
    for frame, result in _frames(3):
        sink.write(frame, result)
        results.append(result)
        assert len(sink.path.read_text().splitlines()) == len(results) + 1  # flushed per row
    sink.close()
    rows = list(csv.reader(sink.path.open()))
    expected = ["frame", "time"] + [f"{n}_{f}" for n in NAMES for f in ("x", "y", "score", "visible")]
    assert rows[0] == expected
    for row, result in zip(rows[1:], results, strict=True):
        assert int(row[0]) == result.index and float(row[1]) == pytest.approx(result.time)
        values = np.array(row[2:], float).reshape(3, 4)
        np.testing.assert_allclose(values[:, :2], result.xy_frame, atol=1e-3)
        np.testing.assert_allclose(values[:, 2], result.scores, atol=1e-3)
        np.testing.assert_array_equal(values[:, 3] == 1, result.visible)


@pytest.mark.parametrize("size", [(64, 48), (65, 47)])
def test_video_has_every_frame_at_an_even_size(tmp_path: Path, size: tuple[int, int]) -> None:
    width, height = size
    sink = VideoSink(tmp_path / "t.tracked.mp4")
    sink.open(_info(width, height))
    times = [0.0, 0.04, 0.1, 0.12, 0.3, 0.31, 0.4, 0.5, 0.6]
    for frame, result in _frames(9, width, height, times):
        sink.write(frame, result)
    sink.close()
    with av.open(str(sink.path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        decoded = list(container.decode(stream))
    assert len(decoded) == 9
    assert {(f.width, f.height) for f in decoded} == {(width + width % 2, height + height % 2)}
    assert {f.format.name for f in decoded} == {"yuv420p"}
    np.testing.assert_allclose([f.time for f in decoded], times, atol=2e-3)  # variable frame rate kept
    assert sink.frames_written == 9 and sink.busy_seconds > 0


def test_video_sink_draws_the_overlay(tmp_path: Path) -> None:
    sink = VideoSink(tmp_path / "t.mp4", crf=0)
    sink.open(_info())
    frame, result = next(_frames(1))
    sink.write(frame, result)
    sink.close()
    with av.open(str(sink.path)) as container:
        image = next(container.decode(video=0)).to_ndarray(format="rgb24")
    assert np.abs(image.astype(int) - 40).max() > 100  # keypoints drawn on the flat grey frame


@pytest.mark.parametrize("size", [(64, 48), (65, 47)])
def test_video_keeps_the_frame_colours(tmp_path: Path, size: tuple[int, int]) -> None:
    """The canvas goes to YUV 4:2:0 before the encoder (BT.601, limited range, as players read it): saturated and
    grey blocks come back within a few levels (crf 0: the only loss is the conversion and chroma subsampling)."""
    width, height = size
    colours = [(220, 30, 30), (30, 200, 40), (20, 40, 210), (250, 250, 250), (128, 128, 128), (10, 10, 10)]
    image = np.zeros((height, width, 3), np.uint8)
    for k, colour in enumerate(colours):  # 16 px blocks in two rows: chroma is shared by 2x2 pixels
        row, col = divmod(k, 3)
        image[row * 16 : row * 16 + 16, col * 16 : col * 16 + 16] = colour
    sink = VideoSink(tmp_path / "colours.mp4", crf=0)
    sink.open(_info(width, height))
    result = FrameResult(0, 0.0, np.zeros((3, 2)), np.zeros(3), np.zeros(3, bool), SquareBox(0, 0, 16))
    sink.write(Frame(0, 0.0, image), result)  # nothing visible: nothing drawn over the blocks
    sink.close()
    with av.open(str(sink.path)) as container:
        decoded = next(container.decode(video=0)).to_ndarray(format="rgb24")
    for k, colour in enumerate(colours):
        row, col = divmod(k, 3)
        block = decoded[row * 16 + 2 : row * 16 + 14, col * 16 + 2 : col * 16 + 14].reshape(-1, 3).astype(float)
        np.testing.assert_allclose(block.mean(axis=0), colour, atol=4)


def test_file_sinks_write_the_three_output_paths(tmp_path: Path) -> None:
    out = tmp_path / "new" / "folder"
    sinks = file_sinks(out, "clip")
    assert {p.path for s in sinks for p in s.parts} == set(output_paths(out, "clip").values())
    assert output_paths(out, "clip")["video"] == out / "clip.tracked.mp4"
    for sink in sinks:
        sink.open(_info())
    for frame, result in _frames(1):
        for sink in sinks:
            sink.write(frame, result)
    for sink in sinks:
        sink.close()
    assert all(p.exists() for p in output_paths(out, "clip").values())


def test_video_without_frames_leaves_no_file(tmp_path: Path) -> None:
    sink = VideoSink(tmp_path / "t.mp4")
    sink.open(_info())
    assert sink.path.exists()
    sink.close()
    assert not sink.path.exists()


def test_unwritable_destination_is_a_sink_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for sink in (JsonSink(blocker / "t.json"), CsvSink(blocker / "t.csv"), VideoSink(blocker / "t.mp4")):
        with pytest.raises(SinkError, match="cannot create the output folder"):
            sink.open(_info())


def test_window_without_display_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr("sys.platform", "linux")
    with pytest.raises(SinkError, match="no display available"):
        WindowSink().open(_info())


def test_the_encoder_queue_holds_a_fixed_budget_of_frames() -> None:
    """Deep for small frames (a stretch of keyframes is 20-40 frames), bounded in bytes for large ones."""
    assert encoder_queue_frames(176, 144) == encoder_queue_frames(1280, 720) == 32
    assert encoder_queue_frames(1920, 1080) == 16
    assert encoder_queue_frames(3840, 2160) == encoder_queue_frames(7680, 4320) == 8
    assert encoder_queue_frames(0, 0) == 32


def test_the_tracker_runs_ahead_of_a_busy_encoder_by_its_queue(tmp_path: Path, monkeypatch) -> None:
    """While the encoder is busy on a frame, `write` hands over the queue's frames without waiting, then blocks;
    every frame reaches the file once the encoder goes on."""
    sink = VideoSink(tmp_path / "t.mp4")
    sink.open(_info())
    ahead = encoder_queue_frames(64, 48)
    go_on = threading.Event()
    encode = sink._encode
    monkeypatch.setattr(sink, "_encode", lambda *item: (go_on.wait(10.0), encode(*item)))
    writer = threading.Thread(target=lambda: [sink.write(f, r) for f, r in _frames(ahead + 5)])
    writer.start()
    deadline = time.monotonic() + 10.0
    while sink.frames_written < ahead + 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    assert sink.frames_written == ahead + 1  # one with the encoder, the queue full, the writer waiting
    go_on.set()
    writer.join(10.0)
    sink.close()
    assert sink.frames_encoded == ahead + 5
    with av.open(str(sink.path)) as container:
        assert sum(1 for _ in container.decode(video=0)) == ahead + 5


def test_video_encoding_failure_is_reported_once_and_the_file_closed(tmp_path: Path, monkeypatch) -> None:
    sink = VideoSink(tmp_path / "t.mp4", queue_size=1)
    sink.open(_info())
    frames = _frames(6)
    frame, result = next(frames)
    sink.write(frame, result)

    def broken(*args) -> None:
        raise RuntimeError("encoder exploded")

    monkeypatch.setattr(sink, "_encode", broken)
    with pytest.raises(SinkError, match="video encoding failed \\(encoder exploded\\)"):
        for frame, result in frames:
            sink.write(frame, result)
    sink.close()  # already reported: closes the container without raising again


def _backlog(sink: VideoSink, monkeypatch: pytest.MonkeyPatch, count: int, times: list[float] | None = None) -> None:
    """`count` frames, each its own picture, written while the writer thread is held on the first until `close` has
    taken the tail: the run ends with the rest queued, as when a tracker hands its last frames over at once."""
    monkeypatch.setattr("cape_track.tracker.sinks.usable_cores", lambda: 2)
    sink.open(_info())
    taken = threading.Event()
    encode, take = sink._encode, sink._take_tail
    monkeypatch.setattr(sink, "_encode", lambda *item: (taken.wait(10.0), encode(*item)))

    def taking():
        try:
            return take()
        finally:
            taken.set()

    monkeypatch.setattr(sink, "_take_tail", taking)
    ramp = np.repeat(np.linspace(20, 230, 64, dtype=np.uint8)[None, :, None], 48, 0).repeat(3, 2)
    fixed = np.array([[10.0, 10], [30, 20], [50, 40]])  # keypoints that stay: no scene cut for x264 to key on
    for (frame, result), k in zip(_frames(count, times=times), range(count), strict=True):
        image = np.roll(ramp, k, axis=1)  # a slow pan
        sink.write(replace(frame, image=image), replace(result, xy_frame=fixed))
    deadline = time.monotonic() + 10.0
    while sink._queue.qsize() > count - 1:  # the writer holds the first
        assert time.monotonic() < deadline
        time.sleep(0.001)


def _keyframe_numbers(path: Path) -> list[int | None]:
    """Each frame's `idr_pic_id` (H.264 7.3.3), None for a frame that is not a keyframe: read from the slice header
    of x264's progressive 4:2:0 streams (`log2_max_frame_num` 4), after the AVCC length prefixes."""

    def exp_golomb(bits: str, at: int) -> tuple[int, int]:
        zeros = bits.index("1", at) - at
        return int(bits[at + zeros : at + 2 * zeros + 1], 2) - 1, at + 2 * zeros + 1

    numbers: list[int | None] = []
    with av.open(str(path)) as container:
        for packet in container.demux(video=0):
            data, number = bytes(packet), None
            while data and number is None:
                size = int.from_bytes(data[:4], "big")
                nal, data = data[4 : 4 + size], data[4 + size :]
                if nal[0] & 0x1F == 5:  # an IDR slice
                    payload = nal[1:].replace(b"\x00\x00\x03", b"\x00\x00")  # emulation prevention
                    bits, at = "".join(f"{byte:08b}" for byte in payload[:16]), 0
                    for _ in range(3):  # first_mb_in_slice, slice_type, pic_parameter_set_id
                        _, at = exp_golomb(bits, at)
                    number, _ = exp_golomb(bits, at + 4)  # after frame_num's 4 bits
            if packet.size:
                numbers.append(number)
    return numbers


def _decoded(path: Path) -> list[av.VideoFrame]:
    with av.open(str(path)) as container:
        return list(container.decode(video=0))


@pytest.mark.parametrize(("count", "crf"), [(12, 0), (12, 20), (101, 0)])
def test_the_end_of_a_run_is_encoded_on_two_threads_as_one_stream(tmp_path: Path, monkeypatch, count, crf) -> None:
    """At `close` the newest half of the queued frames go to a second encoder in a thread of its own, beside the
    writer's: the file has every frame in order with its timestamp, pixel for pixel what one encoder writes at crf 0
    (within a level at the default crf 20, whose rate control starts afresh), with a keyframe where the second
    encoder started, numbered apart from the keyframe before it; OpenCV reads it. With 101 frames the writer ends on
    its third keyframe (frame 50, numbered 0 as its first), so the tail is encoded again from a keyframe numbered 1."""
    times = [0.0, *sorted(np.random.default_rng(1).uniform(0.01, count / 20, count - 1).round(3))]
    serial = VideoSink(tmp_path / "serial.mp4", crf=crf, queue_size=128)
    with monkeypatch.context() as patch:
        patch.setattr(serial, "_tail_encoder", lambda: None)  # one encoder, as before
        _backlog(serial, patch, count, times)
        serial.close()
    split = VideoSink(tmp_path / "split.mp4", crf=crf, queue_size=128)
    _backlog(split, monkeypatch, count, times)
    split.close()
    one, two = _decoded(serial.path), _decoded(split.path)
    assert split.frames_encoded == serial.frames_encoded == len(one) == len(two) == count
    # One encoder keys every 25 frames (a second at 25 fps); the second encoder starts with a key at frame 7 or 51.
    keys, serial_keys, numbers = (
        ([0, 7], [0], [0, 0]) if count == 12 else ([0, 25, 50, 51, 76], [0, 25, 50, 75, 100], [0, 1, 0, 1, 0])
    )
    assert [i for i, f in enumerate(two) if f.key_frame] == keys
    assert [i for i, f in enumerate(one) if f.key_frame] == serial_keys
    assert [n for n in _keyframe_numbers(split.path) if n is not None] == numbers
    np.testing.assert_allclose([f.time for f in two], times, atol=2e-3)
    for a, b in zip(one, two, strict=True):
        difference = np.abs(a.to_ndarray().astype(int) - b.to_ndarray())
        assert difference.max() == 0 if crf == 0 else difference.mean() < 1.0
    capture = cv2.VideoCapture(str(split.path))
    assert sum(1 for _ in iter(lambda: capture.read()[0], False)) == count


def test_a_second_encoder_that_would_not_continue_the_stream_is_not_used(tmp_path: Path, monkeypatch) -> None:
    """Parameter sets that differ from the stream's (here four reference frames for the stream's one) would not
    decode after its frames: the writer encodes the whole tail itself."""
    sink = VideoSink(tmp_path / "t.mp4", crf=0)
    _backlog(sink, monkeypatch, 12)
    sink._options["x264-params"] = "ref=4"
    sink.close()
    decoded = _decoded(sink.path)
    assert sink.frames_encoded == len(decoded) == 12
    assert [i for i, f in enumerate(decoded) if f.key_frame] == [0]


def test_a_failing_tail_leaves_the_writers_frames_and_is_reported(tmp_path: Path, monkeypatch) -> None:
    """The second encoder's thread fails on its second frame: the file is still finished, with the writer's 7
    frames, and the failure is reported as the video's."""
    sink = VideoSink(tmp_path / "t.mp4")
    _backlog(sink, monkeypatch, 12)
    draw = sink._video_frame

    def failing(image, result, pts):
        if threading.current_thread().name == "cape-encode-tail" and result.index == 8:
            raise RuntimeError("drawing failed")
        return draw(image, result, pts)

    monkeypatch.setattr(sink, "_video_frame", failing)
    with pytest.raises(SinkError, match="video encoding failed \\(drawing failed\\)"):
        sink.close()
    assert sink.frames_encoded == 7 and len(_decoded(sink.path)) == 7


def test_an_interrupt_while_the_tail_is_taken_still_finishes_the_file(tmp_path: Path, monkeypatch) -> None:
    """A second Ctrl-C while the second encoder opens goes on up, and not as the writer's own failure: the writer
    still encodes every frame into a finished file."""
    sink = VideoSink(tmp_path / "t.mp4")
    _backlog(sink, monkeypatch, 12)

    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(sink, "_tail_encoder", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sink.close()
    assert sink.frames_encoded == len(_decoded(sink.path)) == 12


def test_track_files_agree_when_one_file_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CSV cannot take frame 3 (a full disk): the run stops there and the JSON is cut to the CSV's frames; the
    video, written after them, never got frame 3. All three hold frames 0-2, the CSV has no half row."""
    from cape_track.tracker.sinks import TrackFiles

    files = TrackFiles(tmp_path, "clip")
    files.open(_info())
    frames = list(_frames(5))
    real = files.csv._file.write
    calls = {"n": 0}

    def full_disk(text: str) -> int:
        calls["n"] += 1
        if calls["n"] == 4:  # the header, then rows 0-2, then row 3 fails half-way
            real(text[: len(text) // 2])
            raise OSError(28, "No space left on device")
        return real(text)

    monkeypatch.setattr(files.csv._file, "write", full_disk)
    with pytest.raises(SinkError, match="clip.keypoints.csv: cannot write the tracks"):
        for frame, result in frames:
            files.write(frame, result)
    files.close()
    paths = output_paths(tmp_path, "clip")
    rows = list(csv.reader(paths["csv"].open()))
    assert len(rows) == 4 and all(len(r) == len(rows[0]) for r in rows)
    assert [f["index"] for f in json.loads(paths["json"].read_text())["frames"]] == [0, 1, 2]
    with av.open(str(paths["video"])) as container:
        assert sum(1 for _ in container.decode(video=0)) == 3
    assert not list(tmp_path.glob(".*.tmp"))


def test_track_files_end_at_the_videos_frames_when_its_close_is_interrupted(tmp_path: Path, monkeypatch) -> None:
    """A second Ctrl-C lands while the video finishes, with 3 of its 5 frames in the file: the interrupt goes on up,
    and the JSON and CSV are still cut to those 3 frames."""
    from cape_track.tracker.sinks import TrackFiles

    files = TrackFiles(tmp_path, "clip")
    files.open(_info())
    for frame, result in _frames(5):
        files.write(frame, result)
    close = files.video.close

    def interrupted() -> None:
        close()
        files.video.frames_encoded = 3
        raise KeyboardInterrupt

    monkeypatch.setattr(files.video, "close", interrupted)
    with pytest.raises(KeyboardInterrupt):
        files.close()
    paths = output_paths(tmp_path, "clip")
    assert [f["index"] for f in json.loads(paths["json"].read_text())["frames"]] == [0, 1, 2]
    assert len(list(csv.reader(paths["csv"].open()))) == 4  # the header and 3 rows


def test_json_never_holds_nan(tmp_path: Path) -> None:
    """`allow_nan=False`: a NaN that reached the tracks file would make it invalid JSON; the pipeline replaces
    non-finite predictions before this, and the sink refuses rather than write one."""
    sink = JsonSink(tmp_path / "t.json")
    sink.open(_info())
    frame, result = next(iter(_frames(1)))
    bad = replace(result, scores=np.full_like(result.scores, np.nan))
    with pytest.raises(ValueError):
        sink.write(frame, bad)

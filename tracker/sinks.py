"""Outputs, written incrementally so an interrupted run leaves valid files for every frame done: the annotated
H.264 video (encoded in its own thread), the tracks as JSON (atomic rewrites) and CSV (flushed per row), and a
live window."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av
import cv2
import numpy as np
from av.video.frame import PictureType

from cape_track.tracker.drawing import draw_pose, draw_text, keypoint_colors
from cape_track.tracker.errors import SinkError
from cape_track.tracker.frames import Frame, FrameResult, TrackInfo
from cape_track.tracker.threads import start_helper, usable_cores
from cape_track.tracker.tracks import header, result_record

H264_ENCODERS = ("libx264", "libopenh264", "h264_videotoolbox", "h264_nvenc")  # first one PyAV can open wins


class Sink:
    """`open` once, `write` per frame in order, `close` always (it finishes the file); `stop_requested` lets an
    interactive sink end the run."""

    path: Path | None = None
    stop_requested: bool = False
    # Cores its own threads keep busy while it writes (the annotated video's encoder: about one core's work per
    # frame whatever x264's thread count): the tracker's network leaves them to it (`accel.network_threads`).
    encoder_threads: int = 0

    def open(self, info: TrackInfo) -> None:
        raise NotImplementedError

    def write(self, frame: Frame, result: FrameResult) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


def output_paths(out_dir: str | Path, stem: str) -> dict[str, Path]:
    """The three result files of one video: `OUT/<stem>.tracked.mp4`, `.keypoints.json`, `.keypoints.csv`."""
    out = Path(out_dir)
    return {
        "video": out / f"{stem}.tracked.mp4",
        "json": out / f"{stem}.keypoints.json",
        "csv": out / f"{stem}.keypoints.csv",
    }


def file_sinks(out_dir: str | Path, stem: str, video: bool = True) -> list[Sink]:
    """The standard sinks writing `output_paths(out_dir, stem)`, as one `TrackFiles`; `video=False` skips the
    annotated video."""
    return [TrackFiles(out_dir, stem, video)]


class TrackFiles(Sink):
    """The result files of one video written as one: each frame goes to the JSON, the CSV, then the annotated video,
    and `close` finishes the video first, then cuts the JSON and CSV to the frames every file holds. So whatever
    ends a run (a full disk or a size limit on any file, a failed encoder, a signal) the three agree."""

    def __init__(self, out_dir: str | Path, stem: str, video: bool = True) -> None:
        paths = output_paths(out_dir, stem)
        self.json, self.csv = JsonSink(paths["json"]), CsvSink(paths["csv"])
        self.video = VideoSink(paths["video"]) if video else None
        self.parts: list[Sink] = [self.json, self.csv] + ([self.video] if self.video else [])
        self.path = paths["json"]
        self._opened: list[Sink] = []

    @property
    def busy_seconds(self) -> float:
        return self.video.busy_seconds if self.video else 0.0

    @property
    def encoder_threads(self) -> int:
        return self.video.encoder_threads if self.video else 0

    def open(self, info: TrackInfo) -> None:
        """Open every file, or none: a part that cannot open closes and removes the ones opened before it (no
        header-only files left for `--skip-existing` to mistake for results)."""
        try:
            for part in self.parts:
                part.open(info)
                self._opened.append(part)
        except BaseException:
            for part in self._opened:
                try:
                    part.close()
                except SinkError:
                    pass
                part.path.unlink(missing_ok=True)
            self._opened.clear()
            raise

    def write(self, frame: Frame, result: FrameResult) -> None:
        for part in self.parts:
            part.write(frame, result)

    def close(self) -> None:
        errors: list[SinkError] = []
        try:
            if self.video in self._opened:
                try:
                    self.video.close()
                except SinkError as exc:
                    errors.append(exc)
        finally:  # a second Ctrl-C while the video finishes included: the tracks still end at the video's frames
            self._close_tracks(errors)
        if errors:
            raise errors[0]

    def _close_tracks(self, errors: list[SinkError]) -> None:
        frames = min([p.frames_done for p in self._opened], default=0)
        if self.json in self._opened:
            try:
                self.json.close(keep=frames)
            except SinkError as exc:  # the file on disk keeps what its last complete rewrite held
                errors.append(exc)
                frames = min(frames, self.json.frames_saved)
        if self.csv in self._opened:
            try:
                self.csv.close(keep=frames)
            except SinkError as exc:
                errors.append(exc)


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SinkError(f"{path.parent}: cannot create the output folder ({exc.strerror or exc})") from exc


class JsonSink(Sink):
    """The tracks file of DESIGN.md. The file on disk is always complete, valid JSON: every `every` frames (and
    every 25 % more frames on long videos, so total I/O stays linear) it is rewritten to a temporary file that
    replaces it atomically, and `close` writes the rest."""

    _FOOTER = b"\n]}\n"

    def __init__(self, path: str | Path, every: int = 25) -> None:
        self.path = Path(path)
        self.every = every
        self.frames_written = 0
        self._pending: list[str] = []
        self._saved = 0  # frames in the file on disk

    def open(self, info: TrackInfo) -> None:
        self._head = (json.dumps(header(info))[:-1] + ', "frames": [\n').encode()
        _make_parent(self.path)
        self._rewrite()

    def write(self, frame: Frame, result: FrameResult) -> None:
        self._pending.append(json.dumps(result_record(result), allow_nan=False))
        self.frames_written += 1
        if len(self._pending) >= max(self.every, self._saved // 4):
            self._rewrite()

    @property
    def frames_done(self) -> int:
        """Frames the file will hold once closed (those on disk plus those waiting in memory)."""
        return self._saved + len(self._pending)

    @property
    def frames_saved(self) -> int:
        """Frames in the file on disk now."""
        return self._saved

    def close(self, keep: int | None = None) -> None:
        """Write what is pending; with `keep`, hold at most that many frames (see `TrackFiles`)."""
        if keep is not None and keep < self.frames_done:
            drop = self.frames_done - keep
            if drop <= len(self._pending):
                del self._pending[len(self._pending) - drop :]
            else:
                self._cut_saved(keep)
        if self._pending:
            self._rewrite()

    def _cut_saved(self, keep: int) -> None:
        """Rewrite the file on disk with its first `keep` frames (a rare ending: an encoder that failed early)."""
        self._pending.clear()
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SinkError(f"{self.path}: cannot reread the tracks to cut them ({exc})") from exc
        frames = [json.dumps(f, allow_nan=False) for f in data["frames"][:keep]]
        self._saved = 0
        self._pending = frames
        self._rewrite(fresh=True)

    def _rewrite(self, fresh: bool = False) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        if fresh:
            self._saved = 0
        try:
            with open(tmp, "wb") as out:
                if self._saved:
                    with open(self.path, "rb") as old:
                        _copy_prefix(old, out, os.fstat(old.fileno()).st_size - len(self._FOOTER))
                    out.write(b",\n")
                else:
                    out.write(self._head)
                out.write(",\n".join(self._pending).encode())
                out.write(self._FOOTER)
            os.replace(tmp, self.path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)  # the file on disk keeps its last complete state
            raise SinkError(f"{self.path}: cannot write the tracks ({exc.strerror or exc})") from exc
        self._saved += len(self._pending)
        self._pending.clear()


def _copy_prefix(src: BinaryIO, dst: BinaryIO, size: int, chunk: int = 1 << 20) -> None:
    """Copy the first `size` bytes of `src` to `dst` in chunks (constant memory on long tracks)."""
    while size > 0:
        data = src.read(min(chunk, size))
        if not data:
            break
        dst.write(data)
        size -= len(data)


class CsvSink(Sink):
    """One row per frame, `frame,time,<name>_x,<name>_y,<name>_score,<name>_visible,...` (visible 1/0: a hidden
    point keeps its last estimate in x/y, marked 0), flushed after every row. A row is written whole or not at all:
    a write that fails (a full disk) is cut back to the last complete row."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.frames_written = 0
        self._file = None
        self._ends: list[int] = []  # file offset after the header and after each row

    def open(self, info: TrackInfo) -> None:
        _make_parent(self.path)
        try:
            # Unbuffered bytes: what `_append` has written is on disk, so a failed row can be cut off exactly.
            self._file = open(self.path, "wb", buffering=0)  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise SinkError(f"{self.path}: cannot create ({exc.strerror or exc})") from exc
        fields = ("x", "y", "score", "visible")
        self._append(["frame", "time"] + [f"{name}_{field}" for name in info.names for field in fields])

    @property
    def frames_done(self) -> int:
        return max(len(self._ends) - 1, 0)

    def write(self, frame: Frame, result: FrameResult) -> None:
        cells = [
            (f"{x:.3f}", f"{y:.3f}", f"{score:.3f}", "1" if vis else "0")
            for (x, y), score, vis in zip(result.xy_frame, result.scores, result.visible, strict=True)
        ]
        self._append([result.index, f"{result.time:.6f}", *(c for cell in cells for c in cell)])
        self.frames_written += 1

    def truncate(self, frames: int) -> None:
        """Keep the header and the first `frames` rows."""
        if self._file is None or frames >= self.frames_done:
            return
        try:
            os.ftruncate(self._file.fileno(), self._ends[frames])
            self._file.seek(self._ends[frames])
        except OSError as exc:
            raise SinkError(f"{self.path}: cannot cut the tracks ({exc.strerror or exc})") from exc
        del self._ends[frames + 1 :]

    def close(self, keep: int | None = None) -> None:
        if self._file is None:
            return
        try:
            if keep is not None:
                self.truncate(keep)
        finally:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None

    def _append(self, row: list[object]) -> None:
        text = io.StringIO()
        csv.writer(text).writerow(row)
        data = memoryview(text.getvalue().encode("utf-8"))
        start = self._ends[-1] if self._ends else 0
        try:
            while data:  # a raw write may take only part of the bytes
                data = data[self._file.write(data) :]
        except OSError as exc:
            try:
                os.ftruncate(self._file.fileno(), start)
                self._file.seek(start)
            except OSError:
                pass
            raise SinkError(f"{self.path}: cannot write the tracks ({exc.strerror or exc})") from exc
        self._ends.append(self._file.tell())


_Queued = tuple[np.ndarray, FrameResult, int]  # a frame for the video: its image, its result, its timestamp (ms)


class VideoSink(Sink):
    """The annotated video: H.264 (the first encoder PyAV has), yuv420p, odd sizes padded to even, frame
    timestamps from the source (variable frame rate kept). Drawing and encoding run in a writer thread (and at the
    end of a run in a second one, `_take_tail`). The file is finished by `close` (the MP4 index is written last); no
    file is left when no frame was written."""

    encoder_threads = 1

    def __init__(self, path: str | Path, crf: int = 20, queue_size: int | None = None) -> None:
        self.path = Path(path)
        self.crf = crf
        self.frames_written = 0
        self.queue_size = queue_size  # None: `encoder_queue_frames` of the frame size, chosen at `open`
        self._queue: queue.Queue[_Queued | None] = queue.Queue()
        self._error: BaseException | None = None
        self._reported = False
        self._thread: threading.Thread | None = None
        self.busy_seconds = 0.0  # drawing + encoding time (a stage timer)
        self.frames_encoded = 0  # frames in the file (the encoders' count; `frames_written` counts hand-overs)

    def open(self, info: TrackInfo) -> None:
        self._info = info
        self._colors = keypoint_colors(len(info.names))
        size = self.queue_size or encoder_queue_frames(info.width, info.height)
        self._queue = queue.Queue(maxsize=size)
        codec = h264_encoder()
        self._options: dict[str, str] = {}
        _make_parent(self.path)
        try:
            # Fragmented MP4 (an index per fragment, one fragment per keyframe): a file cut short by a full disk, a
            # size limit or a kill still plays up to its last whole fragment; a plain MP4 needs its index at the end.
            # Written through a Python file: FFmpeg's own writer keeps a failed write to itself until the end,
            # Python's raises at once, so a full disk stops the run at the frame it happened.
            self._file = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise SinkError(f"{self.path}: cannot create ({exc.strerror or exc})") from exc
        try:
            self._container = av.open(self._file, "w", format="mp4", options={"movflags": FRAGMENTED_MP4})
        except (av.FFmpegError, OSError) as exc:
            self._file.close()
            self.path.unlink(missing_ok=True)
            raise SinkError(f"{self.path}: cannot create ({exc})") from exc
        stream = self._container.add_stream(codec, rate=Fraction(info.fps).limit_denominator(1001))
        stream.width, stream.height = info.width + info.width % 2, info.height + info.height % 2
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)  # pts in ms from the source's timestamps
        if codec == "libx264":
            # superfast: 10 ms of CPU per 720p frame against 15 for veryfast (files ~1.6x larger), measured with
            # benchmarks/fps.py; the encoder shares two cores with decoding and the network.
            self._options = {"crf": str(self.crf), "preset": "superfast"}
            stream.options = dict(self._options)  # opening the encoder takes what it uses out of the dict
        # One encoder thread on a machine of two cores or fewer, where it shares them with decoding and the network:
        # x264's frame threads cost ~25 % more CPU for the same frames there (13 vs 10 ms per 720p frame). Above,
        # x264's own rule (1.5 threads per core), but over the usable cores: x264 counts the affinity, not a quota.
        cores = usable_cores()
        stream.codec_context.thread_count = 1 if cores <= 2 else (3 * cores) // 2
        stream.codec_context.gop_size = max(1, round(info.fps))  # a keyframe (a fragment) every second
        # No B-frames: a fragmented MP4 has no edit list to hide their decoding delay, so every timestamp would
        # come out shifted by it.
        stream.codec_context.max_b_frames = 0
        try:
            self._container.start_encoding()  # opens the encoder and writes the header now, not at frame 1
        except av.FFmpegError as exc:
            self._container.close()
            self._file.close()
            self.path.unlink(missing_ok=True)
            raise SinkError(f"{self.path}: cannot start the {codec} encoder ({exc})") from exc
        self._stream = stream
        self._last_pts = -1
        self._last_key, self._keyframes = False, 0  # the stream encoder's last packet a keyframe; how many so far
        self._thread = start_helper(self._work, "cape-encode", niceness=0)  # a critical chain too (`threads`)

    def write(self, frame: Frame, result: FrameResult) -> None:
        self._raise_failure()
        # Timestamps in ms from the source's, never repeated (a file's and a camera's can be): set here, in order,
        # so that frames encoded in two threads at the end (`close`) have the ones a single encoder would give.
        self._last_pts = max(round(result.time * 1000), self._last_pts + 1)
        self._queue.put((frame.image, result, self._last_pts))
        self.frames_written += 1

    def close(self) -> None:
        if self._thread is None:
            return
        tail, taken = None, False
        try:
            tail = self._take_tail()
            taken = True
        finally:  # a second Ctrl-C included: the writer still ends, and the file is finished with its frames
            self._end(tail, report=taken)

    def _end(self, tail: _Tail | None, report: bool) -> None:
        """Let the writer finish, then the file: the writer's frames, then `tail`'s."""
        self._queue.put(None)
        self._thread.join()
        self._thread = None
        if tail is not None:
            tail.thread.join()
        try:
            if self._error is None:
                self._mux(self._stream.encode(None))
            if self._error is None and tail is not None:
                self._mux_tail(tail)
        except (av.FFmpegError, OSError) as exc:
            self._error = exc
        for closing in (self._container.close, self._file.close):
            try:
                closing()
            except (av.FFmpegError, OSError) as exc:
                self._error = self._error or exc
        if self.frames_written == 0:
            self.path.unlink(missing_ok=True)  # an MP4 without frames has no video stream: write none
        elif self._error is not None:
            self.frames_encoded = _decodable_frames(self.path)  # what a player will show of the cut file
        if report:  # not over an interrupt on its way up
            self._raise_failure()

    @property
    def frames_done(self) -> int:
        return self.frames_encoded

    def _raise_failure(self) -> None:
        if self._error is not None and not self._reported:
            self._reported = True  # once: close() after a failed write must not raise it again
            raise SinkError(f"{self.path}: video encoding failed ({self._error})") from self._error

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is not None:
                continue  # drain so the producer never blocks; close() reports the error
            try:
                start = time.perf_counter()
                self._encode(*item)
                self.frames_encoded += 1
                self.busy_seconds += time.perf_counter() - start
            except Exception as exc:  # forwarded to the caller's next write/close
                self._error = exc

    def _encode(self, image: np.ndarray, result: FrameResult, pts: int) -> None:
        self._mux(self._stream.encode(self._video_frame(image, result, pts)))

    def _mux(self, packets: list[av.Packet]) -> None:
        """Mux the stream encoder's packets, counting its keyframes (x264 numbers them 0, 1, 0, ...: `_mux_tail`)."""
        self._container.mux(packets)
        for packet in packets:
            self._last_key = packet.is_keyframe
            self._keyframes += packet.is_keyframe

    def _take_tail(self) -> _Tail | None:
        """On two cores, the newest half of the frames still queued when the run ends, handed to a second encoder in
        a thread of its own while the writer encodes the older half; None where that does not apply.

        A tracker hands its last frames over at once (settling holds a file's frames until two more keyframes) and
        may run a queue's length ahead of the encoder, so otherwise a run ends with the encoder alone on one core
        for that many frames (docs/speed.md, 2026-12-07). The second encoder starts on a keyframe, where the MP4
        starts a fragment anyway (`FRAGMENTED_MP4`), so its packets continue the stream, as a chunked encoder's
        segments do, if its parameter sets are byte for byte the stream's: decoders read them from the stream's
        `extradata` alone."""
        main = self._stream.codec_context
        # On more cores x264's own threads share out the work (`open`); other encoders number their frames their way.
        if main.name != "libx264" or main.thread_count != 1 or usable_cores() < 2 or self._error is not None:
            return None
        if self._queue.qsize() < 2:  # nothing to share (a live source's run usually ends so)
            return None
        encoder = self._tail_encoder()  # opened (1.5 ms) before the frames are taken: the writer goes on meanwhile
        if encoder is None:
            return None
        queued: list[_Queued] = []
        with contextlib.suppress(queue.Empty):
            while True:
                queued.append(self._queue.get_nowait())
        share = len(queued) // 2  # the writer has one more in hand
        for item in queued[: len(queued) - share]:  # back to the writer, in order
            self._queue.put(item)
        return _Tail(queued[len(queued) - share :], encoder, self._video_frame) if share else None

    def _tail_encoder(self) -> av.CodecContext | None:
        """A second encoder set up as the stream's, or None if it does not open or its parameter sets differ."""
        main = self._stream.codec_context
        try:
            encoder = av.CodecContext.create(main.name, "w")
            for name in _ENCODER_SETTINGS:
                if (value := getattr(main, name)) is not None:
                    setattr(encoder, name, value)
            encoder.options = {**self._options, "forced-idr": "1"}  # for `_Tail`'s renumbering
            encoder.open()
        except (av.FFmpegError, ValueError):
            return None
        return encoder if main.extradata and encoder.extradata == main.extradata else None

    def _mux_tail(self, tail: _Tail) -> None:
        """Mux the tail after the writer's frames. Two keyframes in a row must not carry the same number (H.264
        7.4.3: a decoder that finds frames by their slice headers, not the MP4's index, would take them for one),
        and x264 numbers its keyframes 0, 1, 0, ...: so where the writer ended on a keyframe numbered 0, the tail is
        encoded again here, from a keyframe numbered 1 (rare: the writer's last frame is one of its keyframes)."""
        self.busy_seconds += tail.seconds
        if tail.error is None and self._last_key and self._keyframes % 2 == 1:
            encoder = self._tail_encoder()  # it opened a moment ago with the same settings
            if encoder is not None:
                tail = _Tail(tail.items, encoder, self._video_frame, renumber=True)
                tail.thread.join()
                self.busy_seconds += tail.seconds
        if tail.packets is None:
            self._error = tail.error or RuntimeError("the end of the video was not encoded")
            return
        for packet in tail.packets:
            packet.stream = self._stream
        self._container.mux(tail.packets)
        self.frames_encoded += len(tail.items)

    def _video_frame(self, image: np.ndarray, result: FrameResult, pts: int) -> av.VideoFrame:
        info = self._info
        # The frame copied (never drawn on: it is the source's), black rows or columns padding an odd size.
        pad_y, pad_x = self._stream.height - image.shape[0], self._stream.width - image.shape[1]
        canvas = cv2.copyMakeBorder(image, 0, pad_y, 0, pad_x, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        draw_pose(canvas, result.xy_frame, result.scores, result.visible, info.skeleton, info.names, self._colors)
        # RGB to BT.601 limited-range I420 by OpenCV, the conversion swscale would do inside `encode` (within one
        # level): 1.6 against 10.2 ms per 720p frame, measured on two cores, where it was half of the encoder's time.
        # PyAV wraps that array without a copy (`from_ndarray` copied it: 0.56 ms per 720p frame). The frame's buffer
        # keeps the array alive while an encoder holds it, and the array is new for every frame.
        yuv = cv2.cvtColor(canvas, cv2.COLOR_RGB2YUV_I420)
        video_frame = av.VideoFrame.from_numpy_buffer(yuv, format="yuv420p")
        video_frame.pts, video_frame.time_base = pts, Fraction(1, 1000)
        return video_frame


class _Tail:
    """Frames at the end of a run encoded by a second encoder in a thread of its own (`VideoSink._take_tail`): the
    packets, flushed, for the sink to mux after the writer's, or the `error` that stopped it."""

    def __init__(
        self,
        items: list[_Queued],
        encoder: av.CodecContext,
        video_frame: Callable[[np.ndarray, FrameResult, int], av.VideoFrame],
        renumber: bool = False,
    ) -> None:
        self.items = items
        self.packets: list[av.Packet] | None = None  # None until the whole tail is encoded and flushed
        self.error: Exception | None = None
        self.seconds = 0.0
        self._encoder, self._video_frame, self._renumber = encoder, video_frame, renumber
        self.thread = start_helper(self._work, "cape-encode-tail", niceness=0)

    def _work(self) -> None:
        start = time.perf_counter()
        try:
            self.packets = self._encode()
        except Exception as exc:  # forwarded to the sink's close
            self.error = exc
        self.seconds = time.perf_counter() - start

    def _encode(self) -> list[av.Packet]:
        encoder, first = self._encoder, self.items[0][2]
        packets: list[av.Packet] = []
        if self._renumber:  # a black frame, dropped, takes x264's keyframe number 0
            width, height = encoder.width, encoder.height
            black = np.full((height * 3 // 2, width), 128, np.uint8)
            black[:height] = 16  # BT.601 limited-range black
            frame = av.VideoFrame.from_numpy_buffer(black, format="yuv420p")
            frame.pts, frame.time_base = first - 1, Fraction(1, 1000)
            packets += encoder.encode(frame)
        for k, (image, result, pts) in enumerate(self.items):
            frame = self._video_frame(image, result, pts)
            if self._renumber and k == 0:
                frame.pict_type = PictureType.I  # a keyframe (the encoder's `forced-idr`), numbered 1
            packets += encoder.encode(frame)
        packets += encoder.encode(None)
        return [packet for packet in packets if packet.pts is not None and packet.pts >= first]


FRAGMENTED_MP4 = "+frag_keyframe+empty_moov+default_base_moof"
# What the tail's encoder copies from the stream's (`VideoSink._tail_encoder`), its options besides.
_ENCODER_SETTINGS = (
    "width height pix_fmt time_base framerate bit_rate gop_size max_b_frames thread_count flags flags2".split()
)
# The frames the encoder's queue may hold (the source's own arrays, not copies): as many as fit in this many bytes of
# RGB, within the bounds below.
ENCODER_QUEUE_BYTES = 96 * 2**20
ENCODER_QUEUE_FRAMES = (8, 32)


def encoder_queue_frames(width: int, height: int) -> int:
    """How far the tracker may run ahead of the video encoder, in frames: 32 up to 720p, 16 at 1080p, 8 at 4K.

    With the annotated video, two chains share the cores: the tracker's, which costs twice as much on a stretch of
    keyframes as between them, and the encoder's, which costs the same on every frame. So the bound changes sides
    every 20-40 frames, and each side idles while the other one is the bound, unless the queue between them holds
    the work of such a stretch. On the `make run` sample played forward and back, four passes (528 frames, 720p,
    two cores, interleaved, medians of 6): 62.5 fps with 8 frames, 66.6 with 32, 66.7 with 96; at 1080p, 38.9 with
    16 against 38.6 with 8. On the 132-frame sample itself, 32 frames gave 0.99x: the encoder drains what is queued
    alone at the end, which a short clip does not amortise. The byte budget bounds the memory the queue holds, but
    never below the 8 frames of before (200 MB at 4K)."""
    low, high = ENCODER_QUEUE_FRAMES
    return max(low, min(high, ENCODER_QUEUE_BYTES // max(1, 3 * width * height)))


def _decodable_frames(path: Path) -> int:
    """Frames a reader gets out of a (possibly cut) video file."""
    try:
        with av.open(str(path)) as container:
            count = 0
            try:
                for _ in container.decode(video=0):
                    count += 1
            except (av.FFmpegError, OSError):
                pass
            return count
    except (av.FFmpegError, OSError, IndexError):
        return 0


def h264_encoder() -> str:
    """The name of the first H.264 encoder this PyAV build has."""
    for name in H264_ENCODERS:
        try:
            av.codec.Codec(name, "w")
        except (av.FFmpegError, ValueError):
            continue
        return name
    raise SinkError(f"video: no H.264 encoder in this PyAV build (tried {', '.join(H264_ENCODERS)})")


class WindowSink(Sink):
    """A live OpenCV window with the overlay and the measured fps; `q` or Esc (or closing the window) stops."""

    def __init__(self, title: str = "cape-track") -> None:
        self.title = title
        self._fps = 0.0
        self._last: float | None = None

    @staticmethod
    def display_available() -> bool:
        """False where no window can be shown (a server, SSH without X forwarding, CI)."""
        return not sys.platform.startswith("linux") or bool(
            os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
        )

    def open(self, info: TrackInfo) -> None:
        if not self.display_available():
            raise SinkError("display: no display available (run on a desktop session)")
        try:
            cv2.namedWindow(self.title, cv2.WINDOW_NORMAL)
        except cv2.error as exc:
            raise SinkError("display: this OpenCV build cannot open windows (install opencv-python)") from exc
        self._info = info
        self._colors = keypoint_colors(len(info.names))

    def write(self, frame: Frame, result: FrameResult) -> None:
        now = time.perf_counter()
        if self._last is not None:
            rate = 1.0 / max(now - self._last, 1e-6)
            self._fps = rate if self._fps == 0.0 else 0.9 * self._fps + 0.1 * rate
        self._last = now
        canvas = frame.image.copy()
        draw_pose(canvas, result.xy_frame, result.scores, result.visible, self._info.skeleton, colors=self._colors)
        draw_text(canvas, f"{self._fps:5.1f} fps   q: quit")
        cv2.imshow(self.title, cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
        key = cv2.waitKey(1) & 0xFF
        if key in (ord("q"), 27) or cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1:
            self.stop_requested = True

    def close(self) -> None:
        try:
            cv2.destroyWindow(self.title)
        except cv2.error:
            pass

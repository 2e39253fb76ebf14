"""Outputs, written incrementally so an interrupted run leaves valid files for every frame done: the annotated
H.264 video (encoded in its own thread), the tracks as JSON (atomic rewrites) and CSV (flushed per row), and a
live window."""

from __future__ import annotations

import csv
import json
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import av
import cv2
import numpy as np

from cape_track.tracker.drawing import draw_pose, draw_text, keypoint_colors
from cape_track.tracker.errors import SinkError

if TYPE_CHECKING:
    from cape_track.tracker.pipeline import FrameResult
    from cape_track.tracker.sources import Frame

H264_ENCODERS = ("libx264", "libopenh264", "h264_videotoolbox", "h264_nvenc")  # first one PyAV can open wins


@dataclass(frozen=True)
class TrackInfo:
    """What a sink needs before the first frame: the header of the tracks file and the video geometry."""

    video: str  # the source as the user named it
    fps: float  # nominal frame rate
    width: int
    height: int
    names: tuple[str, ...]  # [N] keypoint names
    skeleton: tuple[tuple[int, int], ...]  # edges between keypoint indices


class Sink:
    """`open` once, `write` per frame in order, `close` always (it finishes the file); `stop_requested` lets an
    interactive sink end the run."""

    path: Path | None = None
    stop_requested: bool = False

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
    """The standard sinks writing `output_paths(out_dir, stem)`; `video=False` skips the annotated video."""
    paths = output_paths(out_dir, stem)
    sinks: list[Sink] = [JsonSink(paths["json"]), CsvSink(paths["csv"])]
    return ([VideoSink(paths["video"])] if video else []) + sinks


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
        head = {
            "video": info.video,
            "fps": info.fps,
            "width": info.width,
            "height": info.height,
            "names": list(info.names),
            "skeleton": [list(edge) for edge in info.skeleton],
        }
        self._head = (json.dumps(head)[:-1] + ', "frames": [\n').encode()
        _make_parent(self.path)
        self._rewrite()

    def write(self, frame: Frame, result: FrameResult) -> None:
        record = {
            "index": result.index,
            "time": round(result.time, 6),
            "keypoints": np.round(result.xy_frame, 3).tolist(),
            "scores": np.round(result.scores, 4).tolist(),
            "visible": result.visible.tolist(),
        }
        self._pending.append(json.dumps(record))
        self.frames_written += 1
        if len(self._pending) >= max(self.every, self._saved // 4):
            self._rewrite()

    def close(self) -> None:
        if self._pending:
            self._rewrite()

    def _rewrite(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
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
    point keeps its last estimate in x/y, marked 0), flushed after every row."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.frames_written = 0
        self._file = None

    def open(self, info: TrackInfo) -> None:
        _make_parent(self.path)
        try:
            self._file = open(self.path, "w", newline="", encoding="utf-8")
        except OSError as exc:
            raise SinkError(f"{self.path}: cannot create ({exc.strerror or exc})") from exc
        self._csv = csv.writer(self._file)
        fields = ("x", "y", "score", "visible")
        columns = ["frame", "time"] + [f"{name}_{field}" for name in info.names for field in fields]
        self._csv.writerow(columns)
        self._file.flush()

    def write(self, frame: Frame, result: FrameResult) -> None:
        cells = [
            (f"{x:.3f}", f"{y:.3f}", f"{score:.3f}", "1" if vis else "0")
            for (x, y), score, vis in zip(result.xy_frame, result.scores, result.visible, strict=True)
        ]
        self._csv.writerow([result.index, f"{result.time:.6f}", *(c for cell in cells for c in cell)])
        self._file.flush()
        self.frames_written += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class VideoSink(Sink):
    """The annotated video: H.264 (the first encoder PyAV has), yuv420p, odd sizes padded to even, frame
    timestamps from the source (variable frame rate kept). Drawing and encoding run in a writer thread. The file
    is finished by `close` (the MP4 index is written last); no file is left when no frame was written."""

    def __init__(self, path: str | Path, crf: int = 20, queue_size: int = 8) -> None:
        self.path = Path(path)
        self.crf = crf
        self.frames_written = 0
        self._queue: queue.Queue[tuple[np.ndarray, FrameResult] | None] = queue.Queue(maxsize=queue_size)
        self._error: BaseException | None = None
        self._reported = False
        self._thread: threading.Thread | None = None
        self.busy_seconds = 0.0  # drawing + encoding time (a stage timer)

    def open(self, info: TrackInfo) -> None:
        self._info = info
        self._colors = keypoint_colors(len(info.names))
        codec = h264_encoder()
        _make_parent(self.path)
        try:
            self._container = av.open(str(self.path), "w", options={"movflags": "+faststart"})
        except (av.FFmpegError, OSError) as exc:
            raise SinkError(f"{self.path}: cannot create ({exc})") from exc
        stream = self._container.add_stream(codec, rate=Fraction(info.fps).limit_denominator(1001))
        stream.width, stream.height = info.width + info.width % 2, info.height + info.height % 2
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)  # pts in ms from the source's timestamps
        if codec == "libx264":
            stream.options = {"crf": str(self.crf), "preset": "veryfast"}
        try:
            self._container.start_encoding()  # opens the encoder and writes the header now, not at frame 1
        except av.FFmpegError as exc:
            self._container.close()
            raise SinkError(f"{self.path}: cannot start the {codec} encoder ({exc})") from exc
        self._stream = stream
        self._last_pts = -1
        self._thread = threading.Thread(target=self._work, name="cape-encode", daemon=True)
        self._thread.start()

    def write(self, frame: Frame, result: FrameResult) -> None:
        self._raise_failure()
        self._queue.put((frame.image, result))
        self.frames_written += 1

    def close(self) -> None:
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join()
        self._thread = None
        try:
            if self._error is None:
                self._container.mux(self._stream.encode(None))
        finally:
            self._container.close()
            if self.frames_written == 0:
                self.path.unlink(missing_ok=True)  # an MP4 without frames has no video stream: write none
        self._raise_failure()

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
                self.busy_seconds += time.perf_counter() - start
            except Exception as exc:  # forwarded to the caller's next write/close
                self._error = exc

    def _encode(self, image: np.ndarray, result: FrameResult) -> None:
        info = self._info
        canvas = np.zeros((self._stream.height, self._stream.width, 3), np.uint8)
        canvas[: info.height, : info.width] = image
        draw_pose(canvas, result.xy_frame, result.scores, result.visible, info.skeleton, colors=self._colors)
        video_frame = av.VideoFrame.from_ndarray(canvas, format="rgb24")
        self._last_pts = max(round(result.time * 1000), self._last_pts + 1)
        video_frame.pts, video_frame.time_base = self._last_pts, Fraction(1, 1000)
        self._container.mux(self._stream.encode(video_frame))


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

"""Frame sources: a video file or an image folder decoded in a thread into a bounded queue, and a webcam that keeps
only its newest frame. All yield `Frame`s in RGB with stream timestamps; `open_source` picks one from a spec."""

from __future__ import annotations

import os
import queue
import re
import stat
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import av
import cv2
import numpy as np

from cape_track.model.errors import first_line
from cape_track.tracker.errors import SourceError, TrackerWarning
from cape_track.tracker.frames import Frame
from cape_track.tracker.threads import start_helper, usable_cores

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_FPS = 25.0  # used when a stream does not say (image folders, some containers)
_JOIN_TIMEOUT_S = 5.0
_POLL_S = 0.1  # how often a blocked producer or consumer looks at the stop flag


class Source:
    """Iterator of `Frame`s with `close()`; use as a context manager so the reader thread is always joined.

    Attributes every source sets before its first frame is read: `name` (for output file names), `fps` (nominal,
    for the video writer and the tracks file), `width`, `height`, `frame_count` (None when unknown), `live`
    (True for cameras: no batching, frames may be dropped) and `busy_seconds` (time spent reading ahead: decoding,
    and `prepare`; a stage timer).

    `prepare`, when a consumer sets it, is applied by a file or folder source's reader thread to every frame it has
    yet to read (the tracker's flow and half-size images: work taken off the tracker's critical chain onto a thread
    that has a core to spare); other sources, and frames read before it was set, come as they are.
    """

    name: str
    fps: float
    width: int
    height: int
    frame_count: int | None = None
    live: bool = False
    busy_seconds: float = 0.0
    prepare: Callable[[Frame], Frame] | None = None

    def __iter__(self) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def reopen(self) -> Source:
        """A fresh source over the same input (a second pass, e.g. for the offline smoother)."""
        raise SourceError(f"{self.name}: a live source cannot be read twice (--offline needs a file)")

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class _Failure:
    exc: BaseException


_END = object()


class _QueuedSource(Source):
    """Runs `_produce()` in a daemon thread that fills a bounded queue (backpressure keeps memory constant).

    The thread ends with a sentinel, or with the exception it hit, which the consumer re-raises chained. The first
    frame is read in the constructor, so a file that opens but does not decode fails here, before any model work.
    """

    _cut = False  # the stream ended on a packet that did not decode (`VideoFileSource._decoded`)

    def __init__(self, queue_size: int) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._delivered = 0
        self._thread = start_helper(self._work, f"cape-decode-{self.name}")
        first = self._next_item()
        if first is _END:
            self.close()
            raise SourceError(f"{self.name}: no frame could be decoded (the file is empty or truncated)")
        if isinstance(first, _Failure):
            self.close()
            if isinstance(first.exc, SourceError):
                raise first.exc
            raise SourceError(f"{self.name}: cannot decode the first frame ({first_line(first.exc)})") from first.exc
        self._first: Frame | None = first
        self.height, self.width = first.image.shape[:2]

    def _produce(self) -> Iterator[Frame]:
        raise NotImplementedError

    def _release(self) -> None:
        """Free the reader's resources; runs on the reader thread, which owns them."""

    @property
    def alive(self) -> bool:
        """Whether the reader thread is still running (False after `close()`)."""
        return self._thread.is_alive()

    def _work(self) -> None:
        try:
            frames = self._produce()
            while not self._stop.is_set():
                start = time.perf_counter()
                frame = next(frames, _END)
                prepare = self.prepare
                if prepare is not None and frame is not _END:
                    frame = prepare(frame)
                self.busy_seconds += time.perf_counter() - start
                if not self._put(frame) or frame is _END:
                    return
        except BaseException as exc:  # forwarded to the consumer, which re-raises it (SAM2 AsyncVideoFrameLoader)
            self._put(_Failure(exc))
        finally:
            self._release()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _next_item(self) -> object:
        while True:
            try:
                return self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    return _END if self._stop.is_set() else _Failure(RuntimeError("reader thread stopped"))

    def __iter__(self) -> Iterator[Frame]:
        if self._first is not None:
            first, self._first = self._first, None
            self._delivered += 1
            yield first
        while True:
            item = self._next_item()
            if item is _END:
                self._check_complete()
                return
            if isinstance(item, _Failure):
                if isinstance(item.exc, SourceError):
                    raise item.exc
                raise SourceError(
                    f"{self.name}: cannot decode frame {self._delivered} ({first_line(item.exc)}); "
                    "the file may be corrupt or truncated"
                ) from item.exc
            self._delivered += 1
            yield item

    def _check_complete(self) -> None:
        if self.frame_count is None and self._cut:
            warnings.warn(
                f"{self.name}: ended after {self._delivered} frames on a packet that did not decode (truncated file?)",
                TrackerWarning,
                stacklevel=3,
            )
        if self.frame_count is not None and self._delivered < self.frame_count:
            warnings.warn(
                f"{self.name}: ended after {self._delivered} of {self.frame_count} frames (truncated file?)",
                TrackerWarning,
                stacklevel=3,
            )

    def close(self) -> None:
        """Stop the reader and join it; frames still queued are dropped."""
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=_JOIN_TIMEOUT_S)


class VideoFileSource(_QueuedSource):
    """A video file decoded by PyAV in its own thread; rotation metadata applied, timestamps from the stream."""

    def __init__(self, path: str | Path, queue_size: int = 8) -> None:
        url = is_url(path)
        self.path = Path(path) if not url else path  # a URL stays a string: Path would fold its '//'
        self.name = str(path)
        self._queue_size = queue_size
        if not url:
            check_regular_file(self.path, "video file")
            if self.path.stat().st_size == 0:
                raise SourceError(f"{path}: empty file (not a video)")
        try:
            # A network stream that stalls must not hang the run: FFmpeg's read timeout, in microseconds.
            options = {"rw_timeout": "15000000"} if url else None
            self._container = av.open(str(self.path), options=options)
        except (av.FFmpegError, UnicodeDecodeError) as exc:
            raise SourceError(
                f"{path}: not a readable video file ({first_line(exc)}; truncated or not a video?)"
            ) from exc
        if not self._container.streams.video:
            self._container.close()
            raise SourceError(f"{path}: not a video file (no video stream found)")
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"  # frame + slice threads where there are several; the GIL is released while decoding
        stream.codec_context.thread_count = decoder_threads(usable_cores())
        self._stream = stream
        rate = stream.average_rate or stream.guessed_rate
        self.fps = float(rate) if rate else DEFAULT_FPS
        self.frame_count = stream.frames or None
        super().__init__(queue_size)

    def reopen(self) -> VideoFileSource:
        return VideoFileSource(self.path, self._queue_size)

    def _produce(self) -> Iterator[Frame]:
        start: float | None = None
        last = 0.0
        size: tuple[int, int] | None = None  # (W, H) of the first frame: every frame is delivered at it
        resized = False
        for index, decoded in enumerate(self._decoded()):
            image = frame_rgb(decoded)
            quarter_turns = round(decoded.rotation / 90) % 4  # display matrix: counter-clockwise degrees
            if quarter_turns:
                image = np.ascontiguousarray(np.rot90(image, k=quarter_turns))
            if size is None:
                size = (image.shape[1], image.shape[0])
            elif (image.shape[1], image.shape[0]) != size:
                # A stream that changes resolution mid-way (spliced H.264, MPEG-TS): rescaled to the first size, so
                # the tracks keep one coordinate frame and the annotated video one size.
                if not resized:
                    resized = True
                    warnings.warn(
                        f"{self.name}: resolution changes from {size[0]}x{size[1]} to {image.shape[1]}x"
                        f"{image.shape[0]} at frame {index}; frames are rescaled to {size[0]}x{size[1]}",
                        TrackerWarning,
                        stacklevel=2,
                    )
                image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            if decoded.time is None:  # no timestamp: continue at the nominal rate
                t = last + 1.0 / self.fps
            else:
                start = decoded.time if start is None else start
                t = max(decoded.time - start, last)  # never backwards (stream copies with reordered stamps)
            last = t
            yield Frame(index, t, image)

    def _decoded(self) -> Iterator[av.VideoFrame]:
        """The stream's frames, packet by packet. A packet that does not decode ends the stream where it is the file's
        last with data (a file cut short mid-packet: the run ends with `_check_complete`'s warning, the frames the
        decoder holds still drained); anywhere else its error stands. FFmpeg's frame threads kept the cut packet's
        error to themselves; a single-threaded decoder (`decoder_threads`) raises it. A damaged packet mid-file
        raised either way (two damaged copies of the sample: the same frame, one thread or three)."""
        failed: av.FFmpegError | None = None
        for packet in self._container.demux(self._stream):
            if failed is not None and packet.size:
                raise failed
            try:
                yield from packet.decode()
            except av.InvalidDataError as exc:
                failed = exc
        self._cut = failed is not None

    def _release(self) -> None:
        self._container.close()


def decoder_threads(cores: int) -> int:
    """FFmpeg's decoding threads on `cores` usable cores. One (the reader thread itself) on two cores or fewer, where
    the 720p sample decodes at 410 fps on it, six times what the pipeline takes, and the other core is the tracker's:
    with the annotated video, interleaved in one process, medians of 8, 65.0 against 62.2 fps with FFmpeg's three
    (1.045x; docs/speed.md, 2026-12-04, third session). Above, FFmpeg's own count (cores + 1, at most 16) over the
    usable cores: it counts the affinity, not a quota."""
    return 1 if cores <= 2 else min(16, cores + 1)


# BT.601 (or unspecified, which FFmpeg reads as BT.601) in limited (or unspecified) range: what OpenCV's YUV -> RGB
# conversion assumes. AVColorSpace and AVColorRange values.
_OPENCV_COLORSPACES = {2, 5, 6}  # unspecified, BT470BG, SMPTE170M
_OPENCV_RANGES = {0, 1}  # unspecified, MPEG (limited)


def frame_rgb(decoded: av.VideoFrame) -> np.ndarray:
    """A decoded frame as RGB `[H, W, 3]` uint8. The common case, 8-bit 4:2:0 in BT.601 limited range at even sizes,
    goes through OpenCV: 0.9-1.1 against 1.7-2.1 ms per 720p frame for swscale (one thread), within 3 levels of it
    (1.0 on average, rounding). Every other format, colour matrix or range is left to swscale, which reads them
    from the frame."""
    if (
        decoded.format.name == "yuv420p"
        and decoded.width % 2 == 0
        and decoded.height % 2 == 0
        and decoded.colorspace in _OPENCV_COLORSPACES
        and decoded.color_range in _OPENCV_RANGES
    ):
        return cv2.cvtColor(decoded.to_ndarray(), cv2.COLOR_YUV2RGB_I420)
    return decoded.to_ndarray(format="rgb24")


class ImageFolderSource(_QueuedSource):
    """A folder of images, in natural name order (frame2 before frame10), read in a thread at a nominal fps."""

    def __init__(self, path: str | Path, fps: float = DEFAULT_FPS, queue_size: int = 8) -> None:
        self.path = Path(path)
        self.name = str(path)
        self.fps = fps
        self._queue_size = queue_size
        if not self.path.is_dir():
            raise SourceError(f"{path}: no such folder (check the path)")
        self._files = sorted(
            (p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
            key=lambda p: _natural_key(p.name),
        )
        if not self._files:
            raise SourceError(f"{path}: no images found (expected {', '.join(IMAGE_SUFFIXES)} files)")
        self.frame_count = len(self._files)
        super().__init__(queue_size)

    def reopen(self) -> ImageFolderSource:
        return ImageFolderSource(self.path, self.fps, self._queue_size)

    def _produce(self) -> Iterator[Frame]:
        size: tuple[int, ...] | None = None
        for index, file in enumerate(self._files):
            bgr = cv2.imread(str(file), cv2.IMREAD_COLOR)
            if bgr is None:
                raise SourceError(f"{file}: not a readable image (remove it from the folder)")
            if size is not None and bgr.shape != size:
                raise SourceError(
                    f"{file}: size {bgr.shape[1]}x{bgr.shape[0]} differs from the first image's "
                    f"{size[1]}x{size[0]} (all frames must have one size)"
                )
            size = bgr.shape
            yield Frame(index, index / self.fps, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


class Capture(Protocol):
    """The part of `cv2.VideoCapture` the webcam source uses (a fake one serves the tests)."""

    def isOpened(self) -> bool: ...  # noqa: N802 (OpenCV's name)
    def read(self) -> tuple[bool, np.ndarray | None]: ...
    def get(self, prop: int) -> float: ...
    def release(self) -> None: ...


class WebcamSource(Source):
    """A camera read by OpenCV in a thread into a one-slot box: the consumer always gets the newest frame, so
    latency never grows when the model is slower than the camera (stale frames are counted in `dropped`)."""

    live = True
    _MAX_READ_FAILURES = 20  # consecutive failed reads before the camera counts as gone

    def __init__(self, index: int, open_capture: Callable[[int], Capture] | None = None) -> None:
        self.index = index
        self.name = f"webcam{index}"
        self.dropped = 0
        capture = (open_capture or _open_camera)(index)
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"webcam {index}: cannot be opened (is a camera connected and not in use?)")
        ok, bgr = capture.read()
        if not ok or bgr is None:
            capture.release()
            raise SourceError(f"webcam {index}: opened but delivers no frames (try another index)")
        self.height, self.width = bgr.shape[:2]
        self.fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
        self._capture = capture
        self._cond = threading.Condition()
        self._latest: tuple[int, float, np.ndarray] = (0, time.monotonic(), bgr)  # (sequence, time, BGR image)
        self._ended = False
        self._failure: Exception | None = None
        self._stop = threading.Event()
        self._thread = start_helper(self._work, f"cape-webcam-{index}")

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _work(self) -> None:
        failures = 0
        try:
            while not self._stop.is_set() and failures < self._MAX_READ_FAILURES:
                start = time.perf_counter()
                ok, bgr = self._capture.read()
                self.busy_seconds += time.perf_counter() - start
                if not ok or bgr is None:
                    failures += 1
                    time.sleep(0.01)
                    continue
                failures = 0
                with self._cond:
                    self._latest = (self._latest[0] + 1, time.monotonic(), bgr)
                    self._cond.notify_all()
        except Exception as exc:  # forwarded to the consumer, which re-raises it
            self._failure = exc
        finally:
            self._capture.release()
            with self._cond:
                self._ended = True
                self._cond.notify_all()

    def __iter__(self) -> Iterator[Frame]:
        seen = -1
        t0: float | None = None
        delivered = 0
        while True:
            with self._cond:
                self._cond.wait_for(lambda last=seen: self._latest[0] > last or self._ended)
                sequence, stamp, bgr = self._latest
                if sequence <= seen:  # ended with nothing new
                    if self._failure is not None:
                        raise SourceError(
                            f"webcam {self.index}: reading failed ({first_line(self._failure)})"
                        ) from self._failure
                    return
            self.dropped += sequence - seen - 1
            seen = sequence
            t0 = stamp if t0 is None else t0
            yield Frame(delivered, stamp - t0, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            delivered += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=_JOIN_TIMEOUT_S)


def _open_camera(index: int) -> cv2.VideoCapture:
    """`cv2.VideoCapture(index)` without OpenCV's multi-line probing logs (the caller's error says it in one line)."""
    previous = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        return cv2.VideoCapture(index)
    finally:
        cv2.utils.logging.setLogLevel(previous)


def open_source(spec: str | int | Path, queue_size: int = 8, fps: float | None = None) -> Source:
    """A source from a command-line spec: a webcam index (`0`), a folder of images, or a video file.

    Raises `SourceError` with a one-line message when it cannot be opened or its first frame cannot be read.
    """
    if isinstance(spec, int):
        return WebcamSource(spec)
    if not str(spec).strip():
        raise SourceError("video: empty path (give a video file, a folder of images or a URL)")
    if is_url(spec):
        return VideoFileSource(str(spec), queue_size=queue_size)
    path = Path(spec)
    if isinstance(spec, str) and spec.isdigit() and not path.exists():
        return WebcamSource(int(spec))
    if path.is_dir():
        return ImageFolderSource(path, fps=fps or DEFAULT_FPS, queue_size=queue_size)
    return VideoFileSource(path, queue_size=queue_size)


def read_frame(spec: str | Path, index: int) -> np.ndarray:
    """Frame `index` of a video file or image folder, `[H, W, 3]` uint8 RGB (the support taken from the input)."""
    last = -1
    with open_source(spec) as source:
        for frame in source:
            if frame.index == index:
                return frame.image
            last = frame.index
    raise SourceError(f"{spec}: has no frame {index} (its last frame is {last}; frames count from 0)")


def read_frames(spec: str | Path) -> tuple[list[np.ndarray], np.ndarray, float]:
    """Every frame of a short clip, decoded as the tracker decodes it (rotation applied, one size): RGB
    `[H, W, 3]` uint8 frames, their times `[T]` in seconds from the first, and the nominal rate. For references and
    baselines that need the whole clip at once; tracking streams instead."""
    with open_source(spec) as source:
        frames = list(source)
        fps = source.fps
    return [f.image for f in frames], np.array([f.time for f in frames]), fps


def is_url(spec: str | Path) -> bool:
    """A network stream or remote file PyAV opens itself (rtsp://, http://, ...), not a path on disk."""
    return isinstance(spec, str) and re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", spec) is not None


def check_regular_file(path: Path, what: str) -> None:
    """Refuse, before any open, what would block or mislead a reader: a FIFO, a device, a socket, a folder, a
    symlink loop or a name the system refuses (one-line `SourceError`)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise SourceError(f"{path}: no such file (check the path)") from None
    except OSError as exc:
        raise SourceError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    kinds = {stat.S_ISFIFO: "a FIFO (named pipe)", stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device"}
    kinds |= {stat.S_ISSOCK: "a socket", stat.S_ISDIR: "a folder"}
    for test, kind in kinds.items():
        if test(mode):
            raise SourceError(f"{path}: is {kind}, not a {what}")


def _natural_key(name: str) -> list[object]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]

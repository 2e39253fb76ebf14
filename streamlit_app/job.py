"""A tracking run in a background thread, so the page stays responsive: it polls `progress()` and may `cancel()`.
The run itself is the tracker's (`Tracker.run` over `open_source` into `file_sinks`), as in the CLI."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from cape_track.model import CapeError, CapeModel, SupportSet
from cape_track.tracker import Accelerator, Tracker, TrackerConfig, file_sinks, open_source, output_paths


class JobState(Enum):
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"


@dataclass(frozen=True)
class Progress:
    frames: int  # frames written so far
    total: int | None  # frames expected (None when the container does not say)
    seconds: float  # since the first frame was asked for (after the support was encoded), as the CLI counts

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left at the rate so far (None until a frame is done or when the total is unknown)."""
        if not self.total or not self.frames or self.seconds <= 0:
            return None
        return max(self.total - self.frames, 0) / self.fps

    @property
    def fraction(self) -> float:
        return min(self.frames / self.total, 1.0) if self.total else 0.0


class TrackingJob:
    """Tracks `video` with `model` and `support`, writing `output_paths(out_dir, stem)`.

    The files are valid for every frame done however the run ends (the tracker's sinks guarantee it), so a
    cancelled or failed run still has partial results. `error` is a one-line message for the page. The clock
    starts when the frames start, after the support is encoded, as the CLI's does, so the two rates compare.
    """

    def __init__(
        self,
        model: CapeModel,
        support: SupportSet,
        video: Path,
        out_dir: Path,
        stem: str,
        config: TrackerConfig,
    ) -> None:
        self.video = Path(video)
        self.names = support.names  # [N] keypoint names, the columns of the tracks
        self.paths = output_paths(out_dir, stem)
        self.error: str | None = None
        self._args = (model, support, out_dir, stem, config)
        self._state = JobState.RUNNING
        self._frames = 0
        self._total: int | None = None
        self._start: float | None = None
        self._end: float | None = None
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._work, name="cape-page-track", daemon=True)
        self._thread.start()

    @property
    def state(self) -> JobState:
        return self._state

    @property
    def running(self) -> bool:
        return self._state is JobState.RUNNING

    def progress(self) -> Progress:
        if self._start is None:
            return Progress(self._frames, self._total, 0.0)
        end = self._end if self._end is not None else time.perf_counter()
        return Progress(self._frames, self._total, end - self._start)

    def cancel(self) -> None:
        """Ask the run to stop after the frame in hand; `state` becomes CANCELLED once it has."""
        self._cancel.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _on_progress(self, frames: int, total: int | None) -> None:
        self._frames, self._total = frames, total

    def _work(self) -> None:
        model, support, out_dir, stem, config = self._args
        state = JobState.DONE
        try:
            with open_source(self.video) as source:
                self._total = source.frame_count
                tracker = Tracker(model, support, config, Accelerator.for_device(model.device, "auto"))
                self._start = time.perf_counter()
                results = tracker.run(source, file_sinks(out_dir, stem), self._on_progress)
                try:
                    for _ in results:
                        if self._cancel.is_set():
                            state = JobState.CANCELLED
                            break
                finally:
                    results.close()  # closes the sinks now: the files are complete for the frames done
                    self._frames = results.times.frames  # held (settling) frames written at the close included
        except CapeError as exc:
            state, self.error = JobState.FAILED, str(exc)
        except Exception as exc:  # the thread trampoline: forwarded to the page as one line, never a traceback
            state, self.error = JobState.FAILED, f"unexpected {type(exc).__name__}: {exc}"
        finally:
            self._end = time.perf_counter()
            self._state = state

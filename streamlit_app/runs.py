"""The page's tracking runs kept side by side: each finished run's tracks, the points a correction starts from,
and how far two runs disagree. Pure functions over `Tracks` (tested without a browser); the page only lays them
out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cape_track.streamlit_app.job import TrackingJob
from cape_track.tracker.tracks import Tracks

Point = tuple[float, float]


@dataclass(frozen=True)
class Video:
    """The video chosen on the page."""

    path: Path  # the file tracked (in the session folder, or the bundled sample)
    label: str  # the name the user knows it by
    summary: str  # size, frames and rate, for the page
    frames: int | None  # frame count from the container (None: it does not say)


@dataclass(frozen=True)
class Run:
    """One tracking run of the page: its number in the session's history and what it was tracked with."""

    number: int  # 1, 2, ... in the order started
    job: TrackingJob
    video: Video  # the video tracked (a correction re-tracks this one, whatever is chosen since)
    shots: int  # support images it was tracked with

    @property
    def title(self) -> str:
        p = self.job.progress()
        images = f"{self.shots} support image{'' if self.shots == 1 else 's'}"
        return f"Run {self.number} · {images} · {p.frames} frames · {self.job.state.value}"

    def tracks(self) -> Tracks | None:
        """The run's tracks file, or None while it has none (a run that failed before its first frame)."""
        path = self.job.paths["json"]
        return Tracks.read(path) if path.is_file() else None


def row_of(tracks: Tracks, frame: int) -> int | None:
    """The row of `tracks` for video frame `frame` (None when the run did not reach it)."""
    rows = np.flatnonzero(tracks.index == frame)
    return int(rows[0]) if len(rows) else None


def correction_points(tracks: Tracks, frame: int) -> list[Point | None]:
    """[N] where the run put each keypoint on `frame`: its tracked point where visible, None (not placed, so not
    confirmed) where hidden. A correction starts from these and the user drags the wrong ones."""
    row = row_of(tracks, frame)
    if row is None:
        return [None] * len(tracks.names)
    return [
        (float(x), float(y)) if shown else None
        for (x, y), shown in zip(tracks.xy[row], tracks.visible[row], strict=True)
    ]


def disagreement(a: Tracks, b: Tracks, frame: int) -> np.ndarray:
    """[N] px between the two runs' points on `frame`; NaN where either run hides the keypoint or lacks the
    frame. Both runs must track the same keypoints."""
    _check_same(a, b)
    ra, rb = row_of(a, frame), row_of(b, frame)
    if ra is None or rb is None:
        return np.full(len(a.names), np.nan)
    distance = np.linalg.norm(a.xy[ra] - b.xy[rb], axis=-1)
    return np.where(a.visible[ra] & b.visible[rb], distance, np.nan)


def mean_disagreement(a: Tracks, b: Tracks) -> np.ndarray:
    """[N] mean px between the two runs over the frames both show the keypoint (NaN: never both)."""
    _check_same(a, b)
    common, ia, ib = np.intersect1d(a.index, b.index, return_indices=True)
    both = a.visible[ia] & b.visible[ib]  # [T, N]
    distance = np.linalg.norm(a.xy[ia] - b.xy[ib], axis=-1)
    total, count = np.where(both, distance, 0.0).sum(axis=0), both.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _check_same(a: Tracks, b: Tracks) -> None:
    if a.names != b.names:
        raise ValueError(f"the runs track different keypoints ({', '.join(a.names)} vs {', '.join(b.names)})")

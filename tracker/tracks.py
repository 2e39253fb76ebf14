"""THE home of the tracks file (DESIGN.md): its header and per-frame records, written frame by frame by
`sinks.JsonSink`, and the whole file as arrays (`Tracks`), read back by the exports and the benchmarks and written
whole for references and generated clips. One schema, so a reader never disagrees with the writer."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cape_track.model.errors import CapeError
from cape_track.tracker.frames import FrameResult, TrackInfo


class TracksFileError(CapeError, ValueError):
    """A tracks file that cannot be read or does not follow the schema."""


def header(info: TrackInfo) -> dict[str, object]:
    """The fields before `frames`."""
    return {
        "video": info.video,
        "fps": info.fps,
        "width": info.width,
        "height": info.height,
        "names": list(info.names),
        "skeleton": [list(edge) for edge in info.skeleton],
    }


def frame_record(
    index: int, time: float | None, xy: np.ndarray, scores: np.ndarray | None, visible: np.ndarray
) -> dict:
    """One entry of `frames`: positions to 1/1000 px, scores to 1e-4 (what a tracker's precision warrants); a
    reference without times or scores leaves those keys out."""
    record: dict[str, object] = {"index": int(index)}
    if time is not None:
        record["time"] = round(float(time), 6)
    record["keypoints"] = np.round(xy, 3).tolist()
    if scores is not None:
        record["scores"] = np.round(scores, 4).tolist()
    record["visible"] = np.asarray(visible, bool).tolist()
    return record


def result_record(result: FrameResult) -> dict:
    return frame_record(result.index, result.time, result.xy_frame, result.scores, result.visible)


@dataclass(frozen=True)
class Tracks:
    """A tracks file as arrays. References and generated clips may leave out `time`, `scores`, `visible` (then
    every point counts as seen), the skeleton and the video geometry; a file written by cape-track has them all."""

    names: tuple[str, ...]  # [N]
    index: np.ndarray  # [T] int frame indices
    xy: np.ndarray  # [T, N, 2] frame px
    visible: np.ndarray  # [T, N] bool
    scores: np.ndarray | None = None  # [T, N] in [0, 1]
    time: np.ndarray | None = None  # [T] seconds
    skeleton: tuple[tuple[int, int], ...] = ()
    video: str = ""
    fps: float | None = None
    width: int | None = None
    height: int | None = None
    extra: dict = field(default_factory=dict)  # other top-level fields (a reference's method, a clip's source)

    @classmethod
    def from_results(cls, results: Sequence[FrameResult], names: Sequence[str]) -> Tracks:
        return cls(
            tuple(names),
            np.array([r.index for r in results], dtype=np.int64),
            np.stack([r.xy_frame for r in results]),
            np.stack([r.visible for r in results]),
            np.stack([r.scores for r in results]),
            np.array([r.time for r in results], dtype=np.float64),
        )

    @classmethod
    def read(cls, path: str | Path) -> Tracks:
        """Read and check a tracks file; every problem is one `TracksFileError` naming the file."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise TracksFileError(f"{path}: cannot read ({exc.strerror or exc}) (check the path)") from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise TracksFileError(f"{path}: not a JSON file ({exc}) (give a tracks file)") from exc
        frames = data.get("frames") if isinstance(data, dict) else None
        if not isinstance(frames, list) or not frames:
            raise TracksFileError(f"{path}: no 'frames' list (not a tracks file, see DESIGN.md)")
        try:
            xy = np.array([f["keypoints"] for f in frames], dtype=np.float64)
            visible = np.array([f.get("visible", [True] * len(f["keypoints"])) for f in frames], dtype=bool)
            index = np.array([f["index"] for f in frames], dtype=np.int64)
            scores = np.array([f["scores"] for f in frames], dtype=np.float64) if "scores" in frames[0] else None
            time = np.array([f["time"] for f in frames], dtype=np.float64) if "time" in frames[0] else None
            skeleton = tuple((int(a), int(b)) for a, b in data.get("skeleton") or ())
        except (KeyError, TypeError, ValueError) as exc:
            raise TracksFileError(f"{path}: malformed frame record ({exc!r}) (each needs index and keypoints)") from exc
        if xy.ndim != 3 or xy.shape[2] != 2 or visible.shape != xy.shape[:2]:
            raise TracksFileError(
                f"{path}: keypoints of shape {xy.shape}, visible {visible.shape} (expected [T, N, 2])"
            )
        if (scores is not None and scores.shape != visible.shape) or (time is not None and time.shape != index.shape):
            raise TracksFileError(f"{path}: scores or times do not match the keypoints (one per point and frame)")
        names = tuple(data.get("names") or (f"kp{i}" for i in range(xy.shape[1])))
        if len(names) != xy.shape[1]:
            raise TracksFileError(f"{path}: {len(names)} names for {xy.shape[1]} keypoints (one name per keypoint)")
        known = {"video", "fps", "width", "height", "names", "skeleton", "frames"}
        extra = {k: v for k, v in data.items() if k not in known}
        geometry = (data.get("fps"), data.get("width"), data.get("height"))
        return cls(names, index, xy, visible, scores, time, skeleton, str(data.get("video") or ""), *geometry, extra)

    def write(self, path: str | Path) -> None:
        """The whole file at once, replaced atomically (references, generated clips; the tracker streams through
        `sinks.JsonSink`)."""
        t = len(self.index)
        scores = self.scores if self.scores is not None else [None] * t
        time = self.time if self.time is not None else [None] * t
        head = {"video": self.video, "fps": self.fps, "width": self.width, "height": self.height}
        data = {
            **{k: v for k, v in head.items() if v not in (None, "")},
            "names": list(self.names),
            "skeleton": [list(edge) for edge in self.skeleton],
            **self.extra,
            "frames": [
                frame_record(i, t, xy, s, v)
                for i, t, xy, s, v in zip(self.index, time, self.xy, scores, self.visible, strict=True)
            ],
        }
        path = Path(path)
        part = path.with_name(f".{path.name}.part")
        part.write_text(json.dumps(data, allow_nan=False) + "\n", encoding="utf-8")
        os.replace(part, path)

    def hidden_nan(self) -> np.ndarray:
        """[T, N, 2] with hidden points NaN (the field's convention for a missing point)."""
        return np.where(self.visible[..., None], self.xy, np.nan)

"""Tracks in the field's formats, written from the finished tracks file (`<stem>.keypoints.json`, valid on every
ending of a run, so an interrupted run exports the frames it did): DeepLabCut (CSV + HDF5), COCO keypoints and SLEAP
(through sleap-io, an optional extra).

Hidden points: NaN coordinates in DeepLabCut and SLEAP (their convention for a missing point), `v = 0` with x = y = 0
in COCO (its convention), and the score as DeepLabCut's likelihood / SLEAP's point score.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cape_track.tracker.errors import SinkError
from cape_track.tracker.tracks import Tracks, TracksFileError

EXPORTS = ("dlc", "sleap", "coco")
SCORER = "cape-track"  # DeepLabCut's top header level names the model that produced the tracks


def parse_exports(text: str) -> tuple[str, ...]:
    """`"dlc,coco"` -> ("dlc", "coco"); an unknown name is a one-line error listing the valid ones."""
    names = tuple(dict.fromkeys(part.strip().lower() for part in text.split(",") if part.strip()))
    unknown = [n for n in names if n not in EXPORTS]
    if unknown or not names:
        raise ValueError(f"unknown export format {', '.join(unknown) or repr(text)} (choose from {', '.join(EXPORTS)})")
    return names


def export_paths(out_dir: Path, stem: str) -> dict[str, list[Path]]:
    return {
        "dlc": [out_dir / f"{stem}.dlc.csv", out_dir / f"{stem}.dlc.h5"],
        "sleap": [out_dir / f"{stem}.slp", out_dir / f"{stem}.analysis.h5"],
        "coco": [out_dir / f"{stem}.coco.json"],
    }


def export_tracks(tracks_json: Path, formats: Sequence[str], video: Path | None = None) -> list[Path]:
    """Write each format beside `tracks_json`; returns the files written. `video` is recorded in SLEAP files."""
    data = _load(tracks_json)
    stem = tracks_json.name.removesuffix(".keypoints.json")
    paths = export_paths(tracks_json.parent, stem)
    writers = {"dlc": _write_dlc, "sleap": _write_sleap, "coco": _write_coco}
    written: list[Path] = []
    for name in formats:
        try:
            writers[name](data, *paths[name], video=video)
        except OSError as exc:
            raise SinkError(f"{paths[name][0]}: cannot write the {name} export ({exc.strerror or exc})") from exc
        written += paths[name]
    return written


def sleap_available() -> bool:
    return importlib.util.find_spec("sleap_io") is not None


# ----------------------------------------------------------------------------------------------------- internals
def _load(path: Path) -> Tracks:
    """The tracks file cape-track wrote: the exports need every field of it (scores, times, the video geometry)."""
    try:
        tracks = Tracks.read(path)
    except TracksFileError as exc:
        raise SinkError(f"cannot read the tracks to export: {exc}") from exc
    if tracks.scores is None or tracks.time is None or None in (tracks.width, tracks.height, tracks.fps):
        raise SinkError(f"{path}: not a cape-track tracks file (scores, times or the video size are missing)")
    return tracks


def _write_dlc(t: Tracks, csv_path: Path, h5_path: Path, video: Path | None = None) -> None:
    """DeepLabCut's single-animal layout: columns (scorer, bodyparts, coords) with coords x, y, likelihood, one row
    per frame indexed by frame number; the HDF5 file holds the same frame under DeepLabCut's key."""
    import pandas as pd

    columns = pd.MultiIndex.from_product([[SCORER], list(t.names), ["x", "y", "likelihood"]])
    columns.names = ["scorer", "bodyparts", "coords"]
    values = np.concatenate([t.hidden_nan(), t.scores[..., None]], axis=-1).reshape(len(t.index), -1)
    frame = pd.DataFrame(values, index=t.index, columns=columns)
    frame.to_csv(csv_path)
    if importlib.util.find_spec("tables") is not None:
        frame.to_hdf(h5_path, key="df_with_missing", mode="w", format="table")
    else:
        h5_path.unlink(missing_ok=True)
        raise SinkError(f"{h5_path}: the DeepLabCut HDF5 file needs PyTables (pip install tables); the CSV is written")


def _write_coco(t: Tracks, json_path: Path, _unused: Path | None = None, video: Path | None = None) -> None:
    """COCO keypoints: one image per frame, one annotation per frame, v = 2 visible / 0 hidden, 1-indexed skeleton."""
    images, annotations = [], []
    stem = Path(t.video).stem or "video"
    for i, frame_index in enumerate(t.index):
        image_id = i + 1
        images.append(
            {
                "id": image_id,
                "file_name": f"{stem}/{int(frame_index):06d}.png",
                "width": t.width,
                "height": t.height,
                "frame_index": int(frame_index),
                "time": float(t.time[i]),
            }
        )
        vis = t.visible[i]
        xy = np.where(vis[:, None], t.xy[i], 0.0)
        keypoints = np.concatenate([xy, np.where(vis, 2.0, 0.0)[:, None]], 1).ravel()
        if vis.any():
            low, high = t.xy[i][vis].min(0), t.xy[i][vis].max(0)
            bbox = [float(low[0]), float(low[1]), float(high[0] - low[0]), float(high[1] - low[1])]
        else:
            bbox = [0.0, 0.0, 0.0, 0.0]
        annotations.append(
            {
                "id": image_id,
                "image_id": image_id,
                "category_id": 1,
                "keypoints": [round(float(v), 3) for v in keypoints],
                "num_keypoints": int(vis.sum()),
                "keypoint_scores": [round(float(s), 4) for s in t.scores[i]],
                "score": float(t.scores[i].mean()) if len(t.names) else 0.0,
                "bbox": [round(v, 3) for v in bbox],
                "area": round(bbox[2] * bbox[3], 3),
                "iscrowd": 0,
            }
        )
    data = {
        "info": {"description": f"cape-track tracks of {t.video}", "fps": t.fps},
        "images": images,
        "annotations": annotations,
        "categories": [
            {
                "id": 1,
                "name": "object",
                "supercategory": "object",
                "keypoints": list(t.names),
                "skeleton": [[a + 1, b + 1] for a, b in t.skeleton],
            }
        ],
    }
    json_path.write_text(json.dumps(data) + "\n", encoding="utf-8")


def _write_sleap(t: Tracks, slp_path: Path, analysis_path: Path, video: Path | None = None) -> None:
    """SLEAP's `.slp` (predicted instances with point scores) and its analysis HDF5, through sleap-io."""
    if not sleap_available():
        raise SinkError(f"{slp_path}: SLEAP export needs sleap-io (pip install 'cape-track[sleap]')")
    import sleap_io as sio

    skeleton = sio.Skeleton(nodes=list(t.names), edges=[(t.names[a], t.names[b]) for a, b in t.skeleton], name="object")
    source = str(video) if video is not None else t.video
    sio_video = sio.Video(filename=source, open_backend=False)
    points = t.hidden_nan()
    frames = [
        sio.LabeledFrame(
            video=sio_video,
            frame_idx=int(frame_index),
            instances=[
                sio.PredictedInstance.from_numpy(
                    points[i], skeleton=skeleton, point_scores=t.scores[i], score=float(t.scores[i].mean())
                )
            ],
        )
        for i, frame_index in enumerate(t.index)
        if t.visible[i].any()
    ]
    labels = sio.Labels(labeled_frames=frames, videos=[sio_video], skeletons=[skeleton])
    sio.save_slp(labels, str(slp_path))
    sio.save_file(labels, str(analysis_path), format="analysis_h5")

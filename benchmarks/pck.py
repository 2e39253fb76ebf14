"""Accuracy of cape-track as PCK: (i) of a checkpoint on an MP-100-layout dataset, through training's official
protocol, and (ii) of tracks on a real video against an independent reference tracks file, side by side with a plain
optical-flow tracker started from the same support keypoints (DESIGN.md, Targets).

    python -m cape_track.benchmarks.pck dataset --checkpoint C --data-root IMAGES --ann-file ANN.json [--shots 1]
    python -m cape_track.benchmarks.pck tracks --video V --support S [--support S2] --reference R [--checkpoint C] \\
        --json OUT
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cape_track.benchmarks.flow_baseline import track_optical_flow
from cape_track.benchmarks.matching_baseline import layout_ceiling, nn_matching, object_fraction, reference_boxes
from cape_track.model import CapeError, CapeModel, SupportSet
from cape_track.model.support import load_image
from cape_track.tracker import Tracker, TrackerConfig, open_source, select_device
from cape_track.tracker.sources import read_frames
from cape_track.tracker.tracks import Tracks
from cape_track.training.evaluate import DEFAULT_EPISODES, DEFAULT_QUERIES, evaluate_split
from cape_track.training.mp100 import load_split

PROG = "cape_track.benchmarks.pck"
THRESHOLDS = (0.05, 0.1, 0.2)
FRAME_MATCH_TOLERANCE = 4.0  # mean absolute grey-level difference under which the support image is a clip frame


class BenchmarkError(CapeError, ValueError):
    """A reference or tracks file, or a support image, cannot be used for the comparison."""


# --------------------------------------------------------------------------------------------------- tracks
@dataclass(frozen=True)
class PckResult:
    pck: dict[float, float]  # threshold -> fraction of reference-visible keypoints within threshold x box size
    keypoints: int  # keypoint instances evaluated
    frames: int  # reference frames evaluated
    mean_error_px: float  # mean distance to the reference over the same instances (frame px)
    visible_precision: float  # of the points reported visible, the fraction the reference has visible
    visible_recall: float  # of the reference's visible points, the fraction reported visible


def pck_of_tracks(
    tracks: Tracks, reference: Tracks, thresholds: Sequence[float] = THRESHOLDS, skip: Iterable[int] = ()
) -> PckResult:
    """PCK of `tracks` against `reference`, keypoint by keypoint, over the reference's frames.

    Only keypoints visible in the reference count; a tracked point counts wherever the tracker put it (its own
    visibility flag is not used). The normaliser is the reference's box size in that frame: the longer side of the
    bounding box of its visible keypoints (frames with a zero-size box are left out). A keypoint is correct when
    distance / box size < threshold, strictly, as mmpose's PCK. A reference frame missing from `tracks` counts as
    wrong for all its keypoints; frames in `skip` (e.g. the support's own frame) are left out.
    """
    if tracks.names != reference.names:
        raise BenchmarkError(
            f"tracks name keypoints {list(tracks.names)}, the reference {list(reference.names)} "
            "(track the reference's keypoints, in its order)"
        )
    row = {int(i): t for t, i in enumerate(tracks.index)}
    skip = set(skip)
    errors, norms = [], []  # per evaluated keypoint instance: distance px, box size px
    frames = 0
    said, true_said, truth = 0, 0, 0  # visibility: reported visible, ... and visible in the reference, reference
    for t, frame_index in enumerate(reference.index):
        vis = reference.visible[t]
        found = row.get(int(frame_index))
        if int(frame_index) not in skip and found is not None:
            reported = tracks.visible[found]
            said, true_said, truth = said + reported.sum(), true_said + (reported & vis).sum(), truth + vis.sum()
        if int(frame_index) in skip or not vis.any():
            continue
        ref = reference.xy[t, vis]  # [M, 2]
        size = float((ref.max(axis=0) - ref.min(axis=0)).max())
        if size <= 0:
            continue
        pred = tracks.xy[found, vis] if found is not None else np.full_like(ref, np.nan)
        errors.append(np.linalg.norm(pred - ref, axis=1))
        norms.append(np.full(len(ref), size))
        frames += 1
    if not errors:
        raise BenchmarkError("reference: no frame with at least two distinct visible keypoints (nothing to score)")
    error, norm = np.concatenate(errors), np.concatenate(norms)
    with np.errstate(invalid="ignore"):  # NaN (missing frames) compares False: wrong
        pck = {float(thr): float(np.mean(error / norm < thr)) for thr in thresholds}
    mean_error = float(np.nanmean(error)) if np.isfinite(error).any() else np.nan
    precision = true_said / said if said else np.nan
    recall = true_said / truth if truth else np.nan
    return PckResult(pck, len(error), frames, mean_error, float(precision), float(recall))


# --------------------------------------------------------------------------------------------------- runs
def locate_support_frame(frames: Sequence[np.ndarray], image: np.ndarray, name: str = "support") -> int:
    """Index of the clip frame the support image was taken from (least mean absolute difference): the optical-flow
    baseline starts there. Raises when no frame is close enough (the support is not a frame of this clip)."""
    same_size = [i for i, frame in enumerate(frames) if frame.shape == image.shape]
    if not same_size:
        raise BenchmarkError(f"{name}: size differs from the video's frames (the flow baseline needs a clip frame)")
    diffs = [float(np.abs(frames[i].astype(np.int16) - image).mean()) for i in same_size]
    best = int(np.argmin(diffs))
    if diffs[best] > FRAME_MATCH_TOLERANCE:
        raise BenchmarkError(
            f"{name}: not a frame of the video (mean difference {diffs[best]:.1f} grey levels at best) "
            "(the flow baseline starts from the support's frame: take the support from the clip)"
        )
    return same_size[best]


def track_with_model(model: CapeModel, support: SupportSet, video: Path, config: TrackerConfig) -> Tracks:
    """The tracker as `cape-track` runs it (streaming source, ROI follow, search, batches), without sinks."""
    tracker = Tracker(model, support, config)
    with open_source(video) as source:
        results = list(tracker.run(source))
    return Tracks.from_results(results, tracker.names)


@dataclass(frozen=True)
class Row:
    support: str
    support_frame: int | None
    method: str
    result: PckResult

    def to_json(self) -> dict[str, object]:
        r = self.result
        return {
            "support": self.support,
            "support_frame": self.support_frame,
            "method": self.method,
            "pck": {str(t): v for t, v in r.pck.items()},
            "keypoints": r.keypoints,
            "frames": r.frames,
            "mean_error_px": r.mean_error_px,
            "visible_precision": r.visible_precision,
            "visible_recall": r.visible_recall,
        }


def compare_on_video(
    video: Path,
    supports: Sequence[Path],
    reference: Tracks,
    checkpoint: str | None,
    device: str = "auto",
    batch: int = 4,
    thresholds: Sequence[float] = THRESHOLDS,
    tracker_only: bool = False,
) -> list[Row]:
    """For each support (a 1-shot run each), side by side: the tracker as shipped, its raw output (no smoother), the
    network's own prediction where the finder is the default, nearest-neighbour matching of the backbone's features
    (stride 16, and 8+16) and the support layout fitted on the reference (both on crops cut around the reference:
    an advantage the tracker does not get), and LK optical flow from the support's keypoints when the support is a
    frame of the clip (then that frame is left out of every score). A support that is not a frame of the clip (a
    photo of another instance) has no LK row. The tracker runs as shipped (network on keyframes, flow between) and
    with the network on every frame; `tracker_only` leaves out everything else."""
    model = CapeModel.from_checkpoint(checkpoint, device=select_device(device))
    images, _, _ = read_frames(video)
    index = np.arange(len(images))  # frame indices, as the tracker and the references count them
    boxes = None
    rows = []
    for path in supports:
        support = SupportSet.from_files(path)
        if support.names != reference.names:
            raise BenchmarkError(
                f"{path}: keypoints {list(support.names)} differ from the reference's {list(reference.names)} "
                "(use a support annotated with the reference's keypoints)"
            )
        try:
            start: int | None = locate_support_frame(images, load_image(path), str(path))
        except BenchmarkError:
            start = None  # another instance: no LK baseline, every frame scored
        skip = {int(index[start])} if start is not None else set()
        runs = {"cape-track": track_with_model(model, support, video, TrackerConfig(batch=batch))}
        runs["cape-track, network every frame (keyframes off)"] = track_with_model(
            model, support, video, TrackerConfig(batch=batch, keyframe_every=1)
        )
        if tracker_only:
            where = int(index[start]) if start is not None else None
            rows += [Row(path.name, where, m, pck_of_tracks(t, reference, thresholds, skip)) for m, t in runs.items()]
            continue
        runs["cape-track raw (no smoother)"] = track_with_model(
            model, support, video, TrackerConfig(batch=batch, smooth=False)
        )
        if model.can_match:
            runs["graph network + smoother (finder off)"] = track_with_model(
                model, support, video, TrackerConfig(batch=batch, finder="network")
            )
            fraction = object_fraction(support, model.input_size)
            boxes = reference_boxes(reference.xy, reference.visible, fraction)
            frames = [images[int(np.flatnonzero(index == i)[0])] for i in reference.index]
            for levels in ("16", "8+16"):
                xy = nn_matching(model, support, frames, boxes, levels)
                runs[f"NN matching s{levels} (reference crop)"] = Tracks(
                    support.names, reference.index, xy, np.isfinite(xy[..., 0])
                )
        if start is not None:
            xy, visible = track_optical_flow(images, start, support.keypoints[0])
            runs["LK optical flow"] = Tracks(support.names, index, xy, visible)
        xy = layout_ceiling(support, reference.xy, reference.visible)
        runs["support layout fitted to the reference (ceiling)"] = Tracks(
            support.names, reference.index, xy, np.isfinite(xy[..., 0])
        )
        where = int(index[start]) if start is not None else None
        for method, tracks in runs.items():
            rows.append(Row(path.name, where, method, pck_of_tracks(tracks, reference, thresholds, skip)))
    return rows


def markdown_table(rows: Sequence[Row], thresholds: Sequence[float] = THRESHOLDS) -> str:
    head = "| support | method | " + " | ".join(f"PCK@{t:g}" for t in thresholds) + " | mean error px | vis P/R | n |"
    lines = [head, "|" + "---|" * (len(thresholds) + 5)]
    for row in rows:
        r = row.result
        where = row.support if row.support_frame is None else f"{row.support} (frame {row.support_frame})"
        cells = " | ".join(f"{100 * r.pck[float(t)]:.1f}" for t in thresholds)
        vis = f"{r.visible_precision:.2f}/{r.visible_recall:.2f}"
        lines.append(f"| {where} | {row.method} | {cells} | {r.mean_error_px:.2f} | {vis} | {r.keypoints} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m {PROG}", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("dataset", help="PCK of a checkpoint on an MP-100-layout dataset (official protocol)")
    d.add_argument("--checkpoint", help="model checkpoint (default: the embedded model)")
    d.add_argument("--data-root", required=True, type=Path, help="image folder of the dataset")
    d.add_argument("--ann-file", required=True, type=Path, help="annotation file (mp100_splitN_test.json)")
    d.add_argument("--shots", type=int, default=1, help="supports per episode (default 1)")
    d.add_argument("--episodes", type=int, default=DEFAULT_EPISODES, help=f"per category ({DEFAULT_EPISODES})")
    d.add_argument("--queries", type=int, default=DEFAULT_QUERIES, help=f"per episode ({DEFAULT_QUERIES})")
    d.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: auto)")
    d.add_argument("--threads", type=int, metavar="T", help="torch CPU threads (default: torch's choice)")
    d.add_argument("--json", type=Path, metavar="OUT", help="write the figures there")

    t = sub.add_parser("tracks", help="PCK of tracks on a video against a reference tracks file, vs optical flow")
    t.add_argument("--reference", required=True, type=Path, help="reference tracks file (DESIGN.md format)")
    t.add_argument("--video", type=Path, help="the clip the reference annotates")
    t.add_argument(
        "--support",
        type=Path,
        action="append",
        default=[],
        help="support image taken from the clip, keypoints in IMAGE's .json; repeat for separate 1-shot runs",
    )
    t.add_argument("--tracks", type=Path, action="append", default=[], help="also score an existing tracks file")
    t.add_argument("--checkpoint", help="model checkpoint (default: the embedded model)")
    t.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: auto)")
    t.add_argument("--batch", type=int, default=4, metavar="N", help="frames per model call (default: 4)")
    t.add_argument("--threads", type=int, metavar="T", help="torch CPU threads (default: torch's choice)")
    t.add_argument("--tracker-only", action="store_true", help="only the tracker's rows (keyframes on and off)")
    t.add_argument("--json", type=Path, metavar="OUT", help="write the table there")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "tracks" and not (args.tracks or (args.video and args.support)):
        parser.error("tracks: give --video and --support (to run the tracker and the flow baseline), or --tracks")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        report = _dataset(args) if args.command == "dataset" else _tracks(args)
    except CapeError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


def _dataset(args: argparse.Namespace) -> dict[str, object]:
    model = CapeModel.from_checkpoint(args.checkpoint, device=select_device(args.device))
    split = load_split(args.ann_file, args.data_root)
    result = evaluate_split(model, split, args.shots, args.episodes, args.queries)
    pck = {str(t): result.metrics[f"PCK@{t:g}"] for t in THRESHOLDS}
    print("| checkpoint | annotations | shots | " + " | ".join(f"PCK@{t:g}" for t in THRESHOLDS) + " | queries |")
    print("|" + "---|" * (len(THRESHOLDS) + 4))
    cells = " | ".join(f"{100 * v:.1f}" for v in pck.values())
    print(f"| {args.checkpoint or 'default'} | {args.ann_file.name} | {args.shots} | {cells} | {result.num_queries} |")
    return {
        "checkpoint": args.checkpoint or "default",
        "ann_file": str(args.ann_file),
        "shots": args.shots,
        "episodes_per_category": args.episodes,
        "queries_per_episode": args.queries,
        "queries_evaluated": result.num_queries,
        "pck": pck,
    }


def _tracks(args: argparse.Namespace) -> dict[str, object]:
    reference = Tracks.read(args.reference)
    rows: list[Row] = []
    if args.support:
        rows += compare_on_video(
            args.video,
            args.support,
            reference,
            args.checkpoint,
            args.device,
            args.batch,
            tracker_only=args.tracker_only,
        )
    for path in args.tracks:
        rows.append(Row("-", None, path.name, pck_of_tracks(Tracks.read(path), reference)))
    print(markdown_table(rows))
    return {
        "reference": str(args.reference),
        "video": str(args.video) if args.video else None,
        "checkpoint": args.checkpoint or "default",
        "thresholds": list(THRESHOLDS),
        "normaliser": "longer side of the bounding box of the reference's visible keypoints, per frame",
        "rows": [row.to_json() for row in rows],
    }


if __name__ == "__main__":
    raise SystemExit(main())

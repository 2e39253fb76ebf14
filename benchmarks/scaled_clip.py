"""A development clip at a lower resolution: its video, reference tracks and clip-frame supports downscaled together,
for what a low-resolution camera gives (the `carphone` evaluation clip is 176x144) without touching the evaluation
clip. Photo supports are resolution-free and are used as they are.

    python -m cape_track.benchmarks.scaled_clip --clip /tmp/devset/megamind_hal --out /tmp/small/megamind_hal \\
        --scale 0.333
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from cape_track.benchmarks.warped_clip import write_video
from cape_track.model.errors import CapeError
from cape_track.model.support import KeypointFile
from cape_track.tracker.sources import read_frames
from cape_track.tracker.tracks import Tracks


def scaled_points(xy: np.ndarray, factor: float) -> np.ndarray:
    """Frame px under an image resize by `factor` (pixel centres at integers: the corners stay the corners)."""
    return (xy + 0.5) * factor - 0.5


def even_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """The scaled (width, height), rounded to even numbers (H.264 4:2:0), at least 2."""
    return tuple(max(2, 2 * round(side * scale / 2)) for side in (width, height))  # type: ignore[return-value]


def write_scaled(clip: Path, out: Path, scale: float) -> dict[str, Path]:
    """Write `out`/clip.mp4, reference.json and every support_fNNN.png/.json of the folder `clip`, downscaled by
    `scale` (INTER_AREA, as a camera's own downscaling averages). The reference keeps its frame indices and
    times; x and y scale by the exact size ratios of the rounded even size. A support's image is frame NNN of the
    new clip, decoded."""
    if not 0.0 < scale <= 1.0:
        raise ValueError(f"scale must be in (0, 1], got {scale}")
    # Everything is read and checked before anything is written: a bad input leaves no half-made folder.
    frames, _, fps = read_frames(clip / "clip.mp4")
    reference = Tracks.read(clip / "reference.json")
    shots: dict[str, tuple[int, KeypointFile]] = {}
    for keypoints in sorted(clip.glob("support_f*.json")):
        match = re.fullmatch(r"support_f(\d+)", keypoints.stem)
        if match is None or int(match[1]) >= len(frames):
            raise ValueError(f"{keypoints}: not named support_fNNN after a frame of the clip")
        shots[keypoints.stem] = int(match[1]), KeypointFile.load(keypoints)
    height, width = frames[0].shape[:2]
    size = even_size(width, height, scale)
    factor = np.array([size[0] / width, size[1] / height])
    out.mkdir(parents=True, exist_ok=True)
    paths = {"video": out / "clip.mp4", "reference": out / "reference.json"}
    write_video(paths["video"], [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames], fps)
    replace(reference, xy=scaled_points(reference.xy, factor), width=size[0], height=size[1]).write(paths["reference"])
    small, _, _ = read_frames(paths["video"])  # a support is a frame of the clip as the tracker decodes it
    for stem, (index, shot) in shots.items():
        paths[stem] = out / f"{stem}.png"
        cv2.imwrite(str(paths[stem]), cv2.cvtColor(small[index], cv2.COLOR_RGB2BGR))
        replace(shot, keypoints=scaled_points(shot.keypoints, factor)).save(out / f"{stem}.json")
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m cape_track.benchmarks.scaled_clip", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--clip", type=Path, required=True, help="clip folder (clip.mp4, reference.json, support_f*)")
    p.add_argument("--out", type=Path, required=True, help="folder for the downscaled clip, reference and supports")
    p.add_argument("--scale", type=float, required=True, help="size factor in (0, 1], e.g. 0.333")
    args = p.parse_args(argv)
    try:
        paths = write_scaled(args.clip, args.out, args.scale)
    except (CapeError, ValueError, OSError) as exc:
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        return 2
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

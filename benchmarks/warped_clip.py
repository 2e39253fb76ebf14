"""A generated clip with exact ground truth, for choosing tracker settings without touching the real evaluation clip.

A held-out photo (one the default model never trained on) moves through a smooth random trajectory of homographies
(scale, rotation, perspective, shift) and smooth elastic bends, with slow lighting changes, and is written as an
H.264 clip with its reference tracks (DESIGN.md's tracks format) and two supports: one from the first frame and one
from a frame three quarters in. Tracker settings are compared here rather than on the real `carphone` evaluation clip.

    python -m cape_track.benchmarks.warped_clip --out /tmp/warped --photo coffee --seed 0
    python -m cape_track.benchmarks.pck tracks --video /tmp/warped/clip.mp4 --reference /tmp/warped/reference.json \\
        --support /tmp/warped/support_f000.png --support /tmp/warped/support_f090.png
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from cape_track.model.support import KeypointFile
from cape_track.tracker.sources import read_frames
from cape_track.tracker.tracks import Tracks
from cape_track.training.views import VAL_PHOTOS, load_photo, sample_bilinear

NAMES_PREFIX = "p"


@dataclass(frozen=True)
class ClipConfig:
    frames: int = 120
    size: tuple[int, int] = (320, 240)  # (width, height) of the clip
    keypoints: int = 10
    object_side: float = 0.45  # side of the photo region the keypoints are on, fraction of the clip's height
    key_every: int = 30  # frames between random key poses (cosine-interpolated in between)
    max_rotation: float = 25.0  # degrees from upright at a key pose
    scale_range: tuple[float, float] = (0.75, 1.3)
    max_shift: float = 0.25  # of the clip's smaller side
    perspective: float = 0.0008  # per px of the photo region
    elastic: float = 0.04  # std of the elastic control-point displacements, fraction of the object side
    fps: float = 30.0


def _smooth(keys: np.ndarray, frames: int, every: int) -> np.ndarray:
    """[K, D] key values -> [frames, D], cosine-interpolated (zero velocity at each key: natural stops and starts)."""
    t = np.arange(frames) / every
    i = np.minimum(t.astype(int), len(keys) - 2)
    w = (1 - np.cos(np.pi * (t - i))) / 2
    return keys[i] * (1 - w)[:, None] + keys[i + 1] * w[:, None]


def make_clip(photo: np.ndarray, config: ClipConfig, rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray]:
    """Frames [T] x [H, W, 3] RGB and the exact keypoint positions [T, N, 2] (frame px)."""
    c = config
    width, height = c.size
    side = c.object_side * height
    ph, pw = photo.shape[:2]
    region = min(ph, pw) * rng.uniform(0.35, 0.55)  # photo px shown as the object
    x0, y0 = rng.uniform(0, pw - region), rng.uniform(0, ph - region)
    gray = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
    mask = np.zeros_like(gray)
    mask[int(y0 + 0.1 * region) : int(y0 + 0.9 * region), int(x0 + 0.1 * region) : int(x0 + 0.9 * region)] = 255
    corners = cv2.goodFeaturesToTrack(gray, c.keypoints, 0.01, region / 8, mask=mask)
    if corners is None or len(corners) < 2:
        raise ValueError("the photo region has fewer than two corners to track (use a textured photo)")
    points = corners.reshape(-1, 2).astype(np.float64)  # photo px
    keys = c.frames // c.key_every + 2
    angle = rng.uniform(-c.max_rotation, c.max_rotation, keys)
    scale = np.exp(rng.uniform(*np.log(c.scale_range), keys))
    shift = rng.uniform(-c.max_shift, c.max_shift, (keys, 2)) * height
    tilt = rng.uniform(-c.perspective, c.perspective, (keys, 2)) / (side / region)
    bend = rng.normal(0.0, c.elastic * region, (keys, 4 * 4 * 2))
    light = rng.uniform(0.8, 1.2, (keys, 1)) * rng.uniform(0.95, 1.05, (keys, 3))  # brightness, colour cast
    params = _smooth(np.column_stack([angle, scale, shift, tilt, bend, light]), c.frames, c.key_every)
    to_object = np.array([[side / region, 0, 0], [0, side / region, 0], [0, 0, 1]]) @ np.array(
        [[1, 0, -(x0 + region / 2)], [0, 1, -(y0 + region / 2)], [0, 0, 1]]
    )
    frames, tracks = [], np.zeros((c.frames, len(points), 2))
    for t, p in enumerate(params):
        a, s = math.radians(p[0]), p[1]
        pose = np.array([[s * math.cos(a), -s * math.sin(a), 0], [s * math.sin(a), s * math.cos(a), 0], [0, 0, 1]])
        pose[2, :2] = p[4:6]
        place = np.array([[1, 0, width / 2 + p[2]], [0, 1, height / 2 + p[3]], [0, 0, 1]])
        h = place @ pose @ to_object  # photo px -> frame px, before the bend
        field = cv2.resize(p[6:38].reshape(4, 4, 2).astype(np.float32), (pw, ph), interpolation=cv2.INTER_CUBIC)
        # The bend moves photo content: the frame shows photo(q + field(q)), so a photo point x sits at the q with
        # q + field(q) = x (a fixed point, found by iteration as in training.views._elastic).
        grid = np.stack(np.meshgrid(np.arange(pw), np.arange(ph)), axis=-1).astype(np.float32) + field
        bent = cv2.remap(photo, grid[..., 0], grid[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        frame = cv2.warpPerspective(bent, h, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        frames.append(np.clip(frame * p[38:41], 0, 255).astype(np.uint8))
        q = points.copy()
        for _ in range(10):
            q = points - sample_bilinear(field, q)
        tracks[t] = cv2.perspectiveTransform(q[None], h)[0]
    return frames, tracks


def write_video(path: Path, frames: Sequence[np.ndarray], fps: float) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "16"}
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


def write_benchmark(out: Path, photo_name: str, seed: int, config: ClipConfig | None = None) -> dict[str, Path]:
    """Write clip.mp4, reference.json, support_fNNN.png/.json (frames 0 and 3/4 in) under `out`."""
    config = config or ClipConfig()
    out.mkdir(parents=True, exist_ok=True)
    frames, tracks = make_clip(load_photo(photo_name), config, np.random.default_rng(seed))
    video = out / "clip.mp4"
    write_video(video, frames, config.fps)
    names = [f"{NAMES_PREFIX}{i}" for i in range(tracks.shape[1])]
    reference = Tracks(
        tuple(names),
        np.arange(len(tracks)),
        tracks,
        np.ones(tracks.shape[:2], bool),
        extra={"source": f"generated: skimage.data.{photo_name}, seed {seed}"},
    )
    paths = {"video": video, "reference": out / "reference.json"}
    reference.write(paths["reference"])
    images, _, _ = read_frames(video)  # the frames as the tracker sees them (after H.264): supports are clip frames
    for t in (0, 3 * config.frames // 4):
        image_path = out / f"support_f{t:03d}.png"
        cv2.imwrite(str(image_path), cv2.cvtColor(images[t], cv2.COLOR_RGB2BGR))
        KeypointFile.from_arrays(tracks[t], names=names).save(image_path.with_suffix(".json"))
        paths[f"support_f{t:03d}"] = image_path
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m cape_track.benchmarks.warped_clip", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--out", type=Path, required=True, help="folder for the clip, reference and supports")
    p.add_argument("--photo", default=VAL_PHOTOS[0], choices=VAL_PHOTOS, help="held-out photo to animate")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        paths = write_benchmark(args.out, args.photo, args.seed)
    except OSError as exc:
        print(
            f"{p.prog}: error: cannot write under {args.out} ({exc.strerror or exc}) (choose a writable --out)",
            file=sys.stderr,
        )
        return 2
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

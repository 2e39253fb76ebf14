"""Generated test media: an H.264 clip (PyAV) of a textured square moving along a known path, so the true keypoint
positions of every frame are known, plus the matching support files (ref.png + ref.json), and the fixtures
`make_clip` and friends, imported by the tests that need them."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

SKELETON = ((0, 1), (1, 2), (2, 3), (3, 0), (0, 4), (2, 4))
NAMES = ("top_left", "top_right", "bottom_right", "bottom_left", "centre")


@dataclass(frozen=True)
class Clip:
    path: Path
    keypoints: np.ndarray  # [T, N, 2] frame px (display orientation) of the square's corners and centre
    times: np.ndarray  # [T] seconds, as written in the stream
    fps: float
    size: tuple[int, int]  # (W, H) in display orientation
    seed: int
    object_fraction: float = 0.35  # the square's side, fraction of the frame's shorter side
    names: tuple[str, ...] = NAMES
    skeleton: tuple[tuple[int, int], ...] = SKELETON

    @property
    def frames(self) -> int:
        return len(self.times)

    def render(self, index: int) -> np.ndarray:
        """The exact (pre-compression) RGB image of frame `index`, [H, W, 3] uint8."""
        return _render(self.size, self.seed, _pose(index, self.frames, self.size), self.object_fraction)[0]


def write_clip(
    folder: Path,
    frames: int = 24,
    size: tuple[int, int] = (160, 120),
    path: Path | None = None,
    fps: float = 25.0,
    times: list[float] | None = None,
    rotation: int = 0,
    seed: int = 0,
    object_fraction: float = 0.35,
) -> Clip:
    """Write an MP4 of `frames` frames; `times` (seconds) makes it variable frame rate, `rotation` (a multiple of
    90, counter-clockwise) stores the frames turned the other way plus a display matrix, so decoding with rotation
    honoured gives back the `size` picture."""
    width, height = size
    path = Path(path) if path is not None else Path(folder) / "clip.mp4"
    times_s = np.asarray(times if times is not None else [i / fps for i in range(frames)], dtype=np.float64)
    if len(times_s) != frames:
        raise ValueError("times must have one entry per frame")
    turns = (rotation // 90) % 4
    coded_w, coded_h = (height, width) if turns % 2 else (width, height)
    keypoints = np.zeros((frames, len(NAMES), 2))
    time_base = Fraction(1, 1000)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = coded_w, coded_h, "yuv420p"
        stream.codec_context.time_base = time_base
        stream.options = {"crf": "12", "preset": "ultrafast"}
        if turns:
            stream.set_display_rotation(turns * 90)
        for i in range(frames):
            image, keypoints[i] = _render(size, seed, _pose(i, frames, size), object_fraction)
            coded = np.ascontiguousarray(np.rot90(image, k=-turns))
            frame = av.VideoFrame.from_ndarray(coded, format="rgb24")
            frame.pts, frame.time_base = round(times_s[i] * 1000), time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return Clip(path, keypoints, times_s, fps, size, seed, object_fraction)


@pytest.fixture
def make_clip(tmp_path: Path) -> Callable[..., Clip]:
    """`make_clip(frames=24, size=(160, 120), ...)` writes a clip (see `write_clip`) under the test's tmp_path."""
    return lambda **kwargs: write_clip(tmp_path, **kwargs)


def write_support(clip: Clip, folder: Path, index: int = 0, name: str = "ref") -> Path:
    """Frame `index` of the clip as `name.png` with its keypoints in `name.json` beside it; returns the image."""
    folder.mkdir(parents=True, exist_ok=True)
    image_path = folder / f"{name}.png"
    cv2.imwrite(str(image_path), cv2.cvtColor(clip.render(index), cv2.COLOR_RGB2BGR))
    spec = {
        "keypoints": clip.keypoints[index].round(3).tolist(),
        "names": list(clip.names),
        "visible": [1] * len(clip.names),
        "skeleton": [list(edge) for edge in clip.skeleton],
    }
    (folder / f"{name}.json").write_text(json.dumps(spec))
    return image_path


def _pose(index: int, frames: int, size: tuple[int, int]) -> tuple[float, float, float]:
    """Centre (x, y) in frame px and angle in degrees of the square at frame `index`: left to right on a wave."""
    width, height = size
    u = index / max(frames - 1, 1)
    cx = width * (0.3 + 0.4 * u)
    cy = height * (0.5 + 0.12 * math.sin(2 * math.pi * u))
    return cx, cy, 8.0 * math.sin(math.pi * u)


def _render(
    size: tuple[int, int], seed: int, pose: tuple[float, float, float], fraction: float = 0.35
) -> tuple[np.ndarray, np.ndarray]:
    """Paint the square (side `fraction` of the short side) over a static textured background; image + [5, 2]."""
    width, height = size
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    background = np.stack([40 + 60 * xs / width, 50 + 50 * ys / height, 90 + 0 * xs], axis=-1)
    background += rng.normal(0, 6, (height, width, 1))
    side = max(8, round(fraction * min(width, height)))
    sprite = np.zeros((side, side, 3))
    half = side // 2
    sprite[:half, :half], sprite[:half, half:] = (230, 60, 50), (60, 200, 70)
    sprite[half:, :half], sprite[half:, half:] = (250, 220, 40), (60, 90, 240)
    sprite += cv2.GaussianBlur(rng.normal(0, 40, (side, side, 3)), (0, 0), 1.0)
    cx, cy, angle = pose
    matrix = cv2.getRotationMatrix2D(((side - 1) / 2, (side - 1) / 2), -angle, 1.0)
    matrix[:, 2] += (cx - (side - 1) / 2, cy - (side - 1) / 2)
    mask = cv2.warpAffine(np.ones((side, side), np.float32), matrix, (width, height), flags=cv2.INTER_LINEAR)
    painted = cv2.warpAffine(sprite.astype(np.float32), matrix, (width, height), flags=cv2.INTER_LINEAR)
    image = background * (1 - mask[..., None]) + painted
    corners = np.array([[0, 0], [side - 1, 0], [side - 1, side - 1], [0, side - 1], [(side - 1) / 2, (side - 1) / 2]])
    keypoints = corners @ matrix[:, :2].T + matrix[:, 2]
    return np.clip(image, 0, 255).round().astype(np.uint8), keypoints


class FakeCapture:
    """cv2.VideoCapture stand-in: frame k is filled with k; `limit` frames, then reads fail."""

    def __init__(
        self,
        index: int,
        opened: bool = True,
        limit: int = 1000,
        period: float = 0.001,
        size: tuple[int, int] = (32, 24),
    ) -> None:
        self.opened, self.limit, self.period, self.size = opened, limit, period, size
        self.count = 0
        self.released = threading.Event()

    def isOpened(self) -> bool:  # noqa: N802
        return self.opened

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self.count >= self.limit:
            return False, None
        time.sleep(self.period)
        image = np.full((self.size[1], self.size[0], 3), self.count % 256, np.uint8)
        self.count += 1
        return True, image

    def get(self, prop: int) -> float:
        return 30.0 if prop == cv2.CAP_PROP_FPS else 0.0

    def release(self) -> None:
        self.released.set()

"""Optical flow between consecutive frames: each frame prepared once (grey, at flow resolution, with a thumbnail
for judging scene cuts) and pyramidal Lucas-Kanade with a forward-backward check. The smoother's motion input and
the keyframe decisions use it; a source reading ahead can prepare the frames in its own thread (`Frame.flow`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from cape_track.model.transforms import halved

FLOW_MAX_SIDE = 640  # px: optical flow runs on frames downscaled to at most this longer side
FLOW_WINDOW = (21, 21)  # px, LK window per pyramid level
FLOW_LEVELS = 3  # pyramid levels above the flow image
THUMBNAIL = 32  # px, side of the frame thumbnail that scene cuts are judged on
# (OpenCV 5's Python binding takes images, not prebuilt pyramids, so each LK call builds its own.)


@dataclass(frozen=True)
class FlowImage:
    """A frame prepared once for optical flow: grey, at flow resolution. Each frame is the "next" image of one step
    and the "previous" of the following one, so it is converted and resized once, not twice."""

    shape: tuple[int, int]  # (H, W) of the frame
    factor: float  # flow px per frame px (<= 1: large frames are tracked downscaled)
    gray: np.ndarray  # [h, w] uint8
    thumbnail: np.ndarray  # [THUMBNAIL, THUMBNAIL] float32 grey in [0, 1]: the whole frame at a glance (cuts)

    @classmethod
    def from_rgb(cls, image: np.ndarray) -> FlowImage:
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        factor = min(1.0, FLOW_MAX_SIDE / max(gray.shape))
        if factor < 1.0:  # the pyramids dominate the cost (about 8 ms per 720p frame at full size)
            size = (round(gray.shape[1] * factor), round(gray.shape[0] * factor))
            gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        # Halved to within 4x of the thumbnail first: one INTER_AREA resize by an arbitrary factor cost 0.55 ms on a
        # 640 px flow image, the halvings and the rest 0.09 ms, with thumbnail changes within 0.001 of each other.
        halvings = max(0, int(math.log2(min(gray.shape) / THUMBNAIL)) - 1)
        small = halved(gray, halvings)
        thumbnail = cv2.resize(small, (THUMBNAIL, THUMBNAIL), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
        return cls(image.shape[:2], factor, gray, thumbnail)

    def change(self, other: FlowImage) -> float:
        """How different two frames look as a whole, in [0, 1]: the mean absolute difference of the thumbnails.
        Consecutive frames of one shot differ by ~0.01-0.05 (moving objects, a panning camera), a cut by ~0.1-0.4."""
        return float(np.abs(self.thumbnail - other.thumbnail).mean())


def optical_flow(prev: FlowImage, image: FlowImage, xy: np.ndarray, max_error: float) -> np.ndarray:
    """Displacement [M, 2] (frame px) of points `xy` [M, 2] from `prev` to `image` by pyramidal Lucas-Kanade, NaN
    where the forward-backward check disagrees by more than `max_error` frame px or the point leaves the frame."""
    if prev.shape != image.shape:
        raise ValueError(f"optical flow between frames of different sizes {prev.shape} and {image.shape}")
    params = dict(
        winSize=FLOW_WINDOW,
        maxLevel=FLOW_LEVELS,
        criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 20, 0.03),
    )
    f = image.factor
    p0 = (xy * f).astype(np.float32).reshape(-1, 1, 2)
    p1, ok1, _ = cv2.calcOpticalFlowPyrLK(prev.gray, image.gray, p0, None, **params)
    back, ok2, _ = cv2.calcOpticalFlowPyrLK(image.gray, prev.gray, p1, None, **params)
    height, width = image.shape
    p1 = p1.reshape(-1, 2).astype(np.float64) / f
    back = back.reshape(-1, 2).astype(np.float64) / f
    good = (ok1.ravel() == 1) & (ok2.ravel() == 1) & (np.linalg.norm(back - xy, axis=1) <= max_error)
    good &= (p1[:, 0] >= 0) & (p1[:, 0] <= width - 1) & (p1[:, 1] >= 0) & (p1[:, 1] <= height - 1)
    return np.where(good[:, None], p1 - xy, np.nan)

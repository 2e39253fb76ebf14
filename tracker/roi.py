"""ROI follow: which square of the next frame the network sees, from the previous keypoints, and which square of
each support shot it sees (pure functions).

Boxes are `model.transforms.SquareBox`es in frame px; the crop and the maps back to the frame are model/transforms.py's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cape_track.model.support import SupportSet
from cape_track.model.transforms import SquareBox, crop_to_input, frame_to_input


@dataclass(frozen=True)
class RoiConfig:
    margin: float = 0.3  # added on each side, as a fraction of the keypoints' extent
    min_side: float = 0.12  # smallest crop side, as a fraction of the frame's longer side
    min_visible: float = 0.4  # fraction of the keypoints that must be visible to follow; else whole frame
    # Scale matching: the keypoints' extent should fill this fraction of the crop, the fraction they fill in the
    # letterboxed support image, so the network sees the object at the scale it was shown (its features are not
    # scale-invariant: zooming in on a small object hurts). None = use `margin`. The tracker's ROI takes it from
    # the support (`TrackSupport.object_fraction`).
    object_fraction: float | None = None
    # Supports whose keypoints span less than this fraction of the letterboxed image are cropped around them until
    # they span it (`zoom_support`), and every query crop then follows at that scale: a face filling a fifth of a
    # small frame is otherwise seen by the stride-16 features as a few cells (measured: carphone PCK@0.1 57 -> 93;
    # generated clips 40 -> 65, and 62 / 53 at 0.4 / 0.6). Larger supports are used as given. None: never zoom.
    min_object_fraction: float | None = 0.5


def whole_frame(width: int, height: int) -> SquareBox:
    """The start, and the fallback after the track is lost: the whole frame letterboxed into a square."""
    return SquareBox.letterbox(width, height)


def follow(
    xy: np.ndarray,
    visible: np.ndarray,
    width: int,
    height: int,
    config: RoiConfig,
    velocity: np.ndarray | None = None,
    ahead: float = 0.0,
) -> SquareBox:
    """The crop for a frame `ahead` frames after the keypoints `xy` [N, 2] (frame px) with `velocity` [N, 2]
    (px per frame): a square around the visible keypoints and their extrapolated positions, sized by
    `object_fraction` (or widened by the margin), at least `min_side`, moved inside the frame (a crop wider than the
    frame is centred and padded). Too few visible keypoints: the whole frame."""
    visible = np.asarray(visible, bool)
    if visible.sum() < max(1, math.ceil(config.min_visible * len(visible))):
        return whole_frame(width, height)
    points = xy[visible]
    if velocity is not None and ahead:
        points = np.concatenate([points, points + velocity[visible] * ahead])
    low, high = points.min(axis=0), points.max(axis=0)
    extent = float((high - low).max())
    longest = max(width, height)
    if config.object_fraction:
        side = min(max(extent / config.object_fraction, config.min_side * longest), 2.0 * longest)
    else:
        side = min(max(extent * (1 + 2 * config.margin), config.min_side * longest), longest)
    cx, cy = (low + high) / 2.0
    return SquareBox(_clamp(cx - side / 2, side, width), _clamp(cy - side / 2, side, height), side)


def _clamp(start: float, side: float, extent: int) -> float:
    """Shift a window start so [start, start + side] lies in [0, extent]; centred when it is wider."""
    if side >= extent:
        return (extent - side) / 2.0
    return min(max(start, 0.0), extent - side)


def support_fraction(keypoints: np.ndarray, visible: np.ndarray, sizes: list[tuple[int, int]]) -> float | None:
    """The fraction of the letterboxed support the keypoints span (mean over shots): `RoiConfig.object_fraction`.

    Args: keypoints `[K, N, 2]` image px, visible `[K, N]`, sizes the (width, height) of each shot.
    None when the keypoints span too little to define a scale (one point, or points nearly on top of each other).
    """
    fractions = []
    for xy, vis, (w, h) in zip(keypoints, visible, sizes):
        if vis.sum() >= 2:
            fractions.append(float(np.ptp(xy[vis], axis=0).max()) / max(w, h))
    fraction = float(np.mean(fractions)) if fractions else 0.0
    return fraction if fraction >= 0.05 else None


def zoom_support(support: SupportSet, min_fraction: float, input_size: int) -> SupportSet:
    """`support` with every shot whose visible keypoints span less than `min_fraction` of its letterboxed image
    replaced by a square crop around them where they span `min_fraction`, resampled to `input_size` (the network
    then sees the support at the same scale it sees the query crops; see `RoiConfig.min_object_fraction`)."""
    images, keypoints = list(support.images), support.keypoints.copy()
    for k, (image, xy, vis) in enumerate(zip(support.images, support.keypoints, support.visible, strict=True)):
        if vis.sum() < 2:
            continue
        low, high = xy[vis].min(axis=0), xy[vis].max(axis=0)
        extent = float((high - low).max())
        if extent <= 0 or extent / max(image.shape[:2]) >= min_fraction:
            continue
        cx, cy = (low + high) / 2.0
        box = SquareBox.around(float(cx), float(cy), extent / min_fraction)
        images[k] = crop_to_input(image, box, input_size)
        keypoints[k] = frame_to_input(xy, box, input_size)
    return SupportSet(tuple(images), keypoints, support.visible, support.names, support.skeleton)

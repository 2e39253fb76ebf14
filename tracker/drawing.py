"""THE drawing code: keypoints with per-keypoint colours, the skeleton, low scores faded, and text labels. Used by
the video and window sinks and by the Streamlit page; images are RGB uint8 and are drawn on in place."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

_SHIFT = 4  # OpenCV fixed-point bits, so points land on sub-pixel positions
_ONE = 1 << _SHIFT
_GREY = np.array([128.0, 128.0, 128.0])


def keypoint_colors(num_keypoints: int) -> np.ndarray:
    """[N, 3] uint8 RGB: evenly spaced saturated hues, so keypoint i has the same colour in every view."""
    hues = (np.arange(num_keypoints) * 180 / max(num_keypoints, 1)).astype(np.uint8)  # OpenCV hue is 0..179
    hsv = np.stack([hues, np.full_like(hues, 230), np.full_like(hues, 255)], axis=-1)[None]
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]


def draw_pose(
    image: np.ndarray,
    xy: np.ndarray,
    scores: np.ndarray | None = None,
    visible: np.ndarray | None = None,
    skeleton: Sequence[Sequence[int]] = (),
    names: Sequence[str] | None = None,
    colors: np.ndarray | None = None,
) -> np.ndarray:
    """Draw keypoints `xy` [N, 2] (image px) on `image` [H, W, 3] RGB uint8, in place; returns `image`.

    Each keypoint is washed towards grey as its score [N] in [0, 1] drops; a keypoint that is not visible is drawn
    as a thin ring at its last position, and skeleton edges touching it are left out.
    """
    n = len(xy)
    scores = np.ones(n) if scores is None else np.clip(np.asarray(scores, np.float64), 0.0, 1.0)
    visible = np.ones(n, bool) if visible is None else np.asarray(visible, bool)
    colors = keypoint_colors(n) if colors is None else np.asarray(colors)
    opacity = 0.25 + 0.75 * scores  # [N]
    faded = colors * opacity[:, None] + _GREY * (1 - opacity[:, None])  # [N, 3]
    radius = max(2, round(min(image.shape[:2]) / 100))
    width = max(1, radius // 2)
    fixed = np.round(np.nan_to_num(xy) * _ONE).astype(np.int64)
    for i, j in skeleton:
        if visible[i] and visible[j]:
            color = (faded[i] + faded[j]) / 2
            cv2.line(image, tuple(fixed[i]), tuple(fixed[j]), color.tolist(), width, cv2.LINE_AA, _SHIFT)
    for k in range(n):
        center, color = tuple(fixed[k]), faded[k].tolist()
        if visible[k]:
            cv2.circle(image, center, (radius + 1) * _ONE, (0, 0, 0), -1, cv2.LINE_AA, _SHIFT)
            cv2.circle(image, center, radius * _ONE, color, -1, cv2.LINE_AA, _SHIFT)
        else:
            cv2.circle(image, center, radius * _ONE, color, 1, cv2.LINE_AA, _SHIFT)
        if names is not None:
            draw_text(image, names[k], (int(xy[k][0]) + radius + 2, int(xy[k][1]) - radius - 2), scale=0.35)
    return image


def draw_text(image: np.ndarray, text: str, origin: tuple[int, int] = (8, 20), scale: float = 0.5) -> np.ndarray:
    """White text with a dark outline at `origin` (baseline left, px), readable on any background; in place."""
    for color, thickness in (((0, 0, 0), 3), ((255, 255, 255), 1)):
        cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, color, thickness, cv2.LINE_AA)
    return image

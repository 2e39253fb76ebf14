"""THE drawing code: keypoints with per-keypoint colours, the skeleton, low scores faded, names, and text labels.
Used by the video and window sinks and by the Streamlit page; images are RGB uint8 and are drawn on in place."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

_SHIFT = 4  # OpenCV fixed-point bits, so points land on sub-pixel positions
_ONE = 1 << _SHIFT
_GOLDEN = 0.6180339887498949  # hue step: consecutive keypoints far apart on the colour wheel, for any N
MIN_OPACITY = 0.15  # a visible keypoint of score 0 is drawn this opaque over the image


def keypoint_colors(num_keypoints: int) -> np.ndarray:
    """[N, 3] uint8 RGB. Keypoint i's colour depends on i alone (golden-ratio hue steps, at full hue resolution),
    so it stays the same as keypoints are added, in every view (page, video, plots) and for every N."""
    hues = (np.arange(num_keypoints) * _GOLDEN) % 1.0 * 360.0  # float HSV: hue in degrees
    hsv = np.stack([hues, np.full_like(hues, 0.9), np.ones_like(hues)], axis=-1)[None].astype(np.float32)
    return np.round(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0] * 255).astype(np.uint8)


def hex_color(rgb: Sequence[int]) -> str:
    """`#rrggbb` for an RGB triple (charts and HTML use the video's colours)."""
    r, g, b = (int(c) for c in rgb)
    return f"#{r:02x}{g:02x}{b:02x}"


def draw_pose(
    image: np.ndarray,
    xy: np.ndarray,
    scores: np.ndarray | None = None,
    visible: np.ndarray | None = None,
    skeleton: Sequence[Sequence[int]] = (),
    names: Sequence[str] | None = None,
    colors: np.ndarray | None = None,
    radius: int | None = None,
    rings: bool = False,
) -> np.ndarray:
    """Draw keypoints `xy` [N, 2] (image px) on `image` [H, W, 3] RGB uint8, in place; returns `image`.

    A keypoint's opacity over the image follows its score [N] in [0, 1] (from `MIN_OPACITY` at 0 to opaque at 1),
    so a point scored 0.3 is visibly see-through; a keypoint that is not visible is not drawn, nor are the edges
    touching it. `names` are written beside the visible points. `radius` (px; default 1 % of the shorter side)
    sets the dots, the lines and the text, for a picture shown smaller than its pixels (the page). `rings`: draw a
    hidden keypoint as a thin ring instead of nothing, where it can still be edited (the page's canvases).
    """
    n = len(xy)
    scores = np.ones(n) if scores is None else np.clip(np.nan_to_num(np.asarray(scores, np.float64)), 0.0, 1.0)
    visible = np.ones(n, bool) if visible is None else np.asarray(visible, bool)
    visible = visible & np.isfinite(np.asarray(xy, np.float64)).all(axis=1)
    colors = keypoint_colors(n) if colors is None else np.asarray(colors, np.float64)
    opacity = MIN_OPACITY + (1 - MIN_OPACITY) * scores  # [N]
    height, width = image.shape[:2]
    radius = radius or max(2, round(min(height, width) / 100))
    line = max(1, radius // 2)
    fixed = np.round(np.nan_to_num(xy) * _ONE).astype(np.int64)
    under = _colors_under(image, xy)  # [N, 3] the image where each point lies: what a faded point blends into
    seen = opacity[:, None] * colors + (1 - opacity[:, None]) * under  # [N, 3]
    rim = (1 - opacity[:, None]) * under  # a dark outline, as faded as its point
    for i, j in skeleton:
        if visible[i] and visible[j]:
            color = (seen[i] + seen[j]) / 2
            cv2.line(image, tuple(fixed[i]), tuple(fixed[j]), color.tolist(), line, cv2.LINE_AA, _SHIFT)
    for k in np.flatnonzero(visible):
        center = tuple(fixed[k])
        cv2.circle(image, center, (radius + 1) * _ONE, rim[k].tolist(), -1, cv2.LINE_AA, _SHIFT)
        cv2.circle(image, center, radius * _ONE, seen[k].tolist(), -1, cv2.LINE_AA, _SHIFT)
    if rings:
        for k in np.flatnonzero(~visible & np.isfinite(np.asarray(xy, np.float64)).all(axis=1)):
            cv2.circle(image, tuple(fixed[k]), radius * _ONE, colors[k].tolist(), 1, cv2.LINE_AA, _SHIFT)
    if names is not None:
        scale = max(0.35, radius / 14)
        for k in np.flatnonzero(visible):
            origin = (int(xy[k][0]) + radius + 2, int(xy[k][1]) - radius - 2)
            draw_text(image, names[k], origin, scale=scale)
    return image


def draw_text(image: np.ndarray, text: str, origin: tuple[int, int] = (8, 20), scale: float = 0.5) -> np.ndarray:
    """White text with a dark outline at `origin` (baseline left, px), readable on any background; in place."""
    for color, thickness in (((0, 0, 0), 3), ((255, 255, 255), 1)):
        cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, color, thickness, cv2.LINE_AA)
    return image


def _colors_under(image: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """[N, 3] float: the pixel under each point (clamped into the image)."""
    height, width = image.shape[:2]
    points = np.nan_to_num(np.asarray(xy, np.float64))
    cols = np.clip(np.round(points[:, 0]).astype(np.int64), 0, width - 1)
    rows = np.clip(np.round(points[:, 1]).astype(np.int64), 0, height - 1)
    return image[rows, cols].astype(np.float64)

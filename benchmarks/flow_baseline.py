"""The accuracy baseline: a plain pyramidal Lucas-Kanade tracker (OpenCV, frame to frame) started from the support
keypoints on the frame the support image was taken from, run forwards to the end and backwards to the start."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class FlowConfig:
    """OpenCV's defaults for `calcOpticalFlowPyrLK`: the baseline is deliberately the plain, untuned tracker."""

    win_size: int = 21  # px, square search window per pyramid level
    max_level: int = 3  # pyramid levels above the full image
    iterations: int = 30
    epsilon: float = 0.01


def track_optical_flow(
    frames: Sequence[np.ndarray], start: int, xy_start: np.ndarray, config: FlowConfig | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Follow `xy_start` [N, 2] (frame px on `frames[start]`) through RGB `frames` [T] x [H, W, 3].

    Returns positions [T, N, 2] frame px and visible [T, N] bool. A point OpenCV loses (status 0, or leaving the
    frame) is frozen where it was last seen and reported not visible from then on, as a plain tracker would.
    """
    if not 0 <= start < len(frames):
        raise ValueError(f"start frame {start} outside the {len(frames)} frames")
    c = config or FlowConfig()
    params = dict(
        winSize=(c.win_size, c.win_size),
        maxLevel=c.max_level,
        criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, c.iterations, c.epsilon),
    )
    gray = [cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in frames]
    n = len(xy_start)
    xy = np.zeros((len(frames), n, 2))
    visible = np.zeros((len(frames), n), bool)
    xy[start] = xy_start
    visible[start] = True
    for step in (1, -1):  # forwards to the end, then backwards to the first frame
        for t in range(start + step, len(frames) if step == 1 else -1, step):
            prev, alive = xy[t - step], visible[t - step]
            xy[t] = prev
            if not alive.any():
                continue
            p0 = prev[alive].astype(np.float32).reshape(-1, 1, 2)
            p1, status, _ = cv2.calcOpticalFlowPyrLK(gray[t - step], gray[t], p0, None, **params)
            p1 = p1.reshape(-1, 2).astype(np.float64)
            height, width = gray[t].shape
            inside = (p1[:, 0] >= 0) & (p1[:, 0] <= width - 1) & (p1[:, 1] >= 0) & (p1[:, 1] <= height - 1)
            found = (status.ravel() == 1) & inside
            moved = np.flatnonzero(alive)[found]
            xy[t, moved] = p1[found]
            visible[t, moved] = True
    return xy, visible

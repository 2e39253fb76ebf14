"""Baselines a user would reach for instead of the tracker, run on the same clip and support: plain nearest-neighbour
matching of the default model's own backbone features, and the support's keypoint layout fitted onto the reference
(the ceiling of any method that only moves the support's shape rigidly).

Both are given an advantage the tracker does not have: the crop around the object comes from the reference, per
frame (no tracking, no search), at the scale the tracker would use.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cape_track.model import CapeModel, SupportSet
from cape_track.model.matching import hypercolumns, sample_at
from cape_track.model.transforms import SquareBox, crop_to_input, input_to_frame, normalize_images
from cape_track.tracker.roi import support_fraction, zoom_support

LEVELS = {"16": (1,), "8+16": (0, 1)}  # which of the backbone's [stride-8, stride-16] levels are matched


def reference_boxes(reference_xy: np.ndarray, reference_visible: np.ndarray, fraction: float) -> list[SquareBox | None]:
    """Per frame, the square crop that shows the reference's visible keypoints at `fraction` of its side."""
    boxes: list[SquareBox | None] = []
    for xy, vis in zip(reference_xy, reference_visible, strict=True):
        if vis.sum() < 2:
            boxes.append(None)
            continue
        low, high = xy[vis].min(0), xy[vis].max(0)
        side = max(float((high - low).max()) / fraction, 8.0)
        boxes.append(SquareBox.around(*((low + high) / 2.0), side))
    return boxes


@torch.no_grad()
def nn_matching(
    model: CapeModel,
    support: SupportSet,
    frames: Sequence[np.ndarray],
    boxes: Sequence[SquareBox | None],
    levels: str = "8+16",
    batch: int = 8,
) -> np.ndarray:
    """Cosine nearest-neighbour matching per frame: keypoints `[T, N, 2]` frame px (NaN where no box)."""
    if not model.can_match:
        raise ValueError("nearest-neighbour matching needs a backbone with a stride-8 level (the default model)")
    s = model.input_size
    chosen = LEVELS[levels]
    support = zoom_support(support, 0.5, s)
    images, keypoints, visible = model.support_inputs(support)
    pyramid = model.backbone.pyramid(images)
    columns = hypercolumns([pyramid[i] for i in chosen])
    desc = sample_at(columns, keypoints, s)  # [K, N, D]
    weight = visible.to(desc)[..., None]
    desc = F.normalize((desc * weight).sum(0) / weight.sum(0).clamp(min=1.0), dim=-1)
    out = np.full((len(frames), support.num_keypoints, 2), np.nan)
    todo = [t for t, box in enumerate(boxes) if box is not None]
    for start in range(0, len(todo), batch):
        chunk = todo[start : start + batch]
        crops = np.stack([crop_to_input(frames[t], boxes[t], s) for t in chunk])
        pyramid = model.backbone.pyramid(normalize_images(crops).to(model.device))
        columns = hypercolumns([pyramid[i] for i in chosen])
        sim = torch.einsum("nd,bdhw->bnhw", desc, columns)
        h, w = sim.shape[-2:]
        flat = sim.flatten(2).argmax(-1).cpu().numpy()  # [B, N]
        stride = s / w
        xy_input = np.stack([flat % w, flat // w], -1) * stride + (stride - 1) / 2.0
        for i, t in enumerate(chunk):
            out[t] = input_to_frame(xy_input[i].astype(np.float64), boxes[t], s)
    return out


def layout_ceiling(support: SupportSet, reference_xy: np.ndarray, reference_visible: np.ndarray) -> np.ndarray:
    """The first shot's keypoint layout moved onto each reference frame by the least-squares similarity transform
    (an oracle fit on the reference itself): keypoints `[T, N, 2]` frame px."""
    src = support.keypoints[0]
    placed = support.visible[0]
    out = np.full(reference_xy.shape, np.nan)
    for t, (dst, vis) in enumerate(zip(reference_xy, reference_visible, strict=True)):
        use = vis & placed
        if use.sum() < 2:
            continue
        out[t] = _similarity_fit(src[use], dst[use], src)
    return out


def object_fraction(support: SupportSet, input_size: int) -> float:
    """The fraction of the crop the tracker gives the object (the zoomed support's), for the oracle crops."""
    zoomed = zoom_support(support, 0.5, input_size)
    sizes = [(im.shape[1], im.shape[0]) for im in zoomed.images]
    return support_fraction(zoomed.keypoints, zoomed.visible, sizes) or 0.5


def _similarity_fit(src: np.ndarray, dst: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Umeyama's least-squares similarity `src -> dst`, applied to `points`."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    za, zb = a[:, 0] + 1j * a[:, 1], b[:, 0] + 1j * b[:, 1]
    rot = (np.conj(za) @ zb) / max(float((np.abs(za) ** 2).sum()), 1e-12)
    zp = (points - mu_s) @ np.array([1.0, 1j])
    moved = rot * zp
    return np.stack([moved.real, moved.imag], -1) + mu_d

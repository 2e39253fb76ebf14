"""The keypoint finder of the default model: hypercolumn feature matching, pulled into place by the support's own
keypoint layout, refined below the feature stride.

Why it exists: on real clips the head trained on CPU added nothing over plain nearest-neighbour matching of its own
backbone's features, it saw only stride-16 cells, and it ignored the one thing that makes a photo of *another*
instance usable as a support: the geometry of the support's keypoints. The finder

1. describes every stride-8 cell by a hypercolumn (the stride-8 and stride-16 backbone levels, each unit-normalised,
   concatenated) and every support keypoint by the hypercolumn sampled under it (mean over the shots where it is
   placed: a keypoint unplaced on one shot is ignored for that shot only);
2. takes the few best local maxima of each keypoint's cosine-similarity map as candidates;
3. fits the support layout to the candidates robustly (RANSAC over pairs of keypoints: a similarity transform, then
   an affine least-squares refit on the inliers), so a right eye matched to the left eye or a chin dropped on the
   collar is pulled back by the other points;
4. places each keypoint at the best similarity near its fitted position (a quadratic distance penalty), refined to
   sub-cell precision by a soft-argmax over the 3x3 cells around it.

Only backbones with a finer feature level (timm models; the default EfficientNet-Lite0) have one; the paper's SwinV2
checkpoints keep the network's own prediction unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

MAX_RANSAC_KEYPOINTS = 24  # keypoints whose pairs seed the layout fit: 276 pairs x 4 candidate pairs at most


@dataclass(frozen=True)
class FinderConfig:
    candidates: int = 3  # local maxima kept per keypoint for the layout fit
    inlier_radius: float = 0.12  # RANSAC inlier distance, as a fraction of the fitted layout's extent
    layout_weight: float = 4.0  # similarity lost per (distance / extent)^2 away from the fitted position
    min_scale: float = 0.2  # plausible layout scales (query extent / support extent) during the fit
    max_scale: float = 5.0
    score_floor: float = 0.35  # cosine similarity mapped to score 0 (unrelated hypercolumns sit around 0.2-0.4)
    score_ceiling: float = 0.8  # ... and to score 1 (the same point across frames of a clip: 0.7-0.95)
    refine_temperature: float = 0.03  # soft-argmax temperature (cosine units) over the 3x3 cells around a pick
    # The support is also described rotated by these angles (degrees) and each cell matches its best rotation: the
    # backbone's features are not rotation-invariant, and a head rolls, a hand turns.
    rotations: tuple[float, ...] = (-30.0, 30.0)
    # Refine each placed keypoint at stride 4: inside its stride-8 cell (and half a cell around), the best match of
    # a stride-4+8+16 hypercolumn, then a soft-argmax there. The finer level only decides within the cell: which
    # cell is still decided at stride 8, where the features are more distinctive.
    fine: bool = False  # measured on the development set: no better overall (see README), so off

    @property
    def depth(self) -> int:
        """Backbone levels the finder reads, ending at the feature level: strides 8 + 16, and 4 when `fine`."""
        return 3 if self.fine else 2


@dataclass(frozen=True)
class MatchSupport:
    """What the finder needs from the support, computed once per stream (like `SupportEmbedding`)."""

    descriptors: torch.Tensor  # [N, R, D] unit hypercolumns of the support keypoints per rotation (zeros: unplaced)
    placed: np.ndarray  # [N] bool: placed on at least one shot
    layout: np.ndarray  # [N, 2] input px: the layout the fit moves (the shot with the most placed keypoints)
    layout_visible: np.ndarray  # [N] bool: placed on that shot
    fine_descriptors: torch.Tensor | None = None  # [N, R, D'] the same with the stride-4 level (None: not refined)

    @property
    def num_keypoints(self) -> int:
        return self.descriptors.shape[0]

    def to(self, device: torch.device | str) -> MatchSupport:
        fine = self.fine_descriptors.to(device) if self.fine_descriptors is not None else None
        return MatchSupport(self.descriptors.to(device), self.placed, self.layout, self.layout_visible, fine)


@dataclass(frozen=True)
class Found:
    """The finder's answer for a batch of query images."""

    keypoints: np.ndarray  # [B, N, 2] input px
    scores: np.ndarray  # [B, N] in [0, 1]
    placement: np.ndarray  # [B] how well the whole layout was found: mean score of its inliers x inlier fraction
    layout: np.ndarray  # [B, N, 2] input px: the fitted support layout (the geometric prior alone)


def hypercolumns(levels: Sequence[torch.Tensor]) -> torch.Tensor:
    """Backbone levels `[B, C_l, h_l, w_l]` (finest first) -> unit hypercolumns `[B, sum C_l, h_0, w_0]`.

    Each level is unit-normalised before concatenation so neither dominates by its channel count or magnitude.
    The coarser levels are upsampled channels-last: torch's CPU bilinear kernel is ~20x faster in that layout
    (0.02 against 0.49 ms for the default model's stride-16 level of one crop, one thread), same values.
    """
    size = levels[0].shape[-2:]
    parts = [
        _unit(
            F.interpolate(
                x.contiguous(memory_format=torch.channels_last), size=size, mode="bilinear", align_corners=False
            )
            if x.shape[-2:] != size
            else x
        )
        for x in levels
    ]
    return _unit(torch.cat(parts, dim=1))


def _unit(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """`x` scaled to unit L2 norm over dim 1, `x / max(|x|, eps)` as `F.normalize` computes it, but from a sum of
    squares and `rsqrt`: torch's vector norm over the channels of a feature map is slow on the CPU (0.59 against
    0.06 ms for one crop's `[1, 152, 32, 32]` hypercolumns, one thread). The squares, and the scaling, are in float32:
    in half precision the squares overflow, and the scale of a tiny or zero vector is infinite (NaN or inf out)."""
    squares = x.float().square().sum(1, keepdim=True)
    return (x * squares.clamp_min(eps * eps).rsqrt()).to(x.dtype)


def sample_at(features: torch.Tensor, xy_input: torch.Tensor, input_size: int) -> torch.Tensor:
    """Bilinear samples `[B, N, D]` of `features` `[B, D, h, w]` at input-px points `xy_input` `[B, N, 2]`."""
    grid = (xy_input + 0.5) / input_size * 2.0 - 1.0  # pixel centres at integers (model.transforms)
    return F.grid_sample(features, grid[:, :, None], mode="bilinear", align_corners=False)[..., 0].transpose(1, 2)


def match_support(
    pyramid: Callable[[torch.Tensor], list[torch.Tensor]],
    images: torch.Tensor,
    keypoints: torch.Tensor,
    visible: torch.Tensor,
    rotations: Sequence[float] = (),
) -> MatchSupport:
    """The finder's support from the shots `images` `[K, 3, S, S]` (normalised), keypoints `[K, N, 2]` input px and
    visible `[K, N]`, described upright and rotated by each of `rotations` (degrees, about the image centre).
    `pyramid` gives the backbone levels finest first: the last two make the descriptors, all of them (when there
    are three) the fine descriptors."""
    s = images.shape[-1]
    coarse, fine = [], []
    weight = visible.to(images)[..., None]
    for angle in (0.0, *rotations):
        turned, xy = rotate_inputs(images, keypoints, angle)
        levels = pyramid(turned)
        for out, used in ((coarse, levels[-2:]), (fine, levels if len(levels) > 2 else None)):
            if used is not None:
                desc = sample_at(hypercolumns(used), xy.to(images), s)  # [K, N, D]
                out.append(F.normalize((desc * weight).sum(0) / weight.sum(0).clamp(min=1.0), dim=-1))
    placed = visible.any(0).cpu().numpy()
    mask = torch.as_tensor(placed, device=images.device)[:, None, None]
    shot = int(visible.sum(1).argmax())
    return MatchSupport(
        torch.stack(coarse, 1) * mask,
        placed,
        keypoints[shot].double().cpu().numpy(),
        visible[shot].cpu().numpy().astype(bool),
        torch.stack(fine, 1) * mask if fine else None,
    )


def rotate_inputs(images: torch.Tensor, keypoints: torch.Tensor, degrees: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Images `[K, 3, S, S]` and their keypoints `[K, N, 2]` input px rotated by `degrees` about the image centre
    (counter-clockwise on screen; the corners fill with the normalised mean colour, 0)."""
    if not degrees:
        return images, keypoints
    s = images.shape[-1]
    a = math.radians(degrees)
    cos, sin = math.cos(a), math.sin(a)
    # affine_grid maps output to input coordinates in [-1, 1]: the inverse rotation.
    theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=images.dtype, device=images.device)
    grid = F.affine_grid(theta.expand(len(images), 2, 3), list(images.shape), align_corners=False)
    turned = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    c = (s - 1) / 2.0
    d = keypoints - c
    # Output point p' satisfies p = R^-1 p' with R^-1 = theta above; so p' = R (p - c) + c.
    xy = torch.stack([cos * d[..., 0] + sin * d[..., 1], -sin * d[..., 0] + cos * d[..., 1]], -1) + c
    return turned, xy


class KeypointFinder:
    """Hypercolumn matching + layout fit + local refinement on batches of query crops (see the module docstring)."""

    def __init__(self, support: MatchSupport, input_size: int, config: FinderConfig | None = None) -> None:
        self.support = support
        self.input_size = input_size
        self.config = config or FinderConfig()

    def similarity(self, levels: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Cosine similarity `[B, N, h, w]` of every support keypoint to every stride-8 cell of the query crops (from
        the last two levels), and, with fine descriptors, `[B, N, 2h, 2w]` at stride 4 (from all three)."""
        maps = [_best_rotation(self.support.descriptors, hypercolumns(levels[-2:]))]
        if self.support.fine_descriptors is not None:
            maps.append(_best_rotation(self.support.fine_descriptors, hypercolumns(levels)))
        return maps

    def locate(self, sim: np.ndarray, fine: np.ndarray | None = None) -> Found:
        """The host part: layout fit and placement on similarity maps `[B, N, h, w]` (numpy), refined on the
        stride-4 maps `fine` `[B, N, 2h, 2w]` when given."""
        sim = sim.astype(np.float64)
        stride = self.input_size / sim.shape[-1]
        fines = fine.astype(np.float64) if fine is not None else [None] * len(sim)
        out = [self._find_one(s, f, stride) for s, f in zip(sim, fines, strict=True)]
        return Found(*(np.stack(parts) for parts in zip(*out, strict=True)))

    # ------------------------------------------------------------------------------------------------ internals
    def _find_one(
        self, sim: np.ndarray, fine: np.ndarray | None, stride: float
    ) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
        c = self.config
        n, h, w = sim.shape
        placed = self.support.placed
        cand_xy, cand_sim = _local_maxima(sim, c.candidates, stride)  # [N, M, 2] input px, [N, M]
        layout = self.support.layout
        usable = placed & self.support.layout_visible
        fit = _fit_layout(layout, usable, cand_xy, cand_sim, c)
        if fit is None:  # fewer than two usable keypoints: plain matching
            prior = cand_xy[:, 0]
            extent = float(self.input_size)
            inliers = np.ones(n, bool)
        else:
            prior, extent, inliers = fit
        # Place each keypoint: best similarity minus a quadratic pull towards its fitted position. The squared
        # distances per coordinate, on a row and a column of cell centres: 0.02 ms, against 0.26 for the same sums
        # over an [N, h, w, 2] difference array.
        xs = np.arange(w) * stride + (stride - 1) / 2.0  # input px of the cell centres
        ys = np.arange(h) * stride + (stride - 1) / 2.0
        dx = xs[None, None, :] - prior[:, 0, None, None]
        dy = ys[None, :, None] - prior[:, 1, None, None]
        d2 = (dx * dx + dy * dy) / max(extent, stride) ** 2  # [N, h, w]
        d2[~usable] = 0.0  # not on the layout's shot: its stored position means nothing, so no pull
        objective = sim - c.layout_weight * d2
        flat = objective.reshape(n, -1).argmax(1)
        py, px = np.divmod(flat, w)
        if fine is None:
            xy = _refine(sim, py, px, stride, c.refine_temperature)
        else:
            fy, fx = _best_in_cell(fine, py, px)
            xy = _refine(fine, fy, fx, stride / 2, c.refine_temperature)
        picked = sim[np.arange(n), py, px]
        scores = np.clip((picked - c.score_floor) / (c.score_ceiling - c.score_floor), 0.0, 1.0)
        scores = np.where(placed, scores, 0.0)
        placement = float(scores[inliers & placed].sum() / max(placed.sum(), 1))
        return xy, scores, placement, prior


def _local_maxima(sim: np.ndarray, m: int, stride: float) -> tuple[np.ndarray, np.ndarray]:
    """The `m` highest 3x3 local maxima of each map `[N, h, w]`: positions `[N, m, 2]` input px and values (ties
    in the order of the cells). The 3x3 maximum is OpenCV's dilation over the maps as channels: 0.16 ms a call for 10
    keypoints against 0.28 through torch's max pooling and top-k, the same maxima of finite float32 maps (torch
    ordered tied values its own way, and kept a NaN's neighbours from being maxima)."""
    n, h, w = sim.shape
    if n == 0:
        return np.zeros((0, m, 2)), np.zeros((0, m))
    channels_last = np.ascontiguousarray(sim.transpose(1, 2, 0))
    square = np.ones((3, 3), np.uint8)
    grown = np.concatenate(  # at most 128 channels per call (the most OpenCV 5 takes)
        [cv2.dilate(channels_last[..., i : i + 128], square).reshape(h, w, -1) for i in range(0, n, 128)], -1
    ).transpose(2, 0, 1)
    masked = np.where(sim == grown, sim, -2.0).reshape(n, -1)
    flat = np.argsort(-masked, axis=1, kind="stable")[:, :m]
    values = np.take_along_axis(masked, flat, 1)
    xy = np.stack([flat % w, flat // w], -1).astype(np.float64) * stride + (stride - 1) / 2.0
    # A map with fewer than m maxima repeats its best one (value -2 marks the filler).
    filler = values <= -2.0
    xy[filler] = np.repeat(xy[:, :1], m, axis=1)[filler]
    values = np.where(filler, values[:, :1], values)
    return xy, values


def _fit_layout(
    layout: np.ndarray, usable: np.ndarray, cand_xy: np.ndarray, cand_sim: np.ndarray, c: FinderConfig
) -> tuple[np.ndarray, float, np.ndarray] | None:
    """RANSAC: a similarity transform from each pair of keypoints' top candidates, scored by the similarity of the
    candidates it explains; the best is refitted (affine when >= 4 inliers) on its inliers.

    Returns the fitted layout `[N, 2]` input px (every keypoint, placed or not), its extent and the inlier mask.
    """
    idx = np.flatnonzero(usable)
    if len(idx) < 2:
        return None
    src = layout[idx]
    support_extent = float(np.ptp(src, axis=0).max())
    if support_extent <= 0:
        return None
    a, b, ca, cb = _hypotheses(src, cand_sim[idx, 0], min(2, cand_xy.shape[1]), support_extent)
    transforms = _similarity_from_pairs(src[a], src[b], cand_xy[idx[a], ca], cand_xy[idx[b], cb])  # [H, 2, 3]
    scale = np.sqrt(np.abs(np.linalg.det(transforms[:, :, :2])))
    ok = (scale >= c.min_scale) & (scale <= c.max_scale)
    if not ok.any():
        return None
    transforms, scale = transforms[ok], scale[ok]
    dist = _distances(_transformed(transforms, src), cand_xy[idx])  # [H, n, M]
    radius = (c.inlier_radius * support_extent * scale)[:, None, None]
    explained = np.where(dist < radius, cand_sim[idx][None], 0.0).max(-1)  # [H, n]
    best = int(explained.sum(1).argmax())
    inlier = explained[best] > 0
    near = np.where(dist[best] < radius[best, 0], cand_sim[idx], -np.inf).argmax(-1)  # the candidate explained
    dst = cand_xy[idx, near]
    weights = np.clip(cand_sim[idx, near], 0.05, None) * inlier
    matrix = _weighted_affine(src, dst, weights) if inlier.sum() >= 4 else transforms[best]
    if not np.isfinite(matrix).all() or not (
        c.min_scale <= math.sqrt(abs(np.linalg.det(matrix[:, :2]))) <= c.max_scale
    ):
        matrix = transforms[best]
    fitted = layout @ matrix[:, :2].T + matrix[:, 2]
    inliers = np.zeros(len(usable), bool)
    inliers[idx] = inlier
    return fitted, support_extent * math.sqrt(abs(np.linalg.det(matrix[:, :2]))), inliers


def _hypotheses(
    src: np.ndarray, first_sim: np.ndarray, top: int, support_extent: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The RANSAC hypotheses as index arrays `[H]` (keypoints a < b of `src` and the candidate of each): every pair of
    keypoints more than 0.15 of the layout's extent apart (every pair if none is) x each one's `top` candidates. With
    many keypoints, only the pairs among the MAX_RANSAC_KEYPOINTS best-matched ones (by `first_sim`, the best
    candidate's similarity): the cost grows with the square of the count. Built as arrays: the list of pairs cost
    0.15 ms a call for 10 keypoints, a fifth of the whole fit."""
    ranked = np.sort(np.argsort(-first_sim)[:MAX_RANSAC_KEYPOINTS])
    a, b = (ranked[k] for k in np.triu_indices(len(ranked), 1))
    far = np.linalg.norm(src[a] - src[b], axis=1) > 0.15 * support_extent
    if far.any():
        a, b = a[far], b[far]
    ca, cb = np.divmod(np.arange(top * top), top)
    return np.repeat(a, top * top), np.repeat(b, top * top), np.tile(ca, len(a)), np.tile(cb, len(a))


def _transformed(transforms: np.ndarray, points: np.ndarray) -> np.ndarray:
    """`points` `[n, 2]` under each 2x3 affine of `transforms` `[H, 2, 3]`: `[H, n, 2]`. Written out per coordinate:
    the same sums as `einsum("hij,nj->hni", ...)`, in a sixth of its time for a few hundred hypotheses."""
    m = transforms[:, None]  # [H, 1, 2, 3]
    x, y = points[:, 0], points[:, 1]
    return np.stack([m[..., r, 0] * x + m[..., r, 1] * y + m[..., r, 2] for r in (0, 1)], -1)


def _distances(points: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Euclidean distances `[H, n, M]` from `points` `[H, n, 2]` to each keypoint's `candidates` `[n, M, 2]` (the
    sums `np.linalg.norm` forms, without its 4-D difference array)."""
    dx = points[:, :, None, 0] - candidates[None, :, :, 0]
    dy = points[:, :, None, 1] - candidates[None, :, :, 1]
    return np.sqrt(dx * dx + dy * dy)


def _similarity_from_pairs(p0: np.ndarray, p1: np.ndarray, q0: np.ndarray, q1: np.ndarray) -> np.ndarray:
    """The similarity transforms `[H, 2, 3]` taking p0 -> q0 and p1 -> q1 (each `[H, 2]`), in complex numbers."""
    zp0, zp1 = p0[:, 0] + 1j * p0[:, 1], p1[:, 0] + 1j * p1[:, 1]
    zq0, zq1 = q0[:, 0] + 1j * q0[:, 1], q1[:, 0] + 1j * q1[:, 1]
    rot = (zq1 - zq0) / np.where(zp1 == zp0, 1e-9, zp1 - zp0)  # scale x rotation
    shift = zq0 - rot * zp0
    out = np.empty((len(rot), 2, 3))
    out[:, 0] = np.stack([rot.real, -rot.imag, shift.real], -1)
    out[:, 1] = np.stack([rot.imag, rot.real, shift.imag], -1)
    return out


def _weighted_affine(src: np.ndarray, dst: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Least-squares 2x3 affine `dst ~ A @ src + t`, each correspondence weighted."""
    sw = np.sqrt(weights)[:, None]
    design = np.concatenate([src, np.ones((len(src), 1))], 1) * sw
    solution, *_ = np.linalg.lstsq(design, dst * sw, rcond=None)  # [3, 2]
    return solution.T


def _best_rotation(descriptors: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """`[B, N, h, w]`: each cell's cosine similarity to each keypoint, at the keypoint's best support rotation."""
    return torch.einsum("nrd,bdhw->bnrhw", descriptors.to(columns), columns).amax(2)


def _best_in_cell(fine: np.ndarray, py: np.ndarray, px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per keypoint, the best stride-4 cell `[N]`, `[N]` among the 4 x 4 around the two under stride-8 cell (py, px)
    (the cell and half of each neighbour)."""
    n, h, w = fine.shape
    offsets = np.arange(-1, 3)
    yy = np.clip(2 * py[:, None] + offsets[None], 0, h - 1)  # [N, 4]
    xx = np.clip(2 * px[:, None] + offsets[None], 0, w - 1)
    patch = fine[np.arange(n)[:, None, None], yy[:, :, None], xx[:, None, :]]  # [N, 4, 4]
    best = patch.reshape(n, -1).argmax(1)
    return yy[np.arange(n), best // 4], xx[np.arange(n), best % 4]


def _refine(sim: np.ndarray, py: np.ndarray, px: np.ndarray, stride: float, temperature: float) -> np.ndarray:
    """Sub-cell positions `[N, 2]` input px: a soft-argmax of the similarity over the 3x3 cells around each pick."""
    n, h, w = sim.shape
    offsets = np.array([-1, 0, 1])
    yy = np.clip(py[:, None] + offsets[None], 0, h - 1)  # [N, 3]
    xx = np.clip(px[:, None] + offsets[None], 0, w - 1)
    patch = sim[np.arange(n)[:, None, None], yy[:, :, None], xx[:, None, :]]  # [N, 3, 3]
    weights = np.exp((patch - patch.max(axis=(1, 2), keepdims=True)) / temperature)
    weights /= weights.sum(axis=(1, 2), keepdims=True)
    x = (weights * xx[:, None, :]).sum((1, 2))
    y = (weights * yy[:, :, None]).sum((1, 2))
    return np.stack([x, y], -1) * stride + (stride - 1) / 2.0

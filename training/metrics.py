"""The official MP-100 metrics per query and their split-level means: PCK@thr, mPCK, NME, AUC, EPE (spec §15).

Semantics are mmpose 0.29's `keypoint_pck_accuracy`, `keypoint_nme`, `keypoint_auc` and `keypoint_epe` called once
per query by `TestBaseDataset._report_metric`, down to the float32 rounding of the normalised distances and the
float32 threshold comparison, so a keypoint at exactly the threshold counts the same way. A keypoint is evaluated
when it is visible in the query and in every support annotation; the normaliser is the longer side of the query's
clean box; a query with no evaluable keypoint scores PCK 0, NME 0, AUC 0, EPE 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PCK_THRESHOLDS = (0.05, 0.1, 0.15, 0.2, 0.25)
AUC_STEPS = 20


def normalized_distances(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray, normalizer: np.ndarray) -> np.ndarray:
    """`||pred - gt|| / normaliser` as float32, -1 where not evaluated (mmpose `_calc_distances`).

    Args:
        pred, gt: `[Q, N, 2]` image px.
        valid: `[Q, N]` bool.
        normalizer: `[Q]` (a non-positive normaliser excludes the query, as mmpose).
    """
    pred, gt = np.asarray(pred, dtype=np.float64), np.asarray(gt, dtype=np.float64)
    norm = np.asarray(normalizer, dtype=np.float64)
    ok = np.asarray(valid, dtype=bool) & (norm > 0)[:, None]
    safe = np.where(norm > 0, norm, 1e6)
    dist = np.linalg.norm((pred - gt) / safe[:, None, None], axis=-1)
    return np.where(ok, dist, -1).astype(np.float32)


def pck(distances: np.ndarray, thr: float) -> np.ndarray:
    """Per-query PCK `[Q]` float64 from `normalized_distances`: share of evaluated keypoints below `thr`."""
    valid = distances != -1
    count = valid.sum(axis=1)
    hits = (valid & (distances < np.float32(thr))).sum(axis=1)
    return np.where(count > 0, hits / np.maximum(count, 1), 0.0)


def auc(distances: np.ndarray, steps: int = AUC_STEPS) -> np.ndarray:
    """Per-query AUC `[Q]`: mean PCK over thresholds 0, 1/steps, ..., (steps-1)/steps (mmpose `keypoint_auc`)."""
    total = np.zeros(distances.shape[0])
    for i in range(steps):
        total = total + 1.0 / steps * pck(distances, 1.0 * i / steps)
    return total


def mean_error(distances: np.ndarray) -> np.ndarray:
    """Per-query mean of the evaluated distances `[Q]` float32, 0 when none (mmpose `keypoint_nme` / `_epe`)."""
    out = np.zeros(distances.shape[0], dtype=np.float32)
    for q, row in enumerate(distances):
        kept = row[row != -1]
        out[q] = kept.sum() / max(1, len(kept))  # float32 sum, as mmpose
    return out


@dataclass(frozen=True)
class QueryScores:
    """Per-query metric values for a set of evaluated queries (the inputs of every split-level mean)."""

    pck: dict[float, np.ndarray]  # threshold -> [Q] float64
    nme: np.ndarray  # [Q] float32
    auc: np.ndarray  # [Q] float64
    epe: np.ndarray  # [Q] float32 (image px)

    @classmethod
    def compute(cls, pred: np.ndarray, gt: np.ndarray, valid: np.ndarray, normalizer: np.ndarray) -> QueryScores:
        """pred/gt `[Q, N, 2]` image px (float32, as the official decode), valid `[Q, N]`, normalizer `[Q]`."""
        dist = normalized_distances(pred, gt, valid, normalizer)
        pixel = normalized_distances(pred, gt, valid, np.ones(len(dist)))
        return cls({t: pck(dist, t) for t in PCK_THRESHOLDS}, mean_error(dist), auc(dist), mean_error(pixel))

    def subset(self, rows: np.ndarray) -> QueryScores:
        return QueryScores({t: v[rows] for t, v in self.pck.items()}, self.nme[rows], self.auc[rows], self.epe[rows])

    def summary(self) -> dict[str, float]:
        """The official key names and values: plain means over queries; mPCK = mean of the five PCKs."""
        out: dict[str, float] = {}
        total = 0.0
        for thr in PCK_THRESHOLDS:
            value = float(np.mean(self.pck[thr])) if len(self.nme) else 0.0
            out[f"PCK@{thr}"] = value
            total += value
        out["mPCK"] = total / len(PCK_THRESHOLDS)
        for name, values in (("NME", self.nme), ("AUC", self.auc), ("EPE", self.epe)):
            out[name] = float(np.mean(values)) if len(values) else 0.0
        return out

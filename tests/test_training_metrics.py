"""training.metrics: PCK, NME, AUC, EPE with mmpose 0.29 semantics, checked by hand and against the official values."""

from __future__ import annotations

import json

import numpy as np
import pytest
from reference_data import VECTORS

from cape_track.training.metrics import PCK_THRESHOLDS, QueryScores, auc, mean_error, normalized_distances, pck


@pytest.mark.parametrize("case", range(6))
def test_pck_matches_official_examples(case: int) -> None:
    v = json.loads((VECTORS / "data_pipeline_vectors.json").read_text())["pck"][case]
    dist = normalized_distances(np.array([v["pred"]]), np.array([v["gt"]]), np.array([v["mask"]]), [v["normalizer"]])
    assert pck(dist, v["thr"])[0] == pytest.approx(v["pck"], abs=1e-12)
    assert int((dist != -1).sum()) == v["valid_count"]


def _crafted() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two queries, 4 keypoints; query 0 has normaliser 100, query 1 normaliser 50 and a point hidden in a support."""
    gt = np.zeros((2, 4, 2), dtype=np.float32)
    pred = gt.copy()
    pred[0, :, 0] = [5.0, 19.0, 20.0, 60.0]  # distances 0.05, 0.19, 0.20 (edge), 0.60 of 100
    pred[1, :, 1] = [3.0, 12.0, 0.0, 100.0]  # 0.06, 0.24, 0 (but not evaluated), 2.0 of 50
    valid = np.array([[True, True, True, True], [True, True, False, True]])
    return pred, gt, valid, np.array([100.0, 50.0])


def test_pck_by_hand_normalisation_invisible_and_threshold_edge() -> None:
    pred, gt, valid, norm = _crafted()
    dist = normalized_distances(pred, gt, valid, norm)
    assert dist[1, 2] == -1  # not evaluated
    # at 0.2: query 0 counts 0.05 and 0.19 but not the point at exactly 0.2 (strict <): 2/4
    # query 1 counts 0.06 of its 3 evaluated points: 1/3
    np.testing.assert_allclose(pck(dist, 0.2), [2 / 4, 1 / 3])
    np.testing.assert_allclose(pck(dist, 0.25), [3 / 4, 2 / 3])
    np.testing.assert_allclose(pck(dist, 0.05), [0 / 4, 0 / 3])  # 0.05 is not < 0.05 either


def test_threshold_comparison_is_float32_like_mmpose() -> None:
    # 0.2 in float64 is just below float32(0.2): mmpose compares float32 distances with float32(0.2).
    gt = np.zeros((1, 1, 2))
    pred = np.array([[[0.2 - 1e-12, 0.0]]])
    dist = normalized_distances(pred, gt, np.ones((1, 1), bool), [1.0])
    assert dist.dtype == np.float32
    assert pck(dist, 0.2)[0] == 0.0


def test_query_without_evaluable_keypoints_scores_zero() -> None:
    pred, gt, _, norm = _crafted()
    scores = QueryScores.compute(pred, gt, np.zeros((2, 4), bool), norm)
    for values in (*scores.pck.values(), scores.nme, scores.auc, scores.epe):
        np.testing.assert_array_equal(values, [0.0, 0.0])


def test_nme_epe_auc_by_hand() -> None:
    pred, gt, valid, norm = _crafted()
    scores = QueryScores.compute(pred, gt, valid, norm)
    np.testing.assert_allclose(scores.nme, [(0.05 + 0.19 + 0.2 + 0.6) / 4, (0.06 + 0.24 + 2.0) / 3], rtol=1e-6)
    np.testing.assert_allclose(scores.epe, [(5 + 19 + 20 + 60) / 4, (3 + 12 + 100) / 3], rtol=1e-6)
    # AUC: mean PCK over thresholds 0, 0.05, ..., 0.95
    thresholds = np.arange(20) / 20
    d0, d1 = np.array([0.05, 0.19, 0.2, 0.6]), np.array([0.06, 0.24, 2.0])
    expected = [np.mean([(d0 < t - 1e-9).mean() for t in thresholds]), np.mean([(d1 < t).mean() for t in thresholds])]
    np.testing.assert_allclose(scores.auc, expected)


def test_summary_keys_and_means() -> None:
    pred, gt, valid, norm = _crafted()
    summary = QueryScores.compute(pred, gt, valid, norm).summary()
    assert list(summary) == [f"PCK@{t}" for t in PCK_THRESHOLDS] + ["mPCK", "NME", "AUC", "EPE"]
    assert summary["PCK@0.2"] == pytest.approx((2 / 4 + 1 / 3) / 2)
    assert summary["mPCK"] == pytest.approx(np.mean([summary[f"PCK@{t}"] for t in PCK_THRESHOLDS]))


def test_helpers_shapes() -> None:
    dist = np.array([[0.1, -1.0, 0.3]], dtype=np.float32)
    assert mean_error(dist)[0] == pytest.approx(0.2)
    assert auc(dist)[0] == pytest.approx(np.mean([(np.array([0.1, 0.3]) < t).mean() for t in np.arange(20) / 20]))

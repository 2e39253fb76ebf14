"""model/score.py: the derived confidence: high for a sharp, unique similarity peak the decoder did not move
away from, low for a flat map or a point moved far from its proposal, 0 for an ignored slot."""

from __future__ import annotations

import torch

from cape_track.model.score import keypoint_scores


def test_score_drops_when_the_support_feature_is_absent_or_the_point_moved() -> None:
    """A keypoint whose appearance is everywhere (flat similarity) scores lower than a sharp, unique one."""
    sharp = torch.full((1, 1, 16, 16), -10.0)
    sharp[0, 0, 5, 7] = 10.0
    flat = torch.zeros(1, 1, 16, 16)
    pt = torch.full((1, 1, 2), 0.4)
    no_mask = torch.zeros(1, 1, dtype=torch.bool)
    s_sharp = keypoint_scores(sharp, pt, pt, no_mask, 256)
    s_flat = keypoint_scores(flat, pt, pt, no_mask, 256)
    s_moved = keypoint_scores(sharp, pt, pt + 0.25, no_mask, 256)
    assert s_sharp.item() > 0.99 and s_flat.item() < 0.05 and s_moved.item() < 0.05


def test_an_ignored_slot_scores_zero() -> None:
    sharp = torch.full((1, 2, 16, 16), -10.0)
    sharp[:, :, 5, 7] = 10.0
    pt = torch.full((1, 2, 2), 0.4)
    mask = torch.tensor([[False, True]])
    scores = keypoint_scores(sharp, pt, pt, mask, 256)
    assert scores[0, 0] > 0.99 and scores[0, 1] == 0.0

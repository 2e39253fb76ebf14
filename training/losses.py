"""The paper's training losses (`PoseHead.get_loss`, spec §12): similarity-heatmap MSE, proposal L1, per-layer L1.

Every term is a per-sample weighted mean over keypoints, weight = query target weight x support mask, normalised by
the sample's number of weighted keypoints, then averaged over the batch. The total is the plain sum of the terms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cape_track.model import Prediction
from cape_track.model.heatmaps import gaussian_heatmaps

HEATMAP_LOSS_WEIGHT = 2.0


def cape_losses(
    pred: Prediction,
    support_mask: torch.Tensor,
    keypoints: torch.Tensor,
    visible: torch.Tensor,
    input_size: int,
    heatmap_weight: float = HEATMAP_LOSS_WEIGHT,
) -> dict[str, torch.Tensor]:
    """The official loss terms, by their official names (`heatmap_loss` already includes its weight).

    Args:
        pred: the model output for B queries (`forward`, with grad).
        support_mask: `[B, N]` bool, True = slot ignored (`SupportEmbedding.mask`).
        keypoints: `[B, N, 2]` query ground truth in network-input px.
        visible: `[B, N]` query annotation visibility; points whose heatmap falls off the map get no loss.
    Returns:
        `heatmap_loss`, `proposal_loss`, `l1_loss_layer0..L-1` as float32 scalars; the total is their sum.
    """
    keypoints = keypoints.float()
    targets, target_weight = gaussian_heatmaps(keypoints, visible, input_size, input_size // 4)
    weight = target_weight * (~support_mask).float()  # [B, N]
    normalizer = weight.sum(dim=-1)
    normalizer = torch.where(normalizer == 0, torch.ones_like(normalizer), normalizer)  # [B]
    y_unit = keypoints / input_size  # [B, N, 2] in [0, 1] of the input

    def weighted_l1(xy_unit: torch.Tensor) -> torch.Tensor:
        per_point = (xy_unit.float() - y_unit).abs().sum(dim=-1) * weight  # [B, N], L1 over x and y
        return (per_point.sum(dim=-1) / normalizer).mean()

    losses = {"heatmap_loss": heatmap_weight * _heatmap_loss(pred.similarity, targets, weight, normalizer)}
    losses["proposal_loss"] = weighted_l1(pred.proposal)
    for i, layer in enumerate(pred.layers):
        losses[f"l1_loss_layer{i}"] = weighted_l1(layer)
    return losses


def _heatmap_loss(
    similarity: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, normalizer: torch.Tensor
) -> torch.Tensor:
    """MSE between sigmoid(similarity) `[B, N, h, w]` and the 64x64 targets resized to h x w, peak-normalised."""
    h, w = similarity.shape[-2:]
    target = F.interpolate(targets, size=(h, w), mode="bilinear", align_corners=False)
    target = target / (target.amax(dim=(-2, -1), keepdim=True) + 1e-10)
    error = (similarity.float().sigmoid() - target) ** 2 * weight[..., None, None]
    per_point = error.flatten(2).sum(dim=-1) / (h * w)  # [B, N]
    return (per_point.sum(dim=-1) / normalizer).mean()


def similarity_ce(
    similarity: torch.Tensor,
    keypoints: torch.Tensor,
    visible: torch.Tensor,
    support_mask: torch.Tensor,
    input_size: int,
) -> torch.Tensor:
    """Cross-entropy of the similarity map's softmax against the true cell (softened over its neighbours).

    Not the paper's: an auxiliary term of the CPU recipe (`similarity_loss_weight`). The paper's heatmap MSE and
    soft-argmax L1 give weak gradients to a saturated similarity map; a classification over the h x w cells does
    not (measured: Xavier init with the paper's losses alone stayed at chance).
    """
    h = similarity.shape[-1]
    target, weight = gaussian_heatmaps(keypoints, visible, input_size, h, sigma=0.25)
    target = target.flatten(2)
    target = target / target.sum(-1, keepdim=True).clamp(min=1e-8)
    ce = -(target * F.log_softmax(similarity.flatten(2).float(), dim=-1)).sum(-1)  # [B, N]
    weight = weight * (~support_mask).float()
    return (ce * weight).sum() / weight.sum().clamp(min=1.0)

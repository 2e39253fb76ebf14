"""The derived per-keypoint confidence. The paper's network has no confidence output; this is ours, computed from
tensors the network produces anyway and kept outside the path that must equal the official outputs."""

from __future__ import annotations

import torch

# Input px over which agreement between the proposal and the refined point decays (two 16-px feature cells).
_AGREEMENT_PX = 32.0


def keypoint_scores(
    similarity: torch.Tensor, initial: torch.Tensor, final: torch.Tensor, mask: torch.Tensor, input_size: int
) -> torch.Tensor:
    """Confidence `[B, N]` in [0, 1] = peak mass x agreement.

    *Peak mass*: the softmax probability of the similarity map inside the 3x3 cells around its arg-max. A keypoint
    the network recognises gives a sharp single peak (mass near 1); an occluded or absent one gives a flat or
    multi-modal map (mass near 9 / hw).
    *Agreement*: `exp(-(d / 32 px)^2)` with `d` the distance between the proposal the decoder started from and the
    final refined point. Large corrections mean the graph decoder overruled the appearance match, which happens
    when the appearance match is unreliable.
    Ignored slots (padding, invisible in the support) score 0.

    Args: similarity `[B, N, h, w]` logits; initial, final `[B, N, 2]` in [0, 1]; mask `[B, N]` True = ignored.
    """
    b, n, h, w = similarity.shape
    prob = similarity.flatten(2).softmax(-1).view(b * n, 1, h, w)
    peak = torch.zeros_like(prob).flatten(1)
    peak.scatter_(1, prob.flatten(1).argmax(-1, keepdim=True), 1.0)
    window = torch.nn.functional.max_pool2d(peak.view(b * n, 1, h, w), 3, stride=1, padding=1)
    mass = (prob * window).flatten(1).sum(-1).view(b, n)
    d = (final - initial).norm(dim=-1) * input_size
    agreement = torch.exp(-((d / _AGREEMENT_PX) ** 2))
    return (mass * agreement).masked_fill(mask, 0.0).clamp(0.0, 1.0)

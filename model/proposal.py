"""Similarity-based proposal generator: keypoint-to-image similarity and the decoder's starting points (spec §7)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ProposalGenerator(nn.Module):
    def __init__(self, d_model: int, similarity_dim: int, dynamic_dim: int) -> None:
        super().__init__()
        self.support_proj = nn.Linear(d_model, similarity_dim)
        self.query_proj = nn.Linear(d_model, similarity_dim)
        self.dynamic_proj = nn.Sequential(
            nn.Linear(similarity_dim, dynamic_dim), nn.ReLU(), nn.Linear(dynamic_dim, similarity_dim)
        )

    def forward(
        self, memory: torch.Tensor, keypoints: torch.Tensor, hw: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Args: memory `[HW, B, d]` image tokens, keypoints `[N, B, d]`, hw the feature grid size.

        Returns:
            similarity `[B, N, h, w]` raw logits (no 1/sqrt(d) scaling),
            global soft-argmax `[B, N, 2]` in [0, 1] (used only by the proposal loss),
            local soft-argmax `[B, N, 2]` in [0, 1]: the softmax restricted to the 3x3 cells around the arg-max,
            the decoder's starting points.
        """
        h, w = hw
        fs = self.support_proj(keypoints.transpose(0, 1))  # [B, N, c]
        fq = self.query_proj(memory.transpose(0, 1))  # [B, HW, c]
        gamma = torch.tanh(self.dynamic_proj(fs))
        sim = torch.einsum("bjc,bnc->bnj", fq, (gamma + 1) * fs)  # [B, N, HW]
        b, n, _ = sim.shape

        prob = sim.softmax(dim=-1)
        ys, xs = torch.meshgrid(
            (torch.arange(h, device=sim.device, dtype=sim.dtype) + 0.5) / h,
            (torch.arange(w, device=sim.device, dtype=sim.dtype) + 0.5) / w,
            indexing="ij",
        )
        centres = torch.stack((xs, ys), dim=-1).reshape(h * w, 2)  # cell centres, [HW, 2] in [0, 1]
        proposal_global = prob @ centres

        peak = F.one_hot(sim.argmax(dim=-1), h * w).to(sim.dtype).view(b * n, 1, h, w)
        window = F.max_pool2d(peak, 3, stride=1, padding=1).view(b, n, h * w)
        local = prob * window
        proposal_local = (local @ centres) / (local.sum(-1, keepdim=True) + 1e-10)
        return sim.view(b, n, h, w), proposal_global, proposal_local

"""The typed values that cross the model's public seam: the cached support embedding and a prediction."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SupportEmbedding:
    """Everything the network needs from the support images, computed once per stream and reused for every frame.

    It holds no query information, so one embedding serves any number of frames and any batch size (a batch of 1
    is broadcast). Recomputing it per frame would cost one backbone pass per shot.
    """

    tokens: torch.Tensor  # [B, N, d] projected keypoint features (invalid slots = the projection's bias)
    mask: torch.Tensor  # [B, N] bool, True = slot ignored (padding, or invisible in any shot)
    adjacency: torch.Tensor  # [B, 2, N, N] GCN input: [identity on valid slots, row-normalised skeleton]

    @property
    def num_keypoints(self) -> int:
        return self.tokens.shape[1]

    def expand(self, batch: int) -> SupportEmbedding:
        """Broadcast a batch-1 embedding to `batch` queries (a view, no copy)."""
        if self.tokens.shape[0] == batch:
            return self
        if self.tokens.shape[0] != 1:
            raise ValueError(f"support batch {self.tokens.shape[0]} does not match query batch {batch}")
        return SupportEmbedding(
            self.tokens.expand(batch, -1, -1),
            self.mask.expand(batch, -1),
            self.adjacency.expand(batch, -1, -1, -1),
        )

    def to(self, device: torch.device | str) -> SupportEmbedding:
        return SupportEmbedding(self.tokens.to(device), self.mask.to(device), self.adjacency.to(device))


@dataclass(frozen=True)
class Prediction:
    """The network's output for a batch of query images."""

    keypoints: torch.Tensor  # [B, N, 2] final prediction, network-input px
    layers: torch.Tensor  # [L, B, N, 2] every decoder layer's prediction, in [0, 1] of the input (last = final)
    scores: torch.Tensor  # [B, N] derived confidence in [0, 1] (see model/score.py); 0 for ignored slots
    proposal: torch.Tensor  # [B, N, 2] global soft-argmax of the similarity map, [0, 1] (proposal loss only)
    initial: torch.Tensor  # [B, N, 2] local soft-argmax: the decoder's starting points, [0, 1]
    similarity: torch.Tensor  # [B, N, h, w] raw similarity logits between keypoint and image tokens

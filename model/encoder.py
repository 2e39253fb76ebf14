"""The transformer encoder that fuses query-image tokens with support keypoint tokens (spec §6)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class EncoderLayer(nn.Module):
    """Post-norm self-attention layer; the positional encoding is added to the layer *input* (spec §18.2)."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, key_padding_mask: torch.Tensor) -> torch.Tensor:
        # The official layer adds pos to q, k AND v, and keeps it in the residual stream.
        x = x + pos
        a = self.self_attn(x, x, x, key_padding_mask=key_padding_mask, need_weights=False)[0]
        x = self.norm1(x + self.dropout(a))
        y = self.linear2(self.dropout(F.relu(self.linear1(x))))
        return self.norm2(x + self.dropout(y))


class Encoder(nn.Module):
    """Joint encoder over `[image tokens ; keypoint tokens]`, sequence-first `[S, B, d]` like the official code."""

    def __init__(self, num_layers: int, d_model: int, nhead: int, dim_feedforward: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(d_model, nhead, dim_feedforward, dropout) for _ in range(num_layers))

    def forward(
        self, image: torch.Tensor, image_pos: torch.Tensor, keypoints: torch.Tensor, kpt_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: image `[HW, B, d]`, image_pos `[HW, B, d]`, keypoints `[N, B, d]`, kpt_mask `[B, N]` (True = ignore).

        Returns the image memory `[HW, B, d]` and the keypoint tokens `[N, B, d]`. Keypoint tokens carry no
        positional encoding (the official "support order embedding" is all zeros).
        """
        hw = image.shape[0]
        x = torch.cat((image, keypoints))
        pos = torch.cat((image_pos, torch.zeros_like(keypoints)))
        mask = torch.cat((kpt_mask.new_zeros(kpt_mask.shape[0], hw), kpt_mask), dim=1)
        for layer in self.layers:
            x = layer(x, pos, mask)
        return x[:hw], x[hw:]

"""Small blocks shared by the encoder, proposal generator and decoder: MLPs and sine position encodings (spec §10)."""

from __future__ import annotations

import math

import torch
from torch import nn


class MLP(nn.Module):
    """`Linear -> act -> ... -> Linear` kept in `self.layers` (the official `ref_point_head` key layout)."""

    def __init__(self, dims: list[int], act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.act(x)
        return x


class CoordinateHead(nn.Module):
    """Token -> logit-space (dx, dy): the official `kpt_branch` (4 linears with GELU, keys `mlp.{0,2,4,6}`)."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(d_model, d_model),
            nn.GELU(),
            nn.Linear(d_model, d_model),
            nn.GELU(),
            nn.Linear(d_model, d_model),
            nn.GELU(),
            nn.Linear(d_model, 2),
        )
        # Zero-init of the last layer: a fresh head starts by keeping its reference point (spec §18.12).
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class SinePositionalEncoding(nn.Module):
    """DETR sine encodings with `num_feats` channels per axis, y first then x, sin/cos interleaved (spec §10)."""

    def __init__(self, num_feats: int, temperature: float = 10000.0) -> None:
        super().__init__()
        self.num_feats = num_feats
        self.temperature = temperature
        self.scale = 2 * math.pi

    def _dim_t(self, device: torch.device) -> torch.Tensor:
        j = torch.arange(self.num_feats, dtype=torch.float32, device=device)
        return self.temperature ** (2 * torch.div(j, 2, rounding_mode="floor") / self.num_feats)

    def _embed(self, p: torch.Tensor) -> torch.Tensor:
        """Scalar positions `[...]` -> `[..., num_feats]` interleaved sin/cos."""
        e = p[..., None] / self._dim_t(p.device)
        return torch.stack((e[..., 0::2].sin(), e[..., 1::2].cos()), dim=-1).flatten(-2)

    def feature_map(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        """Encodings of an all-valid `h x w` grid, `[2*num_feats, h, w]`.

        Positions are the normalised cumulative sums `(i + 1) / (n + 1e-6) * 2pi` of the official code; the
        coordinate encoding below uses `x * 2pi`, half a cell apart for cell centres (spec §18.3, kept on purpose).
        """
        eps = 1e-6
        y = torch.arange(1, h + 1, dtype=torch.float32, device=device) / (h + eps) * self.scale
        x = torch.arange(1, w + 1, dtype=torch.float32, device=device) / (w + eps) * self.scale
        ey = self._embed(y)[:, None, :].expand(h, w, self.num_feats)
        ex = self._embed(x)[None, :, :].expand(h, w, self.num_feats)
        return torch.cat((ey, ex), dim=-1).permute(2, 0, 1)

    def coordinates(self, xy_unit: torch.Tensor) -> torch.Tensor:
        """Encodings of points `[..., 2]` in [0, 1] of the input -> `[..., 2*num_feats]` (y block first)."""
        p = xy_unit * self.scale
        return torch.cat((self._embed(p[..., 1]), self._embed(p[..., 0])), dim=-1)

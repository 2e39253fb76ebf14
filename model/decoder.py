"""Graph transformer decoder: keypoint self-attention, image cross-attention, a GCN feed-forward along the
skeleton, and iterative coordinate refinement after every layer (spec §8)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import MLP, SinePositionalEncoding


def skeleton_adjacency(skeletons: Sequence[Sequence[Sequence[int]]], valid: torch.Tensor) -> torch.Tensor:
    """Skeletons (one list of 0-indexed `[i, j]` pairs per sample) -> GCN adjacency `[B, 2, N, N]`.

    Channel 0 is the identity on valid slots, channel 1 the symmetrised skeleton restricted to valid slots and
    row-normalised (isolated rows stay 0). An empty skeleton is allowed: only the identity channel then acts
    (the official code crashes there and its demo substitutes a self-loop on keypoint 0, spec §8.1).
    """
    b, n = valid.shape
    adj = torch.zeros(b, n, n, device=valid.device)
    for i, edges in enumerate(skeletons):
        if len(edges):
            e = torch.as_tensor(edges, dtype=torch.long, device=valid.device).view(-1, 2)
            if e.min() < 0 or e.max() >= n:
                raise ValueError(f"skeleton of sample {i} has an index outside 0..{n - 1}")
            adj[i, e[:, 0], e[:, 1]] = 1.0
    adj = torch.maximum(adj, adj.transpose(1, 2))
    v = valid.to(adj.dtype)
    adj = adj * v[:, :, None] * v[:, None, :]
    adj = torch.nan_to_num(adj / adj.sum(-1, keepdim=True))
    return torch.stack((torch.diag_embed(v), adj), dim=1)


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


class GraphConv(nn.Module):
    """The 'pre' graph FFN's first layer: one 1x1 conv to two kernels, mixed by `[identity, skeleton]`."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(d_in, 2 * d_out, kernel_size=1)

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        """x `[N, B, d_in]`, adjacency `[B, 2, N, N]` -> `[N, B, d_out]`."""
        y = self.conv(x.permute(1, 2, 0))  # [B, 2*d_out, N]
        b, kc, n = y.shape
        # Contracts over the *source* index: node w gets sum_v A[v, w] y1[v] (spec §18.5).
        y = torch.einsum("bkcv,bkvw->bcw", y.view(b, 2, kc // 2, n), adjacency)
        return F.relu(y).permute(2, 0, 1)


class DecoderLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float, graph: bool) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        # Content and position are concatenated for the cross-attention queries/keys (spec §18.4).
        self.cross_attn = nn.MultiheadAttention(2 * d_model, nhead, dropout=dropout, vdim=d_model)
        self.choker = nn.Linear(2 * d_model, d_model)
        self.ffn1 = GraphConv(d_model, dim_feedforward) if graph else nn.Linear(d_model, dim_feedforward)
        self.ffn2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.graph = graph

    def forward(
        self,
        t: torch.Tensor,
        query_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        mask: torch.Tensor,
        adjacency: torch.Tensor,
    ) -> torch.Tensor:
        q = t + query_pos
        a = self.self_attn(q, q, t, key_padding_mask=mask, need_weights=False)[0]
        t = self.norm1(t + self.dropout(a))
        a = self.cross_attn(
            torch.cat((t, query_pos), -1), torch.cat((memory, memory_pos), -1), memory, need_weights=False
        )[0]
        t = self.norm2(t + self.dropout(self.choker(a)))
        g = self.ffn1(t, adjacency) if self.graph else self.ffn1(t)
        y = self.ffn2(self.dropout(F.relu(g)))
        return self.norm3(t + self.dropout(y))


class GraphDecoder(nn.Module):
    def __init__(
        self, num_layers: int, d_model: int, nhead: int, dim_feedforward: int, dropout: float, graph: bool
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DecoderLayer(d_model, nhead, dim_feedforward, dropout, graph) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.ref_point_head = MLP([d_model, d_model, d_model])

    def forward(
        self,
        tokens: torch.Tensor,
        start: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        mask: torch.Tensor,
        adjacency: torch.Tensor,
        position: SinePositionalEncoding,
        coord_heads: nn.ModuleList,
    ) -> torch.Tensor:
        """Refine the starting points layer by layer.

        Args: tokens `[N, B, d]`, start `[B, N, 2]` in [0, 1], memory / memory_pos `[HW, B, d]`,
            mask `[B, N]` (True = ignore), adjacency `[B, 2, N, N]`, coord_heads one CoordinateHead per layer.
        Returns every layer's prediction `[L, B, N, 2]` in [0, 1].
        """
        ref = start.detach()  # reference point b_l; the copy fed to the next layer is always detached
        ref_grad = ref  # the same point with its gradient, used inside the layer's own output (spec §8)
        outputs = []
        t = tokens
        for layer, head in zip(self.layers, coord_heads):
            query_pos = self.ref_point_head(position.coordinates(ref)).transpose(0, 1)
            t = layer(t, query_pos, memory, memory_pos, mask, adjacency)
            base = inverse_sigmoid(ref_grad)
            # The returned prediction uses the normed tokens, the next reference the un-normed ones (spec §18.1).
            outputs.append((base + head(self.norm(t).transpose(0, 1))).sigmoid())
            ref_grad = (base + head(t.transpose(0, 1))).sigmoid()
            ref = ref_grad.detach()
        return torch.stack(outputs)

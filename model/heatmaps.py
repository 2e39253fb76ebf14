"""Gaussian keypoint heatmaps: the official MSRA targets (spec §3) used to pool support features and in the loss."""

from __future__ import annotations

import torch


def gaussian_heatmaps(
    xy_input: torch.Tensor, visible: torch.Tensor, input_size: int, heatmap_size: int, sigma: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unnormalised 7x7 (for sigma 1) Gaussians at the keypoints, on a `heatmap_size` grid.

    Args:
        xy_input: `[..., N, 2]` keypoints in network-input px.
        visible: `[..., N]` visibility (bool or 0/1).
    Returns:
        heatmaps `[..., N, H, H]` and weights `[..., N]` (float 0/1): a visible point whose whole window falls
        off the map gets weight 0 and an empty map, as in the official target generator.
    """
    stride = input_size / heatmap_size
    radius = int(sigma * 3)
    # Python int() truncates toward zero; that matters for points left of / above the image (spec §18.8).
    mu = torch.trunc(xy_input / stride + 0.5)
    ul, br = mu - radius, mu + radius + 1
    inside = (ul < heatmap_size).all(-1) & (br >= 0).all(-1)
    weights = (visible.bool() & inside).to(xy_input.dtype)

    grid = torch.arange(heatmap_size, dtype=xy_input.dtype, device=xy_input.device)
    dx = grid - mu[..., 0:1]  # [..., N, W]
    dy = grid - mu[..., 1:2]  # [..., N, H]
    d2 = dy[..., :, None] ** 2 + dx[..., None, :] ** 2
    window = (dy.abs() <= radius)[..., :, None] & (dx.abs() <= radius)[..., None, :]
    heatmaps = torch.exp(-d2 / (2 * sigma**2)) * window * weights[..., None, None]
    return heatmaps, weights

"""model/heatmaps.py: the official target heatmaps (unnormalised sigma-1 Gaussians in a 7x7 window on the
heatmap grid) and their weights: 0 for an invisible point or one whose window falls off the map."""

from __future__ import annotations

import torch

from cape_track.model.heatmaps import gaussian_heatmaps


def test_peak_window_and_weights() -> None:
    xy = torch.tensor([[[64.0, 32.0], [300.0, 10.0], [20.0, 20.0]]])  # input px of a 256 input, 64 heatmap
    visible = torch.tensor([[True, True, False]])
    maps, weights = gaussian_heatmaps(xy, visible, 256, 64)
    assert maps.shape == (1, 3, 64, 64) and weights.tolist() == [[1.0, 0.0, 0.0]]
    peak = divmod(int(maps[0, 0].argmax()), 64)
    assert peak == (8, 16) and maps[0, 0, 8, 16] == 1.0  # stride 4: (x 64, y 32) -> cell (16, 8)
    assert int((maps[0, 0] > 0).sum()) == 49  # the 7x7 window, nothing outside it
    assert float(maps[0, 0, 8, 19]) == torch.exp(torch.tensor(-4.5)).item()  # 3 cells away: exp(-9/2)
    assert maps[0, 1:].abs().sum() == 0  # off the map, and invisible: empty


def test_a_point_near_the_edge_keeps_the_part_of_its_window_on_the_map() -> None:
    maps, weights = gaussian_heatmaps(torch.tensor([[-4.0, 0.0]]), torch.tensor([True]), 256, 64)
    assert weights.item() == 1.0 and maps[0, 0, 0] == 1.0  # x -4 px truncates to cell 0 (official rounding)
    assert int((maps[0] > 0).sum()) == 16  # a 4x4 corner of the window

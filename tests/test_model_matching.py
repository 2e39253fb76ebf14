"""The keypoint finder (model/matching.py): layout fit, outlier pull-back, sub-cell refinement, rotated supports,
per-shot visibility, and the tracker's multi-scale search and frame bounds."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fixtures_media import write_clip, write_support

from cape_track.model import CapeModel, SupportSet
from cape_track.model.matching import (
    FinderConfig,
    KeypointFinder,
    MatchSupport,
    _distances,
    _hypotheses,
    _local_maxima,
    _transformed,
    hypercolumns,
    match_support,
    rotate_inputs,
)
from cape_track.model.transforms import SquareBox
from cape_track.tracker import Tracker, TrackerConfig, VideoFileSource
from cape_track.tracker.pipeline import search_tiles

STRIDE = 8
SIZE = 256  # input px: a 32 x 32 map at stride 8
LAYOUT = np.array([[80.0, 80.0], [170.0, 84.0], [126.0, 130.0], [92.0, 176.0], [160.0, 180.0]])


def _finder(layout: np.ndarray = LAYOUT, **config: object) -> KeypointFinder:
    n = len(layout)
    support = MatchSupport(torch.zeros(n, 1, 4), np.ones(n, bool), layout, np.ones(n, bool))
    return KeypointFinder(support, SIZE, FinderConfig(**config))


def _maps(points: np.ndarray, value: float = 0.9, spread: float = 1.0) -> np.ndarray:
    """Similarity maps [N, 32, 32]: a background of 0.2 and a Gaussian peak at each input-px point."""
    ys, xs = np.mgrid[0:32, 0:32]
    cells = np.stack([xs, ys], -1) * STRIDE + (STRIDE - 1) / 2.0
    maps = []
    for p in points:
        d2 = ((cells - p) ** 2).sum(-1) / (spread * STRIDE) ** 2
        maps.append(0.2 + (value - 0.2) * np.exp(-d2))
    return np.stack(maps)


def _similarity(angle_deg: float, scale: float, shift: tuple[float, float], points: np.ndarray) -> np.ndarray:
    a = math.radians(angle_deg)
    rot = scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    centre = points.mean(0)
    return (points - centre) @ rot.T + centre + np.asarray(shift)


def test_hypercolumns_are_the_unit_concatenation_of_unit_upsampled_levels() -> None:
    """The fast path (channels-last upsampling, rsqrt norms) gives the plain definition's values, a vector of zeros
    stays zeros, and half precision features whose squares overflow float16 still come out unit."""
    generator = torch.Generator().manual_seed(0)
    levels = [torch.randn(2, 5, 12, 10, generator=generator), torch.randn(2, 7, 6, 5, generator=generator)]
    levels.append(torch.randn(2, 3, 3, 3, generator=generator))  # 3 -> 12 x 10: not a factor of 2
    levels[0][1, :, 4, 4] = 0.0
    levels[1][1] = levels[2][1] = 0.0  # so cell (4, 4) of the second is zero at every level
    size = levels[0].shape[-2:]
    plain = F.normalize(
        torch.cat([F.normalize(F.interpolate(x, size=size, mode="bilinear", align_corners=False)) for x in levels], 1)
    )
    fast = hypercolumns(levels)
    assert fast.shape == (2, 15, 12, 10)
    assert torch.allclose(fast, plain, atol=1e-6)
    assert fast[1, :, 4, 4].abs().max() == 0.0
    big = hypercolumns([300.0 * levels[0][:1].half(), 300.0 * levels[1][:1].half()])
    assert big.dtype == torch.float16
    assert torch.allclose(big.float().square().sum(1), torch.ones(1, 12, 10), atol=1e-2)
    small = [levels[0][1:].half(), 1e-6 * levels[1][:1].half()]  # a zero cell, and a level of tiny norms
    half = hypercolumns(small)
    assert torch.isfinite(half).all() and half[0, :5, 4, 4].abs().max() == 0.0
    assert torch.allclose(half.float().square().sum(1), torch.ones(1, 12, 10), atol=1e-2)


def test_the_layout_fit_recovers_a_moved_rotated_scaled_object() -> None:
    target = _similarity(20.0, 0.8, (10.0, -6.0), LAYOUT)
    found = _finder().locate(_maps(target)[None])
    np.testing.assert_allclose(found.layout[0], target, atol=2.5)  # cell centres quantise the candidates
    assert np.abs(found.keypoints[0] - target).max() < 3.0
    assert found.scores[0].min() > 0.9 and found.placement[0] > 0.9


def test_an_outlier_match_is_pulled_back_by_the_layout() -> None:
    """Keypoint 2's strongest peak sits on the wrong part (as a right eye matched to the left eye); a weaker peak
    sits where the other keypoints' layout puts it. The finder takes the layout-consistent one."""
    maps = _maps(LAYOUT)
    wrong = _maps(np.array([[40.0, 220.0]]), value=0.95)[0]
    right = _maps(LAYOUT[2:3], value=0.7)[0]
    maps[2] = np.maximum(wrong, right)
    found = _finder().locate(maps[None])
    assert np.linalg.norm(found.keypoints[0, 2] - LAYOUT[2]) < 6.0
    # Without the pull (plain best match), it would have gone to the wrong peak.
    loose = _finder(layout_weight=0.0).locate(maps[None])
    assert np.linalg.norm(loose.keypoints[0, 2] - [40.0, 220.0]) < 6.0


def _maxima_by_hand(sim: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """The `m` best 3x3 local maxima per map by looping over the cells (ties: the earlier cell first), fillers
    repeating the best one."""
    n, h, w = sim.shape
    xy, values = np.zeros((n, m, 2)), np.zeros((n, m))
    for k in range(n):
        peaks = [
            (-sim[k, y, x], y * w + x)
            for y in range(h)
            for x in range(w)
            if sim[k, y, x] >= sim[k, max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2].max()
        ]
        best = sorted(peaks)[:m]
        best += [best[0]] * (m - len(best))
        for j, (v, flat) in enumerate(best):
            xy[k, j] = np.array([flat % w, flat // w]) * STRIDE + (STRIDE - 1) / 2.0
            values[k, j] = -v
    return xy, values


def test_local_maxima_are_the_best_peaks_of_each_map() -> None:
    """Random maps, a plateau (two equal neighbouring maxima: both count, the earlier cell first), a map with a
    single peak (fillers repeat it), peaks on the border, more maps than OpenCV takes channels in one call, none."""
    rng = np.random.default_rng(0)
    sim = rng.random((641, 6, 5))  # 5 x 128 + 1: the last chunk has one channel
    sim[1] = 0.0
    sim[1, 2, 1:3] = 0.7  # a plateau of two cells
    sim[2] = np.linspace(0.0, 1.0, 30).reshape(6, 5)  # one peak, in the corner
    xy, values = _local_maxima(sim, 3, STRIDE)
    want_xy, want_values = _maxima_by_hand(sim, 3)
    np.testing.assert_array_equal(xy, want_xy)
    np.testing.assert_array_equal(values, want_values)
    assert np.array_equal(xy[1, :2], [[11.5, 19.5], [19.5, 19.5]]) and np.all(values[2] == 1.0)
    assert [a.shape for a in _local_maxima(sim[:0], 3, STRIDE)] == [(0, 3, 2), (0, 3)]


def test_the_ransac_hypotheses_are_the_far_apart_pairs_times_the_candidates() -> None:
    src = np.array([[0.0, 0.0], [100.0, 0.0], [1.0, 0.0], [0.0, 100.0]])  # keypoints 0 and 2 nearly coincide
    a, b, ca, cb = _hypotheses(src, np.array([0.9, 0.8, 0.7, 0.6]), 2, 100.0)
    pairs = [(0, 1), (0, 3), (1, 2), (1, 3), (2, 3)]  # every pair but (0, 2), each a < b, in order
    assert list(zip(a, b, ca, cb, strict=True)) == [(p, q, i, j) for p, q in pairs for i in (0, 1) for j in (0, 1)]
    same = _hypotheses(np.zeros((3, 2)), np.ones(3), 1, 1.0)  # no pair far apart: every pair
    assert list(zip(same[0], same[1], strict=True)) == [(0, 1), (0, 2), (1, 2)]


def test_hypotheses_transform_and_measure_as_einsum_and_norm() -> None:
    rng = np.random.default_rng(1)
    transforms, points, candidates = rng.normal(size=(50, 2, 3)), rng.normal(size=(7, 2)), rng.normal(size=(7, 3, 2))
    moved = np.einsum("hij,nj->hni", transforms[:, :, :2], points) + transforms[:, None, :, 2]
    np.testing.assert_allclose(_transformed(transforms, points), moved, rtol=1e-12, atol=1e-12)
    near = np.linalg.norm(moved[:, :, None] - candidates[None], axis=-1)
    np.testing.assert_allclose(_distances(moved, candidates), near, rtol=1e-12, atol=1e-12)


def test_refinement_places_a_peak_between_cells() -> None:
    point = np.array([[123.5 + 4.0, 99.5]])  # half a cell right of a cell centre
    layout = np.vstack([point, point + [60.0, 0.0]])
    found = _finder(layout).locate(_maps(layout)[None])
    assert abs(found.keypoints[0, 0, 0] - point[0, 0]) < 2.0  # cell centres alone are 4 px off


def test_the_stride_4_map_refines_within_the_chosen_cell_only() -> None:
    """The stride-8 map decides the cell; the stride-4 map moves the point inside it (a quarter cell here) but a
    stronger stride-4 peak two cells away is not taken."""
    layout = np.array([[100.0, 100.0], [160.0, 100.0]])
    coarse = _maps(layout)
    ys, xs = np.mgrid[0:64, 0:64]
    cells = np.stack([xs, ys], -1) * 4.0 + 1.5
    fine = np.full((2, 64, 64), 0.2)
    for k, target in enumerate(layout + [[2.0, -2.0], [0.0, 0.0]]):
        fine[k] = np.maximum(fine[k], 0.2 + 0.7 * np.exp(-((cells - target) ** 2).sum(-1) / 4.0**2))
    fine[0] = np.maximum(fine[0], 0.99 * np.exp(-((cells - [124.0, 100.0]) ** 2).sum(-1) / 4.0**2))  # a decoy
    found = _finder(layout).locate(coarse[None], fine[None])
    np.testing.assert_allclose(found.keypoints[0, 0], [102.0, 98.0], atol=1.5)
    np.testing.assert_allclose(found.keypoints[0, 1], [160.0, 100.0], atol=1.5)


def test_low_similarity_everywhere_scores_low() -> None:
    flat = np.full((len(LAYOUT), 32, 32), 0.25)
    found = _finder().locate(flat[None])
    assert found.scores.max() == 0.0 and found.placement[0] == 0.0


def test_rotated_support_moves_its_keypoints_with_the_image() -> None:
    image = torch.zeros(1, 3, 64, 64)
    image[0, :, 12, 44] = 1.0
    turned, xy = rotate_inputs(image, torch.tensor([[[44.0, 12.0]]]), 40.0)
    y, x = np.unravel_index(turned[0, 0].argmax().item(), (64, 64))
    assert np.hypot(x - xy[0, 0, 0].item(), y - xy[0, 0, 1].item()) < 1.0
    back, xy_back = rotate_inputs(turned, xy, -40.0)
    np.testing.assert_allclose(xy_back[0, 0].numpy(), [44.0, 12.0], atol=1e-4)


def test_a_keypoint_unplaced_on_one_shot_is_ignored_there_only() -> None:
    model = CapeModel.from_preset("test", input_size=128).eval()
    images = torch.randn(2, 3, 128, 128)
    keypoints = torch.tensor([[[30.0, 30.0], [90.0, 40.0], [60.0, 100.0]]]).repeat(2, 1, 1)
    visible = torch.tensor([[True, True, True], [True, False, True]])
    both = match_support(model.backbone.pyramid, images, keypoints, visible)
    first = match_support(model.backbone.pyramid, images[:1], keypoints[:1], visible[:1])
    assert both.placed.all()
    torch.testing.assert_close(both.descriptors[1], first.descriptors[1])  # shot 1 did not dilute keypoint 1
    nowhere = match_support(model.backbone.pyramid, images, keypoints, torch.tensor([[True, False, True]] * 2))
    assert not nowhere.placed[1] and nowhere.descriptors[1].abs().max() == 0


def test_search_tiles_cover_the_frame_at_each_size() -> None:
    for width, height in ((640, 272), (176, 144), (1280, 720)):
        for d in (2, 3):
            side = max(width, height) / d
            tiles = [t for t in search_tiles(width, height, (d,)) if abs(t.size - side) < 1e-9]
            covered = np.zeros((height, width), bool)
            for t in tiles:
                x0, y0 = max(0, int(t.x0)), max(0, int(t.y0))
                covered[y0 : int(math.ceil(t.y0 + t.size)), x0 : int(math.ceil(t.x0 + t.size))] = True
            assert covered.all(), (width, height, d)


@pytest.mark.slow
def test_the_search_finds_a_small_object_in_a_wide_frame(tmp_path: Path) -> None:
    """A small square in a wide frame (a fifth of its height): the whole-frame view shows it a few cells wide, the
    tiled search finds it; the track then stays on it."""
    clip = write_clip(tmp_path, frames=8, size=(640, 240), object_fraction=0.2)
    support = SupportSet.from_files([write_support(clip, tmp_path / "support", index=0)])
    tracker = Tracker(CapeModel.from_checkpoint(None), support, TrackerConfig(batch=4))
    with VideoFileSource(clip.path) as source:
        results = list(tracker.run(source))
    side = 0.2 * 240
    errors = np.array([np.linalg.norm(r.xy_frame - clip.keypoints[r.index], axis=1) for r in results])
    assert np.median(errors) < 0.15 * side


def test_points_outside_the_frame_are_never_visible(tmp_path: Path) -> None:
    """The tiny random network puts keypoints anywhere in the crop; a crop wider than the frame has padding, and
    any keypoint placed there must come out not visible."""
    clip = write_clip(tmp_path, frames=4, size=(96, 40))
    support = SupportSet.from_files([write_support(clip, tmp_path / "support")])
    config = TrackerConfig(batch=2, smooth=False, finder="network")
    tracker = Tracker(CapeModel.from_preset("test", input_size=128), support, config)
    with VideoFileSource(clip.path) as source:
        for r in tracker.run(source):
            outside = (r.xy_frame[:, 0] < -0.5) | (r.xy_frame[:, 0] > 95.5)
            outside |= (r.xy_frame[:, 1] < -0.5) | (r.xy_frame[:, 1] > 39.5)
            assert not (r.visible & outside).any()
            assert (r.scores[outside] == 0).all()


def test_the_finder_is_the_default_only_where_the_backbone_has_a_finer_level(tmp_path: Path) -> None:
    clip = write_clip(tmp_path, frames=2)
    support = SupportSet.from_files([write_support(clip, tmp_path / "support")])
    assert Tracker(CapeModel.from_preset("test", input_size=128), support).finder is not None
    mini = CapeModel.from_preset("mini", input_size=256)  # SwinV2, as the paper's checkpoints
    assert not mini.can_match and Tracker(mini, support).finder is None
    with pytest.raises(ValueError, match="finder"):
        TrackerConfig(finder="magic")
    assert SquareBox.letterbox(4, 2) == SquareBox(0.0, -1.0, 4.0)


def test_a_keypoint_placed_on_one_shot_only_is_ignored_on_that_shot_only(tmp_path: Path) -> None:
    """K-shot with a keypoint unplaced on the second image (a corrected frame where it was not confirmed): the
    finder and the network both keep it, described by the shot that shows it; the paper's rule (training, MP-100)
    still drops it everywhere."""
    clip = write_clip(tmp_path, frames=3)
    first = SupportSet.from_files([write_support(clip, tmp_path / "a", index=0)])
    second = SupportSet.from_files([write_support(clip, tmp_path / "b", index=2)])
    visible = np.stack([first.visible[0], second.visible[0]])
    visible[1, 3] = False
    support = SupportSet(
        first.images + second.images, np.concatenate([first.keypoints, second.keypoints]), visible, first.names
    )
    model = CapeModel.from_preset("test", input_size=128)
    tracker = Tracker(model, support, TrackerConfig(smooth=False))
    assert tracker.finder.support.placed[3]
    assert not Tracker(model, support, TrackerConfig(finder="network", smooth=False)).embedding.mask.any()
    network, alone = model.encode_support_set(support), model.encode_support_set(first)
    assert not network.mask.any()
    torch.testing.assert_close(network.tokens[0, 3], alone.tokens[0, 3], rtol=1e-4, atol=1e-5)
    images, keypoints, shown = model.support_inputs(support)
    paper = model.encode_support(images[:, None], keypoints[:, None], shown[:, None], [[]])
    assert paper.mask[0, 3] and paper.mask.sum() == 1

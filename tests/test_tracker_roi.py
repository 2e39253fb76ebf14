"""ROI follow: the crop covers the keypoints with a margin, is square and inside the frame, falls back to the whole
frame, and crops map back to frame coordinates exactly; small supports are zoomed in to the working scale."""

from __future__ import annotations

import numpy as np
import pytest

from cape_track.model import SupportSet
from cape_track.model.transforms import SquareBox, crop_to_input, frame_to_input, input_to_frame
from cape_track.tracker.roi import RoiConfig, follow, support_fraction, whole_frame, zoom_support

CONFIG = RoiConfig(margin=0.25, min_side=0.05, min_visible=0.5)


def _inside(box: SquareBox, width: int, height: int) -> bool:
    return box.x0 >= 0 and box.y0 >= 0 and box.x0 + box.size <= width and box.y0 + box.size <= height


def test_box_covers_the_keypoints_with_margin() -> None:
    xy = np.array([[100.0, 80.0], [140.0, 90.0], [120.0, 110.0]])
    box = follow(xy, np.ones(3, bool), 640, 480, CONFIG)
    assert box.size == pytest.approx(40 * 1.5)
    assert box.center == pytest.approx((120.0, 95.0))
    assert _inside(box, 640, 480)


def test_box_is_clamped_into_the_frame() -> None:
    xy = np.array([[2.0, 3.0], [30.0, 20.0]])
    box = follow(xy, np.ones(2, bool), 640, 480, CONFIG)
    assert (box.x0, box.y0) == (0.0, 0.0) and _inside(box, 640, 480)
    far = follow(xy + [615.0, 460.0], np.ones(2, bool), 640, 480, CONFIG)
    assert far.x0 + far.size == 640 and far.y0 + far.size == 480


def test_box_has_a_minimum_side_and_never_exceeds_the_frame() -> None:
    one_point = follow(np.array([[50.0, 50.0], [50.0, 50.0]]), np.ones(2, bool), 640, 480, CONFIG)
    assert one_point.size == pytest.approx(32.0)  # 5 % of the longer side
    huge = follow(np.array([[0.0, 0.0], [639.0, 479.0]]), np.ones(2, bool), 640, 480, CONFIG)
    assert huge == whole_frame(640, 480)


def test_too_few_visible_keypoints_means_whole_frame() -> None:
    xy = np.array([[100.0, 80.0], [140.0, 90.0], [120.0, 110.0], [130.0, 100.0]])
    assert follow(xy, np.array([True, False, False, False]), 640, 480, CONFIG) == whole_frame(640, 480)
    assert follow(xy, np.array([True, True, False, False]), 640, 480, CONFIG) != whole_frame(640, 480)


def test_velocity_widens_the_box_towards_the_motion() -> None:
    xy = np.array([[100.0, 100.0], [120.0, 120.0]])
    still = follow(xy, np.ones(2, bool), 640, 480, CONFIG)
    moving = follow(xy, np.ones(2, bool), 640, 480, CONFIG, velocity=np.full((2, 2), 5.0), ahead=4)
    assert moving.center[0] > still.center[0] and moving.size > still.size
    low, high = moving.x0, moving.x0 + moving.size
    assert low <= 100 and high >= 140


@pytest.mark.parametrize("box", [SquareBox(30.5, 12.25, 57.0), whole_frame(160, 120), SquareBox(-20, -10, 300)])
def test_crop_maps_back_to_the_frame_exactly(box: SquareBox) -> None:
    """A bright dot at a known frame position appears in the crop where frame_to_input says, and input_to_frame
    takes that position back to the dot."""
    frame = np.zeros((120, 160, 3), np.uint8)
    dot = np.array([52.0, 40.0])
    frame[40, 52] = 255
    crop = crop_to_input(frame, box, 256)
    ys, xs = np.nonzero(crop[..., 0].astype(float) > 0)
    weights = crop[ys, xs, 0].astype(float)
    found_input = np.array([np.average(xs, weights=weights), np.average(ys, weights=weights)])
    expected_input = frame_to_input(dot, box, 256)
    assert np.abs(found_input - expected_input).max() < 0.5 * max(1.0, 256 / box.size)
    np.testing.assert_allclose(input_to_frame(expected_input, box, 256), dot, atol=1e-9)


def test_scale_matched_crop_shows_the_object_at_the_support_scale() -> None:
    # Support: keypoints spanning 100 px of a 400x200 image -> a quarter of the letterboxed input.
    kps = np.array([[[100.0, 50.0], [200.0, 120.0]]])
    fraction = support_fraction(kps, np.ones((1, 2), bool), [(400, 200)])
    assert fraction == pytest.approx(0.25)
    # In a 1000x1000 frame the object spans 50 px: the crop is 200 px, so it fills a quarter again.
    xy = np.array([[500.0, 500.0], [550.0, 530.0]])
    box = follow(xy, np.ones(2, bool), 1000, 1000, RoiConfig(object_fraction=fraction))
    assert box.size == pytest.approx(200.0)
    assert box.center == pytest.approx((525.0, 515.0))
    # An object larger than the frame allows gets a padded crop up to twice the frame.
    big = follow(np.array([[0.0, 0.0], [900.0, 900.0]]), np.ones(2, bool), 1000, 1000, RoiConfig(object_fraction=0.25))
    assert big.size == pytest.approx(2000.0)


def test_support_fraction_needs_a_spread() -> None:
    one = np.array([[[10.0, 10.0]]])
    assert support_fraction(one, np.ones((1, 1), bool), [(100, 100)]) is None


def _dotted_support(size: tuple[int, int], points: np.ndarray, visible: np.ndarray) -> SupportSet:
    """A black image with a differently coloured 5x5 square on each keypoint."""
    width, height = size
    image = np.zeros((height, width, 3), np.uint8)
    for i, (x, y) in enumerate(points.round().astype(int)):
        image[max(y - 2, 0) : y + 3, max(x - 2, 0) : x + 3] = (40 + 50 * i, 255 - 40 * i, 120)
    return SupportSet.from_arrays(image, points, visible)


def test_small_supports_are_zoomed_to_the_minimum_object_fraction() -> None:
    # Keypoints spanning 60 px of a 300x200 image: a fifth of the letterboxed support.
    points = np.array([[100.0, 90.0], [160.0, 100.0], [130.0, 130.0], [5.0, 5.0]])
    visible = np.array([True, True, True, False])  # the hidden one is far away and must not widen the crop
    support = _dotted_support((300, 200), points, visible)
    zoomed = zoom_support(support, 0.5, 128)
    assert zoomed.images[0].shape == (128, 128, 3)
    assert support_fraction(zoomed.keypoints, zoomed.visible, [(128, 128)]) == pytest.approx(0.5)
    for i in range(3):  # each keypoint still sits on its own dot
        x, y = zoomed.keypoints[0, i].round().astype(int)
        np.testing.assert_array_equal(zoomed.images[0][y, x], support.images[0][int(points[i, 1]), int(points[i, 0])])
    assert zoomed.names == support.names and zoomed.skeleton == support.skeleton
    np.testing.assert_array_equal(zoomed.visible, support.visible)


def test_large_supports_and_zoom_off_are_left_alone() -> None:
    points = np.array([[20.0, 20.0], [250.0, 180.0]])
    support = _dotted_support((300, 200), points, np.ones(2, bool))
    same = zoom_support(support, 0.5, 128)
    assert same.images[0] is support.images[0]
    np.testing.assert_array_equal(same.keypoints, support.keypoints)
    one_point = _dotted_support((300, 200), points, np.array([True, False]))
    assert zoom_support(one_point, 0.5, 128).images[0] is one_point.images[0]  # no extent to zoom to

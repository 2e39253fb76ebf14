"""Drawing: per-keypoint colours, the skeleton between visible keypoints, faded low scores, rings when hidden."""

from __future__ import annotations

import numpy as np

from cape_track.tracker.drawing import draw_pose, draw_text, keypoint_colors


def test_colours_are_distinct_and_stable() -> None:
    colors = keypoint_colors(17)
    assert colors.shape == (17, 3) and colors.dtype == np.uint8
    assert len({tuple(c) for c in colors}) == 17
    np.testing.assert_array_equal(colors, keypoint_colors(17))


def test_keypoints_get_their_colour_and_low_scores_fade() -> None:
    image = np.zeros((100, 200, 3), np.uint8)
    xy = np.array([[40.0, 50.0], [160.0, 50.0]])
    colors = np.array([[255, 0, 0], [255, 0, 0]], np.uint8)
    out = draw_pose(image, xy, scores=np.array([1.0, 0.0]), colors=colors)
    assert out is image
    strong, faded = image[50, 40].astype(int), image[50, 160].astype(int)
    np.testing.assert_array_equal(strong, [255, 0, 0])
    assert faded[0] < strong[0] and faded[1] > 0  # washed towards grey


def test_skeleton_only_between_visible_keypoints() -> None:
    image = np.zeros((100, 200, 3), np.uint8)
    xy = np.array([[20.0, 50.0], [100.0, 50.0], [180.0, 50.0]])
    draw_pose(image, xy, visible=np.array([True, True, False]), skeleton=[(0, 1), (1, 2)])
    assert image[50, 60].any()  # edge 0-1 drawn
    assert not image[50, 140].any()  # edge 1-2 touches a hidden keypoint
    assert image[50, 180].sum() == 0 and image[50, 178:183].any()  # hidden: a ring, not a filled dot


def test_text_is_drawn() -> None:
    image = np.zeros((40, 200, 3), np.uint8)
    draw_text(image, "12.0 fps")
    assert (image == 255).any()

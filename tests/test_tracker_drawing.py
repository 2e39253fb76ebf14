"""Drawing: per-keypoint colours that depend on the index alone, the skeleton between visible keypoints, scores
as opacity over the image, hidden keypoints not drawn, names beside the points."""

from __future__ import annotations

import numpy as np

from cape_track.tracker.drawing import draw_pose, draw_text, hex_color, keypoint_colors


def test_colours_are_distinct_and_do_not_change_as_keypoints_are_added() -> None:
    colors = keypoint_colors(17)
    assert colors.shape == (17, 3) and colors.dtype == np.uint8
    assert len({tuple(c) for c in colors}) == 17
    np.testing.assert_array_equal(colors[:5], keypoint_colors(5))  # keypoint i keeps its colour for every N
    np.testing.assert_array_equal(colors[:1], keypoint_colors(1))
    assert hex_color((255, 0, 16)) == "#ff0010"
    many = keypoint_colors(100)
    assert len({tuple(c) for c in many}) == 100  # no two keypoints share a colour, even a hundred


def test_keypoints_get_their_colour_and_low_scores_are_see_through() -> None:
    image = np.full((100, 300, 3), (0, 0, 200), np.uint8)  # a blue background
    xy = np.array([[40.0, 50.0], [150.0, 50.0], [260.0, 50.0]])
    colors = np.array([[255, 0, 0]] * 3, np.uint8)
    out = draw_pose(image, xy, scores=np.array([1.0, 0.3, 0.0]), colors=colors)
    assert out is image
    strong, mid, weak = (image[50, int(x)].astype(int) for x in xy[:, 0])
    np.testing.assert_array_equal(strong, [255, 0, 0])
    assert strong[0] > mid[0] > weak[0] > 0  # redder with the score
    assert strong[2] < mid[2] < weak[2] <= 200  # the background shows through a low score
    assert mid[0] < 0.6 * 255  # a score of 0.3 is visibly faded, not nearly opaque


def test_hidden_keypoints_and_their_edges_are_not_drawn() -> None:
    image = np.zeros((100, 200, 3), np.uint8)
    xy = np.array([[20.0, 50.0], [100.0, 50.0], [180.0, 50.0]])
    draw_pose(image, xy, visible=np.array([True, True, False]), skeleton=[(0, 1), (1, 2)])
    assert image[50, 60].any()  # edge 0-1 drawn
    assert not image[50, 140].any()  # edge 1-2 touches a hidden keypoint
    assert not image[40:60, 170:190].any()  # the hidden keypoint itself
    ringed = draw_pose(np.zeros((100, 200, 3), np.uint8), xy, visible=np.array([True, True, False]), rings=True)
    assert ringed[50, 180].sum() == 0 and ringed[45:56, 175:186].any()  # where it can still be edited: a ring


def test_names_are_written_beside_visible_points_only() -> None:
    xy = np.array([[30.0, 60.0], [130.0, 60.0]])
    named = draw_pose(np.zeros((100, 200, 3), np.uint8), xy, names=["a", "b"], visible=np.array([True, False]))
    plain = draw_pose(np.zeros((100, 200, 3), np.uint8), xy, visible=np.array([True, False]))
    white = (named[40:58, 34:60].min(axis=-1) > 180).any()
    assert white and not plain[40:58, 34:60].any()
    assert not named[:, 100:].any()


def test_text_is_drawn() -> None:
    image = np.zeros((40, 200, 3), np.uint8)
    draw_text(image, "12.0 fps")
    assert (image == 255).any()

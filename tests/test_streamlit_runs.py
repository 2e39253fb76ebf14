"""The page's runs (streamlit_app/runs.py): where a correction starts and how far two runs disagree, per frame
and over the clip, with hidden points and missing frames left out."""

from __future__ import annotations

import numpy as np
import pytest

from cape_track.streamlit_app.runs import correction_points, disagreement, mean_disagreement, row_of
from cape_track.tracker.tracks import Tracks


def _tracks(xy: list, visible: list, index: list[int] | None = None, names: tuple[str, ...] = ("a", "b")) -> Tracks:
    xy = np.asarray(xy, np.float64)
    return Tracks(names, np.asarray(index if index is not None else range(len(xy))), xy, np.asarray(visible, bool))


def test_a_correction_starts_from_the_visible_tracked_points() -> None:
    t = _tracks([[[1, 2], [3, 4]], [[5, 6], [7, 8]]], [[True, True], [True, False]], index=[10, 11])
    assert row_of(t, 11) == 1 and row_of(t, 3) is None
    assert correction_points(t, 11) == [(5.0, 6.0), None]
    assert correction_points(t, 12) == [None, None]  # a frame the run did not reach: nothing pre-filled


def test_disagreement_per_frame_and_over_the_clip() -> None:
    a = _tracks([[[0, 0], [0, 0]], [[0, 0], [10, 0]], [[0, 0], [0, 0]]], [[True, True], [True, True], [True, False]])
    b = _tracks([[[3, 4], [0, 0]], [[0, 0], [10, 2]]], [[True, False], [True, True]])  # stopped after 2 frames
    np.testing.assert_allclose(disagreement(a, b, 0), [5.0, np.nan])  # b hides keypoint b on frame 0
    np.testing.assert_allclose(disagreement(a, b, 1), [0.0, 2.0])
    assert np.isnan(disagreement(a, b, 2)).all()  # b never reached frame 2
    np.testing.assert_allclose(mean_disagreement(a, b), [2.5, 2.0])
    never = _tracks([[[0, 0], [0, 0]]], [[True, False]])
    np.testing.assert_allclose(mean_disagreement(never, never), [0.0, np.nan])
    with pytest.raises(ValueError, match="different keypoints"):
        disagreement(a, _tracks([[[0, 0]]], [[True]], names=("c",)), 0)

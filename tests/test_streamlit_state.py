"""The page's annotation state (streamlit_app/state.py): clicks, drags, deletes, K-shot keypoint lists, names,
undo, and the keypoint file round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cape_track.model import KeypointFile, SupportFileError
from cape_track.streamlit_app.state import Annotation, AnnotationError, History, pointer_edit


def _shot(size: tuple[int, int] = (160, 120)) -> Annotation:
    return Annotation().add_shot(Path("ref.png"), "ref.png", size)


def _click(x: float, y: float, width: int = 160, height: int = 120, t: int = 0) -> dict:
    return {"x1": x, "y1": y, "x2": x, "y2": y, "width": width, "height": height, "unix_time": t}


def test_clicks_place_keypoints_in_order_and_map_display_to_image_pixels() -> None:
    a = _shot()
    a = pointer_edit(a, 0, _click(10, 20))  # shown at natural size
    a = pointer_edit(a, 0, _click(99.5, 59.5, width=320, height=240))  # shown twice as large
    assert a.names == ("kp0", "kp1")
    assert a.shots[0].xy == ((10.0, 20.0), (49.5, 29.5))  # pixel centres map to pixel centres
    assert a.shots[0].visible == (True, True)
    a = pointer_edit(a, 0, _click(5000, -30))
    assert a.shots[0].xy[2] == (159.0, 0.0)  # clamped into the image


def test_drag_moves_the_grabbed_keypoint_and_ignores_drags_elsewhere() -> None:
    a = pointer_edit(_shot(), 0, _click(50, 50))
    a = pointer_edit(a, 0, _click(100, 50))
    drag = {"x1": 52, "y1": 48, "x2": 70, "y2": 90, "width": 160, "height": 120, "unix_time": 1}
    moved = pointer_edit(a, 0, drag)
    assert moved.shots[0].xy == ((70.0, 90.0), (100.0, 50.0))
    nowhere = {**drag, "x1": 10, "y1": 110}
    assert pointer_edit(a, 0, nowhere) == a


def test_delete_renumbers_the_skeleton_and_every_shot() -> None:
    a = _shot()
    for x in (10, 40, 70, 100):
        a = a.place(0, (x, 30))
    a = a.link(0, 1).link(1, 2).link(2, 3).link(3, 0).link(1, 0)  # the last one exists already
    assert a.skeleton == ((0, 1), (1, 2), (2, 3), (3, 0))
    a = a.add_shot(Path("b.png"), "b.png", (80, 60)).place(1, (5, 5))
    a = a.delete(1)
    assert a.names == ("kp0", "kp2", "kp3")
    assert a.ids == (0, 2, 3)
    assert a.skeleton == ((1, 2), (2, 0))
    assert a.shots[1].xy == ((5.0, 5.0), None, None)
    assert a.place(0, (1, 1)).names == ("kp0", "kp2", "kp3", "kp4")  # a fresh name, never a taken one


def test_k_shot_clicks_follow_the_keypoint_list_and_only_shared_points_are_usable() -> None:
    a = _shot()
    for x in (10, 40, 70):
        a = a.place(0, (x, 30))
    a = a.add_shot(Path("b.png"), "b.png", (80, 60))
    assert a.shots[1].next_unplaced() == 0
    a = a.place(1, (1, 2)).place(1, (3, 4))
    assert a.shots[1].xy == ((1.0, 2.0), (3.0, 4.0), None)
    a = a.set_visible(0, 1, False)
    assert a.usable().tolist() == [True, False, False]
    a = a.place(1, (5, 6)).place(1, (7, 8))  # all placed on shot 1: a new keypoint, unplaced on shot 0
    assert a.names == ("kp0", "kp1", "kp2", "kp3") and a.shots[0].xy[3] is None
    images = [np.zeros((120, 160, 3), np.uint8), np.zeros((60, 80, 3), np.uint8)]
    support = a.support_set(images)
    assert support.shots == 2 and support.num_keypoints == 4
    assert support.visible.tolist() == [[True, False, True, False], [True, True, True, True]]


def test_too_few_keypoints_and_bad_names_are_annotation_errors() -> None:
    a = _shot()
    with pytest.raises(AnnotationError, match="too few keypoints"):
        a.support_set([np.zeros((120, 160, 3), np.uint8)])
    a = a.place(0, (1, 1)).place(0, (2, 2))
    with pytest.raises(AnnotationError, match="already used"):
        a.rename(1, "kp0")
    with pytest.raises(AnnotationError, match="empty"):
        a.rename(1, "  ")
    with pytest.raises(AnnotationError, match="itself"):
        a.link(1, 1)
    assert a.rename(1, " tail ").names == ("kp0", "tail")


def test_keypoint_file_round_trip(tmp_path: Path) -> None:
    a = _shot()
    for x in (10, 40, 70):
        a = a.place(0, (x, 30.25))
    a = a.rename(0, "nose").link(0, 2).set_visible(0, 1, False)
    a.keypoint_file(0).save(tmp_path / "ref.json")
    loaded = KeypointFile.load(tmp_path / "ref.json", image_size=(160, 120))
    back = _shot().with_file(0, loaded)
    assert (back.names, back.skeleton, back.shots[0].xy, back.shots[0].visible) == (
        a.names,
        a.skeleton,
        a.shots[0].xy,
        a.shots[0].visible,
    )


def test_loading_another_keypoint_list_is_refused_on_a_k_shot_support() -> None:
    other = KeypointFile.from_arrays([[1, 1], [2, 2]], names=["a", "b"], source="other.json")
    a = _shot().place(0, (5, 5)).add_shot(Path("b.png"), "b.png", (80, 60))
    with pytest.raises(AnnotationError, match="other.json: its keypoints"):
        a.with_file(1, other)
    with pytest.raises(SupportFileError, match="outside"):
        _shot((2, 2)).with_file(0, other)


def test_history_undo() -> None:
    h = History()
    h.apply(_shot())
    h.apply(h.current.place(0, (3, 4)))
    h.apply(h.current)  # no change, no step
    assert len(h.past) == 2
    h.undo()
    assert h.current.num_keypoints == 0 and h.can_undo
    h.undo()
    h.undo()
    assert h.current == Annotation() and not h.can_undo

"""The page's annotation state (streamlit_app/state.py): clicks, drags, deletes, K-shot keypoint lists, names,
undo, and the keypoint file round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cape_track.model import KeypointFile, SupportFileError
from cape_track.streamlit_app.state import Annotation, AnnotationError, History, View, link_click, pointer_edit


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


def test_k_shot_clicks_follow_the_keypoint_list_and_a_point_on_any_shot_is_usable() -> None:
    a = _shot()
    for x in (10, 40, 70):
        a = a.place(0, (x, 30))
    a = a.add_shot(Path("b.png"), "b.png", (80, 60))
    assert a.shots[1].next_unplaced() == 0
    a = a.place(1, (1, 2)).place(1, (3, 4))
    assert a.shots[1].xy == ((1.0, 2.0), (3.0, 4.0), None)
    a = a.set_visible(0, 1, False)
    assert a.usable().tolist() == [True, True, True]  # kp1 from shot 1, kp2 from shot 0: ignored per shot only
    assert a.set_visible(1, 1, False).usable().tolist() == [True, False, True]
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


def test_a_shot_can_come_with_its_points_prefilled() -> None:
    """A corrected video frame: the tracked points placed (clamped into the image), None where the tracker hid
    the keypoint, so only the points shown count as confirmed."""
    a = _shot().place(0, (10, 10)).place(0, (20, 20)).place(0, (30, 30))
    b = a.add_shot(Path("f.png"), "clip_frame8.png", (80, 60), xy=[(5.0, 6.0), None, (90.0, -3.0)], frame=8)
    shot = b.shots[1]
    assert shot.xy == ((5.0, 6.0), None, (79.0, 0.0)) and shot.visible == (True, False, True) and shot.frame == 8
    assert b.shots[0].frame is None and b.shots[1].next_unplaced() == 1
    with pytest.raises(AnnotationError, match="2 points for 3 keypoints"):
        a.add_shot(Path("f.png"), "f.png", (80, 60), xy=[(1.0, 1.0), None])


def test_a_zoomed_view_maps_clicks_into_its_window() -> None:
    view = View.of((160, 120), zoom=2, center=(150, 10))  # kept inside the image: the top-right quarter
    assert (view.left, view.top, view.width, view.height) == (80.0, 0.0, 80.0, 60.0)
    event = {"width": 640, "height": 480}
    assert view.to_image(event, 319.5, 239.5) == pytest.approx((119.5, 29.5))
    assert view.image_per_display(event) == pytest.approx(0.125)
    assert View.of((160, 120), zoom=0.5) == View.of((160, 120))  # never smaller than the whole image
    a = _shot().place(0, (100.0, 20.0))
    drag = {"x1": 163.5, "y1": 163.5, "x2": 243.5, "y2": 163.5, "width": 640, "height": 480}  # starts on the point
    assert pointer_edit(a, 0, drag, view).shots[0].xy[0] == pytest.approx((110.0, 20.0))


def test_linking_by_two_clicks_joins_and_a_third_pair_click_unjoins() -> None:
    a = _shot().place(0, (10, 10)).place(0, (100, 50)).place(0, (150, 100))

    def at(x: float, y: float) -> dict:
        return {"x1": x, "y1": y, "x2": x, "y2": y, "width": 160, "height": 120}  # display = image px

    a, pending = link_click(a, 0, at(11, 9), None)
    assert pending == 0 and a.skeleton == ()
    a, pending = link_click(a, 0, at(150, 99), pending)
    assert pending is None and a.skeleton == ((0, 2),)
    b, pending = link_click(a, 0, at(60, 60), None)  # away from every keypoint: nothing picked
    assert pending is None and b == a
    b, pending = link_click(a, 0, at(10, 10), None)
    b, pending = link_click(b, 0, at(10, 10), pending)  # the picked one again: the pick is dropped
    assert pending is None and b == a
    _, pending = link_click(a, 0, at(150, 100), None)
    a, _ = link_click(a, 0, at(10, 10), pending)  # the same pair in the other order removes the edge
    assert a.skeleton == ()


def test_a_zoomed_view_is_whole_pixels_for_any_zoom() -> None:
    """The canvas crops exactly the view, so a size the zoom does not divide must still give whole pixels."""
    for zoom in (2, 3, 4):
        view = View.of((1280, 721), zoom=zoom, center=(1279.0, 0.3))
        assert all(float(v).is_integer() for v in (view.left, view.top, view.width, view.height))
        assert view.left + view.width == 1280 and view.top == 0


def test_a_link_pick_is_an_id_and_a_deleted_pick_is_dropped() -> None:
    a = _shot().place(0, (10, 10)).place(0, (100, 50)).place(0, (150, 100))
    at = {"x1": 150, "y1": 100, "x2": 150, "y2": 100, "width": 160, "height": 120}
    _, pending = link_click(a, 0, at, None)
    assert pending == a.ids[2]
    b = a.delete(2)  # the picked keypoint goes away (delete, undo, a shorter file)
    b2, pending = link_click(b, 0, {**at, "x1": 10, "y1": 10, "x2": 10, "y2": 10}, pending)
    assert b2.skeleton == () and pending == b.ids[0]  # the stale pick is dropped; this click picks anew


def test_a_click_on_a_corrected_frame_never_adds_a_keypoint() -> None:
    a = _shot().place(0, (10, 10)).place(0, (20, 20))
    b = a.add_shot(Path("f.png"), "f.png", (160, 120), xy=[(30.0, 30.0), None])
    click = {"x1": 60.0, "y1": 60.0, "x2": 60.0, "y2": 60.0, "width": 160, "height": 120}
    placed = pointer_edit(b, 1, click, grow=False)
    assert placed.shots[1].xy[1] == (60.0, 60.0) and placed.num_keypoints == 2  # the hidden one is placed
    assert pointer_edit(placed, 1, click, grow=False) == placed  # all placed: nothing changes
    assert pointer_edit(placed, 1, click).num_keypoints == 3  # on a support image a click adds one

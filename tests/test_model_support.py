"""The support-file format: ref.json validation with one-line errors, round trip, images, K-shot support sets."""

from __future__ import annotations

import json
import re

import cv2
import numpy as np
import pytest

from cape_track.model.errors import SupportFileError
from cape_track.model.support import KeypointFile, SupportSet, load_image


def assert_one_line_error(excinfo: pytest.ExceptionInfo, where: object, problem: str) -> None:
    """The house error form: `<file>: <what is wrong> (<what to do>)`, on one line."""
    message = str(excinfo.value)
    assert "\n" not in message
    assert message.startswith(f"{where}: "), message
    assert problem in message, message
    assert re.fullmatch(r".+: .+ \(.+\)", message), message


def test_load_reads_every_field(support_files):
    kp = KeypointFile.load(support_files.keypoints, image_size=support_files.size)
    assert kp.keypoints.dtype == np.float64 and kp.keypoints.shape == (5, 2)
    np.testing.assert_array_equal(kp.keypoints, support_files.data["keypoints"])
    assert kp.visible.dtype == bool and kp.visible.tolist() == [True, True, True, False, True]
    assert kp.names == ("top_left", "top_right", "bottom_right", "bottom_left", "centre")
    assert kp.skeleton == ((0, 1), (1, 2), (2, 3), (3, 0))


def test_optional_fields_default(support_files):
    path = support_files.variant(names=None, visible=None, skeleton=None)
    kp = KeypointFile.load(path)
    assert kp.names == ("kp0", "kp1", "kp2", "kp3", "kp4")
    assert kp.visible.all()
    assert kp.skeleton == ()


def test_empty_skeleton_and_boolean_visibility(support_files):
    kp = KeypointFile.load(support_files.variant(skeleton=[], visible=[True, False, True, True, True]))
    assert kp.skeleton == ()
    assert kp.visible.tolist() == [True, False, True, True, True]


def test_save_load_round_trip_is_exact(support_files, tmp_path):
    original = KeypointFile.load(
        support_files.variant(keypoints=[[0.1, 1 / 3], [-0.5, 47.5], [63.5, 0], [1e-9, 2], [5, 6]])
    )
    original.save(tmp_path / "out.json")
    again = KeypointFile.load(tmp_path / "out.json")
    np.testing.assert_array_equal(again.keypoints, original.keypoints)
    np.testing.assert_array_equal(again.visible, original.visible)
    assert (again.names, again.skeleton) == (original.names, original.skeleton)
    written = json.loads((tmp_path / "out.json").read_text())
    assert written["keypoints"][0] == [0.1, 1 / 3]
    assert written["visible"] == support_files.data["visible"]
    assert written["skeleton"] == support_files.data["skeleton"]


def test_saving_the_fixture_reproduces_its_json(support_files, tmp_path):
    KeypointFile.load(support_files.keypoints).save(tmp_path / "out.json")
    assert json.loads((tmp_path / "out.json").read_text()) == support_files.data


def test_half_pixel_border_is_inside(support_files):
    corners = [[-0.5, -0.5], [63.5, 47.5], [-0.5, 47.5], [63.5, -0.5], [0, 0]]
    KeypointFile.load(support_files.variant(keypoints=corners), image_size=support_files.size)


def test_hidden_keypoints_may_lie_outside(support_files):
    path = support_files.variant(keypoints=[[1, 1], [2, 2], [3, 3], [-40, 900], [4, 4]])
    KeypointFile.load(path, image_size=support_files.size)


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"keypoints": None}, 'no "keypoints" entry'),
        ({"keypoints": []}, "no keypoints at all"),
        ({"keypoints": {"a": [1, 2]}}, "keypoints is an object, not a list"),
        ({"keypoints": [[1, 2], [3], [4, 5], [6, 7], [8, 9]]}, "keypoint 1 is [3], not a pair of numbers"),
        ({"keypoints": [[1, 2], [3, 4], 5, [6, 7], [8, 9]]}, "keypoint 2 is 5, not a pair of numbers"),
        ({"keypoints": [[1, 2], [3, 4], [5, 6, 7], [6, 7], [8, 9]]}, "keypoint 2 is [5, 6, 7], not a pair"),
        ({"keypoints": [[1, "2"], [3, 4], [5, 6], [6, 7], [8, 9]]}, 'keypoint 0 has a non-numeric y coordinate "2"'),
        ({"keypoints": [[1, 2], [3, 4], [5, 6], [6, 7], [None, 9]]}, "keypoint 4 has a non-numeric x coordinate null"),
        ({"keypoints": [[1, 2], [True, 4], [5, 6], [6, 7], [8, 9]]}, "keypoint 1 has a non-numeric x coordinate"),
        ({"keypoints": [[1.0, 2.0]] * 101, "names": None, "visible": None, "skeleton": None}, "101 keypoints, more"),
        ({"visible": [1, 1, 1]}, "visible has 3 flags for 5 keypoints"),
        ({"visible": "all"}, "visible is a string, not a list"),
        ({"visible": [1, 1, 2, 1, 1]}, "visible[2] is 2"),
        ({"visible": [1, 1, 1, 0.5, 1]}, "visible[3] is 0.5"),
        ({"names": ["a", "b"]}, "names has 2 names for 5 keypoints"),
        ({"names": "nose"}, "names is a string, not a list"),
        ({"names": ["a", "b", 3, "d", "e"]}, "names[2] is 3, not a non-empty string"),
        ({"names": ["a", "b", "", "d", "e"]}, 'names[2] is "", not a non-empty string'),
        ({"names": ["a", "b", "a", "d", "e"]}, "the name 'a' is used twice"),
        ({"skeleton": [[0, 1], [1, 5]]}, "skeleton edge 1 [1, 5] refers to a keypoint that does not exist"),
        ({"skeleton": [[0, -1]]}, "skeleton edge 0 [0, -1] refers to a keypoint that does not exist"),
        ({"skeleton": [[0, 1], [2]]}, "skeleton edge 1 is [2], not a pair of keypoint indices"),
        ({"skeleton": [[0, 1.0]]}, "skeleton edge 0 is [0, 1.0], not a pair"),
        ({"skeleton": [["0", "1"]]}, 'skeleton edge 0 is ["0", "1"], not a pair'),
        ({"skeleton": {"0": 1}}, "skeleton is an object, not a list"),
        ({"keypints": [[1, 2]]}, "unknown key 'keypints' (did you mean 'keypoints'?)"),
    ],
)
def test_malformed_content_is_refused_in_one_line(support_files, changes, problem):
    path = support_files.variant(**changes)
    with pytest.raises(SupportFileError) as excinfo:
        KeypointFile.load(path)
    assert_one_line_error(excinfo, path, problem)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{not json", "not valid JSON at line 1 column 2"),
        ("", "not valid JSON at line 1 column 1"),
        ("[[1, 2]]", "the top level is a list, not an object"),
        ('"ref"', "the top level is a string, not an object"),
        ('{"keypoints": [[1, NaN]]}', "keypoint 0 has a NaN y coordinate"),
        ('{"keypoints": [[Infinity, 1]]}', "keypoint 0 has an infinite x coordinate"),
        ('{"keypoints": [[1, 2], [-Infinity, 1]]}', "keypoint 1 has an infinite x coordinate"),
    ],
)
def test_malformed_text_is_refused_in_one_line(support_files, text, problem):
    path = support_files.raw(text)
    with pytest.raises(SupportFileError) as excinfo:
        KeypointFile.load(path)
    assert_one_line_error(excinfo, path, problem)


def test_missing_file(tmp_path):
    with pytest.raises(SupportFileError) as excinfo:
        KeypointFile.load(tmp_path / "nope.json")
    assert_one_line_error(excinfo, tmp_path / "nope.json", "no such keypoint file")


@pytest.mark.parametrize(
    ("point", "where"), [([-0.6, 5], "(-0.6, 5)"), ([63.6, 5], "(63.6, 5)"), ([5, 47.51], "(5, 47.51)")]
)
def test_visible_points_outside_the_image_are_refused(support_files, point, where):
    path = support_files.variant(keypoints=[[1, 1], [2, 2], point, [3, 3], [4, 4]])
    KeypointFile.load(path)  # fine without an image size
    with pytest.raises(SupportFileError) as excinfo:
        KeypointFile.load(path, image_size=support_files.size)
    assert_one_line_error(excinfo, path, f"keypoint 2 at {where} lies outside the 64x48 support image")


def test_construction_validates_too():
    kp = KeypointFile.from_arrays(np.array([[1.0, 2.0], [3.0, 4.0]]), skeleton=[(0, 1)])
    assert kp.names == ("kp0", "kp1") and kp.skeleton == ((0, 1),) and kp.visible.tolist() == [True, True]
    with pytest.raises(SupportFileError) as excinfo:
        KeypointFile.from_arrays(np.array([[1.0, np.nan]]))
    assert_one_line_error(excinfo, "keypoints", "keypoint 0 has a NaN y coordinate")
    with pytest.raises(SupportFileError) as excinfo:
        KeypointFile(np.zeros((2, 2)), np.ones(2, bool), ("a", "b"), ((0, 2),))
    assert_one_line_error(excinfo, "keypoints", "skeleton edge 0 [0, 2] refers to a keypoint that does not exist")


# --- images ------------------------------------------------------------------------------------------------------


def test_load_image_is_rgb(tmp_path):
    bgr = np.zeros((6, 8, 3), np.uint8)
    bgr[..., 2] = 255  # red in OpenCV's channel order
    cv2.imwrite(str(tmp_path / "red.png"), bgr)
    image = load_image(tmp_path / "red.png")
    assert image.dtype == np.uint8 and image.shape == (6, 8, 3)
    assert (image[..., 0] == 255).all() and (image[..., 1:] == 0).all()


def test_load_image_expands_grayscale_and_drops_alpha(tmp_path):
    cv2.imwrite(str(tmp_path / "gray.png"), np.full((5, 7), 90, np.uint8))
    cv2.imwrite(str(tmp_path / "rgba.png"), np.full((5, 7, 4), (10, 20, 30, 128), np.uint8))
    gray = load_image(tmp_path / "gray.png")
    assert gray.shape == (5, 7, 3) and (gray == 90).all()
    rgba = load_image(tmp_path / "rgba.png")
    assert rgba.shape == (5, 7, 3) and rgba[0, 0].tolist() == [30, 20, 10]


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda p: None, "no such image file"),
        (lambda p: p.mkdir(), "a folder, not an image file"),
        (lambda p: p.write_bytes(b""), "not an image OpenCV can decode"),
        (lambda p: p.write_text("just some text"), "not an image OpenCV can decode"),
    ],
)
def test_bad_images_are_refused_in_one_line(tmp_path, make, problem):
    path = tmp_path / "ref.jpg"
    make(path)
    with pytest.raises(SupportFileError) as excinfo:
        load_image(path)
    assert_one_line_error(excinfo, path, problem)


# --- support sets ------------------------------------------------------------------------------------------------


def test_from_files_reads_the_json_beside_the_image(support_files):
    support = SupportSet.from_files([support_files.image])
    assert support.shots == 1 and support.num_keypoints == 5
    assert support.images[0].shape == (48, 64, 3) and support.images[0].dtype == np.uint8
    assert support.keypoints.shape == (1, 5, 2) and support.visible.shape == (1, 5)
    np.testing.assert_array_equal(support.keypoints[0], support_files.data["keypoints"])
    assert support.names[4] == "centre" and support.skeleton[0] == (0, 1)
    assert SupportSet.from_files(str(support_files.image)).shots == 1  # a single path is one shot, not characters


def test_k_shot_from_images_of_different_sizes(support_files):
    big = support_files.image.parent / "second.png"
    cv2.imwrite(str(big), np.full((120, 100, 3), 40, np.uint8))
    moved = (np.array(support_files.data["keypoints"]) * 2).tolist()
    support_files.variant("second.json", keypoints=moved)  # found beside second.png
    support = SupportSet.from_files([support_files.image, big])
    assert support.shots == 2 and support.num_keypoints == 5
    assert [im.shape for im in support.images] == [(48, 64, 3), (120, 100, 3)]
    np.testing.assert_array_equal(support.keypoints[1], moved)


def test_one_keypoint_file_for_every_shot(support_files):
    support = SupportSet.from_files([support_files.image] * 3, keypoint_paths=[support_files.keypoints])
    assert support.shots == 3
    np.testing.assert_array_equal(support.keypoints[2], support.keypoints[0])


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        (
            {"keypoints": [[1, 1]] * 4, "names": None, "visible": None, "skeleton": None},
            "4 keypoints but",
        ),
        ({"names": ["top_left", "top_right", "bottom_right", "bottom_left", "middle"]}, "keypoint 4 is named 'middle'"),
        ({"skeleton": [[0, 1]]}, "the skeleton differs from the one in"),
    ],
)
def test_k_shot_files_must_describe_the_same_keypoints(support_files, changes, problem):
    other = support_files.variant(**changes)
    with pytest.raises(SupportFileError) as excinfo:
        SupportSet.from_files([support_files.image] * 2, keypoint_paths=[support_files.keypoints, other])
    assert_one_line_error(excinfo, other, problem)
    assert str(support_files.keypoints) in str(excinfo.value)


def test_from_files_checks_points_against_each_image(support_files):
    small = support_files.image.parent / "small.png"
    cv2.imwrite(str(small), np.zeros((20, 20, 3), np.uint8))
    with pytest.raises(SupportFileError) as excinfo:
        SupportSet.from_files([support_files.image, small], keypoint_paths=support_files.keypoints)
    assert_one_line_error(
        excinfo, support_files.keypoints, f"keypoint 0 at (20, 10) lies outside the 20x20 image {small} ("
    )


def test_from_files_input_errors(support_files, tmp_path):
    with pytest.raises(SupportFileError, match=r"^support: no support images given \("):
        SupportSet.from_files([])
    with pytest.raises(SupportFileError) as excinfo:
        SupportSet.from_files([support_files.image] * 3, keypoint_paths=[support_files.keypoints] * 2)
    assert_one_line_error(excinfo, "support", "2 keypoint files for 3 images")
    lonely = tmp_path / "lonely.png"
    cv2.imwrite(str(lonely), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(SupportFileError) as excinfo:
        SupportSet.from_files([lonely])
    assert_one_line_error(excinfo, tmp_path / "lonely.json", "no such keypoint file")


def test_from_arrays_single_and_multi_shot():
    images = [np.zeros((30, 40, 3), np.uint8), np.zeros((50, 20, 3), np.uint8)]
    one = SupportSet.from_arrays(images[0], [[1.0, 2.0], [39.5, 29.5]], skeleton=[(0, 1)])
    assert one.shots == 1 and one.num_keypoints == 2 and one.names == ("kp0", "kp1")
    assert one.visible.dtype == bool and one.visible.all() and one.skeleton == ((0, 1),)
    two = SupportSet.from_arrays(images, np.ones((2, 3, 2)), visible=[1, 0, 1], names=["a", "b", "c"])
    assert two.keypoints.shape == (2, 3, 2) and two.visible.tolist() == [[True, False, True]] * 2
    stacked = SupportSet.from_arrays(np.zeros((2, 30, 40, 3), np.uint8), np.ones((2, 3, 2)))
    assert stacked.shots == 2 and stacked.images[1].shape == (30, 40, 3)


def test_with_shot_adds_a_frame_with_its_confirmed_keypoints():
    one = SupportSet.from_arrays(np.zeros((30, 40, 3), np.uint8), [[1.0, 2.0], [39.5, 29.5]], names=["a", "b"])
    frame = np.zeros((60, 80, 3), np.uint8)
    two = one.with_shot(frame, [[70.0, 50.0], [-5.0, 3.0]], visible=[True, False])  # b unconfirmed, off the frame
    assert two.shots == 2 and two.names == ("a", "b") and two.images[1] is frame
    assert two.visible.tolist() == [[True, True], [True, False]] and two.keypoints[1, 0].tolist() == [70.0, 50.0]
    assert one.shots == 1  # the support is a value: adding a shot makes a new one
    with pytest.raises(SupportFileError, match=r"new support shot: keypoints have shape \(1, 2\), expected \(2, 2\)"):
        one.with_shot(frame, [[1.0, 2.0]])
    with pytest.raises(SupportFileError, match=r"new support shot: visible has shape \(3,\)"):
        one.with_shot(frame, [[1.0, 2.0], [3.0, 4.0]], visible=[1, 1, 0])
    with pytest.raises(SupportFileError, match="support shot 1: keypoint 0 at \\(90, 2\\) lies outside"):
        one.with_shot(frame, [[90.0, 2.0], [3.0, 4.0]])


@pytest.mark.parametrize(
    ("images", "keypoints", "problem"),
    [
        (np.zeros((30, 40), np.uint8), [[1, 2]], "support image 0: expected [H, W, 3] uint8 RGB, got uint8 (30, 40)"),
        (np.zeros((30, 40, 3), np.float32), [[1, 2]], "support image 0: expected [H, W, 3] uint8 RGB, got float32"),
        (
            np.zeros((30, 40, 3), np.uint8),
            np.ones((2, 1, 2)),
            "support: keypoints have shape (2, 1, 2), expected [1, N, 2]",
        ),
        (
            np.zeros((30, 40, 3), np.uint8),
            [[1, 2], [40, 2]],
            "support shot 0: keypoint 1 at (40, 2) lies outside the 40x30",
        ),
        (np.zeros((30, 40, 3), np.uint8), [[1, np.inf]], "support shot 0: keypoint 0 has an infinite y coordinate"),
        (np.zeros((30, 40, 3), np.uint8), [[1, "a"]], "support: keypoints are not an array of numbers"),
        (np.zeros((30, 40, 3), np.uint8), [[1, 2], [3]], "support: keypoints are not an array of numbers"),
    ],
)
def test_from_arrays_refuses_bad_input(images, keypoints, problem):
    with pytest.raises(SupportFileError) as excinfo:
        SupportSet.from_arrays(images, keypoints)
    message = str(excinfo.value)
    assert message.startswith(problem) and "\n" not in message and message.endswith(")"), message

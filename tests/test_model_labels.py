"""Existing labels as the support (`--support-labels`): a COCO keypoints file, a DeepLabCut CollectedData (HDF5 and
CSV, both index layouts) and a SLEAP `.slp`, each written here the way those tools write them, give the same support
as the `ref.json` they were made from, and the same tracks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_media import write_clip, write_support

from cape_track.model import CapeError, CapeModel, SupportFileError, SupportSet
from cape_track.model.labels import support_from_labels
from cape_track.tracker import SourceError, cli
from cape_track.tracker.sinks import output_paths
from cape_track.tracker.sources import read_frame


@pytest.fixture
def reference(tmp_path: Path) -> tuple[Path, SupportSet]:
    clip = write_clip(tmp_path, frames=6)
    image = write_support(clip, tmp_path / "project", name="img001")
    spec = json.loads(image.with_suffix(".json").read_text())
    spec["visible"][2] = 0  # one hidden point: each format must carry it
    image.with_suffix(".json").write_text(json.dumps(spec))
    return clip.path, SupportSet.from_files([image])


def _write_coco(folder: Path, support: SupportSet) -> Path:
    xy, vis = support.keypoints[0], support.visible[0]
    triples = np.concatenate([np.where(vis[:, None], xy, 0.0), np.where(vis, 2, 0)[:, None]], 1).ravel().tolist()
    other = {"id": 7, "file_name": "unlabelled.png", "width": 10, "height": 10}
    data = {
        "images": [other, {"id": 1, "file_name": "img001.png", "width": 160, "height": 120}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "keypoints": triples, "num_keypoints": 4}],
        "categories": [
            {
                "id": 3,
                "name": "square",
                "keypoints": list(support.names),
                "skeleton": [[a + 1, b + 1] for a, b in support.skeleton],
            }
        ],
    }
    path = folder / "annotations.json"
    path.write_text(json.dumps(data))
    return path


def _dlc_frame(support: SupportSet, three_level_index: bool):
    import pandas as pd

    columns = pd.MultiIndex.from_product([["alice"], list(support.names), ["x", "y"]])
    columns.names = ["scorer", "bodyparts", "coords"]
    xy = np.where(support.visible[0][:, None], support.keypoints[0], np.nan).reshape(1, -1)
    if three_level_index:
        index = pd.MultiIndex.from_tuples([("labeled-data", "project", "img001.png")])
    else:
        index = pd.Index(["labeled-data/project/img001.png"])
    return pd.DataFrame(xy, index=index, columns=columns)


def _write_sleap(folder: Path, support: SupportSet) -> Path:
    sio = pytest.importorskip("sleap_io")
    skeleton = sio.Skeleton(
        nodes=list(support.names), edges=[(support.names[a], support.names[b]) for a, b in support.skeleton]
    )
    video = sio.Video.from_filename([str(folder / "img001.png")])
    points = np.where(support.visible[0][:, None], support.keypoints[0], np.nan)
    frame = sio.LabeledFrame(video=video, frame_idx=0, instances=[sio.Instance.from_numpy(points, skeleton=skeleton)])
    path = folder / "labels.slp"
    sio.save_slp(sio.Labels(labeled_frames=[frame], videos=[video], skeletons=[skeleton]), str(path))
    return path


def _same(a: SupportSet, b: SupportSet) -> None:
    assert a.names == b.names and a.skeleton == b.skeleton
    np.testing.assert_array_equal(a.visible, b.visible)
    np.testing.assert_allclose(a.keypoints[a.visible], b.keypoints[b.visible], atol=1e-6)
    np.testing.assert_array_equal(a.images[0], b.images[0])


@pytest.mark.parametrize("kind", ["coco", "dlc-h5", "dlc-csv", "dlc-csv-3", "sleap"])
def test_labels_give_the_support_of_ref_json(reference, kind: str) -> None:
    _, ref = reference
    folder = Path(ref_dir := reference[0].parent / "project")
    if kind == "coco":
        path = _write_coco(folder, ref)
    elif kind == "sleap":
        path = _write_sleap(folder, ref)
    else:
        pytest.importorskip("tables")
        path = folder / ("CollectedData_alice.h5" if kind == "dlc-h5" else "CollectedData_alice.csv")
        frame = _dlc_frame(ref, three_level_index=kind == "dlc-csv-3")
        if kind == "dlc-h5":
            frame.to_hdf(path, key="df_with_missing", mode="w")
        else:
            frame.to_csv(path)
        (ref_dir.parent / "config.yaml").write_text(
            "skeleton:\n" + "".join(f"- [{ref.names[a]}, {ref.names[b]}]\n" for a, b in ref.skeleton)
        )
    _same(support_from_labels(path), ref)
    _same(support_from_labels(path, image="img001.png"), ref)


def test_the_same_tracks_as_ref_json_through_the_cli(reference, tmp_path: Path) -> None:
    video, ref = reference
    folder = video.parent / "project"
    coco = _write_coco(folder, ref)
    checkpoint = tmp_path / "test.pt"
    torch.manual_seed(0)
    CapeModel.from_preset("test", input_size=128).save(checkpoint)
    base = [video, "--checkpoint", checkpoint]
    assert cli.main([str(a) for a in [*base, "--support", folder / "img001.png", "--out", tmp_path / "a"]]) == 0
    assert cli.main([str(a) for a in [*base, "--support-labels", coco, "--out", tmp_path / "b"]]) == 0
    a = json.loads(output_paths(tmp_path / "a", "clip")["json"].read_text())
    b = json.loads(output_paths(tmp_path / "b", "clip")["json"].read_text())
    assert a["names"] == b["names"] and a["skeleton"] == b["skeleton"]
    placed = ref.visible[0]  # a point hidden on every shot has no position to track (COCO stores it as 0, 0)
    for fa, fb in zip(a["frames"], b["frames"], strict=True):
        assert fa["visible"] == fb["visible"] and fa["scores"] == fb["scores"]
        assert np.array_equal(np.array(fa["keypoints"])[placed], np.array(fb["keypoints"])[placed])


def test_a_frame_of_the_video_as_the_support(reference, tmp_path: Path) -> None:
    """`--support-frame 3 --keypoints ref.json`: the support image is the decoded frame 3 of the input itself."""
    from cape_track.tracker.sources import open_source, read_frame

    video, ref = reference
    keypoints = video.parent / "project" / "img001.json"
    with open_source(video) as source:
        third = [f.image for f in source][3]
    np.testing.assert_array_equal(read_frame(video, 3), third)
    checkpoint = tmp_path / "test.pt"
    CapeModel.from_preset("test", input_size=128).save(checkpoint)
    argv = [video, "--checkpoint", checkpoint, "--support-frame", "3", "--keypoints", keypoints, "--out", tmp_path]
    assert cli.main([str(a) for a in argv]) == 0
    assert len(json.loads(output_paths(tmp_path, "clip")["json"].read_text())["frames"]) == 6
    with pytest.raises(SourceError, match="has no frame 99"):
        read_frame(video, 99)
    assert cli.main([str(a) for a in [video, "--checkpoint", checkpoint, "--support-frame", "3"]]) == 2


def test_bad_labels_are_one_line_errors(tmp_path: Path, reference) -> None:
    _, ref = reference
    folder = reference[0].parent / "project"
    coco = _write_coco(folder, ref)
    with pytest.raises(SupportFileError, match="labelled frame 3 asked for, the file has 1"):
        support_from_labels(coco, index=3)
    with pytest.raises(SupportFileError, match="no labelled image named 'x.png'"):
        support_from_labels(coco, image="x.png")
    (tmp_path / "broken.json").write_text('{"images": []}')
    with pytest.raises(SupportFileError, match="not a COCO keypoints file"):
        support_from_labels(tmp_path / "broken.json")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SupportFileError, match="not a labels file"):
        support_from_labels(tmp_path / "notes.txt")
    (tmp_path / "CollectedData_me.csv").write_text("scorer,me,me\nbodyparts,nose,nose\ncoords,x,y\n")  # no rows
    with pytest.raises(SupportFileError, match="no labelled frame"):
        support_from_labels(tmp_path / "CollectedData_me.csv")


def _set(data: dict, where: tuple, value: object) -> dict:
    target = data
    for key in where[:-1]:
        target = target[key]
    target[where[-1]] = value
    return data


@pytest.mark.parametrize(
    ("where", "value", "message"),
    [
        (("annotations", 0, "category_id"), 9, "has category_id 9, which no category with keypoint names has"),
        (("annotations", 0, "keypoints"), [1.0] * 11, "has 11 keypoint numbers, not x, y, v triples"),
        (("annotations", 0, "keypoints", 4), "a", "has a keypoint value 'a'"),
        (
            ("categories", 0, "skeleton"),
            [[0, 9]],
            r"skeleton edge \[0, 9\] is not a pair of keypoint numbers from 1 to",
        ),
        (("categories", 0, "skeleton"), 5, "has the skeleton 5, not a list"),
        (("images", 1, "file_name"), 7, "an image's file_name is 7, not a file name"),
        (("images",), "x", "lists of objects"),
        (("annotations", 0, "keypoints", 0), 10**400, "has a keypoint value 1000"),  # beyond a float's range
        (("categories", 0, "skeleton"), [[1, 10**400]], "skeleton edge"),
        (("images", 1, "id"), [1], "an image id or annotation image_id is not a number or a string"),
    ],
)
def test_malformed_coco_says_what_is_wrong(reference, where: tuple, value: object, message: str) -> None:
    _, ref = reference
    path = _write_coco(reference[0].parent / "project", ref)
    path.write_text(json.dumps(_set(json.loads(path.read_text()), where, value)))
    with pytest.raises(SupportFileError, match=message):
        support_from_labels(path)


def test_no_damage_to_a_coco_file_escapes_as_anything_but_a_one_line_error(reference) -> None:
    """Seeded random damage (values replaced by other JSON types, entries removed) to a valid COCO file: each gives
    a support or a one-line `CapeError`, never another exception."""
    _, ref = reference
    path = _write_coco(reference[0].parent / "project", ref)
    valid = json.loads(path.read_text())

    def places(node: object, at: tuple = ()) -> list[tuple]:
        children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
        return [at] * bool(at) + [p for key, child in children for p in places(child, (*at, key))]

    spots = places(valid)
    junk = [None, -1, 2.5, "x", "", [], {}, [1], [[1, 2]], float("nan"), float("inf"), True, 10**30, 10**400]
    rng = np.random.default_rng(0)
    outcomes = {"support": 0, "error": 0}
    for _ in range(300):
        data = json.loads(json.dumps(valid))
        for _ in range(rng.integers(1, 4)):
            where = spots[rng.integers(len(spots))]
            try:
                parent = data
                for key in where[:-1]:
                    parent = parent[key]
                if rng.random() < 0.2:
                    del parent[where[-1]]
                else:
                    parent[where[-1]] = json.loads(json.dumps(junk[rng.integers(len(junk))]))
            except (KeyError, IndexError, TypeError):  # an earlier change removed or replaced the path
                pass
        path.write_text(json.dumps(data))
        try:
            support_from_labels(path)
            outcomes["support"] += 1
        except CapeError as exc:
            assert "\n" not in str(exc)
            outcomes["error"] += 1
    assert outcomes["support"] and outcomes["error"]  # both kinds of damage occurred


def test_a_sleap_file_on_a_video_sleap_io_cannot_open(tmp_path: Path) -> None:
    """sleap-io opens MP4, AVI, MOV and MKV videos only. Handed the tracker's reader, a `.slp` on another container
    (MPEG-TS here, as `--export sleap` writes for such a clip) still gives its frame; without it, a one-line error."""
    sio = pytest.importorskip("sleap_io")
    clip = write_clip(tmp_path, frames=4, path=tmp_path / "clip.ts")
    skeleton = sio.Skeleton(nodes=["a", "b"], edges=[("a", "b")])
    video = sio.Video(filename=str(clip.path), open_backend=False)
    points = np.array([[10.0, 20.0], [30.0, 40.0]])
    frame = sio.LabeledFrame(video=video, frame_idx=2, instances=[sio.Instance.from_numpy(points, skeleton=skeleton)])
    path = tmp_path / "labels.slp"
    sio.save_slp(sio.Labels(labeled_frames=[frame], videos=[video], skeletons=[skeleton]), str(path))
    with pytest.raises(SupportFileError, match="the frame's image cannot be read"):
        support_from_labels(path)
    support = support_from_labels(path, read_frame=read_frame)
    expected = read_frame(clip.path, 2)
    beyond = sio.LabeledFrame(video=video, frame_idx=9, instances=[sio.Instance.from_numpy(points, skeleton=skeleton)])
    sio.save_slp(sio.Labels(labeled_frames=[beyond], videos=[video], skeletons=[skeleton]), str(tmp_path / "9.slp"))
    with pytest.raises(SourceError, match="has no frame 9"):  # the reader's own reason, not a vaguer one
        support_from_labels(tmp_path / "9.slp", read_frame=read_frame)
    assert not np.array_equal(expected, read_frame(clip.path, 0))  # the frame index is what picks the image
    np.testing.assert_array_equal(support.images[0], expected)
    np.testing.assert_allclose(support.keypoints[0], points)
    assert support.names == ("a", "b") and support.skeleton == ((0, 1),)

"""training.mp100: reading MP-100 annotation files like the official loader, and one-line errors for bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from reference_data import VECTORS

from cape_track.training.mp100 import DatasetError, annotation_file, box_center_scale, clean_bbox, load_split

REFERENCE = VECTORS / "synthetic_mp100"


def _vectors() -> dict:
    return json.loads((VECTORS / "data_pipeline_vectors.json").read_text())


@pytest.mark.parametrize("case", range(3))
def test_bbox_clean_center_scale_match_official(case: int) -> None:
    v = _vectors()["bbox_to_center_scale"][case]
    box = clean_bbox(v["bbox_xywh"], *v["image_wh"])
    np.testing.assert_allclose(box, v["clean_bbox"], rtol=0, atol=1e-9)
    center, scale = box_center_scale(box)
    assert center.dtype == scale.dtype == np.float32
    np.testing.assert_array_equal(center, np.float32(v["center"]))
    np.testing.assert_array_equal(scale, np.float32(v["scale"]))
    assert max(box[2:]) == v["pck_normalizer"]


def test_degenerate_box_is_dropped() -> None:
    assert clean_bbox([10, 10, 1, 30], 100, 100) is None  # width 1 -> x2 == x1
    assert clean_bbox([200, 10, 30, 30], 100, 100) is None  # entirely right of the image


def test_reference_dataset_reads_in_official_order() -> None:
    split = load_split(REFERENCE / "annotations" / "mp100_splitX_test.json", REFERENCE / "images")
    raw = json.loads((REFERENCE / "annotations" / "mp100_splitX_test.json").read_text())
    assert [c.name for c in split.categories.values()] == [c["name"] for c in raw["categories"]]
    assert len(split.instances) == len(raw["annotations"]) == 18
    assert split.categories[8].skeleton[0] == (0, 1)
    # cat2obj: object indices grouped by category, in image order
    assert split.by_category == {3: tuple(range(9)), 8: tuple(range(9, 18))}
    first = split.instances[0]
    assert first.num_keypoints == 5 and first.visible.all()
    second = split.instances[1]  # keypoints with v = 0 are invisible, v = 1 and 2 visible
    np.testing.assert_array_equal(second.visible, [True, False, True, True, False])
    assert second.normalizer == max(second.bbox[2:])


def test_generated_layout_loads(generated_mp100: Path) -> None:
    for subset in ("train", "val", "test"):
        split = load_split(annotation_file(generated_mp100, 1, subset), generated_mp100 / "images")
        assert split.instances and all(len(v) == 6 for v in split.by_category.values())
        for inst in split.instances:
            assert inst.image_path.is_file()
            assert inst.keypoints.shape == (split.categories[inst.category_id].num_keypoints, 2)


def test_wrong_split_subset_and_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not an MP-100 split"):
        annotation_file(tmp_path, 6, "train")
    with pytest.raises(DatasetError, match="not an MP-100 subset"):
        annotation_file(tmp_path, 1, "training")
    with pytest.raises(DatasetError, match="dataset root not found"):
        annotation_file(tmp_path / "nowhere", 1, "train")
    with pytest.raises(DatasetError, match="annotation file not found"):
        load_split(tmp_path / "annotations" / "mp100_split1_train.json", tmp_path)


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def _minimal() -> dict:
    return {
        "images": [{"id": 1, "file_name": "a/1.jpg", "width": 50, "height": 40}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [5, 5, 20, 20], "keypoints": [10, 10, 2, 0, 0, 0],
             "num_keypoints": 1, "area": 400, "iscrowd": 0}
        ],
        "categories": [{"id": 7, "name": "thing", "keypoints": ["a", "b"], "skeleton": [[0, 1]]}],
    }  # fmt: skip


def _drop(entry: dict, key: str) -> None:
    del entry[key]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: "not json{", "not a JSON file"),
        (lambda d: [1, 2], "expected a JSON object"),
        (lambda d: {k: v for k, v in d.items() if k != "categories"}, "no categories list"),
        (lambda d: _drop(d["categories"][0], "skeleton"), "has no skeleton .*Pose Anything"),
        (lambda d: d["categories"][0].update(skeleton=[[1, 2]]), r"skeleton edge \[1, 2\] outside keypoints 0-1"),
        (lambda d: d["annotations"][0].update(keypoints=[1, 2, 2]), "needs 6 keypoint numbers"),
        (lambda d: _drop(d["annotations"][0], "iscrowd"), "lacks one of id/image_id/category_id/iscrowd"),
        (lambda d: d["annotations"][0].update(category_id=3), "unknown category_id 3"),
        (lambda d: d["images"].append(dict(d["images"][0])), "image id 1 appears twice"),
    ],
)
def test_not_mp100_shaped_is_one_line_error(tmp_path: Path, change, message: str) -> None:
    data = _minimal()
    changed = change(data)
    if changed is not None:
        data = changed
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "1.jpg").write_bytes(b"")
    with pytest.raises(DatasetError, match=message) as err:
        load_split(_write(tmp_path, data), tmp_path)
    assert "\n" not in str(err.value)


def test_official_silent_filters_are_counted(tmp_path: Path) -> None:
    data = _minimal()
    base = data["annotations"][0]
    data["annotations"] += [
        {**base, "id": 2, "iscrowd": 1},
        {**base, "id": 3, "bbox": [5, 5, 1, 20]},
        {**base, "id": 4, "keypoints": [0, 0, 0, 0, 0, 0]},
        {**base, "id": 5, "num_keypoints": 0},
        {**base, "id": 6, "area": 0},
    ]
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "1.jpg").write_bytes(b"")
    split = load_split(_write(tmp_path, data), tmp_path)
    assert [i.index for i in split.instances] == [0]
    assert sum(split.skipped.values()) == 5


def test_missing_images_report_count_and_category_then_skip(tmp_path: Path) -> None:
    root = tmp_path / "ref"
    shutil.copytree(REFERENCE, root)
    for name in ("100.png", "101.png", "102.png"):
        (root / "images" / "toy_quad" / name).unlink()
    ann = root / "annotations" / "mp100_splitX_test.json"
    with pytest.raises(DatasetError, match=r"3 objects have no image .*toy_quad: 3.*--skip-missing-images"):
        load_split(ann, root / "images")
    with pytest.warns(UserWarning, match="toy_quad: 3"):
        split = load_split(ann, root / "images", skip_missing_images=True)
    assert len(split.by_category[3]) == 6 and len(split.by_category[8]) == 9
    assert split.skipped["image missing"] == 3

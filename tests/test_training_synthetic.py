"""training.synthetic: a generated dataset in exactly the MP-100 layout, deterministic and category-disjoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cape_track.model.support import load_image
from cape_track.training.mp100 import annotation_file, load_split
from cape_track.training.synthetic import TEMPLATES, category_splits, generate, main


def test_layout_and_annotations_are_mp100_shaped(generated_mp100: Path) -> None:
    for split_id in (1, 2):
        for subset in ("train", "val", "test"):
            path = annotation_file(generated_mp100, split_id, subset)
            raw = json.loads(path.read_text())
            split = load_split(path, generated_mp100 / "images")  # validates the format
            assert len(split.instances) == len(raw["annotations"])
            for ann, image in zip(raw["annotations"], raw["images"], strict=True):
                assert ann["image_id"] == image["id"] and ann["iscrowd"] == 0
                assert image["file_name"].startswith(next(c["name"] for c in raw["categories"]
                                                          if c["id"] == ann["category_id"]) + "/")  # fmt: skip
                kpts = np.array(ann["keypoints"]).reshape(-1, 3)
                shown = kpts[:, 2] > 0
                assert ann["num_keypoints"] == shown.sum() > 0
                assert (kpts[~shown, :2] == 0).all()
                x, y, w, h = ann["bbox"]
                inside = (
                    (kpts[shown, 0] >= x)
                    & (kpts[shown, 0] <= x + w)
                    & (kpts[shown, 1] >= y)
                    & (kpts[shown, 1] <= y + h)
                )
                assert inside.all()
                assert (kpts[shown, 0] <= image["width"] - 1).all() and (kpts[shown, 1] <= image["height"] - 1).all()
    image = load_image(split.instances[0].image_path)
    raw_image = next(i for i in raw["images"] if i["file_name"] == str(split.instances[0].image_path.relative_to(
        generated_mp100 / "images")))  # fmt: skip
    assert image.shape == (raw_image["height"], raw_image["width"], 3)


def test_same_seed_same_dataset(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", categories=3, images_per_category=2, size_range=(64, 96), seed=5)
    b = generate(tmp_path / "b", categories=3, images_per_category=2, size_range=(64, 96), seed=5)
    assert [p.read_text() for p in a] == [p.read_text() for p in b]
    first = sorted((tmp_path / "a" / "images").rglob("*.jpg"))[0]
    assert first.read_bytes() == (tmp_path / "b" / first.relative_to(tmp_path / "a")).read_bytes()
    c = generate(tmp_path / "c", categories=3, images_per_category=2, size_range=(64, 96), seed=6)
    assert [p.read_text() for p in a] != [p.read_text() for p in c]


def test_each_category_is_a_test_category_in_exactly_one_split() -> None:
    n = len(TEMPLATES)
    test_counts = np.zeros(n, int)
    for split in range(1, 6):
        parts = category_splits(n, split)
        assert sorted(sum(parts.values(), [])) == list(range(n))  # a partition
        assert (len(parts["train"]), len(parts["val"]), len(parts["test"])) == (7, 1, 2)
        test_counts[parts["test"]] += 1
    assert (test_counts == 1).all()


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main([str(tmp_path / "d"), "--categories", "3", "--images", "2", "--max-size", "96", "--min-size", "64"]) == 0
    )
    assert (tmp_path / "d" / "annotations" / "mp100_split1_test.json").is_file()
    assert "wrote 6 images" in capsys.readouterr().out
    with pytest.raises(SystemExit) as err:
        main([str(tmp_path / "e"), "--categories", "2"])
    assert err.value.code == 2

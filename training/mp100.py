"""MP-100 on disk: the published COCO-style annotation files, validated and read into per-object records.

Reproduces the official loader (`TransformerPoseDataset._get_db`, spec §3 and §14): the same object order (images
in file order, then their annotations), the same silent filters, the same clean bounding box, centre and scale.
What it adds is checking: a file that is not MP-100 shaped, or images missing under the root, is a one-line error.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cape_track.model import CapeError
from cape_track.model.errors import is_number, short

SUBSETS = ("train", "val", "test")
SPLITS = (1, 2, 3, 4, 5)
PIXEL_STD = 200.0  # mmpose's scale unit: scale = box size / 200
BOX_PADDING = 1.25  # context around the box in the crop (official `_xywh2cs`)


class DatasetError(CapeError, ValueError):
    """The dataset root, an annotation file or the images under it are missing or malformed."""


@dataclass(frozen=True)
class Category:
    """One object category: its keypoint names and its skeleton (0-indexed keypoint pairs)."""

    id: int
    name: str
    keypoint_names: tuple[str, ...]
    skeleton: tuple[tuple[int, int], ...]

    @property
    def num_keypoints(self) -> int:
        return len(self.keypoint_names)


@dataclass(frozen=True, eq=False)
class Instance:
    """One annotated object: the official `db` record. `index` is the official object id (`bbox_id`)."""

    index: int
    image_path: Path
    category_id: int
    keypoints: np.ndarray  # [N, 2] float32 image px, as annotated (invisible ones are usually 0, 0)
    visible: np.ndarray  # [N] bool: annotation visibility v > 0
    bbox: tuple[float, float, float, float]  # clean box x, y, w, h (image px)
    center: np.ndarray  # [2] float32 image px, centre of the clean box
    scale: np.ndarray  # [2] float32, square side / 200 x 1.25 (mmpose convention)

    @property
    def num_keypoints(self) -> int:
        return len(self.visible)

    @property
    def normalizer(self) -> float:
        """The PCK normaliser: the longer side of the clean box (spec §15)."""
        return max(self.bbox[2], self.bbox[3])


@dataclass(frozen=True, eq=False)
class Mp100Split:
    """One annotation file read into records: categories in file order and their objects in official order."""

    ann_file: Path
    image_root: Path
    categories: dict[int, Category]  # in file order (= COCO getCatIds order, which episode sampling follows)
    instances: tuple[Instance, ...]
    by_category: dict[int, tuple[int, ...]]  # category id -> instance indices (the official `cat2obj`)
    skipped: dict[str, int] = field(default_factory=dict)  # why annotations were left out -> how many

    @property
    def name(self) -> str:
        return self.ann_file.name


def annotation_file(data_root: str | Path, split: int, subset: str) -> Path:
    """`ROOT/annotations/mp100_split{split}_{subset}.json`, the published layout."""
    if subset not in SUBSETS:
        raise DatasetError(f"subset {subset!r}: not an MP-100 subset (use one of {', '.join(SUBSETS)})")
    if split not in SPLITS:
        raise DatasetError(f"split {split!r}: not an MP-100 split (use 1-5)")
    root = Path(data_root)
    if not root.is_dir():
        raise DatasetError(
            f"{root}: dataset root not found (expected ROOT/annotations/*.json and ROOT/images/; "
            "pass --set data_root=DIR, or generate a stand-in with `python -m cape_track.training.synthetic DIR`)"
        )
    return root / "annotations" / f"mp100_split{split}_{subset}.json"


def load_split(
    ann_file: str | Path,
    image_root: str | Path,
    *,
    skip_missing_images: bool = False,
    max_keypoints: int = 100,
) -> Mp100Split:
    """Read and validate one MP-100 annotation file.

    Images are checked on disk: by default a missing image is an error that says how many are missing and in which
    categories; with `skip_missing_images` their objects are left out with a warning (what the official training
    loader does silently). Annotations the official loader drops (no box, empty keypoints, degenerate box, crowd)
    are dropped too and counted in `skipped`.
    """
    ann_file, image_root = Path(ann_file), Path(image_root)
    if not ann_file.is_file():
        raise DatasetError(
            f"{ann_file}: annotation file not found (MP-100 layout: ROOT/annotations/mp100_splitN_SUBSET.json)"
        )
    if not image_root.is_dir():
        raise DatasetError(f"{image_root}: image folder not found (MP-100 layout: ROOT/images/<category>/<file>)")
    try:
        data = json.loads(ann_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{ann_file.name}: not a JSON file ({e})") from None
    where = ann_file.name
    images, annotations, categories = _check_top_level(data, where)
    cats = {c.id: c for c in (_parse_category(raw, where, max_keypoints) for raw in categories)}
    if len(cats) != len(categories):
        raise DatasetError(f"{where}: duplicate category ids (every category needs a unique id)")
    image_info = _parse_images(images, where)

    per_image: dict[int, list[dict]] = {image_id: [] for image_id in image_info}
    skipped: Counter[str] = Counter()
    for raw in annotations:
        ann = _check_annotation(raw, where, cats)
        if ann["image_id"] in per_image:
            per_image[ann["image_id"]].append(ann)
        else:
            skipped["image id not in images"] += 1

    instances: list[Instance] = []
    by_category: dict[int, list[int]] = {cat_id: [] for cat_id in cats}
    missing: Counter[str] = Counter()
    first_missing: str | None = None
    exists: dict[str, bool] = {}
    for image_id, (file_name, width, height) in image_info.items():
        for ann in per_image[image_id]:
            reason = _skip_reason(ann)
            box = None if reason else clean_bbox(ann["bbox"], width, height)
            if reason is None and box is None:
                reason = "degenerate box"
            if reason:
                skipped[reason] += 1
                continue
            if file_name not in exists:
                exists[file_name] = (image_root / file_name).is_file()
            if not exists[file_name]:
                missing[cats[ann["category_id"]].name] += 1
                first_missing = first_missing or file_name
                continue
            kpts = np.asarray(ann["keypoints"], dtype=np.float64).reshape(-1, 3)
            center, scale = box_center_scale(box)
            index = len(instances)
            instances.append(
                Instance(
                    index=index,
                    image_path=image_root / file_name,
                    category_id=ann["category_id"],
                    keypoints=kpts[:, :2].astype(np.float32),
                    visible=kpts[:, 2] > 0,
                    bbox=box,
                    center=center,
                    scale=scale,
                )
            )
            by_category[ann["category_id"]].append(index)

    if missing:
        total = sum(missing.values())
        per_cat = ", ".join(f"{name}: {n}" for name, n in missing.most_common(5))
        more = f", and {len(missing) - 5} more categories" if len(missing) > 5 else ""
        message = f"{where}: {total} objects have no image under {image_root} ({per_cat}{more}; e.g. {first_missing})"
        if not skip_missing_images:
            raise DatasetError(f"{message} (check the image root, or skip them with --skip-missing-images)")
        warnings.warn(f"{message}; left out", stacklevel=2)
        skipped["image missing"] = total
    return Mp100Split(
        ann_file=ann_file,
        image_root=image_root,
        categories=cats,
        instances=tuple(instances),
        by_category={k: tuple(v) for k, v in by_category.items()},
        skipped=dict(skipped),
    )


def clean_bbox(bbox_xywh: Sequence[float], width: float, height: float) -> tuple[float, float, float, float] | None:
    """The official bbox sanitiser: clip to the image, width becomes `w - 1` (spec §3); None if degenerate.

    The result is also the PCK normaliser, so its off-by-one is part of the metric.
    """
    x, y, w, h = bbox_xywh
    x1, y1 = max(0, x), max(0, y)
    x2 = min(width - 1, x1 + max(0, w - 1))
    y2 = min(height - 1, y1 + max(0, h - 1))
    if x2 <= x1 or y2 <= y1:
        return None
    return (x1, y1, x2 - x1, y2 - y1)


def box_center_scale(box_xywh: Sequence[float], aspect_ratio: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Clean box -> (centre, scale) in float32, made square and padded by 1.25 (official `_xywh2cs`)."""
    x, y, w, h = box_xywh
    center = np.array([x + w * 0.5, y + h * 0.5], dtype=np.float32)
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    elif w < aspect_ratio * h:
        w = h * aspect_ratio
    scale = np.array([w / PIXEL_STD, h / PIXEL_STD], dtype=np.float32) * np.float32(BOX_PADDING)
    return center, scale


# --------------------------------------------------------------------------------------------------- validation
def _check_top_level(data: object, where: str) -> tuple[list, list, list]:
    if not isinstance(data, dict):
        raise DatasetError(
            f"{where}: not an MP-100 annotation file (expected a JSON object, found {type(data).__name__})"
        )
    absent = [k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)]
    if absent:
        raise DatasetError(
            f"{where}: not an MP-100 annotation file (no {', '.join(absent)} list; expected COCO-style "
            "images/annotations/categories)"
        )
    return data["images"], data["annotations"], data["categories"]


def _parse_category(raw: object, where: str, max_keypoints: int) -> Category:
    if not isinstance(raw, dict) or not {"id", "name", "keypoints"} <= raw.keys():
        raise DatasetError(f"{where}: a category lacks id/name/keypoints ({short(raw, 60)})")
    name = raw["name"]
    if "skeleton" not in raw:
        raise DatasetError(
            f"{where}: category {name!r} has no skeleton (use the skeleton-carrying MP-100 annotations published "
            "with Pose Anything)"
        )
    names = raw["keypoints"]
    if not isinstance(names, list) or not 0 < len(names) <= max_keypoints:
        raise DatasetError(
            f"{where}: category {name!r} needs 1-{max_keypoints} keypoint names, found {short(names, 60)}"
        )
    n = len(names)
    if not isinstance(raw["skeleton"], list):
        raise DatasetError(
            f"{where}: category {name!r} skeleton is {short(raw['skeleton'], 60)} (expected [[i, j], ...])"
        )
    skeleton = []
    for pair in raw["skeleton"]:
        ok = isinstance(pair, list) and len(pair) == 2 and all(isinstance(i, int) and 0 <= i < n for i in pair)
        if not ok:
            raise DatasetError(
                f"{where}: category {name!r} has skeleton edge {short(pair, 60)} outside keypoints 0-{n - 1} "
                "(edges are 0-indexed pairs)"
            )
        skeleton.append((pair[0], pair[1]))
    return Category(int(raw["id"]), str(name), tuple(str(s) for s in names), tuple(skeleton))


def _parse_images(images: list, where: str) -> dict[int, tuple[str, int, int]]:
    info: dict[int, tuple[str, int, int]] = {}
    for raw in images:
        if not isinstance(raw, dict) or not {"id", "file_name", "width", "height"} <= raw.keys():
            raise DatasetError(f"{where}: an image entry lacks id/file_name/width/height ({short(raw, 60)})")
        if raw["id"] in info:
            raise DatasetError(f"{where}: image id {raw['id']} appears twice (image ids must be unique)")
        info[raw["id"]] = (str(raw["file_name"]), raw["width"], raw["height"])
    return info


def _check_annotation(raw: object, where: str, cats: Mapping[int, Category]) -> dict:
    need = ("id", "image_id", "category_id", "iscrowd")
    if not isinstance(raw, dict) or not set(need) <= raw.keys():
        raise DatasetError(f"{where}: an annotation lacks one of {'/'.join(need)} ({short(raw, 60)})")
    if raw["category_id"] not in cats:
        raise DatasetError(f"{where}: annotation {raw['id']} has unknown category_id {raw['category_id']}")
    kpts = raw.get("keypoints")
    if kpts is not None:
        n = cats[raw["category_id"]].num_keypoints
        if not isinstance(kpts, list) or len(kpts) != 3 * n or not all(is_number(v) for v in kpts):
            raise DatasetError(
                f"{where}: annotation {raw['id']} needs {3 * n} keypoint numbers (x, y, v for each of the "
                f"{n} keypoints of {cats[raw['category_id']].name!r}), found {short(kpts, 60)}"
            )
    box = raw.get("bbox")
    if box is not None and (not isinstance(box, list) or len(box) != 4 or not all(is_number(v) for v in box)):
        raise DatasetError(f"{where}: annotation {raw['id']} has bbox {short(box, 60)} (expected [x, y, w, h])")
    return raw


def _skip_reason(ann: dict) -> str | None:
    """The official loader's silent filters, in its order."""
    if ann["iscrowd"]:
        return "crowd"
    if ann.get("bbox") is None:
        return "no bbox"
    if "area" in ann and not ann["area"] > 0:
        return "zero area"
    if ann.get("keypoints") is None:
        return "no keypoints"
    if max(ann["keypoints"]) == 0:
        return "all-zero keypoints"
    if "num_keypoints" in ann and ann["num_keypoints"] == 0:
        return "num_keypoints 0"
    return None

"""A generated stand-in for MP-100 in exactly its file layout: `python -m cape_track.training.synthetic OUT_DIR`.

Each category is a toy articulated object (a star, a hand, a biped...) with its own keypoints and skeleton. Every
image shows one instance, randomly posed, stretched and bent, drawn with coloured joints and limbs on a photo
from scikit-image's bundled samples or a procedural background; some keypoints fall outside the image (v=0), some
are occluded (v=1), boxes may cross the image border. Categories are split 70/10/20 into train/val/test, rotated
over splits so that each category is a test category in exactly one split, as in MP-100.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np


@dataclass(frozen=True)
class Template:
    """A category: keypoints in a unit frame (x right, y down, about [-1, 1]) and 0-indexed skeleton edges."""

    name: str
    points: tuple[tuple[float, float], ...]
    skeleton: tuple[tuple[int, int], ...]


def _ring(n: int, radius: float, phase: float = -math.pi / 2) -> list[tuple[float, float]]:
    return [
        (radius * math.cos(phase + 2 * math.pi * i / n), radius * math.sin(phase + 2 * math.pi * i / n))
        for i in range(n)
    ]


def _templates() -> list[Template]:
    star = [(0.0, 0.0), *_ring(5, 1.0)]
    hand = [(0.0, 0.6), (-0.35, 0.2), (0.35, 0.2)]
    hand_edges = [(0, 1), (0, 2), (1, 2)]
    for i, angle in enumerate((-2.4, -1.9, -1.57, -1.25, -0.9)):
        base = len(hand)
        length = 0.55 if i in (0, 4) else 0.8
        root = (-0.3 + 0.15 * i, 0.1)
        hand += [root, (root[0] + length * 0.5 * math.cos(angle), root[1] + length * 0.5 * math.sin(angle))]
        hand += [(root[0] + length * math.cos(angle), root[1] + length * math.sin(angle))]
        hand_edges += [(1 if i < 2 else 2, base), (base, base + 1), (base + 1, base + 2)]
    return [
        Template("toy_star", tuple(star), tuple((0, i) for i in range(1, 6))),
        Template(
            "toy_kite",
            ((0.0, -1.0), (0.7, -0.2), (0.0, 1.0), (-0.5, -0.2), (0.05, -0.15)),
            ((0, 1), (1, 2), (2, 3), (3, 0), (0, 4), (4, 2)),
        ),
        Template(
            "toy_chain",
            tuple((-1.0 + 0.4 * i, 0.35 * math.sin(1.3 * i)) for i in range(6)),
            tuple((i, i + 1) for i in range(5)),
        ),
        Template(
            "toy_tripod",
            ((0.0, -0.2), (0.0, -0.8), (-0.5, 0.3), (-0.8, 0.9), (0.5, 0.3), (0.9, 0.8), (0.1, 0.5), (0.15, 1.0)),
            ((0, 1), (0, 2), (2, 3), (0, 4), (4, 5), (0, 6), (6, 7)),
        ),
        Template("toy_hand", tuple(hand), tuple(hand_edges)),
        Template(
            "toy_house",
            ((-0.7, 1.0), (0.7, 1.0), (0.7, 0.0), (0.0, -0.9), (-0.7, 0.0), (-0.2, 1.0), (-0.2, 0.45)),
            ((0, 5), (5, 1), (1, 2), (2, 3), (3, 4), (4, 0), (5, 6)),
        ),
        Template(
            "toy_arrow",
            ((1.0, 0.0), (0.3, -0.6), (0.3, -0.2), (-1.0, -0.2), (-1.0, 0.2), (0.3, 0.2), (0.3, 0.6)),
            ((0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 0)),
        ),
        Template(
            "toy_biped",
            (
                (0.0, -1.0),
                (0.0, -0.6),
                (-0.5, -0.3),
                (-0.7, 0.1),
                (0.5, -0.3),
                (0.75, 0.05),
                (0.0, 0.2),
                (-0.3, 0.6),
                (-0.35, 1.0),
                (0.3, 0.6),
                (0.4, 1.0),
            ),
            ((0, 1), (1, 2), (2, 3), (1, 4), (4, 5), (1, 6), (6, 7), (7, 8), (6, 9), (9, 10)),
        ),
        Template("toy_fan", ((0.0, 0.9), *_ring(7, 1.0, -math.pi)[1:6]), tuple((0, i) for i in range(1, 6))),
        Template(
            "toy_crab",
            (
                (0.0, 0.0),
                (-0.45, 0.0),
                (0.45, 0.0),
                (-0.9, -0.5),
                (-0.6, -0.9),
                (0.9, -0.5),
                (0.6, -0.9),
                (-0.8, 0.5),
                (0.8, 0.5),
            ),
            ((0, 1), (0, 2), (1, 3), (3, 4), (2, 5), (5, 6), (1, 7), (2, 8)),
        ),
    ]


TEMPLATES = _templates()

# scikit-image sample photos that ship inside the package (no download).
_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "brick", "grass", "gravel", "camera", "coins", "moon", "text")


def _photos() -> list[np.ndarray]:
    try:
        import skimage.data
    except ImportError:
        raise ValueError("the generated backgrounds need scikit-image (pip install 'cape-track[train]')") from None

    out = []
    for name in _PHOTOS:
        img = getattr(skimage.data, name)()
        img = np.stack([img] * 3, axis=-1) if img.ndim == 2 else img[..., :3]
        out.append(np.ascontiguousarray(img.astype(np.uint8)))
    return out


def _background(rng: np.random.Generator, width: int, height: int, photos: Sequence[np.ndarray]) -> np.ndarray:
    """A random crop of a sample photo (2/3 of the time) or a noisy gradient with clutter, `[H, W, 3]` RGB."""
    if rng.random() < 2 / 3:
        photo = photos[rng.integers(len(photos))]
        ph, pw = photo.shape[:2]
        side = int(rng.uniform(0.3, 1.0) * min(ph, pw))
        y0, x0 = rng.integers(0, ph - side + 1), rng.integers(0, pw - side + 1)
        return cv2.resize(photo[y0 : y0 + side, x0 : x0 + side], (width, height), interpolation=cv2.INTER_AREA)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = (xs / width * rng.uniform(-1, 1) + ys / height * rng.uniform(-1, 1)) % 1.0
    img = c0 * (1 - t[..., None]) + c1 * t[..., None] + rng.normal(0, 12, (height, width, 3))
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(rng.integers(2, 6)):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.circle(img, center, int(rng.integers(4, max(5, min(width, height) // 5))), color, -1, cv2.LINE_AA)
    return img


def _joint_colors(n: int) -> list[tuple[int, int, int]]:
    """Distinct saturated colours, one per keypoint: what makes a keypoint identifiable across instances."""
    hsv = np.array([[[int(180 * i / n), 220, 255]] for i in range(n)], dtype=np.uint8)
    return [tuple(int(v) for v in c[0]) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)]


def render_instance(
    template: Template, rng: np.random.Generator, photos: Sequence[np.ndarray], size_range: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """One image with one posed instance: (RGB image, keypoints `[N, 3]` as COCO x, y, v, bbox xywh)."""
    width, height = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, 2))
    image = _background(rng, width, height, photos)
    pts = np.array(template.points, dtype=np.float64) + rng.normal(0, 0.06, (len(template.points), 2))
    angle = rng.uniform(-0.6, 0.6)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    pts = pts * rng.uniform(0.8, 1.2, 2) @ rot.T
    extent = np.ptp(pts, axis=0).max()
    size = rng.uniform(0.45, 0.85) * min(width, height)
    pts = pts / extent * size
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    margin = rng.uniform(-0.12, 0.12, 2) * size  # sometimes a little outside the frame
    center = (
        np.array([width, height]) / 2
        + rng.uniform(-1, 1, 2) * np.maximum(0, (np.array([width, height]) - (hi - lo)) / 2)
        + margin
    )
    pts = pts - (lo + hi) / 2 + center

    thickness = max(2, int(size / 22))
    body = tuple(int(c) for c in rng.integers(40, 200, 3))
    hull = cv2.convexHull(np.round(pts).astype(np.int32))
    overlay = image.copy()
    cv2.fillConvexPoly(overlay, hull, body, cv2.LINE_AA)
    image = cv2.addWeighted(overlay, 0.35, image, 0.65, 0)
    for i, j in template.skeleton:
        p, q = tuple(np.round(pts[i]).astype(int)), tuple(np.round(pts[j]).astype(int))
        cv2.line(image, p, q, tuple(int(c * 0.6) for c in body), thickness, cv2.LINE_AA)
    colors = _joint_colors(len(pts))
    for p, color in zip(pts, colors, strict=True):
        cv2.circle(image, tuple(np.round(p).astype(int)), thickness + 1, color, -1, cv2.LINE_AA)

    vis = np.full(len(pts), 2)
    occluded = rng.random(len(pts)) < 0.08
    for k in np.flatnonzero(occluded):
        r = thickness * 2
        x, y = np.round(pts[k]).astype(int)
        cv2.rectangle(image, (x - r, y - r), (x + r, y + r), tuple(int(c) for c in rng.integers(0, 256, 3)), -1)
        vis[k] = 1
    inside = (pts[:, 0] >= 0) & (pts[:, 0] <= width - 1) & (pts[:, 1] >= 0) & (pts[:, 1] <= height - 1)
    unlabeled = rng.random(len(pts)) < 0.03
    vis[~inside | unlabeled] = 0
    kpts = np.concatenate([np.where(vis[:, None] > 0, pts, 0.0), vis[:, None]], axis=1)
    x0, y0 = pts.min(axis=0) - thickness
    x1, y1 = pts.max(axis=0) + thickness
    bbox = [round(float(x0), 2), round(float(y0), 2), round(float(x1 - x0), 2), round(float(y1 - y0), 2)]
    return image, kpts, bbox


def category_splits(num_categories: int, split: int) -> dict[str, list[int]]:
    """Category indices per subset for split 1..: 20% test (rotating), 10% val (the next ones), the rest train."""
    n_test, n_val = max(1, round(0.2 * num_categories)), max(1, round(0.1 * num_categories))
    order = [(i + (split - 1) * n_test) % num_categories for i in range(num_categories)]
    return {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}


def generate(
    out_dir: str | Path,
    categories: int = 10,
    images_per_category: int = 30,
    splits: int = 1,
    seed: int = 0,
    size_range: tuple[int, int] = (160, 320),
) -> list[Path]:
    """Write `OUT/images/<category>/<id>.jpg` and `OUT/annotations/mp100_split{s}_{subset}.json`; returns the files."""
    if not 1 <= categories <= len(TEMPLATES):
        raise ValueError(f"categories={categories}: between 1 and {len(TEMPLATES)}")
    if categories < 3:
        raise ValueError(f"categories={categories}: at least 3 (one each for train, val and test)")
    if max(1, round(0.2 * categories)) * splits > categories:
        raise ValueError(f"splits={splits}: too many for {categories} categories (each is a test category once)")
    out = Path(out_dir)
    photos = _photos()
    cats, images, annotations = [], [], []
    for c, template in enumerate(TEMPLATES[:categories]):
        cat_id = c + 1
        cats.append(
            {
                "id": cat_id,
                "name": template.name,
                "supercategory": "toy",
                "keypoints": [f"kp{i}" for i in range(len(template.points))],
                "skeleton": [list(e) for e in template.skeleton],
            }
        )
        folder = out / "images" / template.name
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(images_per_category):
            image_id = cat_id * 10000 + k
            rng = np.random.default_rng([seed, c, k])
            image, kpts, bbox = render_instance(template, rng, photos, size_range)
            while not (kpts[:, 2] > 0).any():
                image, kpts, bbox = render_instance(template, rng, photos, size_range)
            file_name = f"{template.name}/{image_id}.jpg"
            cv2.imwrite(
                str(out / "images" / file_name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92]
            )
            images.append({"id": image_id, "file_name": file_name, "width": image.shape[1], "height": image.shape[0]})
            annotations.append(
                {
                    "id": image_id,
                    "image_id": image_id,
                    "category_id": cat_id,
                    "bbox": bbox,
                    "keypoints": [round(float(v), 2) if i % 3 < 2 else int(v) for i, v in enumerate(kpts.ravel())],
                    "num_keypoints": int((kpts[:, 2] > 0).sum()),
                    "area": round(bbox[2] * bbox[3], 2),
                    "iscrowd": 0,
                }
            )
    written = []
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    for split in range(1, splits + 1):
        for subset, members in category_splits(categories, split).items():
            ids = {cats[i]["id"] for i in members}
            data = {
                "images": [im for im, an in zip(images, annotations, strict=True) if an["category_id"] in ids],
                "annotations": [an for an in annotations if an["category_id"] in ids],
                "categories": [cat for cat in cats if cat["id"] in ids],
            }
            path = out / "annotations" / f"mp100_split{split}_{subset}.json"
            path.write_text(json.dumps(data), encoding="utf-8")
            written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cape_track.training.synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", help="dataset root to write (annotations/ and images/)")
    parser.add_argument("--categories", type=int, default=10, help=f"1-{len(TEMPLATES)} (default 10)")
    parser.add_argument("--images", type=int, default=30, help="images per category (default 30)")
    parser.add_argument("--splits", type=int, default=1, help="category splits to write (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-size", type=int, default=160, help="smallest image side (default 160)")
    parser.add_argument("--max-size", type=int, default=320, help="largest image side (default 320)")
    args = parser.parse_args(argv)
    try:
        files = generate(
            args.out_dir, args.categories, args.images, args.splits, args.seed, (args.min_size, args.max_size)
        )
    except ValueError as e:
        parser.error(str(e))
    print(f"wrote {args.categories * args.images} images and {len(files)} annotation files under {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

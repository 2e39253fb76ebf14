"""model/transforms.py: ImageNet normalisation in RGB order and its inverse, the frame <-> input maps through a
square box (pixel centres at integers), letterboxing, and crops that are black outside the frame and
area-averaged when shrinking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cape_track.model.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SquareBox,
    crop_to_input,
    denormalize_images,
    frame_to_input,
    halved,
    input_to_frame,
    normalize_images,
)


def test_normalisation_is_rgb_imagenet_and_round_trips() -> None:
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, (2, 8, 6, 3), dtype=np.uint8)
    x = normalize_images(hwc)
    assert x.shape == (2, 3, 8, 6) and x.dtype == torch.float32
    expected_red = (hwc[..., 0] / 255.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    np.testing.assert_allclose(x[:, 0].numpy(), expected_red, rtol=1e-5, atol=1e-6)  # channel 0 is red
    assert torch.equal(denormalize_images(x), torch.from_numpy(hwc).permute(0, 3, 1, 2))
    assert torch.equal(normalize_images(torch.from_numpy(hwc).permute(0, 3, 1, 2)), x)  # CHW tensors alike
    with pytest.raises(ValueError, match="RGB"):
        normalize_images(np.zeros((4, 4), np.uint8))


def test_letterbox_centres_the_frame_in_a_square() -> None:
    box = SquareBox.letterbox(200, 100)
    assert (box.x0, box.y0, box.size) == (0.0, -50.0, 200.0) and box.center == (100.0, 50.0)
    tall = SquareBox.letterbox(60, 90)
    assert (tall.x0, tall.y0, tall.size) == (-15.0, 0.0, 90.0)


def test_frame_and_input_maps_are_inverse_and_scale_about_the_box() -> None:
    box = SquareBox(10.0, -20.0, 128.0)
    xy = np.array([[10.0, -20.0], [74.0, 44.0], [137.5, 107.5]])
    inp = frame_to_input(xy, box, 256)
    np.testing.assert_allclose(inp[:2], [[0.0, 0.0], [128.0, 128.0]])
    np.testing.assert_allclose(input_to_frame(inp, box, 256), xy)
    t = torch.tensor(xy)
    torch.testing.assert_close(input_to_frame(frame_to_input(t, box, 256), box, 256), t)  # torch alike


def test_crop_is_black_outside_the_frame_and_follows_the_box() -> None:
    image = np.full((40, 60, 3), 200, np.uint8)
    image[10, 20] = (255, 0, 0)
    crop = crop_to_input(image, SquareBox(-20.0, -10.0, 80.0), 80)  # 1:1, shifted by (20, 10)
    assert crop.shape == (80, 80, 3)
    assert (crop[:10] == 0).all() and (crop[:, :20] == 0).all()  # outside the frame
    assert tuple(crop[20, 40]) == (255, 0, 0)  # frame (20, 10) lands at input (40, 20)


def test_halving_averages_2x2_blocks_and_drops_an_odd_edge() -> None:
    image = np.arange(5 * 7, dtype=np.uint8).reshape(5, 7) * 4
    half = halved(image)
    expected = image[:4, :6].reshape(2, 2, 3, 2).astype(float).mean(axis=(1, 3))
    assert half.shape == (2, 3)
    np.testing.assert_allclose(half, expected, atol=0.5)  # rounded to uint8
    assert halved(image, 0) is image


def test_a_large_shrink_keeps_points_where_the_box_maps_them() -> None:
    """Through two halvings (a 4x shrink) a blob lands where `SquareBox.matrix` sends its centre: the halved
    pixels' centres are accounted for."""
    image = np.zeros((1024, 1024, 3), np.uint8)
    image[600:608, 400:408] = 255  # centre (403.5, 603.5) in frame px
    box = SquareBox(100.0, 50.0, 1024.0)
    crop = crop_to_input(image, box, 256).astype(float).sum(axis=2)
    ys, xs = np.mgrid[: crop.shape[0], : crop.shape[1]]
    centroid = np.array([(xs * crop).sum(), (ys * crop).sum()]) / crop.sum()
    expected = box.matrix(256) @ np.array([403.5, 603.5, 1.0])
    np.testing.assert_allclose(centroid, expected, atol=0.15)


def test_a_large_shrink_is_area_averaged_not_aliased() -> None:
    stripes = np.zeros((512, 512, 3), np.uint8)
    stripes[:, ::2] = 255  # one-pixel stripes: bilinear sampling alone would pick a stripe, averaging gives grey
    inner = crop_to_input(stripes, SquareBox(0.0, 0.0, 512.0), 64)[2:-2, 2:-2]  # the border blends with black
    assert abs(float(inner.mean()) - 127.5) < 2 and float(inner.std()) < 2


@pytest.mark.parametrize("side", [200.0, 600.0, 1100.0, 2500.0])  # no halving, one, two, three
def test_a_crop_from_the_half_size_image_made_ahead_is_the_same(side: float) -> None:
    image = np.random.default_rng(0).integers(0, 256, (721, 1281, 3), np.uint8)  # odd sizes: an edge is dropped
    box = SquareBox(-150.0, 40.0, side)
    np.testing.assert_array_equal(crop_to_input(image, box, 256, halved(image)), crop_to_input(image, box, 256))

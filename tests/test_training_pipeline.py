"""training.pipeline: the official crop affine, keypoints staying on the image content, episode batches."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from reference_data import VECTORS

from cape_track.model.transforms import affine_from_center_scale, apply_affine
from cape_track.training.episodes import official_test_episodes, training_episodes
from cape_track.training.mp100 import Instance, annotation_file, box_center_scale, load_split
from cape_track.training.pipeline import Augmentation, EpisodeDataset, collate_episodes, crop_instance, input_to_image


def _vectors(key: str) -> list[dict]:
    return json.loads((VECTORS / "data_pipeline_vectors.json").read_text())[key]


@pytest.mark.parametrize("case", range(3))
def test_crop_affine_matches_official(case: int) -> None:
    v = _vectors("affine")[case]
    m = affine_from_center_scale(v["center"], v["scale"], v["rot_deg"], (256, 256))
    np.testing.assert_allclose(m, v["matrix_2x3"], atol=1e-6)
    np.testing.assert_allclose(apply_affine(np.array(v["points_src"]), m), v["points_dst"], atol=1e-4)


@pytest.mark.parametrize("case", range(2))
def test_input_to_image_matches_official_transform_preds(case: int) -> None:
    v = _vectors("transform_preds")[case]
    out = input_to_image(np.array(v["pred_input_px"]), np.float32(v["center"]), np.float32(v["scale"]), 256)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, v["pred_image_px"], atol=1e-4)


def _instance(keypoints: np.ndarray, box: tuple[float, float, float, float]) -> Instance:
    center, scale = box_center_scale(box)
    return Instance(
        0, Path("x.png"), 1, keypoints.astype(np.float32), np.ones(len(keypoints), bool), box, center, scale
    )


@pytest.mark.parametrize(("scale", "rotation"), [(1.0, 0.0), (0.87, 25.0), (1.15, -30.0)])
def test_warped_dot_lands_where_the_keypoint_says(scale: float, rotation: float) -> None:
    """Draw dots, crop with scale and rotation, find each dot's centroid in the crop at the mapped keypoint."""
    image = np.zeros((240, 320, 3), np.uint8)
    points = np.array([[150.0, 100.0], [190.0, 140.0], [120.0, 160.0]])
    for (x, y), color in zip(points, [(255, 0, 0), (0, 255, 0), (0, 0, 255)], strict=True):
        cv2.circle(image, (int(x), int(y)), 4, color, -1)
    inst = _instance(points, (100.0, 80.0, 110.0, 100.0))
    crop, kpts = crop_instance(image, inst, 256, scale, rotation)
    assert crop.shape == (256, 256, 3) and kpts.dtype == np.float32
    for c in range(3):
        ys, xs = np.nonzero(crop[..., c] > 128)
        np.testing.assert_allclose([xs.mean(), ys.mean()], kpts[c], atol=0.75)


def test_invisible_keypoints_are_not_mapped() -> None:
    inst = _instance(np.array([[150.0, 100.0], [0.0, 0.0]]), (100.0, 80.0, 110.0, 100.0))
    inst = Instance(**{**inst.__dict__, "visible": np.array([True, False])})
    _, kpts = crop_instance(np.zeros((240, 320, 3), np.uint8), inst, 256)
    np.testing.assert_array_equal(kpts[1], [0.0, 0.0])  # left as annotated, as the official code


def test_input_to_image_inverts_the_crop() -> None:
    inst = _instance(np.array([[150.0, 100.0], [101.5, 179.0], [205.0, 80.0]]), (100.0, 80.0, 110.0, 100.0))
    _, kpts = crop_instance(np.zeros((240, 320, 3), np.uint8), inst, 256)
    np.testing.assert_allclose(input_to_image(kpts, inst.center, inst.scale, 256), inst.keypoints, atol=1e-3)


def test_augmentation_ranges_and_rotation_probability() -> None:
    rng = np.random.default_rng(0)
    draws = np.array([Augmentation().draw(rng) for _ in range(4000)])
    assert draws[:, 0].min() >= 0.85 and draws[:, 0].max() <= 1.15
    assert np.abs(draws[:, 1]).max() <= 30.0
    assert np.mean(draws[:, 1] == 0.0) == pytest.approx(0.4, abs=0.03)


def test_episode_batches_shapes_padding_and_determinism(generated_mp100: Path) -> None:
    split = load_split(annotation_file(generated_mp100, 1, "train"), generated_mp100 / "images")
    episodes = training_episodes(split.by_category, 2, (3, 0))[:3]
    dataset = EpisodeDataset(split, episodes, 64, 20, Augmentation(), seed=(3, 0))
    batch = collate_episodes([dataset[i] for i in range(3)])
    assert batch.support_images.shape == (2, 3, 3, 64, 64) and str(batch.support_images.dtype) == "torch.uint8"
    assert batch.support_keypoints.shape == (2, 3, 20, 2) and batch.support_visible.shape == (2, 3, 20)
    assert batch.query_images.shape == (3, 1, 3, 64, 64) and batch.query_keypoints.shape == (3, 1, 20, 2)
    assert batch.support_ids.shape == (2, 3) and batch.query_ids.shape == (3, 1) and len(batch.skeletons) == 3
    for e, ep in enumerate(episodes):
        n = split.categories[ep.category_id].num_keypoints
        assert not batch.query_visible[e, 0, n:].any()  # padding slots are invisible
        assert batch.skeletons[e] == [list(p) for p in split.categories[ep.category_id].skeleton]
    again = collate_episodes([dataset[i] for i in range(3)])
    assert (again.query_images == batch.query_images).all()  # same seed and index -> same augmentation
    other = EpisodeDataset(split, episodes, 64, 20, Augmentation(), seed=(3, 1))
    assert not np.array_equal(other[0]["query"][0], dataset[0]["query"][0])


def test_test_episodes_have_no_augmentation(generated_mp100: Path) -> None:
    split = load_split(annotation_file(generated_mp100, 1, "test"), generated_mp100 / "images")
    episodes = official_test_episodes(split.by_category, 1, 2, 1)
    item = EpisodeDataset(split, episodes, 64, 20)[0]
    inst = split.instances[episodes[0].queries[0]]
    n = inst.num_keypoints
    query_xy = item["query"][1][0, :n]
    visible = inst.visible
    np.testing.assert_allclose(
        input_to_image(query_xy[visible], inst.center, inst.scale, 64), inst.keypoints[visible], atol=1e-3
    )

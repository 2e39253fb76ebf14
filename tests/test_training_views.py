"""training.views and the default recipe: warped and clip-pair episodes put each query keypoint on the support's
content, the elastic warp moves points with the image, and the recipe trains, validates, resumes and fine-tunes."""

from __future__ import annotations

import copy
import csv
import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from cape_track.model.config import get_preset
from cape_track.training import default_recipe, views
from cape_track.training.views import ViewConfig, make_episode, make_pair_episode

SIZE = 128


def _texture(rng: np.random.Generator, shape: tuple[int, int] = (200, 260)) -> np.ndarray:
    """Blurred colour noise: every point distinctive at patch scale, so correspondences can be checked."""
    base = cv2.GaussianBlur(rng.uniform(0, 255, (*shape, 3)).astype(np.float32), (0, 0), 2.0)
    return np.clip((base - base.mean()) * 4 + 128, 0, 255).astype(np.uint8)


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64) - a.mean(), b.astype(np.float64) - b.mean()
    return float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-9))


def _patch(image: np.ndarray, xy: np.ndarray, r: int = 4) -> np.ndarray | None:
    x, y = np.round(xy).astype(int)
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    if r <= x < gray.shape[1] - r and r <= y < gray.shape[0] - r:
        return gray[y - r : y + r + 1, x - r : x + r + 1]
    return None


def _agreement(episode: dict, offset: float = 0.0) -> float:
    """Median patch correlation between each visible query keypoint (moved by `offset` px) and its support point."""
    scores = []
    for q, xy, vis in zip(episode["queries"], episode["query_xy"], episode["query_visible"], strict=True):
        for s_xy, q_xy in zip(episode["support_xy"][vis], xy[vis], strict=True):
            a, b = _patch(episode["support"], s_xy), _patch(q, q_xy + offset)
            if a is not None and b is not None:
                scores.append(_ncc(a, b))
    assert len(scores) >= 10
    return float(np.median(scores))


# No blur, noise or occluders: they are random and would only lower both sides of the comparison.
CLEAN = ViewConfig(input_size=SIZE, occluder_prob=0.0, max_rotation=20.0)


def test_warped_episode_keypoints_land_on_the_support_content() -> None:
    rng = np.random.default_rng(0)
    image = _texture(rng)
    episodes = [make_episode(image, 3, CLEAN, rng) for _ in range(4)]
    for ep in episodes:
        n = len(ep["support_xy"])
        assert ep["support"].shape == (SIZE, SIZE, 3) and ep["queries"].shape == (3, SIZE, SIZE, 3)
        assert ep["query_xy"].shape == (3, n, 2) and ep["query_visible"].shape == (3, n)
        assert all(0 <= a < n and 0 <= b < n for a, b in ep["skeleton"])
    assert np.mean([_agreement(ep) for ep in episodes]) > 0.6
    assert np.mean([_agreement(ep, offset=4.0) for ep in episodes]) < 0.3


def test_clip_pair_episode_follows_the_clip_motion() -> None:
    """Frames of a texture sliding 3 px per frame: queries are other frames, keypoints moved by the checked flow."""
    rng = np.random.default_rng(1)
    big = _texture(rng, (260, 360))
    frames = [np.ascontiguousarray(big[20:220, 20 + 3 * k : 280 + 3 * k]) for k in range(20)]
    cfg = ViewConfig(input_size=SIZE, occluder_prob=0.0, max_rotation=20.0, pair_gap=(2, 5))
    episodes = [make_pair_episode(frames, 3, cfg, rng) for _ in range(4)]
    assert np.mean([_agreement(ep) for ep in episodes]) > 0.6
    assert np.mean([_agreement(ep, offset=4.0) for ep in episodes]) < 0.3


def test_elastic_warp_moves_points_with_the_image() -> None:
    rng = np.random.default_rng(2)
    cfg = ViewConfig(input_size=SIZE, elastic=0.04)
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    dots = np.array([[30.0, 40.0], [90.0, 70.0], [64.0, 100.0]])
    for x, y in dots:
        cv2.circle(image, (int(x), int(y)), 3, (255, 255, 255), -1)
    warped, moved = views._elastic(image, dots, cfg, rng)
    assert np.abs(moved - dots).max() > 1.0  # it did bend
    gray = warped[..., 0].astype(np.float64)
    for x, y in moved:  # the bright blob's centroid is where the point went
        x0, y0 = int(round(x)), int(round(y))
        win = gray[y0 - 6 : y0 + 7, x0 - 6 : x0 + 7]
        ys, xs = np.mgrid[y0 - 6 : y0 + 7, x0 - 6 : x0 + 7]
        centroid = np.array([(win * xs).sum(), (win * ys).sum()]) / win.sum()
        assert np.abs(centroid - [x, y]).max() < 0.6


@pytest.mark.slow
def test_recipe_trains_validates_resumes_and_fine_tunes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two steps on a tiny image set (the real lite0 model at a 128 px input), a resume, and a fine-tuning start."""
    rng = np.random.default_rng(3)
    stills = [_texture(rng) for _ in range(3)]
    clip = [_texture(rng) for _ in range(6)]
    monkeypatch.setattr(default_recipe, "load_images", lambda split: stills)
    monkeypatch.setattr(default_recipe, "load_clips", lambda split: [clip])
    monkeypatch.setattr(
        default_recipe, "get_preset", lambda name: dataclasses.replace(get_preset(name), input_size=SIZE)
    )
    seen: list[dict[str, torch.Tensor]] = []  # the weights each validation saw
    validate = default_recipe.validate
    monkeypatch.setattr(
        default_recipe,
        "validate",
        lambda model, *a: seen.append(copy.deepcopy(model.state_dict())) or validate(model, *a),
    )
    cfg = default_recipe.RecipeConfig(
        episodes_per_step=2, queries_per_episode=2, steps=2, warmup=1, val_every=1, val_episodes=2, pair_prob=0.5
    )
    out = tmp_path / "run"
    default_recipe.train(out, minutes=5, cfg=cfg)
    rows = list(csv.DictReader((out / "curve.csv").open()))
    assert [int(r["step"]) for r in rows] == [0, 1, 2]
    assert all(0.0 <= float(r["val_pck10"]) <= 1.0 for r in rows)
    assert torch.load(out / "state.pt", weights_only=True)["step"] == 2
    key = "proposal.query_proj.weight"
    assert not torch.equal(seen[0][key], seen[2][key])  # it trained the head ...
    backbone = next(k for k in seen[0] if k.startswith("backbone.") and seen[0][k].is_floating_point())
    assert torch.equal(seen[0][backbone], seen[2][backbone])  # ... and left the backbone frozen

    default_recipe.train(out, minutes=5, cfg=dataclasses.replace(cfg, steps=3))  # resumes at step 2
    assert torch.load(out / "state.pt", weights_only=True)["step"] == 3
    assert [int(r["step"]) for r in csv.DictReader((out / "curve.csv").open())] == [0, 1, 2, 3]

    exported = tmp_path / "model.pt"
    default_recipe.export(out, exported, cfg)
    seen.clear()
    default_recipe.train(tmp_path / "tuned", minutes=5, cfg=dataclasses.replace(cfg, steps=1), init=exported)
    trained = torch.load(out / "state.pt", weights_only=True)["model"]
    torch.testing.assert_close(seen[0][key], trained[key], atol=2e-3, rtol=1e-2)  # started from the export (fp16)


def test_recipe_can_tune_the_last_backbone_stages() -> None:
    frozen = default_recipe.build_model(default_recipe.RecipeConfig())
    assert not any(p.requires_grad for p in frozen.backbone.parameters())
    tuned = default_recipe.build_model(default_recipe.RecipeConfig(tune_blocks=1))
    stages = tuned.backbone.body.blocks
    assert all(p.requires_grad for p in stages[-1].parameters())
    assert not any(p.requires_grad for stage in stages[:-1] for p in stage.parameters())
    with pytest.raises(ValueError, match="stages to tune"):
        default_recipe.build_model(default_recipe.RecipeConfig(tune_blocks=99))


def test_recipe_reports_an_unreadable_init_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert default_recipe.main(["--out", str(tmp_path / "run"), "--init", str(bad), "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error:" in err[0]

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

from cape_track.model import CapeModel
from cape_track.training import views
from cape_track.training.config import ConfigError, get_config
from cape_track.training.train import build_model, main, train
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
def test_the_default_setting_trains_validates_resumes_and_fine_tunes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The embedded model's recipe through cape-train's one loop: two steps on a tiny image set (the real lite0
    model at a 128 px input), a resume mid-epoch, an export, and a fine-tuning start from it."""
    rng = np.random.default_rng(3)
    stills = [_texture(rng) for _ in range(3)]
    clip = [_texture(rng) for _ in range(6)]
    monkeypatch.setattr(views, "load_images", lambda split: stills)
    monkeypatch.setattr(views, "load_clips", lambda split: [clip])
    seen: list[dict[str, torch.Tensor]] = []  # the weights each validation saw
    validate = views.ViewEpisodes.validate
    monkeypatch.setattr(
        views.ViewEpisodes,
        "validate",
        lambda self, model: seen.append(copy.deepcopy(model.state_dict())) or validate(self, model),
    )
    run = tmp_path / "run"
    cfg = dataclasses.replace(
        get_config("default"),
        input_size=SIZE,
        batch_size=2,
        train_queries=2,
        steps_per_epoch=2,
        epochs=2,
        warmup_iters=1,
        val_episodes=2,
        pair_prob=0.5,
        out_dir=str(run),
        max_steps=3,
        log_every=1,
    )
    train(cfg, "cpu")  # stops after step 3, in epoch 2: a resumable checkpoint mid-epoch
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [2] and 0.0 <= float(rows[0]["val_PCK@0.1"]) <= 1.0
    assert float(rows[0]["similarity_loss"]) > 0  # the recipe's extra term is in the loss
    assert len(seen) == 2  # at the start (a working matcher) and after epoch 1
    key = "proposal.query_proj.weight"
    assert not torch.equal(seen[0][key], seen[1][key])  # it trained the head ...
    backbone = next(k for k in seen[0] if k.startswith("backbone.") and seen[0][k].is_floating_point())
    assert torch.equal(seen[0][backbone], seen[1][backbone])  # ... and left the backbone frozen
    state = torch.load(run / "last.pt", weights_only=True)["train"]
    assert (state["epoch"], state["step"], state["batch"]) == (1, 3, 1)

    train(dataclasses.replace(cfg, max_steps=None), "cpu", resume="auto")  # resumes at step 3, finishes epoch 2
    assert [int(r["step"]) for r in csv.DictReader((run / "metrics.csv").open())] == [2, 4]
    assert (run / "final.pt").is_file()

    exported = tmp_path / "model.safetensors"
    assert main(["default", "--set", f"out_dir={run}", "--export", str(exported)]) == 0
    seen.clear()
    tuned = dataclasses.replace(
        cfg,
        init_checkpoint=str(exported),
        matcher_init=False,
        tune_blocks=1,
        out_dir=str(tmp_path / "tuned"),
        max_steps=1,
    )
    train(tuned, "cpu")
    assert seen, "the fine-tuning start was validated"
    shipped = CapeModel.from_checkpoint(exported)
    assert not shipped.config.backbone.imagenet_init  # loading the file fetches no ImageNet weights first
    exported_weights = shipped.state_dict()
    torch.testing.assert_close(seen[0][key], exported_weights[key].float())  # it started from the export


def test_the_default_setting_can_tune_the_last_backbone_stages() -> None:
    cfg = dataclasses.replace(get_config("default"), imagenet_init=False)
    frozen = build_model(cfg)
    assert not any(p.requires_grad for p in frozen.backbone.parameters())
    tuned = build_model(dataclasses.replace(cfg, tune_blocks=1))
    stages = tuned.backbone.body.blocks
    assert all(p.requires_grad for p in stages[-1].parameters())
    assert not any(p.requires_grad for stage in stages[:-1] for p in stage.parameters())
    with pytest.raises(ConfigError, match="stages to tune"):
        build_model(dataclasses.replace(cfg, tune_blocks=99))
    with pytest.raises(ConfigError, match="tune_blocks"):
        dataclasses.replace(cfg, freeze_backbone=False, tune_blocks=1)


def test_an_unreadable_init_checkpoint_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    overrides = ["--set", f"init_checkpoint={bad}", "--set", f"out_dir={tmp_path / 'run'}", "--set", "max_steps=1"]
    assert main(["default-finetune", *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error:" in err[0]

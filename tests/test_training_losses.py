"""training.losses: equal to the official loss values (reference vectors, mini model), masks and gradients."""

from __future__ import annotations

import pytest
import torch
from reference_data import VECTORS

from cape_track.model import CapeModel
from cape_track.model.transforms import normalize_images
from cape_track.training.losses import cape_losses


@pytest.fixture(scope="module")
def mini() -> tuple[CapeModel, dict, dict]:
    model = CapeModel.from_official(VECTORS / "state_dict_mini.pt")
    inputs = torch.load(VECTORS / "inputs.pt", weights_only=True)
    outputs = torch.load(VECTORS / "outputs_mini.pt", weights_only=True)
    return model, inputs, outputs


@pytest.mark.parametrize("case", ["A_1shot_bs2_pad100", "B_5shot_bs1_pad100", "C_demo_1shot_bs1_nopad"])
def test_losses_equal_official_values(mini: tuple[CapeModel, dict, dict], case: str) -> None:
    model, inputs, outputs = mini
    d = inputs[case]
    with torch.no_grad():
        support = model.encode_support(normalize_images(d["img_s_u8"]), d["kp_s"], d["vis_s"] > 0, d["skeletons"])
        pred = model(normalize_images(d["img_q_u8"]), support)
        losses = cape_losses(pred, support.mask, d["kp_q"], d["vis_q"] > 0, 256)
    official = outputs[case]["losses"]
    assert set(losses) == {k for k in official if "loss" in k}
    for name, value in losses.items():
        assert value.item() == pytest.approx(official[name], abs=2e-6), name


def _tiny_episode(model: CapeModel, visible_q: torch.Tensor) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(1, 2, 3, 64, 64, generator=gen)
    kp = torch.rand(1, 2, 5, 2, generator=gen) * 64
    support = model.encode_support(images, kp, torch.ones(1, 2, 5, dtype=torch.bool), [[[0, 1]], [[1, 2]]])
    pred = model(torch.randn(2, 3, 64, 64, generator=gen), support)
    return cape_losses(pred, support.mask, torch.rand(2, 5, 2, generator=gen) * 64, visible_q, 64)


def test_no_visible_query_point_gives_zero_position_losses() -> None:
    model = CapeModel.from_preset("test", input_size=64)
    losses = _tiny_episode(model, torch.zeros(2, 5, dtype=torch.bool))
    for name, value in losses.items():
        assert torch.isfinite(value) and value.item() == 0.0, name


def test_gradients_reach_the_support_path_and_the_backbone() -> None:
    model = CapeModel.from_preset("test", input_size=64)
    losses = _tiny_episode(model, torch.ones(2, 5, dtype=torch.bool))
    sum(losses.values()).backward()
    assert model.support_proj.weight.grad is not None and model.support_proj.weight.grad.abs().sum() > 0
    first = next(model.backbone.parameters())  # the stem: shared by support and query passes
    assert first.grad is not None and first.grad.abs().sum() > 0

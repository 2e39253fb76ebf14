"""Backbones through timm: every option gives a stride-16 NCHW map; weights come from local files only."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from cape_track.model import CapeModel
from cape_track.model.backbone import Backbone
from cape_track.model.config import BackboneConfig, get_preset


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["tiny", "dinov2-s", "dino-s8", "resnet50", "lite0", "test"])
def test_backbone_options_give_a_16x16_map(preset: str) -> None:
    cfg = get_preset(preset)
    bb = Backbone(cfg.backbone, cfg.input_size).eval()
    with torch.no_grad():
        f = bb(torch.randn(1, 3, cfg.input_size, cfg.input_size))
    assert f.shape == (1, bb.channels, 16, 16)


def test_timm_weights_from_a_local_file(tmp_path: Path) -> None:
    """A timm-layout weight file of the whole classifier loads; the layers after the feature level are dropped."""
    import timm

    full = timm.create_model("test_efficientnet")
    path = tmp_path / "w.pth"
    torch.save(full.state_dict(), path)
    cfg = BackboneConfig(family="timm", name="test_efficientnet", feature_index=3, upsample="none")
    loaded = Backbone(dataclasses.replace(cfg, weights_file=str(path)), 256).body.state_dict()
    reference = full.state_dict()
    assert loaded and all(torch.equal(v, reference[k]) for k, v in loaded.items())
    assert not any(k.startswith(("blocks.4", "conv_head", "classifier")) for k in loaded)


def test_swinv2_weights_from_a_local_file(tmp_path: Path) -> None:
    cfg = get_preset("mini").backbone
    src = Backbone(cfg, 256)
    path = tmp_path / "swin.pth"
    torch.save({"model": src.body.state_dict()}, path)
    loaded = Backbone(dataclasses.replace(cfg, weights_file=str(path)), 256)
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), loaded.state_dict().values()))


def test_config_survives_a_checkpoint(tmp_path: Path) -> None:
    m = CapeModel.from_preset("dino-s8", num_encoder_layers=1, num_decoder_layers=1)
    m.save(tmp_path / "d.pt")
    assert CapeModel.from_checkpoint(tmp_path / "d.pt").config == m.config

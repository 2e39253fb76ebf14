"""Local ImageNet weights: the lukemelas -> timm EfficientNet-Lite0 remap loads strictly and the weights are real."""

from __future__ import annotations

import cv2
import pytest
import skimage.data
import timm
import torch

from cape_track.model.errors import CheckpointError
from cape_track.model.pretrained import imagenet_state_dict, lite0_lukemelas_to_timm
from cape_track.model.transforms import normalize_images

IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def lite0_imagenet() -> torch.nn.Module:
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    result = model.load_state_dict(imagenet_state_dict("tf_efficientnet_lite0", features_only=False), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return model


def test_full_model_loads_strictly_with_every_tensor_replaced(lite0_imagenet):
    fresh = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    loaded = lite0_imagenet.state_dict()
    assert loaded.keys() == fresh.keys()
    changed = [k for k in fresh if not k.endswith("num_batches_tracked") and not torch.equal(fresh[k], loaded[k])]
    assert len(changed) == sum(1 for k in fresh if not k.endswith("num_batches_tracked"))


@pytest.mark.parametrize("out_indices", [(0, 1, 2, 3, 4), (1, 2, 3)])
def test_features_only_model_loads_strictly(out_indices):
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, features_only=True, out_indices=out_indices)
    result = model.load_state_dict(imagenet_state_dict("tf_efficientnet_lite0", features_only=True), strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_classifies_chelsea_as_a_cat(lite0_imagenet):
    image = cv2.resize(skimage.data.chelsea(), (224, 224), interpolation=cv2.INTER_AREA)
    with torch.no_grad():
        probs = lite0_imagenet(normalize_images(image)[None]).softmax(-1)[0]
    top5 = probs.topk(5).indices.tolist()
    assert top5[0] in IMAGENET_CATS
    assert probs[list(IMAGENET_CATS)].sum() > 0.8


def test_remap_renames_blocks_per_stage():
    weight = torch.zeros(1)
    renamed = lite0_lukemelas_to_timm(
        {
            "_blocks.0._project_conv.weight": weight,  # no expansion in block 0: project is timm's conv_pw
            "_blocks.3._expand_conv.weight": weight,  # first block of stage 2
            "_blocks.15._bn2.running_var": weight,  # last block, last stage
            "_bn1.bias": weight,  # head batch norm
            "_fc.weight": weight,
        }
    )
    assert list(renamed) == [
        "blocks.0.0.conv_pw.weight",
        "blocks.2.0.conv_pw.weight",
        "blocks.6.0.bn3.running_var",
        "bn2.bias",
        "classifier.weight",
    ]


@pytest.mark.parametrize("key", ["_blocks.16._bn0.weight", "_blocks.2._se_reduce.weight", "head.fc.weight"])
def test_remap_rejects_foreign_keys(key):
    with pytest.raises(CheckpointError, match=f"^{key}: not an EfficientNet-Lite0 weight"):
        lite0_lukemelas_to_timm({key: torch.zeros(1)})


def test_names_without_local_weights_are_refused():
    with pytest.raises(CheckpointError, match="^swinv2_tiny_window16_256: no local ImageNet weights .*tf_efficientnet"):
        imagenet_state_dict("swinv2_tiny_window16_256", features_only=True)

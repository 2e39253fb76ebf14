"""A thin adapter over timm: any backbone in, one NCHW feature map at stride 16 out (spec §4)."""

from __future__ import annotations

import pickle
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.models.swin_transformer_v2 import SwinTransformerV2, checkpoint_filter_fn
from torch import nn

from .config import BackboneConfig
from .errors import CheckpointError


class Backbone(nn.Module):
    """Image `[B, 3, S, S]` -> features `[B, C, S/16, S/16]`, with `C = self.channels`.

    SwinV2 is built from its geometry (not a timm name) so that any released size loads, and returns NHWC from
    `forward_features`: it is permuted once here. Other timm models are cut after their feature level and read
    through `forward_intermediates`.
    """

    def __init__(self, cfg: BackboneConfig, input_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.family == "swinv2":
            self.body = SwinTransformerV2(
                img_size=input_size,
                window_size=cfg.window_size,
                embed_dim=cfg.embed_dim,
                depths=cfg.depths,
                num_heads=cfg.num_heads,
                pretrained_window_sizes=cfg.pretrained_window_sizes,
                drop_path_rate=cfg.drop_path_rate,
                num_classes=0,  # the official classifier is unused; its weights are dropped on load
            )
            channels = self.body.num_features
            if cfg.weights_file is not None:
                load_swinv2_imagenet(self.body, cfg.weights_file)
        else:
            kwargs = dict(cfg.timm_kwargs)
            if cfg.weights_file is not None:
                # timm reads a local file through its pretrained config; nothing is ever fetched from a hub.
                kwargs["pretrained_cfg_overlay"] = {"file": cfg.weights_file}
            self.body = timm.create_model(
                cfg.name, pretrained=cfg.weights_file is not None, drop_path_rate=cfg.drop_path_rate, **kwargs
            )
            # Drop every layer after the feature level (and the classifier): they would run on every frame for
            # nothing (15% of EfficientNet-Lite0's time at stride 16) and bloat checkpoints.
            self.feature_indices = self.body.prune_intermediate_layers(
                indices=(cfg.feature_index,), prune_head=True, prune_norm=True
            )
            channels = self.body.feature_info[self.feature_indices[-1]]["num_chs"]
            if cfg.imagenet_init:
                from .pretrained import imagenet_state_dict

                own = self.body.state_dict()
                weights = imagenet_state_dict(cfg.name, features_only=True)
                self.body.load_state_dict({k: v for k, v in weights.items() if k in own}, strict=True)
        self.channels = channels
        # Learned x2 upsampling of the pre-2024 SwinV2-B checkpoints (`backbone.upsample.*`, spec §2).
        self.upsample = nn.ConvTranspose2d(channels, channels, 2, stride=2) if cfg.upsample == "deconv" else None

    @property
    def has_pyramid(self) -> bool:
        """True when a finer level (stride 8) sits below the feature level: the keypoint finder needs one."""
        return self.cfg.family == "timm" and self.cfg.upsample == "none" and self.feature_indices[-1] > 0

    def pyramid(self, images: torch.Tensor, depth: int = 2) -> list[torch.Tensor]:
        """The `depth` levels ending at the feature level, finest first (`[stride 8, stride 16]` for 2, with stride 4
        in front for 3), in one pass; the last equals `forward(images)`."""
        level = self.feature_indices[-1] if self.cfg.family == "timm" else 0
        if not self.has_pyramid or level + 1 < depth:
            raise ValueError(f"backbone {self.cfg.name} has no {depth} levels to read (timm models at stride 16 do)")
        indices = tuple(range(level - depth + 1, level + 1))
        return self.body.forward_intermediates(images, indices=indices, intermediates_only=True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.cfg.family == "swinv2":
            x = self.body.forward_features(images).permute(0, 3, 1, 2)  # NHWC -> NCHW
        else:
            x = self.body.forward_intermediates(images, indices=self.feature_indices, intermediates_only=True)[-1]
        if self.cfg.upsample == "bilinear":
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        elif self.upsample is not None:
            x = self.upsample(x)
        return x


def load_swinv2_imagenet(body: SwinTransformerV2, path: str | Path) -> None:
    """THE SwinV2 ImageNet initialisation (the paper's, spec §2): Microsoft or SimMIM weights (`encoder.` prefix
    stripped) converted to timm's layout by timm's own filter, loaded strictly apart from the unused classifier.
    Read with `weights_only=True`: the file holds tensors, nothing that runs."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path}: backbone initialisation file not found (download it as in the Pose Anything README, or set "
            "backbone_weights=none to start from random weights)"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError, EOFError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read backbone weights ({str(e).splitlines()[0][:80]})") from None
    state = ckpt.get("model", ckpt.get("state_dict", ckpt)) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: no state dict inside (expected a SwinV2 .pth file)")
    state = {k.removeprefix("encoder."): v for k, v in state.items()}  # SimMIM prefix
    state = {k: v for k, v in checkpoint_filter_fn(state, body).items() if not k.startswith("head.")}
    own = body.state_dict()
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    mismatched = [k for k in own.keys() & state.keys() if own[k].shape != state[k].shape]
    if missing or unexpected or mismatched:
        example = (missing or unexpected or mismatched)[0]
        raise CheckpointError(
            f"{path}: does not fit the SwinV2 backbone ({len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(mismatched)} mis-shaped keys, e.g. {example})"
        )
    body.load_state_dict(state, strict=True)

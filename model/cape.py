"""CapeModel: the whole graph CAPE forward pass in data-flow order, `encode_support` once, `predict` per frame."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .backbone import Backbone
from .checkpoint import Weights, load_strict, read_checkpoint, read_official, save_checkpoint
from .config import CapeConfig, get_preset
from .decoder import GraphDecoder, skeleton_adjacency
from .encoder import Encoder
from .heatmaps import gaussian_heatmaps
from .layers import CoordinateHead, SinePositionalEncoding
from .matching import MatchSupport, match_support
from .outputs import Prediction, SupportEmbedding
from .proposal import ProposalGenerator
from .score import keypoint_scores
from .support import SupportSet
from .transforms import SquareBox, crop_to_input, frame_to_input, normalize_images


class CapeModel(nn.Module):
    """Category-agnostic pose estimation with a graph decoder (Hirschorn & Avidan, ECCV 2024).

    Module names are ours; `model.checkpoint` maps the official key names onto them.
    """

    def __init__(self, config: CapeConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        self.backbone = Backbone(c.backbone, c.input_size)
        self.input_proj = nn.Conv2d(self.backbone.channels, c.d_model, kernel_size=1)
        self.support_proj = nn.Linear(self.backbone.channels, c.d_model)
        self.position = SinePositionalEncoding(c.d_model // 2)
        self.encoder = Encoder(c.num_encoder_layers, c.d_model, c.nhead, c.dim_feedforward, c.dropout)
        self.proposal = ProposalGenerator(c.d_model, c.similarity_proj_dim, c.dynamic_proj_dim)
        self.decoder = GraphDecoder(
            c.num_decoder_layers, c.d_model, c.nhead, c.dim_feedforward, c.dropout, c.graph_decoder
        )
        self.coord_heads = nn.ModuleList(CoordinateHead(c.d_model) for _ in range(c.num_decoder_layers))
        self._init_head()

    def _init_head(self) -> None:
        """Xavier-uniform for every >= 2-D head weight, as the official EncoderDecoder/PoseHead (spec §18.12)."""
        for name, p in self.named_parameters():
            if not name.startswith("backbone.") and p.dim() >= 2 and ".mlp.6." not in name:
                nn.init.xavier_uniform_(p)

    @property
    def input_size(self) -> int:
        return self.config.input_size

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------------------------------------ support
    def encode_support(
        self,
        images: torch.Tensor,
        keypoints: torch.Tensor,
        visible: torch.Tensor,
        skeletons: Sequence[Sequence[Sequence[int]]],
        per_shot: bool = False,
    ) -> SupportEmbedding:
        """Backbone on the support shots, heatmap-pooled keypoint features, shot mean, skeleton adjacency.

        Args:
            images: `[K, B, 3, S, S]` ImageNet-normalised RGB.
            keypoints: `[K, B, N, 2]` network-input px.
            visible: `[K, B, N]`. The paper's rule (training, MP-100 evaluation): a keypoint invisible in any shot
                is ignored everywhere (spec §18.6). `per_shot`: it is ignored on those shots only, and its token is
                the mean over the shots that show it, so a shot added to correct a frame never drops a keypoint.
            skeletons: one list of 0-indexed `[i, j]` pairs per sample (len B); only one skeleton per sample.
        """
        k, b, _, s, _ = _check_shape(images, "images", 5)
        _check_shape(keypoints, "keypoints", 4, (k, b, None, 2))
        n = keypoints.shape[2]
        _check_shape(visible, "visible", 3, (k, b, n))
        if len(skeletons) != b:
            raise ValueError(f"expected {b} skeletons (one per sample), got {len(skeletons)}")

        feats = self.backbone(images.flatten(0, 1))  # [K*B, C, h, w]
        hm_size = self.config.heatmap_size
        heatmaps, weights = gaussian_heatmaps(keypoints.flatten(0, 1), visible.flatten(0, 1), s, hm_size)
        feats = F.interpolate(feats, size=(hm_size, hm_size), mode="bilinear", align_corners=False)
        heatmaps = heatmaps / (heatmaps.sum(dim=(-2, -1), keepdim=True) + 1e-8)
        pooled = torch.einsum("bnhw,bchw->bnc", heatmaps, feats).view(k, b, n, -1)  # [K, B, N, C]
        weights = weights.view(k, b, n)
        if per_shot:
            count = weights.sum(dim=0)  # [B, N] shots showing each keypoint
            mean = (pooled * weights[..., None]).sum(dim=0) / count.clamp(min=1)[..., None]
            valid = (count > 0).to(pooled)
        else:
            mean, valid = pooled.mean(dim=0), weights.prod(dim=0)  # [B, N] product over shots
        tokens = self.support_proj(mean * valid[..., None])
        mask = valid == 0
        return SupportEmbedding(tokens, mask, skeleton_adjacency(skeletons, ~_decoder_mask(mask)))

    @torch.no_grad()
    def encode_support_set(self, support: SupportSet) -> SupportEmbedding:
        """A `SupportSet` (full images, image-px keypoints) -> embedding: each shot letterboxed to the input, each
        keypoint taken from the shots that show it (`per_shot`: a tracking support grows by corrected frames)."""
        images, keypoints, visible = self.support_inputs(support)
        skeleton = [[list(e) for e in support.skeleton]]
        return self.encode_support(images[:, None], keypoints[:, None], visible[:, None], skeleton, per_shot=True)

    @property
    def can_match(self) -> bool:
        """Whether the keypoint finder (`model.matching`) can run on this backbone (it needs a stride-8 level)."""
        return self.backbone.has_pyramid

    @torch.no_grad()
    def encode_match_support(
        self, support: SupportSet, rotations: Sequence[float] = (), depth: int = 2
    ) -> MatchSupport:
        """The finder's support: hypercolumns of `depth` backbone levels under the keypoints of each shot (also
        rotated), and the layout to fit."""
        images, keypoints, visible = self.support_inputs(support)
        return match_support(lambda x: self.backbone.pyramid(x, depth), images, keypoints, visible, rotations)

    def support_inputs(self, support: SupportSet) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Shots letterboxed to the input: images `[K, 3, S, S]`, keypoints `[K, N, 2]` input px, visible `[K, N]`."""
        s = self.input_size
        images, keypoints = [], []
        for image, xy in zip(support.images, support.keypoints):
            box = SquareBox.letterbox(image.shape[1], image.shape[0])
            images.append(normalize_images(crop_to_input(image, box, s)))
            keypoints.append(torch.as_tensor(frame_to_input(xy, box, s), dtype=torch.float32))
        dev = self.device
        visible = torch.as_tensor(np.asarray(support.visible))
        return torch.stack(images).to(dev), torch.stack(keypoints).to(dev), visible.to(dev)

    # ------------------------------------------------------------------------------------------------ queries
    def forward(
        self, images: torch.Tensor, support: SupportEmbedding, features: torch.Tensor | None = None
    ) -> Prediction:
        """Keypoints of the support's category on each query image `[B, 3, S, S]` (normalised RGB).

        `features`: the backbone's output for `images` when the caller already has it (the finder reads the same
        pass's finer level), so the backbone runs once.
        """
        b = _check_shape(images, "images", 4)[0]
        support = support.expand(b)
        feats = self.backbone(images) if features is None else features
        x = self.input_proj(feats)  # [B, d, h, w]
        h, w = x.shape[-2:]
        pos = self.position.feature_map(h, w, x.device).flatten(1).T[:, None].expand(-1, b, -1)  # [HW, B, d]
        memory, kpt_tokens = self.encoder(
            x.flatten(2).permute(2, 0, 1), pos, support.tokens.transpose(0, 1), support.mask
        )
        similarity, proposal, initial = self.proposal(memory, kpt_tokens, (h, w))
        layers = self.decoder(
            kpt_tokens,
            initial,
            memory,
            pos,
            _decoder_mask(support.mask),
            support.adjacency,
            self.position,
            self.coord_heads,
        )
        final = layers[-1]
        with torch.no_grad():
            scores = keypoint_scores(similarity, initial, final, support.mask, self.input_size)
        return Prediction(final * self.input_size, layers, scores, proposal, initial, similarity)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, support: SupportEmbedding) -> Prediction:
        """Inference: `forward` without autograd (call `.eval()` first; checkpoints load in eval mode)."""
        return self(images, support)

    # ------------------------------------------------------------------------------------------------ files
    @classmethod
    def from_preset(cls, name: str, **overrides: object) -> CapeModel:
        return cls(get_preset(name, **overrides))

    @classmethod
    def from_checkpoint(
        cls, path: str | Path | None = None, device: str | torch.device = "cpu", trust: bool = False
    ) -> CapeModel:
        """Our checkpoint format or the paper's released files; `None` = the embedded default model. Nothing in the
        file runs unless `trust` (see `model.checkpoint.read_checkpoint`)."""
        return cls.from_weights(read_checkpoint(path, trust), device)

    @classmethod
    def from_official(
        cls, path_or_state_dict: str | Path | Mapping[str, torch.Tensor], device: str | torch.device = "cpu"
    ) -> CapeModel:
        """A released Pose Anything checkpoint, or an official-layout state dict, loaded strictly."""
        return cls.from_weights(read_official(path_or_state_dict), device)

    @classmethod
    def from_weights(cls, weights: Weights, device: str | torch.device = "cpu") -> CapeModel:
        """The network of `weights`' config, filled strictly, in eval mode on `device`."""
        model = cls(weights.config)
        load_strict(model, weights)
        return model.to(device).eval()

    def save(self, path: str | Path, half: bool = False) -> None:
        save_checkpoint(self.state_dict(), self.config, path, half=half)


def _decoder_mask(mask: torch.Tensor) -> torch.Tensor:
    """The decoder's key mask: a sample whose slots are all ignored keeps slot 0, so attention has a key (spec §8).

    Branch-free, so a traced ONNX graph (`model.export`) keeps the rule for every support, not the example's."""
    first = torch.arange(mask.shape[1], device=mask.device) == 0  # [N]
    return mask & ~(mask.all(dim=1, keepdim=True) & first)


def _check_shape(t: torch.Tensor, name: str, rank: int, shape: tuple[int | None, ...] | None = None) -> torch.Size:
    if t.dim() != rank or (shape and any(e is not None and e != a for e, a in zip(shape, t.shape))):
        want = shape if shape else f"rank {rank}"
        raise ValueError(f"{name}: expected shape {want}, got {tuple(t.shape)}")
    return t.shape

"""cape-track's network: the graph-based category-agnostic pose estimator of Pose Anything, in plain PyTorch."""

from .cape import CapeModel
from .checkpoint import load_official_checkpoint
from .config import PRESETS, BackboneConfig, CapeConfig
from .errors import CapeError, CheckpointError, SupportFileError
from .outputs import Prediction, SupportEmbedding
from .support import KeypointFile, SupportSet

__all__ = [
    "PRESETS",
    "BackboneConfig",
    "CapeConfig",
    "CapeError",
    "CapeModel",
    "CheckpointError",
    "KeypointFile",
    "Prediction",
    "SupportEmbedding",
    "SupportFileError",
    "SupportSet",
    "load_official_checkpoint",
]

"""cape-track's network: the graph-based category-agnostic pose estimator of Pose Anything, in plain PyTorch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import lazy_exports

# Names -> the submodule that defines them. Imported on first use (PEP 562), so that `cape-track --help`,
# argument errors and light modules such as `errors` do not pay for torch and timm.
_EXPORTS = {
    "CapeModel": ".cape",
    "PRESETS": ".config",
    "BackboneConfig": ".config",
    "CapeConfig": ".config",
    "CapeError": ".errors",
    "CheckpointError": ".errors",
    "SupportFileError": ".errors",
    "Prediction": ".outputs",
    "SupportEmbedding": ".outputs",
    "KeypointFile": ".support",
    "SupportSet": ".support",
}
__all__ = [
    "BackboneConfig",
    "CapeConfig",
    "CapeError",
    "CapeModel",
    "CheckpointError",
    "KeypointFile",
    "PRESETS",
    "Prediction",
    "SupportEmbedding",
    "SupportFileError",
    "SupportSet",
]

if TYPE_CHECKING:
    from .cape import CapeModel
    from .config import PRESETS, BackboneConfig, CapeConfig
    from .errors import CapeError, CheckpointError, SupportFileError
    from .outputs import Prediction, SupportEmbedding
    from .support import KeypointFile, SupportSet


__getattr__ = lazy_exports(__name__, _EXPORTS, globals())

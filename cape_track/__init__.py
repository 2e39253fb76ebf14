"""cape-track: streaming category-agnostic keypoint tracking. The one import namespace of the project.

The repository keeps its folders `model/ tracker/ training/ streamlit_app/ benchmarks/` at the top level; the build
configuration (pyproject.toml, `package-dir`) installs them as `cape_track.model`, `cape_track.tracker`, ... so
nothing but `cape_track` lands at the top of site-packages and a user's own `model.py` cannot shadow ours.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from cape_track.model.lazy import lazy_exports

if TYPE_CHECKING:
    from cape_track.model import CapeError, CapeModel, SupportSet
    from cape_track.tracker import Tracker, TrackerConfig, open_source

_EXPORTS = {"CapeError": ".model", "CapeModel": ".model", "SupportSet": ".model"}
_EXPORTS.update(Tracker=".tracker", TrackerConfig=".tracker", open_source=".tracker")

try:
    __version__ = version("cape-track")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["CapeError", "CapeModel", "SupportSet", "Tracker", "TrackerConfig", "__version__", "open_source"]


# The public classes, imported on first use: importing `cape_track` alone costs no torch.
__getattr__ = lazy_exports(__name__, _EXPORTS, globals())

"""cape-track's streaming tracker: sources, ROI follow, batched model calls, smoothing, sinks and the CLI."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cape_track.model.lazy import lazy_exports

# Names -> the submodule that defines them. Imported on first use (PEP 562), so that `cape-track --help`,
# argument errors and light modules such as `errors` do not pay for torch and timm.
_EXPORTS = {
    "Accelerator": ".accel",
    "select_device": "..model.device",
    "draw_pose": ".drawing",
    "draw_text": ".drawing",
    "keypoint_colors": ".drawing",
    "DeviceError": "..model.errors",
    "SinkError": ".errors",
    "SourceError": ".errors",
    "TrackerWarning": ".errors",
    "FrameResult": ".frames",
    "StageTimes": ".pipeline",
    "TrackRun": ".pipeline",
    "TrackSupport": ".support",
    "TrackState": ".pipeline",
    "Tracker": ".pipeline",
    "TrackerConfig": ".pipeline",
    "RoiConfig": ".roi",
    "CsvSink": ".sinks",
    "JsonSink": ".sinks",
    "Sink": ".sinks",
    "TrackInfo": ".frames",
    "VideoSink": ".sinks",
    "WindowSink": ".sinks",
    "file_sinks": ".sinks",
    "output_paths": ".sinks",
    "KalmanSmoother": ".smoothing",
    "SmootherConfig": ".smoothing",
    "Frame": ".frames",
    "ImageFolderSource": ".sources",
    "Source": ".sources",
    "VideoFileSource": ".sources",
    "WebcamSource": ".sources",
    "open_source": ".sources",
}
__all__ = [
    "Accelerator",
    "CsvSink",
    "DeviceError",
    "Frame",
    "FrameResult",
    "ImageFolderSource",
    "JsonSink",
    "KalmanSmoother",
    "RoiConfig",
    "Sink",
    "SinkError",
    "SmootherConfig",
    "Source",
    "SourceError",
    "StageTimes",
    "TrackInfo",
    "TrackRun",
    "TrackSupport",
    "TrackState",
    "Tracker",
    "TrackerConfig",
    "TrackerWarning",
    "VideoFileSource",
    "VideoSink",
    "WebcamSource",
    "WindowSink",
    "draw_pose",
    "draw_text",
    "file_sinks",
    "keypoint_colors",
    "open_source",
    "output_paths",
    "select_device",
]

if TYPE_CHECKING:
    from ..model.device import select_device
    from ..model.errors import DeviceError
    from .accel import Accelerator
    from .drawing import draw_pose, draw_text, keypoint_colors
    from .errors import SinkError, SourceError, TrackerWarning
    from .frames import Frame, FrameResult, TrackInfo
    from .pipeline import StageTimes, Tracker, TrackerConfig, TrackRun, TrackState
    from .roi import RoiConfig
    from .sinks import CsvSink, JsonSink, Sink, VideoSink, WindowSink, file_sinks, output_paths
    from .smoothing import KalmanSmoother, SmootherConfig
    from .sources import ImageFolderSource, Source, VideoFileSource, WebcamSource, open_source
    from .support import TrackSupport


__getattr__ = lazy_exports(__name__, _EXPORTS, globals())

"""cape-track's streaming tracker: sources, ROI follow, batched model calls, smoothing, sinks and the CLI."""

from .accel import Accelerator, select_device
from .drawing import draw_pose, draw_text, keypoint_colors
from .errors import DeviceError, SinkError, SourceError, TrackerWarning
from .pipeline import FrameResult, StageTimes, Tracker, TrackerConfig, TrackState
from .roi import RoiConfig
from .sinks import CsvSink, JsonSink, Sink, TrackInfo, VideoSink, WindowSink, file_sinks, output_paths
from .smoothing import KalmanSmoother, SmootherConfig
from .sources import Frame, ImageFolderSource, Source, VideoFileSource, WebcamSource, open_source

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

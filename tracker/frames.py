"""The values that flow between the tracker's stages: a decoded `Frame` (sources -> tracker -> sinks), the
tracker's `FrameResult` for it, and the `TrackInfo` header a sink opens with. They live below every stage so that
sources, the pipeline and the sinks import them, not each other."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cape_track.model.transforms import SquareBox
from cape_track.tracker.flow import FlowImage


@dataclass(frozen=True)
class Frame:
    """One decoded frame, in display orientation."""

    index: int  # 0-based position among the frames this source delivered
    time: float  # seconds since the first frame, from the stream's timestamps (exact for variable frame rate)
    image: np.ndarray  # [H, W, 3] uint8 RGB
    # `image` prepared for optical flow where its source's reader thread made it ahead (`Source.prepare`), off the
    # tracker's critical chain; None: the tracker makes it when it needs it. A frame given a new image needs None.
    flow: FlowImage | None = None
    # `image` halved once (`model.transforms.halved`), made ahead the same way, for crops of boxes over twice the
    # network's input (`crop_to_input`); None: each such crop halves `image` itself. A new image needs None too.
    half: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.half is not None and self.half.shape[:2] != (self.image.shape[0] // 2, self.image.shape[1] // 2):
            raise ValueError(f"half-size image {self.half.shape[:2]} does not halve the frame {self.image.shape[:2]}")


@dataclass(frozen=True)
class FrameResult:
    index: int  # frame index in the source
    time: float  # seconds since the first frame
    xy_frame: np.ndarray  # [N, 2] frame px
    scores: np.ndarray  # [N] network confidence in [0, 1]
    visible: np.ndarray  # [N] bool
    box: SquareBox  # the crop the network saw (between keyframes: the one it would have seen), frame px
    keyframe: bool = True  # the network ran on this frame (False: optical flow carried the keypoints here)


@dataclass(frozen=True)
class TrackInfo:
    """What a sink needs before the first frame: the header of the tracks file and the video geometry."""

    video: str  # the source as the user named it
    fps: float  # nominal frame rate
    width: int
    height: int
    names: tuple[str, ...]  # [N] keypoint names
    skeleton: tuple[tuple[int, int], ...]  # edges between keypoint indices

"""Keyframes: the network runs every K frames and earlier where optical flow cannot carry the keypoints (a visible
point lost by the flow, a scene cut, a point near the edge, nothing tracked); between keyframes the smoother moves
the points by the flow alone and no measurement counter advances."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fixtures_media import write_clip, write_support

from cape_track.model import CapeModel, SupportSet
from cape_track.tracker.frames import Frame
from cape_track.tracker.pipeline import Tracker, TrackerConfig, TrackState, keyframe_reason
from cape_track.tracker.smoothing import FlowImage, KalmanSmoother, Motion, SmootherConfig
from cape_track.tracker.sources import VideoFileSource

W, H = 320, 240


def frame(index: int, image: np.ndarray | None = None) -> Frame:
    image = image if image is not None else np.full((H, W, 3), 120, np.uint8)
    return Frame(index, index / 25.0, image)


def tracking_state(xy: np.ndarray, visible: np.ndarray, last_keyframe: int = 0) -> TrackState:
    """A state after a keyframe at `last_keyframe` with every point tracked, on a grey previous frame."""
    smoother = KalmanSmoother()
    filt = smoother.init_state(len(xy))
    filt = replace(filt, x=np.stack([xy, np.zeros_like(xy)], -1), tracked=np.ones(len(xy), bool))
    filt = replace(filt, flow=FlowImage.from_rgb(frame(0).image))
    return TrackState(
        fps=25.0, last_index=last_keyframe, xy=xy, visible=visible, filter=filt, last_keyframe=last_keyframe
    )


XY = np.array([[100.0, 100.0], [150.0, 120.0], [200.0, 110.0]])
STILL = Motion(FlowImage.from_rgb(frame(1).image), np.zeros((3, 2)))
CONFIG = TrackerConfig(keyframe_every=4)


def test_flow_carries_a_well_followed_frame() -> None:
    assert keyframe_reason(CONFIG, frame(1), tracking_state(XY, np.ones(3, bool)), STILL) == ""


def test_every_k_frames() -> None:
    state = tracking_state(XY, np.ones(3, bool))
    assert [keyframe_reason(CONFIG, frame(i), state, STILL) for i in range(1, 6)] == ["", "", "", "due", "due"]


def test_forced_when_the_flow_loses_a_visible_point() -> None:
    lost = Motion(STILL.image, np.array([[0.0, 0.0], [np.nan, np.nan], [0.0, 0.0]]))
    assert keyframe_reason(CONFIG, frame(1), tracking_state(XY, np.ones(3, bool)), lost) == "flow"
    hidden = np.array([True, False, True])  # the lost one is not visible: no reason to ask the network
    assert keyframe_reason(CONFIG, frame(1), tracking_state(XY, hidden), lost) == ""


def test_forced_on_a_scene_cut() -> None:
    other = np.zeros((H, W, 3), np.uint8)  # another picture: dark left, bright right (the last frame was grey)
    other[:, W // 2 :] = 255
    cut = Motion(FlowImage.from_rgb(other), np.zeros((3, 2)))
    assert keyframe_reason(CONFIG, frame(1, other), tracking_state(XY, np.ones(3, bool)), cut) == "cut"
    # a small change (a moving object, noise) is no cut
    near = frame(0).image.copy()
    near[100:140, 100:160] = 200
    small = Motion(FlowImage.from_rgb(near), np.zeros((3, 2)))
    assert keyframe_reason(CONFIG, frame(1, near), tracking_state(XY, np.ones(3, bool)), small) == ""


def test_forced_near_the_frame_edge() -> None:
    moved = Motion(STILL.image, np.array([[-96.0, 0.0], [0.0, 0.0], [0.0, 0.0]]))  # to x = 4 px, inside 2 %
    assert keyframe_reason(CONFIG, frame(1), tracking_state(XY, np.ones(3, bool)), moved) == "edge"


def test_forced_while_nothing_is_tracked_or_visible() -> None:
    assert keyframe_reason(CONFIG, frame(0), TrackState(fps=25.0), STILL) == "start"
    assert keyframe_reason(CONFIG, frame(1), tracking_state(XY, np.zeros(3, bool)), STILL) == "lost"


def test_a_frame_without_measurement_advances_no_counter() -> None:
    smoother = KalmanSmoother(SmootherConfig(flow=False))
    state = smoother.init_state(2)
    state = smoother.step(state, XY[:2], np.array([0.9, 0.1]), scale=100.0).state  # point 1 scores low
    state = replace(state, rejected=np.array([2, 0]))
    out = smoother.step(state, None, None, scale=100.0)
    assert (out.state.low == state.low).all() and (out.state.rejected == state.rejected).all()
    assert out.visible.tolist() == [True, False]  # point 1 was never started by a confident measurement
    np.testing.assert_allclose(out.xy[0], XY[0])  # no flow, no velocity: it stays


def test_tracker_runs_the_network_on_keyframes_only(tmp_path: Path) -> None:
    """With the embedded model (it tracks the generated square, so flow carries it between keyframes)."""
    clip = write_clip(tmp_path, frames=16, size=(W, H))
    support = SupportSet.from_files([write_support(clip, tmp_path / "support")])
    model = CapeModel.from_checkpoint(None)
    calls = []
    tracker = Tracker(model, support, TrackerConfig(keyframe_every=4))
    real = tracker._predict
    tracker._predict = lambda frames, boxes: calls.append(len(frames)) or real(frames, boxes)
    with VideoFileSource(clip.path) as source:
        results = list(tracker.run(source))
    keyframes = [r.index for r in results if r.keyframe]
    assert keyframes[0] == 0 and len(keyframes) < len(results)
    assert max(np.diff([*keyframes, len(results)])) <= 4  # never more than K frames apart
    assert len(calls) >= len(keyframes)  # the searched first frame adds calls; carried frames add none
    by_index = {r.index: r for r in results}
    for r in results:
        if not r.keyframe:  # carried frames report the last keyframe's scores
            last = max(k for k in keyframes if k < r.index)
            np.testing.assert_array_equal(r.scores, by_index[last].scores)
    errors = np.array([np.linalg.norm(r.xy_frame - clip.keypoints[r.index], axis=1) for r in results])
    assert np.median(errors) < 0.1 * 0.35 * min(clip.size)  # as the every-frame test in test_pipeline


@pytest.mark.parametrize("config", [TrackerConfig(keyframe_every=1), TrackerConfig(keyframe_every=4, smooth=False)])
def test_every_frame_is_a_keyframe_without_keyframing(tmp_path: Path, config: TrackerConfig) -> None:
    clip = write_clip(tmp_path, frames=6)
    support = SupportSet.from_files([write_support(clip, tmp_path / "support")])
    tracker = Tracker(CapeModel.from_preset("test", input_size=128), support, config)
    with VideoFileSource(clip.path) as source:
        assert all(r.keyframe for r in tracker.run(source))
    assert not tracker.keyframing

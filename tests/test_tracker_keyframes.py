"""Keyframes: the network runs every K frames and earlier where optical flow cannot carry the keypoints (a visible
point lost by the flow, a scene cut, a point near the edge, nothing tracked); between keyframes the smoother moves
the points by the flow alone and no measurement counter advances. A file's results are settled: held for two more
keyframes and smoothed backward from them."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fixtures_media import write_clip, write_support

from cape_track.model import CapeModel, SupportSet
from cape_track.model.transforms import SquareBox, halved
from cape_track.tracker.flow import FlowImage
from cape_track.tracker.frames import Frame, FrameResult
from cape_track.tracker.pipeline import Tracker, TrackerConfig, TrackState, _Settling, keyframe_reason
from cape_track.tracker.sinks import file_sinks, output_paths
from cape_track.tracker.smoothing import KalmanSmoother, Motion, SmootherConfig, StepRecord
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


class _Listed:
    """Frames served from memory by a duck-typed source that takes no `prepare` hook (slots): no reader thread, so
    nothing is made ahead, and the run must not need the hook."""

    __slots__ = ("frames", "fps", "name", "height", "width", "frame_count", "live", "busy_seconds")

    def __init__(self, frames: list[Frame], fps: float) -> None:
        self.frames, self.fps, self.name, self.frame_count, self.live, self.busy_seconds = (
            frames,
            fps,
            "listed",
            None,
            False,
            0.0,
        )
        self.height, self.width = frames[0].image.shape[:2]

    def __iter__(self):
        return iter(self.frames)

    def close(self) -> None:
        pass


def test_flow_images_made_by_the_reader_thread_change_nothing(tmp_path: Path, monkeypatch) -> None:
    clip = write_clip(tmp_path, frames=16, size=(W, H))
    support = SupportSet.from_files([write_support(clip, tmp_path / "support")])
    tracker = Tracker(CapeModel.from_checkpoint(None), support, TrackerConfig(keyframe_every=2))
    made: list[int] = []  # the threads that made a flow image
    real = FlowImage.from_rgb.__func__
    monkeypatch.setattr(
        FlowImage, "from_rgb", classmethod(lambda cls, i: made.append(threading.get_ident()) or real(cls, i))
    )
    with VideoFileSource(clip.path, queue_size=2) as source:
        frames = list(source)  # as decoded: no hook, nothing made
    assert not made
    with VideoFileSource(clip.path, queue_size=2) as source:
        ahead = list(tracker.run(source))
        assert source.prepare is None  # the run's hook is gone with it
    main = threading.get_ident()
    # once per frame; the main thread only for the few read before the run began
    assert len(made) == 16 and 0 < made.count(main) <= 4
    made.clear()
    alone = list(tracker.run(_Listed(frames, clip.fps)))
    assert made == [main] * 16
    for a, b in zip(ahead, alone, strict=True):
        np.testing.assert_array_equal(a.xy_frame, b.xy_frame)
        assert (a.keyframe, a.box) == (b.keyframe, b.box)


def test_the_reader_makes_half_size_images_of_large_frames_only(tmp_path: Path, monkeypatch) -> None:
    """Frames over twice the network's input get their half-size image for the crops ahead (`Frame.half`), smaller
    ones none; keyframes whose box is over twice the input are cropped from it, and track as frames without it."""
    clip = write_clip(tmp_path, frames=8, size=(1280, 720))
    support = SupportSet.from_files([write_support(clip, tmp_path / "support")])
    tracker = Tracker(CapeModel.from_checkpoint(None), support, TrackerConfig(keyframe_every=2))
    with VideoFileSource(clip.path) as source:
        frames = list(source)
    prepared = tracker.prepare_frame(frames[0])
    np.testing.assert_array_equal(prepared.half, halved(frames[0].image))
    assert tracker.prepare_frame(prepared) is prepared  # nothing made twice
    assert tracker.prepare_frame(frame(0)).half is None  # 320 px: no crop of it is halved often
    sliver = Frame(0, 0.0, np.zeros((1, 1000, 3), np.uint8))  # one row: nothing to halve
    assert tracker.prepare_frame(sliver).half is None
    with pytest.raises(ValueError, match="does not halve"):  # a new image with the old one's half
        replace(prepared, image=prepared.image[:600])
    crops: list[tuple[int, float, bool]] = []  # (frame, box side, with a half-size image) of each network crop
    real = Tracker._predict
    monkeypatch.setattr(
        Tracker,
        "_predict",
        lambda self, fs, boxes: (
            crops.extend((f.index, b.size, f.half is not None) for f, b in zip(fs, boxes)) or real(self, fs, boxes)
        ),
    )
    with VideoFileSource(clip.path, queue_size=2) as source:
        ahead = list(tracker.run(source))
    assert any(i > 0 and side > 512 and half for i, side, half in crops)  # the reader's, on later keyframes
    crops.clear()
    alone = list(tracker.run(_Listed(frames, clip.fps)))
    assert not any(half for i, _, half in crops if i > 0)  # every crop halved the frame itself
    for a, b in zip(ahead, alone, strict=True):
        np.testing.assert_array_equal(a.xy_frame, b.xy_frame)
        assert (a.keyframe, a.box) == (b.keyframe, b.box)


@pytest.mark.parametrize("config", [TrackerConfig(keyframe_every=1), TrackerConfig(keyframe_every=4, smooth=False)])
def test_every_frame_is_a_keyframe_without_keyframing(tmp_path: Path, config: TrackerConfig) -> None:
    clip = write_clip(tmp_path, frames=6)
    support = SupportSet.from_files([write_support(clip, tmp_path / "support")])
    tracker = Tracker(CapeModel.from_preset("test", input_size=128), support, config)
    with VideoFileSource(clip.path) as source:
        assert all(r.keyframe for r in tracker.run(source))
    assert not tracker.keyframing


def _drifting_run(frames: int, seed: int = 0) -> tuple[list[tuple[Frame, FrameResult, StepRecord]], np.ndarray]:
    """A keypoint on a random walk: the flow measures each frame's move with 1 px of noise, the network its position
    every 4th frame with 2 px (the embedded model's typical errors at a 100 px crop). Returns the forward steps and
    the truth [T, 2]."""
    rng = np.random.default_rng(seed)
    truth = 100.0 + np.cumsum(rng.normal(0.0, 1.0, (frames, 2)), axis=0)
    smoother, image = KalmanSmoother(), np.zeros((240, 320, 3), np.uint8)
    state = smoother.init_state(1)
    steps = []
    for t in range(frames):
        moved = truth[t] - truth[t - 1] + rng.normal(0.0, 1.0, 2) if t else np.full(2, np.nan)
        motion = Motion(None, moved[None])
        keyframe = t % 4 == 0
        xy = (truth[t] + rng.normal(0.0, 2.0, 2))[None] if keyframe else None
        out = smoother.step(state, xy, np.ones(1) if keyframe else None, 100.0, motion=motion)
        state = out.state
        result = FrameResult(t, t / 25.0, out.xy, np.ones(1), out.visible, SquareBox(0, 0, 100), keyframe)
        steps.append((Frame(t, t / 25.0, image), result, out.record))
    return steps, truth


def test_settling_releases_a_frame_two_keyframes_later_in_order() -> None:
    steps, _ = _drifting_run(14)
    settling = _Settling(KalmanSmoother(), keyframes=2)
    released_at = {}
    for pushed, step in enumerate(steps):
        settling.push(*step)
        for frame, _ in settling.take():
            released_at[frame.index] = pushed
    settling.finish()
    for frame, _ in settling.take():
        released_at[frame.index] = len(steps)
    assert list(released_at) == list(range(14))  # each frame once, in order
    # keyframes 0, 4, 8, 12: frames 0-3 wait for keyframe 8, frames 4-7 for 12, the rest for the end
    assert [released_at[t] for t in range(14)] == [8] * 4 + [12] * 4 + [14] * 6


def test_settling_spreads_the_keyframe_correction_over_the_drift() -> None:
    steps, truth = _drifting_run(400, seed=3)
    settling = _Settling(KalmanSmoother(), keyframes=2)
    settled = []
    for step in steps:
        settling.push(*step)
        settled += [r for _, r in settling.take()]
    settling.finish()
    settled += [r for _, r in settling.take()]
    forward = np.linalg.norm(np.stack([r.xy_frame[0] for _, r, _ in steps]) - truth, axis=1)
    smoothed = np.linalg.norm(np.stack([r.xy_frame[0] for r in settled]) - truth, axis=1)
    assert smoothed.mean() < 0.85 * forward.mean()
    assert all(r.keyframe == (r.index % 4 == 0) for r in settled)  # what each frame is does not change


def test_a_broken_run_still_gives_the_held_frames(tmp_path: Path) -> None:
    """A source failing mid-run: every frame tracked before it comes out (yielded and written), settled or not."""
    clip = write_clip(tmp_path, frames=12, size=(W, H))
    support = SupportSet.from_files([write_support(clip, tmp_path / "support")])
    tracker = Tracker(CapeModel.from_checkpoint(None), support, TrackerConfig(keyframe_every=4))

    class Broken(VideoFileSource):
        def _produce(self):
            for frame in super()._produce():
                if frame.index == 10:
                    raise OSError("the disk went away")
                yield frame

    done = []
    with Broken(clip.path) as source, pytest.raises(Exception, match="disk went away"):
        run = tracker.run(source, file_sinks(tmp_path / "out", "clip"))
        done.extend(run)
    assert [r.index for r in done] == list(range(10))
    written = json.loads(output_paths(tmp_path / "out", "clip")["json"].read_text())["frames"]
    assert [f["index"] for f in written] == list(range(10))

"""Tracker: every frame once and in order, `run` is the loop over `step`, the support is encoded once, ROI crops
map back to frame pixels, sinks stay valid when a run stops early, offline smoothing, and (with the embedded
weights) accuracy on a clip with known motion."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
import torch
from fixtures_media import FakeCapture, write_clip, write_support
from torch import nn

from cape_track.model import CapeModel, SupportEmbedding, SupportSet
from cape_track.model.transforms import SquareBox, denormalize_images
from cape_track.tracker.accel import Accelerator
from cape_track.tracker.errors import SourceError
from cape_track.tracker.frames import Frame
from cape_track.tracker.pipeline import Tracker, TrackerConfig, search_tiles
from cape_track.tracker.roi import whole_frame
from cape_track.tracker.sinks import Sink, file_sinks, output_paths
from cape_track.tracker.smoothing import SmootherConfig
from cape_track.tracker.sources import VideoFileSource, WebcamSource
from cape_track.tracker.support import TrackSupport

DEFAULT_WEIGHTS = Path(__file__).resolve().parents[1] / "model" / "weights" / "default.safetensors"


def tiny_model() -> CapeModel:
    """The random `test` preset at a 128 px input, so each call costs milliseconds on a shared CPU."""
    return CapeModel.from_preset("test", input_size=128)


@pytest.fixture
def clip(tmp_path: Path):
    return write_clip(tmp_path, frames=6)


@pytest.fixture
def support(clip, tmp_path: Path) -> SupportSet:
    return SupportSet.from_files([write_support(clip, tmp_path / "support")])


def test_run_yields_every_frame_once_in_order(clip, support) -> None:
    tracker = Tracker(tiny_model(), support, TrackerConfig(batch=4))
    seen = []
    with VideoFileSource(clip.path) as source:
        run = tracker.run(source, progress=lambda done, total: seen.append((done, total)))
        results = list(run)
    assert [r.index for r in results] == list(range(6))
    np.testing.assert_allclose([r.time for r in results], clip.times)
    for r in results:
        assert r.xy_frame.shape == (5, 2) and r.scores.shape == (5,) and r.visible.dtype == bool
        assert np.isfinite(r.xy_frame).all() and ((r.scores >= 0) & (r.scores <= 1)).all()
    assert seen == [(i, 6) for i in range(1, 7)]
    times = run.times  # the run's own timers
    assert times.frames == 6 and times.decode > 0 and times.model > 0 and times.wall > 0
    assert set(times.fps()) >= {"decode", "model", "prepare", "wall"}


def test_run_is_the_loop_over_step(clip, support) -> None:
    """With the network on every frame (`step` runs it on every frame it is given) and no settling (`step` is the
    forward pass; `run` settles a file's frames unless told not to)."""
    tracker = Tracker(tiny_model(), support, TrackerConfig(batch=2, keyframe_every=1, settle=0))
    with VideoFileSource(clip.path) as source:
        from_run = list(tracker.run(source))
        state = tracker.init_state(source.fps)
    with VideoFileSource(clip.path) as source:
        frames = list(source)
    from_step = []
    for start in range(0, 6, 2):
        results, state = tracker.step(frames[start : start + 2], state)
        from_step += results
    assert state.frames_done == 6 and state.last_index == 5
    for a, b in zip(from_run, from_step, strict=True):
        np.testing.assert_array_equal(a.xy_frame, b.xy_frame)
        np.testing.assert_array_equal(a.visible, b.visible)
        assert a.box == b.box


def test_support_is_encoded_once(clip, support, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model()
    calls = []
    original = model.encode_support
    monkeypatch.setattr(model, "encode_support", lambda *a, **k: calls.append(1) or original(*a, **k))
    tracker = Tracker(model, support, TrackerConfig(batch=2))
    with VideoFileSource(clip.path) as source:
        assert len(list(tracker.run(source))) == 6
    assert len(calls) == 1


class DotFinder(nn.Module):
    """A stand-in network: one keypoint at the brightness-weighted centre of its input, score 1."""

    input_size = 64

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.inputs: list[torch.Tensor] = []

    @property
    def device(self) -> torch.device:
        return self.anchor.device

    def predict(self, images: torch.Tensor, support: SupportEmbedding) -> SimpleNamespace:
        gray = denormalize_images(images).float().mean(dim=1)  # [B, S, S]
        gray = torch.where(gray > 20, gray, torch.zeros_like(gray))
        s = self.input_size
        ys, xs = torch.meshgrid(torch.arange(s).float(), torch.arange(s).float(), indexing="ij")
        total = gray.sum(dim=(1, 2))
        xy = torch.stack([(gray * xs).sum(dim=(1, 2)) / total, (gray * ys).sum(dim=(1, 2)) / total], dim=-1)
        self.inputs.append(images)
        return SimpleNamespace(keypoints=xy[:, None], scores=torch.ones(len(images), 1))


def _dot_frame(index: int, xy: np.ndarray) -> Frame:
    """A 320x240 frame, black but for a Gaussian blob centred at `xy` (sub-pixel)."""
    ys, xs = np.mgrid[0:240, 0:320]
    blob = 255 * np.exp(-((xs - xy[0]) ** 2 + (ys - xy[1]) ** 2) / (2 * 2.0**2))
    return Frame(index, index / 25, np.repeat(blob[..., None], 3, axis=-1).round().astype(np.uint8))


def test_roi_crops_map_back_to_frame_pixels() -> None:
    """The blob is found through each frame's crop: the first frame is searched whole, then looked at again through
    a small crop around what was found (the blob magnified); later frames go straight to the small crop. The
    keypoints mapped back to the frame land on the blob."""
    embedding = SupportEmbedding(torch.zeros(1, 1, 4), torch.zeros(1, 1, dtype=torch.bool), torch.zeros(1, 2, 1, 1))
    model = DotFinder()
    config = TrackerConfig(batch=1, smooth=False)
    tracker = Tracker(model, TrackSupport.from_embedding(embedding, names=["dot"]), config)
    state = tracker.init_state(fps=25.0)
    truth = np.array([[60.3, 50.6], [64.1, 53.2], [68.8, 55.9], [73.2, 59.4], [77.9, 62.1]])
    for i, xy in enumerate(truth):
        (result,), state = tracker.step([_dot_frame(i, xy)], state)
        assert result.box.size < 100  # followed the blob instead of the whole frame
        assert np.abs(result.xy_frame[0] - xy).max() < 0.3
    assert len(model.inputs) == 6  # the first frame twice: whole, then closer
    whole = denormalize_images(model.inputs[0])[0].float().mean(dim=0)
    assert (whole > 20).sum() < (denormalize_images(model.inputs[1])[0].float().mean(dim=0) > 20).sum()


def test_the_search_runs_its_chunks_side_by_side_and_finds_the_same(tmp_path: Path, monkeypatch) -> None:
    """The tiled search's crops go in balanced chunks of at most 8, as many at once as the accelerator runs
    (`parallel_calls`), off the main thread; the box and keypoints it picks do not depend on how many."""
    clip = write_clip(tmp_path, frames=1)
    support = SupportSet.from_files([write_support(clip, tmp_path / "support")])
    tracker = Tracker(tiny_model(), support, TrackerConfig())
    frame = Frame(0, 0.0, clip.render(0))
    calls: list[tuple[str, int]] = []
    predict = tracker._predict

    def spy(frames, boxes):
        calls.append((threading.current_thread().name, len(boxes)))
        return predict(frames, boxes)

    monkeypatch.setattr(tracker, "_predict", spy)
    picked = {}
    for parallel in (1, 2, 3):
        monkeypatch.setattr(Accelerator, "parallel_calls", property(lambda self, n=parallel: n))
        calls.clear()
        picked[parallel] = tracker._search(frame)
        sizes = [size for _, size in calls]
        assert len(sizes) % parallel == 0 and max(sizes) <= 8 and max(sizes) - min(sizes) <= 1  # full rounds
        on_main = {name == threading.main_thread().name for name, _ in calls}
        assert on_main == ({True} if parallel == 1 else {False})
    crops = sum(sizes)
    assert crops == 1 + len(search_tiles(clip.size[0], clip.size[1], TrackerConfig().search_tiles))
    for parallel in (2, 3):
        box, found = picked[parallel]
        assert box == picked[1][0]
        np.testing.assert_allclose(found.keypoints, picked[1][1].keypoints, atol=1e-3)


def test_a_searched_frame_is_looked_at_whole_once(tmp_path: Path, monkeypatch) -> None:
    """The tiled search looks at the whole frame among its tiles, so a frame it searches gets no whole-frame look of
    its own before it (that call ran on one core before the search could start on all of them); a frame searching
    between searches (`search_every`) still gets that look, and no tiles."""
    clip = write_clip(tmp_path, frames=2)
    support = SupportSet.from_files([write_support(clip, tmp_path / "support")])
    tracker = Tracker(tiny_model(), support, TrackerConfig())
    whole = whole_frame(*clip.size)
    boxes: list[SquareBox] = []
    predict = tracker._predict
    monkeypatch.setattr(tracker, "_predict", lambda frames, crops: boxes.extend(crops) or predict(frames, crops))
    tiles = len(search_tiles(clip.size[0], clip.size[1], TrackerConfig().search_tiles))

    (first,), _ = tracker.step([Frame(0, 0.0, clip.render(0))], tracker.init_state(25.0))
    assert boxes.count(whole) == 1 and len(boxes) in (1 + tiles, 2 + tiles)  # the search, and its closer look
    assert np.isfinite(first.xy_frame).all()

    boxes.clear()
    lost = replace(tracker.init_state(25.0), last_search=0)  # nothing tracked, searched a frame ago
    tracker.step([Frame(1, 0.04, clip.render(1))], lost)
    assert boxes[0] == whole and len(boxes) <= 2  # the whole frame, then perhaps a closer look


class _StopAfter(Sink):
    def __init__(self, frames: int) -> None:
        self.frames, self.count, self.closed = frames, 0, False

    def open(self, info) -> None:
        pass

    def write(self, frame, result) -> None:
        self.count += 1
        self.stop_requested = self.count >= self.frames

    def close(self) -> None:
        self.closed = True


def test_a_sink_can_stop_the_run(clip, support) -> None:
    stopper = _StopAfter(3)
    tracker = Tracker(tiny_model(), support, TrackerConfig(batch=2))
    with VideoFileSource(clip.path) as source:
        assert len(list(tracker.run(source, [stopper]))) == 3
    assert stopper.closed


def _check_outputs(out: Path, frames: int) -> None:
    paths = output_paths(out, "clip")
    data = json.loads(paths["json"].read_text())
    assert [f["index"] for f in data["frames"]] == list(range(frames))
    assert len(paths["csv"].read_text().splitlines()) == frames + 1
    with av.open(str(paths["video"])) as container:
        assert len(list(container.decode(video=0))) == frames


class _BrokenAfter(VideoFileSource):
    def _produce(self):
        for frame in super()._produce():
            if frame.index == 4:
                raise av.InvalidDataError(1094995529, "Invalid data found when processing input")
            yield frame


def test_files_stay_valid_when_decoding_fails_mid_run(clip, support, tmp_path: Path) -> None:
    tracker = Tracker(tiny_model(), support, TrackerConfig(batch=1))
    done = []
    with _BrokenAfter(clip.path) as source, pytest.raises(SourceError, match="cannot decode frame 4"):
        run = tracker.run(source, file_sinks(tmp_path / "out", "clip"))
        for result in run:
            done.append(result)
    assert len(done) == run.times.frames == 4
    _check_outputs(tmp_path / "out", 4)


def test_files_stay_valid_on_ctrl_c(clip, support, tmp_path: Path) -> None:
    def interrupt(done: int, total: int | None) -> None:
        if done == 3:
            raise KeyboardInterrupt

    tracker = Tracker(tiny_model(), support, TrackerConfig(batch=2))
    with VideoFileSource(clip.path) as source, pytest.raises(KeyboardInterrupt):
        list(tracker.run(source, file_sinks(tmp_path / "out", "clip"), progress=interrupt))
    # the frames written before it, and those tracked but still held for settling (`TrackerConfig.settle`)
    written = len(json.loads(output_paths(tmp_path / "out", "clip")["json"].read_text())["frames"])
    assert written >= 3
    _check_outputs(tmp_path / "out", written)


def test_raw_mode_reports_network_keypoints(clip, support) -> None:
    config = TrackerConfig(batch=3, smooth=False)
    tracker = Tracker(tiny_model(), support, config)
    with VideoFileSource(clip.path) as source:
        for result in tracker.run(source):
            np.testing.assert_array_equal(result.visible, result.scores >= config.smoother.min_score)


def test_offline_pass_smooths_every_frame(clip, support) -> None:
    model = tiny_model()
    # a visibility threshold of 0 makes the random network's keypoints count, so the RTS pass has work to do
    config = TrackerConfig(batch=3, offline=True, smoother=SmootherConfig(min_score=0.0, flow=False))
    progress = []
    with VideoFileSource(clip.path) as source:
        offline = list(Tracker(model, support, config).run(source, progress=lambda d, t: progress.append(d)))
    with VideoFileSource(clip.path) as source:
        forward = list(Tracker(model, support, TrackerConfig(batch=3, smoother=config.smoother)).run(source))
    assert [r.index for r in offline] == list(range(6))
    assert progress == list(range(1, 13))  # both passes
    np.testing.assert_allclose(offline[-1].xy_frame, forward[-1].xy_frame)  # the last frame has no future
    assert not np.allclose(offline[0].xy_frame, forward[0].xy_frame)


def test_offline_needs_a_file(support) -> None:
    tracker = Tracker(tiny_model(), support, TrackerConfig(offline=True))
    with (
        WebcamSource(0, open_capture=lambda i: FakeCapture(i, limit=49, size=(64, 48))) as camera,
        pytest.raises(SourceError, match="cannot be read twice"),
    ):
        list(tracker.run(camera))


@pytest.mark.slow
@pytest.mark.skipif(not DEFAULT_WEIGHTS.exists(), reason="the embedded default model is not trained yet")
def test_tracks_follow_known_motion_with_the_default_model(tmp_path: Path) -> None:
    clip = write_clip(tmp_path, frames=24, size=(320, 240))
    support = SupportSet.from_files([write_support(clip, tmp_path / "support")])
    tracker = Tracker(CapeModel.from_checkpoint(None), support, TrackerConfig(batch=4))
    with VideoFileSource(clip.path) as source:
        results = list(tracker.run(source))
    errors = np.array([np.linalg.norm(r.xy_frame - clip.keypoints[r.index], axis=1) for r in results])
    # Object-relative, as PCK: the square's side is 84 px here; the stride-16 CPU model is good to a few px.
    side = 0.35 * min(clip.size)
    assert len(results) == 24
    assert (errors < 0.1 * side).mean() >= 0.8 and np.median(errors) < 0.1 * side


def test_a_prepared_support_tracks_as_the_support_set_does(clip, support) -> None:
    """`TrackSupport.prepare` is the one place a support is made ready (zoom, encodings, object scale): a tracker
    given it tracks exactly as one given the `SupportSet`, and it can be shared by several trackers."""
    model = tiny_model()
    config = TrackerConfig(batch=2)
    prepared = TrackSupport.prepare(model, support, config.roi, config.finder, config.finder_config)
    assert prepared.names == support.names and prepared.num_keypoints == support.num_keypoints
    runs = []
    for given in (support, prepared, prepared):
        with VideoFileSource(clip.path) as source:
            runs.append(np.stack([r.xy_frame for r in Tracker(model, given, config).run(source)]))
    np.testing.assert_allclose(runs[1], runs[0], atol=1e-5)
    np.testing.assert_allclose(runs[2], runs[0], atol=1e-5)
    tracker = Tracker(model, prepared, config)
    assert tracker.config == config  # the support's scale goes to the tracker's ROI, not into its config
    assert tracker.roi.object_fraction == prepared.object_fraction
    with pytest.raises(ValueError, match="2 names for an embedding of 5 keypoints"):
        TrackSupport.from_embedding(prepared.embedding, names=["a", "b"])
    with pytest.raises(ValueError, match="keypoint finder needs the SupportSet"):
        Tracker(model, TrackSupport.from_embedding(prepared.embedding), TrackerConfig(finder="match"))

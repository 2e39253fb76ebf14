"""ONNX: the backbone under ONNX Runtime equals eager within tolerance (alone and through the tracker), its graph
is cached by weights and re-exported when the weights change, a disagreeing graph falls back to eager with one
note, absent onnxruntime gives one note and eager, and `cape-track export` writes a network onnxruntime runs on
supports other than the one it was traced with."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_media import write_clip, write_support

from cape_track.model import CapeModel, SupportSet, export
from cape_track.model.export import NETWORK_INPUTS, NetworkGraph, check_network, export_network
from cape_track.tracker import accel as accel_module
from cape_track.tracker.accel import ONNX_TOLERANCE, Accelerator, OnnxBackbone, cache_dir, resolve_accel
from cape_track.tracker.cli import main
from cape_track.tracker.errors import TrackerWarning
from cape_track.tracker.pipeline import Tracker, TrackerConfig
from cape_track.tracker.sinks import Sink
from cape_track.tracker.sources import VideoFileSource

ort = pytest.importorskip("onnxruntime", reason="the onnx extra (installed by make test) is not installed")


def tiny_model() -> CapeModel:
    return CapeModel.from_preset("test", input_size=128).eval()


@pytest.mark.parametrize("depth", [1, 2])
def test_onnx_backbone_equals_eager(depth: int) -> None:
    model = tiny_model()
    runner = OnnxBackbone.load(model.backbone, model.input_size, depth)
    images = torch.randn(3, 3, 128, 128)  # a batch size other than the traced one
    with torch.no_grad():
        eager = [model.backbone(images)] if depth == 1 else model.backbone.pyramid(images, depth)
    ours = runner.levels(images)
    assert len(ours) == depth
    for a, b in zip(ours, eager, strict=True):
        assert a.shape == b.shape
        assert float((a - b).abs().max()) <= ONNX_TOLERANCE * float(b.abs().max())


def test_graph_is_cached_by_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model()
    OnnxBackbone.load(model.backbone, 128, 2)
    cached = sorted((cache_dir() / "onnx").glob("*.onnx"))
    assert cached, "the exported graph is kept in the cache folder"
    calls = []
    original = export.backbone_onnx

    def counting(*args: object, **kwargs: object) -> bytes:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(export, "backbone_onnx", counting)  # `load` imports it when called
    OnnxBackbone.load(model.backbone, 128, 2)
    assert calls == []  # same weights: read from the cache
    with torch.no_grad():
        next(model.backbone.parameters()).add_(1.0)
    OnnxBackbone.load(model.backbone, 128, 2)
    assert calls == [1]  # other weights: another graph


def test_tracker_with_onnx_matches_eager(tmp_path: Path) -> None:
    clip = write_clip(tmp_path, frames=8)
    support = SupportSet.from_files([write_support(clip, tmp_path / "s")])
    results = {}
    for accel in ("none", "onnx"):
        torch.manual_seed(0)
        tracker = Tracker(tiny_model(), support, TrackerConfig(batch=2), Accelerator("cpu", accel))
        if accel == "onnx":
            assert isinstance(tracker.model.backbone.pyramid.__self__, OnnxBackbone)
        with VideoFileSource(clip.path) as source:
            results[accel] = list(tracker.run(source))
    for a, b in zip(results["none"], results["onnx"], strict=True):
        np.testing.assert_allclose(a.xy_frame, b.xy_frame, atol=0.05)  # px: float32 reordering only
        # Scores are cosine similarities stretched 2.2x (`FinderConfig.score_floor` .. `score_ceiling`).
        np.testing.assert_allclose(a.scores, b.scores, atol=3e-3)
        assert (a.visible == b.visible).all() and a.keyframe == b.keyframe


def test_thread_counts_give_the_same_levels_and_are_asked_per_thread() -> None:
    model = tiny_model()
    runner = OnnxBackbone.load(model.backbone, model.input_size, 2)
    images = torch.randn(2, 3, 128, 128)
    with runner.use_threads(1):
        one = runner.levels(images)
    with runner.use_threads(2):
        two = runner.levels(images)
        elsewhere = []
        worker = threading.Thread(target=lambda: elsewhere.append(runner.threads))
        worker.start()
        worker.join()
        assert runner.threads == 2 and elsewhere == [torch.get_num_threads()]  # another thread keeps its own
    assert runner.threads == torch.get_num_threads()
    for a, b in zip(one, two, strict=True):
        assert float((a - b).abs().max()) <= ONNX_TOLERANCE * float(b.abs().max())


class _Watching(Sink):
    """Records the ONNX backbone's threads for the tracker's thread at each frame; `encoder_threads` as given."""

    def __init__(self, runner: OnnxBackbone, encoder_threads: int) -> None:
        self.runner, self.encoder_threads, self.seen = runner, encoder_threads, []

    def open(self, info: object) -> None:
        pass

    def write(self, frame: object, result: object) -> None:
        self.seen.append(self.runner.threads)

    def close(self) -> None:
        pass


def test_the_network_takes_the_cores_no_encoder_needs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clip = write_clip(tmp_path, frames=6)
    support = SupportSet.from_files([write_support(clip, tmp_path / "s")])
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(accel_module, "usable_cores", lambda: 4)
    tracker = Tracker(tiny_model(), support, TrackerConfig(batch=2), Accelerator("cpu", "onnx"))
    runner = tracker.model.backbone.pyramid.__self__
    asked = []
    real = runner._session

    def session(threads: int) -> object:
        asked.append((threading.current_thread().name.startswith("cape-search"), threads))
        return real(threads)

    runner._session = session
    torch_threads = torch.get_num_threads()
    for encoders, expected in ((0, 4), (1, 3)):
        sink = _Watching(runner, encoders)
        with VideoFileSource(clip.path) as source:
            list(tracker.run(source, [sink]))
        assert set(sink.seen) == {expected} and runner.threads == torch_threads  # restored after the run
    searched = {threads for in_search, threads in asked if in_search}
    assert searched == {torch_threads}  # the tiled search's workers keep torch's count
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    torch.set_num_threads(3)  # as torch does at start for that variable
    try:
        sink = _Watching(runner, 0)
        with VideoFileSource(clip.path) as source:
            list(tracker.run(source, [sink]))
    finally:
        torch.set_num_threads(torch_threads)
    assert set(sink.seen) == {3}  # the user's explicit count wins


def test_a_disagreeing_graph_falls_back_to_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model()
    real_levels = OnnxBackbone.levels
    monkeypatch.setattr(OnnxBackbone, "levels", lambda self, images: [x + 1.0 for x in real_levels(self, images)])
    with pytest.warns(TrackerWarning, match="onnx failed .*differs from eager") as caught:
        Accelerator("cpu", "onnx").optimize(model, torch.zeros(1, 3, 128, 128), depth=2)
    assert len(caught) == 1
    assert "forward" not in model.backbone.__dict__ and "pyramid" not in model.backbone.__dict__


def test_absent_onnxruntime_gives_one_note_and_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel_module, "onnx_available", lambda: False)
    assert resolve_accel("auto", "cpu") == "none"  # the default says nothing: eager is a fine default
    model = tiny_model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Accelerator("cpu", "onnx").optimize(model, torch.zeros(1, 3, 128, 128), depth=2)
    notes = [str(w.message) for w in caught if issubclass(w.category, TrackerWarning)]
    assert notes == ["onnx needs onnxruntime (pip install 'cape-track[onnx]'); running eager"]
    assert "pyramid" not in model.backbone.__dict__


def test_auto_is_onnx_on_the_cpu_only() -> None:
    assert resolve_accel("auto", "cpu") == "onnx"
    assert resolve_accel("auto", "cuda") == "none"
    assert resolve_accel("compile", "cpu") == "compile"


def test_export_network_runs_on_other_supports(tmp_path: Path) -> None:
    model = tiny_model()
    path = tmp_path / "m.onnx"
    export_network(model, path, keypoints=6)
    assert check_network(model, path, 6, seed=1) < 0.01
    # batch 1 and a support with every slot but one ignored: the all-masked rule must not be baked in
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = torch.randn(1, 3, 128, 128)
    tokens = torch.randn(1, 6, model.config.d_model)
    mask = torch.tensor([[False, True, True, True, True, True]])
    adjacency = torch.eye(6).expand(1, 2, 6, 6).contiguous()
    feeds = {k: t.numpy() for k, t in zip(NETWORK_INPUTS, (images, tokens, mask, adjacency), strict=True)}
    keypoints, scores = session.run(None, feeds)
    with torch.no_grad():
        eager = NetworkGraph(model)(images, tokens, mask, adjacency)
    np.testing.assert_allclose(keypoints, eager[0].numpy(), atol=0.01)
    np.testing.assert_allclose(scores, eager[1].numpy(), atol=1e-4)


def test_export_command(tmp_path: Path, support_files, capsys: pytest.CaptureFixture) -> None:
    checkpoint = tmp_path / "test.pt"
    tiny_model().save(checkpoint)
    out = tmp_path / "model.onnx"
    assert main(["export", str(out), "--checkpoint", str(checkpoint), "--support", str(support_files.image)]) == 0
    assert "onnxruntime matches torch" in capsys.readouterr().out
    embedding = np.load(out.with_suffix(".support.npz"), allow_pickle=False)
    assert list(embedding["names"]) == support_files.data["names"]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    images = np.random.default_rng(0).normal(size=(2, 3, 128, 128)).astype(np.float32)
    feeds = {"images": images} | {k: embedding[k] for k in NETWORK_INPUTS[1:]}
    keypoints, scores = session.run(None, feeds)
    assert keypoints.shape == (2, 5, 2) and scores.shape == (2, 5)
    assert scores[:, 3].max() == 0.0  # the keypoint invisible on the support is ignored
    # an existing file is kept; a count and a support that disagree, a wrong suffix, nothing to size it: one line
    for argv, message in (
        ([str(out), "--keypoints", "5"], "already exists"),
        ([str(tmp_path / "b.onnx"), "--keypoints", "4", "--support", str(support_files.image)], "has 5"),
        ([str(tmp_path / "b.txt"), "--keypoints", "4"], "must end in .onnx"),
        ([str(tmp_path / "b.onnx")], "give --keypoints N or --support"),
        ([str(tmp_path / "b.onnx"), "--keypoints", "0"], "--keypoints"),
    ):
        assert main(["export", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1


def test_a_damaged_cached_graph_is_replaced() -> None:
    model = tiny_model()
    OnnxBackbone.load(model.backbone, 128, 2)
    cached = cache_dir() / "onnx" / f"{accel_module._graph_key(model.backbone, 128, 2)}.onnx"
    cached.write_bytes(b"not a graph")
    runner = OnnxBackbone.load(model.backbone, 128, 2)  # exported again, checked, and cached again
    assert runner.depth == 2 and cached.stat().st_size > 1000


def test_a_shared_model_is_accelerated_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clip = write_clip(tmp_path, frames=4)
    support = SupportSet.from_files([write_support(clip, tmp_path / "s")])
    model = tiny_model()
    Tracker(model, support, TrackerConfig(), Accelerator("cpu", "onnx"))
    runner = model.backbone.pyramid.__self__
    monkeypatch.setattr(OnnxBackbone, "load", lambda *a: pytest.fail("loaded again"))
    Tracker(model, support, TrackerConfig(), Accelerator("cpu", "onnx"))  # the next input of a folder, the page
    assert model.backbone.pyramid.__self__ is runner


def test_export_failures_are_one_line_and_leave_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    checkpoint = tmp_path / "test.pt"
    tiny_model().save(checkpoint)
    out = tmp_path / "model.onnx"
    argv = ["export", str(out), "--checkpoint", str(checkpoint), "--keypoints", "3"]
    monkeypatch.setattr(export, "check_network", lambda *a: 5.0)  # a graph that disagrees with torch
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "differs from torch by 5 px" in err and len(err.splitlines()) == 1 and not out.exists()

    def refuse(*args: object) -> None:
        raise RuntimeError("Exporting the operator 'aten::magic' to ONNX opset version 17 is not supported")

    monkeypatch.setattr(export, "export_network", refuse)
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "cannot be exported (RuntimeError: Exporting the operator" in err and len(err.splitlines()) == 1


def test_export_keypoints_must_be_a_count(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["export", str(tmp_path / "model.onnx"), "--keypoints", "ten"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "cape-track: error: export: argument --keypoints: 'ten' is not a keypoint count"
    assert not (tmp_path / "model.onnx").exists()


TELEMETRY_PROBE = """
import os
from onnx import TensorProto, helper
from cape_track.model.export import import_onnxruntime

ort = import_onnxruntime()
value = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [1])
graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [value("x")], [value("y")])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
print(os.environ.get("ORT_DISABLE_TELEMETRY", "unset"))
"""


@pytest.mark.slow
def test_onnxruntime_keeps_no_telemetry_in_the_users_home(tmp_path: Path) -> None:
    """Left to its defaults, onnxruntime 1.32 writes `~/.cache/Microsoft/DeveloperTools/.onnxruntime/deviceid` and
    an event store at its first session (and uploads events); imported through cape-track it writes nothing."""
    strip = ("ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME")
    env = {k: v for k, v in os.environ.items() if k not in strip} | {"HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", TELEMETRY_PROBE], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / ".cache" / "Microsoft").exists()
    assert done.stdout.split() == ["1"]
    assert "telemetry" not in done.stderr.lower()


def test_a_users_telemetry_setting_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORT_DISABLE_TELEMETRY", "0")
    export.import_onnxruntime()
    assert os.environ["ORT_DISABLE_TELEMETRY"] == "0"

"""Accelerator: device selection, the CPU path, one-line fallbacks for unavailable speed-ups, and the CUDA stream
scheduler driven by fake streams on CPU (its real-GPU counterpart is tests/test_tracker_gpu.py)."""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from fixtures_media import write_clip, write_support
from torch import nn

from cape_track.model import CapeModel, SupportSet
from cape_track.model.device import select_device
from cape_track.model.errors import DeviceError
from cape_track.model.transforms import SquareBox
from cape_track.tracker import accel as accel_module
from cape_track.tracker import pipeline
from cape_track.tracker.accel import Accelerator, CudaAccelerator, configure_cpu_threads
from cape_track.tracker.errors import TrackerWarning
from cape_track.tracker.pipeline import Tracker, TrackerConfig
from cape_track.tracker.sources import VideoFileSource


def test_select_device() -> None:
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("banana", "mps:7x"):
        with pytest.raises(DeviceError, match=f"device {bad}: "):
            select_device(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cuda_without_cuda_is_a_one_line_error() -> None:
    with pytest.raises(DeviceError, match="CUDA is not available on this machine"):
        select_device("cuda")


def test_for_device_picks_the_plain_path_on_cpu() -> None:
    accel = Accelerator.for_device("cpu")
    assert type(accel) is Accelerator and accel.in_flight == 1
    host = accel.staging((2, 4, 4, 3))
    host.numpy()[:] = 7
    assert torch.equal(accel.upload(host), host)
    (out,) = accel.download(torch.arange(6.0).view(2, 3)).wait()
    np.testing.assert_array_equal(out, np.arange(6.0).reshape(2, 3))
    with accel.autocast():
        assert not torch.is_autocast_enabled()


def test_parallel_calls_are_the_cores_over_the_threads_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two cores with one torch thread each run two of the search's model calls side by side; a call that takes
    every core leaves room for one; the GPU and `torch.compile` take one at a time."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    monkeypatch.setattr(accel_module, "usable_cores", lambda: 2)
    assert Accelerator("cpu").parallel_calls == 2
    assert Accelerator("cpu", "compile").parallel_calls == 1
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert Accelerator("cpu").parallel_calls == 1
    assert Accelerator("cuda").parallel_calls == 1  # the plain path's rule; nothing here touches a GPU


def test_cpu_threads_leave_a_core_to_decoding_and_encoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch (and with it ONNX Runtime) and OpenCV take all cores but one; an explicit OMP_NUM_THREADS wins."""
    before = torch.get_num_threads(), cv2.getNumThreads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(accel_module, "usable_cores", lambda: 4)
    try:
        configure_cpu_threads(torch.device("cpu"))
        assert (torch.get_num_threads(), cv2.getNumThreads()) == (3, 3)
        torch.set_num_threads(2)
        cv2.setNumThreads(2)
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        configure_cpu_threads(torch.device("cpu"))
        assert (torch.get_num_threads(), cv2.getNumThreads()) == (2, 2)
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Linear(3, 3)


def test_tensorrt_on_cpu_warns_once_and_runs_eager() -> None:
    net = _Net()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Accelerator("cpu", "tensorrt").optimize(net, torch.zeros(1, 3))
    assert [str(w.message) for w in caught] == ["tensorrt needs a CUDA device; running eager"]
    assert caught[0].category is TrackerWarning
    assert "forward" not in vars(net.backbone)


def test_tensorrt_not_installed_warns_and_runs_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch_tensorrt", None)  # import fails as if not installed
    accel = Accelerator("cpu", "tensorrt")
    accel.device = torch.device("cuda")  # only the device check is faked; nothing touches CUDA before the import
    net = _Net()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        accel.optimize(net, torch.zeros(1, 3))
    assert len(caught) == 1 and str(caught[0].message).startswith("tensorrt not installed")
    assert "forward" not in vars(net.backbone)


def test_compile_patches_only_the_backbone_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn: compiled.append(fn) or fn)
    net = _Net()
    keys = list(net.state_dict())
    Accelerator("cpu", "compile").optimize(net, torch.zeros(1, 3))
    assert len(compiled) == 1 and "forward" in vars(net.backbone)
    assert list(net.state_dict()) == keys  # no `_orig_mod.` in checkpoints


def test_compile_failure_falls_back_to_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(fn):
        def run(*args):
            raise RuntimeError("no C compiler\nlong inductor log")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    net = _Net()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Accelerator("cpu", "compile").optimize(net, torch.zeros(1, 3))
    assert [str(w.message) for w in caught] == ["compile failed (no C compiler); running eager"]
    assert "forward" not in vars(net.backbone)
    net.backbone(torch.zeros(1, 3))


class FakeStreams:
    """Stands in for CUDA streams and events on CPU and logs what the accelerator asks of them."""

    def __init__(self) -> None:
        self.log: list[tuple] = []
        self.active = "compute"
        self.events = 0
        self.made = 0

    def new_stream(self) -> str:
        self.made += 1
        return ("upload", "download")[self.made - 1]

    def current(self) -> str:
        return self.active

    @contextlib.contextmanager
    def use(self, stream: str) -> Iterator[None]:
        previous, self.active = self.active, stream
        self.log.append(("use", stream))
        yield
        self.active = previous

    def wait(self, waiter: str, producer: str) -> None:
        self.log.append(("wait", waiter, producer))

    def keep_alive(self, tensor: torch.Tensor, stream: str) -> None:
        self.log.append(("keep", stream))

    def record(self, stream: str) -> int:
        self.events += 1
        self.log.append(("record", stream, self.events))
        return self.events

    def synchronize(self, event: int) -> None:
        self.log.append(("sync", event))


@pytest.fixture
def clip_and_support(tmp_path: Path):
    clip = write_clip(tmp_path, frames=7)
    return clip, SupportSet.from_files([write_support(clip, tmp_path / "support")])


def _track(accel: Accelerator, clip, support, batch: int = 2, finder: str = "network") -> list:
    """The network path by default, on every frame: its model calls are one per batch (the finder's search adds
    calls)."""
    torch.manual_seed(0)
    config = TrackerConfig(batch=batch, finder=finder, keyframe_every=1)
    tracker = Tracker(CapeModel.from_preset("test"), support, config, accel)
    with VideoFileSource(clip.path) as source:
        return list(tracker.run(source))


def test_stream_scheduler_orders_copies_around_compute(clip_and_support) -> None:
    clip, support = clip_and_support
    streams = FakeStreams()
    fake = CudaAccelerator("cpu", streams=streams, pin=False)
    results = _track(fake, clip, support, batch=2)
    assert [r.index for r in results] == list(range(7))
    log = streams.log
    # every upload: copy on the upload stream, then compute waits for it and keeps the tensor alive
    uploads = [i for i, entry in enumerate(log) if entry == ("use", "upload")]
    assert len(uploads) == 4  # ceil(7 / 2) batches
    for i in uploads:
        assert log[i + 1] == ("wait", "compute", "upload") and log[i + 2] == ("keep", "compute")
    # every download: waits for compute, copies on the download stream, records an event
    records = [entry for entry in log if entry[0] == "record"]
    assert all(entry[1] == "download" for entry in records) and len(records) == 4
    assert log.count(("wait", "download", "compute")) == 4
    # two batches in flight: batch 2 is submitted before batch 1's results are waited for, and each result is
    # synchronised before it is read
    assert log.index(("record", "download", 2)) < log.index(("sync", 1))
    for event in range(1, 5):
        assert log.index(("record", "download", event)) < log.index(("sync", event))


@pytest.mark.parametrize("finder", ["network", "match"])
def test_stream_scheduler_computes_what_the_cpu_path_computes(clip_and_support, finder: str) -> None:
    clip, support = clip_and_support
    fake = CudaAccelerator("cpu", streams=FakeStreams(), pin=False)
    fake.in_flight = 1  # same crops as the plain path (two in flight place crops from older keypoints)
    ours_all = _track(fake, clip, support, finder=finder)
    for ours, plain in zip(ours_all, _track(Accelerator("cpu"), clip, support, finder=finder), strict=True):
        np.testing.assert_array_equal(ours.xy_frame, plain.xy_frame)
        np.testing.assert_array_equal(ours.scores, plain.scores)


def test_closer_look_is_a_batch_in_flight(clip_and_support, monkeypatch: pytest.MonkeyPatch) -> None:
    """A searched batch's closer look is submitted like a batch: with two in flight the next batch is submitted
    before the look is waited for (placed from the first look); with one, the look is finished first. Either way
    the searched frames' keypoints are the closer look's."""
    clip, support = clip_and_support
    crop = SquareBox(4.0, 2.0, 20.0)  # every crop a tracked frame gets, and the closer look at a searched one
    monkeypatch.setattr(pipeline, "follow", lambda *args, **kwargs: crop)
    runs = {}
    for depth in (1, 2):
        streams = FakeStreams()
        fake = CudaAccelerator("cpu", streams=streams, pin=False)
        fake.in_flight = depth
        runs[depth] = _track(fake, clip, support, batch=2), streams.log
    for results, _ in runs.values():
        assert [r.index for r in results] == list(range(7))
        assert all(r.box == crop for r in results)
    # batches 1 and 2 start from nothing; with two in flight both are searched and looked at again through the crop
    # the first batch alone gets with one in flight, so every frame sees the same pixels and gets the same keypoints
    for one, two in zip(runs[1][0], runs[2][0], strict=True):
        np.testing.assert_array_equal(one.xy_frame, two.xy_frame)
        np.testing.assert_array_equal(one.scores, two.scores)
    log = runs[1][1]
    assert log.index(("sync", 2)) < log.index(("record", "download", 3))  # batch 1's closer look, then batch 2
    assert len([e for e in log if e[0] == "record"]) == 5  # 4 batches and one closer look
    log = runs[2][1]
    # batch 1's closer look is event 3; batch 3 (event 4, placed from batch 1's first look) is submitted first
    assert log.index(("record", "download", 4)) < log.index(("sync", 3))
    assert len([e for e in log if e[0] == "record"]) == 6  # 4 batches and two closer looks


def test_the_search_keeps_to_search_every_with_batches_in_flight(clip_and_support, monkeypatch) -> None:
    """Two batches of one frame in flight: the second is submitted before the first one's search is back, from a
    state in which a search is due, so it goes without a first look. Finished after that search, it is no longer
    due (`TrackerConfig.search_every`): it must get its whole-frame look then, not a second search."""
    clip, support = clip_and_support
    torch.manual_seed(0)
    fake = CudaAccelerator("cpu", streams=FakeStreams(), pin=False)
    assert fake.in_flight == 2
    tracker = Tracker(
        CapeModel.from_preset("test"), support, TrackerConfig(batch=1, finder="match", keyframe_every=1), fake
    )
    searched: list[int] = []
    search = tracker._search
    monkeypatch.setattr(tracker, "_search", lambda frame: searched.append(frame.index) or search(frame))
    with VideoFileSource(clip.path) as source:
        results = list(tracker.run(source))
    assert [r.index for r in results] == list(range(7))
    assert searched == [0]

"""CUDA-only parts of the tracker (pinned staging, copy streams, two batches in flight, compile/TensorRT), checked
against the CPU path. Skipped without a GPU; the same scheduler runs on CPU with fake streams in
test_tracker_accel.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_media import write_clip, write_support

from cape_track.model import CapeModel, SupportSet
from cape_track.tracker.accel import Accelerator, CudaAccelerator
from cape_track.tracker.pipeline import Tracker, TrackerConfig
from cape_track.tracker.sources import VideoFileSource

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture
def clip_and_support(tmp_path: Path):
    clip = write_clip(tmp_path, frames=9)
    return clip, SupportSet.from_files([write_support(clip, tmp_path / "support")])


def _track(accel: Accelerator, clip, support, batch: int = 3) -> list:
    torch.manual_seed(0)
    tracker = Tracker(CapeModel.from_preset("test"), support, TrackerConfig(batch=batch, keyframe_every=1), accel)
    with VideoFileSource(clip.path) as source:
        return list(tracker.run(source))


def test_staging_is_pinned_and_results_come_back() -> None:
    accel = Accelerator.for_device("cuda")
    assert isinstance(accel, CudaAccelerator) and accel.in_flight == 2
    host = accel.staging((2, 8, 8, 3))
    assert host.is_pinned()
    host.numpy()[:] = np.arange(8)[None, None, :, None]
    device = accel.upload(host)
    assert device.is_cuda
    (back,) = accel.download(device.float() * 2).wait()
    np.testing.assert_array_equal(back, host.numpy() * 2.0)


def test_cuda_tracker_matches_the_cpu_path(clip_and_support) -> None:
    clip, support = clip_and_support
    cuda = CudaAccelerator("cuda")
    cuda.in_flight = 1  # the same crops as the CPU path, so results are comparable
    for ours, plain in zip(_track(cuda, clip, support), _track(Accelerator("cpu"), clip, support), strict=True):
        np.testing.assert_allclose(ours.xy_frame, plain.xy_frame, atol=0.05)
        np.testing.assert_allclose(ours.scores, plain.scores, atol=1e-3)


def test_two_batches_in_flight_track_every_frame(clip_and_support) -> None:
    clip, support = clip_and_support
    results = _track(Accelerator.for_device("cuda"), clip, support)
    assert [r.index for r in results] == list(range(9))
    assert all(np.isfinite(r.xy_frame).all() for r in results)


@pytest.mark.slow
def test_compile_on_cuda_gives_the_eager_results(clip_and_support) -> None:
    clip, support = clip_and_support
    eager = _track(CudaAccelerator("cuda"), clip, support)
    compiled = _track(CudaAccelerator("cuda", accel="compile"), clip, support)
    for a, b in zip(compiled, eager, strict=True):
        np.testing.assert_allclose(a.xy_frame, b.xy_frame, atol=0.1)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("torch_tensorrt") is None, reason="torch-tensorrt not installed")
def test_tensorrt_gives_the_eager_results(clip_and_support) -> None:
    clip, support = clip_and_support
    eager = _track(CudaAccelerator("cuda"), clip, support)
    fast = _track(CudaAccelerator("cuda", accel="tensorrt"), clip, support)
    for a, b in zip(fast, eager, strict=True):
        np.testing.assert_allclose(a.xy_frame, b.xy_frame, atol=0.5)

"""Tracker speed, measured in one run on one clip and one model: each stage alone (decode, crop + network, the
tracker with keyframes and flow, writing tracks, encoding) with its throughput and CPU time, the whole pipeline
with and without the annotated video, today's eager every-frame path, the cached support against re-encoding it,
keyframes off, thread counts, batch sizes and accelerators (ONNX Runtime against eager for the backbone alone
too), and the tracker alone against what a user would run instead (plain LK optical flow, nearest-neighbour
matching of the backbone's features) on the same decoded frames. The CPU limit is what the cores could sustain if
the stages shared them perfectly (cores / their CPU seconds per frame, each measured alone), and `cpu_efficiency`
the pipeline against min(slowest stage, that limit): on two cores the old `overlap_ratio` (pipeline / slowest
stage) compares with a limit the cores cannot reach. Each figure is its best round; each round also gives its own
efficiency (`cpu_efficiency_rounds`), from stages and pipelines run back to back, since a shared machine's speed
drifts between rounds. A table is printed and `--json` keeps the figures.

    python -m cape_track.benchmarks.fps --video samples/sample.mp4 --support samples/sample.jpg --json fps.json
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path

import av
import cv2
import numpy as np
import torch

from cape_track.benchmarks.flow_baseline import track_optical_flow
from cape_track.benchmarks.matching_baseline import nn_matching
from cape_track.model import CapeError, CapeModel, Prediction, SupportEmbedding, SupportSet
from cape_track.model.matching import match_support
from cape_track.tracker import (
    Accelerator,
    Frame,
    FrameResult,
    KalmanSmoother,
    Sink,
    SmootherConfig,
    Source,
    Tracker,
    TrackerConfig,
    TrackerWarning,
    TrackInfo,
    VideoFileSource,
    VideoSink,
    file_sinks,
    select_device,
)
from cape_track.tracker.accel import ACCELS, configure_cpu_threads, network_threads, onnx_available
from cape_track.tracker.threads import usable_cores

PROG = "cape_track.benchmarks.fps"
TRACKS_ONLY_TARGET = 60.0  # fps on the 720p sample, 10 keypoints, 2 CPU cores, defaults (issue 12)
WITH_VIDEO_TARGET = 30.0  # ... also writing the annotated video
EFFICIENCY_TARGET = 0.9  # pipeline fps / min(slowest stage alone, cpu limit)
OVERLAP_TARGET = 0.9  # pipeline fps / slowest stage fps (DESIGN.md, Targets)
CACHED_TARGET = 1.5  # cached / per-frame support fps, 1-shot
SMOOTHER_KEYPOINTS = 100  # the smoother target is stated for 100 keypoints ...
SMOOTHER_TARGET_MS = 1.0  # ... per frame
WITH_VIDEO_STAGES = ("decode", "track", "write", "encode")  # the stages the pipeline with the video runs
# ... and tracks only, where the network takes every core (`TrackerConfig.network_threads`), the encoder's too
TRACKS_STAGES = ("decode", "track_tracks_only", "write")


# --------------------------------------------------------------------------------------------------- timing
class Clock:
    """Seconds spent in a `with` block. On CUDA it brackets the block with events on the device's stream after a
    synchronise, so queued kernels are counted; on the CPU it is `perf_counter`."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = 0.0

    def __enter__(self) -> Clock:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record(torch.cuda.current_stream(self.device))
        else:
            self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            end = torch.cuda.Event(enable_timing=True)
            end.record(torch.cuda.current_stream(self.device))
            end.synchronize()
            self.seconds = self._start.elapsed_time(end) / 1000.0
        else:
            self.seconds = time.perf_counter() - self._t0


class FrameListSource(Source):
    """Frames decoded beforehand, served as a source: the model stage runs the tracker's own code without decoding."""

    def __init__(self, frames: Sequence[Frame], fps: float, name: str = "memory") -> None:
        self.frames = list(frames)
        self.name = name
        self.fps = fps
        self.height, self.width = self.frames[0].image.shape[:2]
        self.frame_count = len(self.frames)

    def __iter__(self) -> Iterator[Frame]:
        return iter(self.frames)

    def close(self) -> None:
        pass


class StampedSource(Source):
    """The first `limit` frames of `source`, noting when the pipeline takes each one from the decode queue: a
    frame's latency runs from there to its result (batch filling, model, smoother and sinks included)."""

    def __init__(self, source: Source, limit: int | None = None) -> None:
        self.inner = source
        self.limit = limit
        self.taken: dict[int, float] = {}  # frame index -> perf_counter when handed to the tracker
        self.name, self.fps, self.width, self.height = source.name, source.fps, source.width, source.height
        count = source.frame_count
        self.frame_count = min(count, limit) if (count is not None and limit is not None) else (limit or count)

    @property
    def busy_seconds(self) -> float:
        return self.inner.busy_seconds

    @property
    def prepare(self) -> Callable[[Frame], Frame] | None:  # the reader thread is the inner source's
        return self.inner.prepare

    @prepare.setter
    def prepare(self, prepare: Callable[[Frame], Frame] | None) -> None:
        self.inner.prepare = prepare

    def __iter__(self) -> Iterator[Frame]:
        for frame in islice(self.inner, self.limit):
            self.taken[frame.index] = time.perf_counter()
            yield frame

    def close(self) -> None:
        self.inner.close()


def recompute_support_per_call(tracker: Tracker, support: SupportSet) -> None:
    """The cost model of the paper's demo, on a built tracker: before every network call the support goes through
    the network again for each frame of the call, instead of the cached support (same accelerator, same outputs,
    more work). The finder's support is its hypercolumns, upright and rotated; the network's, its embedding."""
    model = tracker.model
    if tracker.finder is not None:
        backbone = model.backbone
        pyramid = backbone.pyramid  # bound now: the accelerated one where the accelerator replaced it
        rotations, depth = tracker.finder.config.rotations, tracker.finder.config.depth
        inputs = model.support_inputs(support)

        def per_call_pyramid(images: torch.Tensor, levels: int = depth) -> list[torch.Tensor]:
            for _ in range(images.shape[0]):
                match_support(lambda x: pyramid(x, depth), *inputs, rotations)
            return pyramid(images, levels)

        backbone.pyramid = per_call_pyramid
    else:
        predict = model.predict

        def per_call_predict(images: torch.Tensor, embedding: SupportEmbedding) -> Prediction:
            for _ in range(images.shape[0]):
                model.encode_support_set(support)
            return predict(images, embedding)

        model.predict = per_call_predict


# --------------------------------------------------------------------------------------------------- stages
@dataclass(frozen=True)
class Stage:
    """One stage run alone: its throughput and the CPU it burns per frame (all threads of the process, so a
    stage with its own threads, the decoder's or the encoder's, is counted whole)."""

    fps: float
    cpu_ms: float  # CPU milliseconds per frame

    @classmethod
    def timed(cls, frames: int, wall: float, cpu: float) -> Stage:
        return cls(frames / max(wall, 1e-9), 1000.0 * cpu / max(frames, 1))

    def best(self, other: Stage | None) -> Stage:
        """The faster of two rounds (the `timeit` convention), its CPU time with it."""
        return self if other is None or self.fps >= other.fps else other


class Timer:
    """Wall and process CPU seconds of a `with` block (on CUDA, the wall clock brackets the device's work)."""

    def __init__(self, device: torch.device) -> None:
        self.clock = Clock(device)
        self.cpu = 0.0

    def __enter__(self) -> Timer:
        self._cpu0 = time.process_time()
        self.clock.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.clock.__exit__(*exc)
        self.cpu = time.process_time() - self._cpu0

    @property
    def seconds(self) -> float:
        return self.clock.seconds


@dataclass(frozen=True)
class Decoded:
    frames: list[Frame]
    fps: float  # the clip's nominal rate
    name: str
    seconds: float  # decode time of the clip, first frame included
    cpu: float  # process CPU seconds of it
    count: int  # frames decoded


def decode_stage(
    video: Path, limit: int | None, prepare: Callable[[Frame], Frame] | None = None, keep: bool = True
) -> Decoded:
    """Decode alone, with what a tracker's run has the reader thread make (`prepare`: its `Tracker.prepare_frame`,
    the optical-flow and half-size images): the source thread fills its queue as fast as it can and the frames are
    only collected, or with `keep=False` only counted (`frames` then holds the first one): the timed rounds, because
    holding a whole clip costs page faults on fresh memory that the streaming pipeline, which frees its frames, does
    not pay. The first frame, read before the source could be told, is prepared here (in the pipeline it is the
    tracker's, as are the few queued with it)."""
    cpu0, start = time.process_time(), time.perf_counter()
    source = VideoFileSource(video)
    source.prepare = prepare
    try:
        frames, count = [], 0
        for frame in islice(source, limit):
            if keep or not frames:
                frames.append(prepare(frame) if prepare is not None else frame)
            count += 1
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu0
    finally:
        source.close()
    return Decoded(frames, source.fps, source.name, seconds, cpu, count)


def make_tracker(
    model: CapeModel, support: SupportSet, config: TrackerConfig, device: torch.device, accel: str = "auto"
) -> tuple[Tracker, str]:
    """A tracker built as the CLI builds it, and why the accelerator fell back ('' when it did not)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TrackerWarning)
        tracker = Tracker(model, support, config, Accelerator.for_device(device, accel))
    return tracker, "; ".join(str(w.message) for w in caught if issubclass(w.category, TrackerWarning))


def warm_up(tracker: Tracker, frames: Sequence[Frame], fps: float, rounds: int) -> None:
    """Run the batch size of a timed run over `frames` and that of its last, shorter batch, so no first call
    (allocator, cuDNN autotuning, `torch.compile` recompiling for a new shape) falls inside the timing; and a
    few frames through `run`, for the keyframe path's batch of one."""
    batch = tracker.config.batch
    for size in sorted({1, min(batch, len(frames)), len(frames) % batch} - {0}):
        for _ in range(rounds):
            tracker.step(frames[:size], tracker.init_state(fps))
    list(tracker.run(FrameListSource(frames[: 2 * tracker.config.keyframe_every], fps)))


def track_stage(tracker: Tracker, decoded: Decoded, device: torch.device) -> tuple[Stage, list[FrameResult]]:
    """The tracker alone on pre-decoded frames, no sinks: ROI crops, the network (on keyframes), flow, Kalman.
    Built with `smooth=False`, it is the old model stage: crop + network on every frame."""
    with Timer(device) as timer:
        results = list(tracker.run(FrameListSource(decoded.frames, decoded.fps)))
    return Stage.timed(len(results), timer.seconds, timer.cpu), results


def smoother_stage(
    frames: Sequence[Frame], results: Sequence[FrameResult], keypoints: int | None = None, flow: bool = True
) -> float:
    """Milliseconds per frame of the Kalman smoother on the model stage's raw keypoints, with its optical-flow
    motion input unless `flow` is False (that part scales with the frame size, the filter with the keypoints).

    `keypoints` replaces them by that many points spread over each frame's crop around the raw keypoints' centre,
    moving with it, for the fixed-size target (100 keypoints)."""
    if keypoints is not None:
        rng = np.random.default_rng(0)
        offsets = rng.uniform(-0.3, 0.3, (keypoints, 2))  # fractions of the crop side
        tracks = [(r.xy_frame.mean(axis=0) + offsets * r.box.size, np.full(keypoints, 0.9)) for r in results]
    else:
        tracks = [(r.xy_frame, r.scores) for r in results]
    smoother = KalmanSmoother(SmootherConfig(flow=flow))
    state = smoother.init_state(len(tracks[0][1]))
    start = time.perf_counter()
    for frame, result, (xy, scores) in zip(frames, results, tracks, strict=True):
        state = smoother.step(state, xy, scores, scale=result.box.size, image=frame.image).state
    return 1000.0 * (time.perf_counter() - start) / len(results)


def sink_stage(
    sink: Sink, decoded: Decoded, results: Sequence[FrameResult], info: TrackInfo, device: torch.device
) -> Stage:
    """A sink alone (the annotated video: drawing + H.264 in its thread; the tracks: JSON + CSV), until its files
    are done."""
    with Timer(device) as timer:
        sink.open(info)
        try:
            for frame, result in zip(decoded.frames, results, strict=True):
                sink.write(frame, result)
        finally:
            sink.close()
    return Stage.timed(len(results), timer.seconds, timer.cpu)


def baseline_stages(
    tracker: Tracker, decoded: Decoded, tracked: Sequence[FrameResult], support: SupportSet, device: torch.device
) -> dict[str, Stage]:
    """What a user would run instead, timed alone on the same decoded frames as the `track` stage: plain LK optical
    flow from the tracker's first-frame keypoints, and cosine nearest-neighbour matching of the backbone's
    stride-8+16 features (the tracker's own backbone and accelerator) in the crops the tracker chose."""
    images = [frame.image for frame in decoded.frames]
    with Timer(device) as timer:
        track_optical_flow(images, 0, tracked[0].xy_frame)
    out = {"optical_flow": Stage.timed(len(images), timer.seconds, timer.cpu)}
    if tracker.model.can_match:
        with Timer(device) as timer, torch.inference_mode():
            nn_matching(tracker.model, support, images, [r.box for r in tracked])
        out["nn_matching"] = Stage.timed(len(images), timer.seconds, timer.cpu)
    return out


def backbone_speed(model: CapeModel, depth: int, batch: int, rounds: int) -> dict[str, float]:
    """The backbone alone, eager torch against ONNX Runtime, interleaved call by call (so load from elsewhere
    hits both alike); median milliseconds per crop."""
    from cape_track.tracker.accel import OnnxBackbone

    s = model.input_size
    images = torch.randn(batch, 3, s, s, generator=torch.Generator().manual_seed(0))
    runner = OnnxBackbone.load(model.backbone, s, depth)
    calls = {"eager": lambda: model.backbone.pyramid(images, depth) if depth > 1 else model.backbone(images)}
    calls["onnx"] = lambda: runner.levels(images)
    times: dict[str, list[float]] = {name: [] for name in calls}
    with torch.inference_mode():
        for _ in range(rounds + 2):
            for name, call in calls.items():
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
    ms = {name: 1000.0 * float(np.median(t[2:])) / batch for name, t in times.items()}
    return {"eager_ms": ms["eager"], "onnx_ms": ms["onnx"], "onnx_vs_eager_ratio": ms["eager"] / ms["onnx"]}


# --------------------------------------------------------------------------------------------------- pipeline
@dataclass(frozen=True)
class PipelineRun:
    fps: float
    frames: int
    keyframes: int  # frames the network ran on
    latency_ms: np.ndarray  # [T] per frame, from leaving the decode queue to its result
    cpu_ms: float  # process CPU per frame, all threads: against the stages' sum it shows contention overhead
    note: str = ""  # why a requested accelerator was not used ('' when it was)

    def summary(self) -> dict[str, float | int | str]:
        out: dict[str, float | int | str] = {
            "fps": self.fps,
            "frames": self.frames,
            "keyframes": self.keyframes,
            "cpu_ms": self.cpu_ms,
            "cores_busy": self.cpu_ms * self.fps / 1000.0,
            "latency_ms_median": float(np.median(self.latency_ms)),
            "latency_ms_p95": float(np.percentile(self.latency_ms, 95)),
        }
        return {**out, "note": self.note} if self.note else out


def pipeline_run(
    tracker: Tracker,
    video: Path,
    limit: int | None,
    out_dir: Path,
    stem: str,
    device: torch.device,
    note: str = "",
    with_video: bool = True,
) -> PipelineRun:
    """The whole thing, as `cape-track` runs it: decode thread, ROI crops, model, smoother, and the file sinks
    (JSON, CSV, and the annotated video in its thread unless `with_video` is False). The source is opened inside
    the timing."""
    sinks = file_sinks(out_dir, stem, video=with_video)
    latencies, keyframes = [], 0
    with Timer(device) as clock:
        source = StampedSource(VideoFileSource(video), limit)
        try:
            for result in tracker.run(source, sinks):
                latencies.append(time.perf_counter() - source.taken[result.index])
                keyframes += result.keyframe
        finally:
            source.close()
    n = len(latencies)
    return PipelineRun(n / clock.seconds, n, keyframes, 1000.0 * np.array(latencies), 1000.0 * clock.cpu / n, note)


def available_accels(device: torch.device) -> list[str]:
    """Accelerators that can work here: `compile` needs a C++ compiler on the CPU (inductor), `tensorrt` needs CUDA
    and the torch-tensorrt package, `onnx` the CPU and onnxruntime."""
    accels = ["none"]
    if device.type == "cuda" or shutil.which(os.environ.get("CXX", "g++")):
        accels.append("compile")
    if device.type == "cuda" and importlib.util.find_spec("torch_tensorrt") is not None:
        accels.append("tensorrt")
    if device.type == "cpu" and onnx_available():
        accels.append("onnx")
    return accels


def machine_facts(device: torch.device) -> dict[str, object]:
    """What the figures depend on: processor, threads, library versions, device, and how busy the machine was."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    facts: dict[str, object] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "usable_cores": usable_cores(),  # what the cpu limit and the thread counts are computed from
        "torch_threads": torch.get_num_threads(),
        "opencv_threads": cv2.getNumThreads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "opencv": cv2.__version__,
        "av": av.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
        facts["cuda"] = torch.version.cuda
    return facts


# --------------------------------------------------------------------------------------------------- the run
@dataclass(frozen=True)
class Options:
    video: Path
    support: SupportSet
    support_files: tuple[str, ...]
    checkpoint: str | None  # None: the embedded default model
    device: torch.device
    batch: int
    batches: tuple[int, ...]  # compared against batch 1 (the main batch is always included)
    accels: tuple[str, ...]
    frames: int | None
    warmup: int
    repeat: int  # rounds over every measurement; each figure is its best round
    threads: int | None = None  # --threads: torch's, OpenCV's and every run's network threads (None: as the CLI)


@dataclass(frozen=True)
class Variant:
    """One pipeline run's settings; None = the tracker's / the run's default."""

    accel: str = "auto"
    keyframe_every: int | None = None
    batch: int | None = None
    video: bool = True  # also write the annotated video (False: tracks only)
    support_per_call: bool = False
    threads: int | None = None  # torch and OpenCV threads (None: `configure_cpu_threads`)
    network_threads: int = 0  # ONNX Runtime's threads for a run's network calls (0: the tracker's choice per run)


def variants(opts: Options) -> dict[str, Variant]:
    """The pipeline runs of one report: the defaults with and without the video, today's eager per-frame path, the
    cached support against re-encoding it, keyframes off, each accelerator, and batch sizes (with every frame a
    keyframe: batches are what the network sees then)."""
    out = {
        "main": Variant(),
        "tracks_only": Variant(video=False),
        "eager_per_frame": Variant(accel="none", keyframe_every=1),
        "eager_per_frame_tracks_only": Variant(accel="none", keyframe_every=1, video=False),
        "support_per_frame": Variant(support_per_call=True),
        "keyframes_off": Variant(keyframe_every=1),
        # no core left to the decoder and encoder
        "threads_all_cores": Variant(threads=usable_cores(), network_threads=usable_cores()),
    }
    out |= {f"accel_{a}": Variant(accel=a) for a in opts.accels}
    out |= {f"batch{b}": Variant(keyframe_every=1, batch=b) for b in sorted({1, *opts.batches}) if b != opts.batch}
    return out


def measure(opts: Options, log: Callable[[str], None] = lambda _: None) -> dict[str, object]:
    """Every measurement on one clip and model; returns the report (the JSON written by `--json`).

    All trackers are built and warmed up first; then each round times every stage and every pipeline variant in
    turn, and each figure keeps its best round, so a burst of load from elsewhere on a shared machine biases the
    ratios as little as possible (the `timeit` convention)."""
    device = opts.device
    log("decode ...")
    decoded = decode_stage(opts.video, opts.frames)
    height, width = decoded.frames[0].image.shape[:2]
    info = TrackInfo(decoded.name, decoded.fps, width, height, opts.support.names, opts.support.skeleton)

    def build(v: Variant, smooth: bool = True) -> tuple[Tracker, str]:
        with cpu_threads(v.threads):  # for the warm-up runs
            return _build(v, smooth)

    def _build(v: Variant, smooth: bool) -> tuple[Tracker, str]:
        model = CapeModel.from_checkpoint(opts.checkpoint, device=device)  # fresh: accelerators patch it in place
        threads = opts.threads or v.network_threads  # an explicit --threads holds for ONNX Runtime too
        config = TrackerConfig(batch=v.batch or opts.batch, smooth=smooth, network_threads=threads)
        if v.keyframe_every is not None:
            config = replace(config, keyframe_every=v.keyframe_every)
        tracker, note = make_tracker(model, opts.support, config, device, v.accel)
        if v.support_per_call:
            recompute_support_per_call(tracker, opts.support)
        warm_up(tracker, decoded.frames, decoded.fps, opts.warmup)
        return tracker, note

    runs_wanted = variants(opts)
    log(f"building and warming up {len(runs_wanted) + 3} trackers ...")
    # The stages alone run without sinks: told the network's threads of the pipeline with the video (a core left
    # to the encoder), or choosing as the tracks-only pipeline does (every core).
    beside_encoder = Variant(network_threads=network_threads(encoders=1))
    model_tracker, _ = build(beside_encoder, smooth=False)  # crop + network on every frame
    track_tracker, _ = build(beside_encoder)
    tracks_tracker, _ = build(Variant())
    pipelines = {name: (build(v), v) for name, v in runs_wanted.items()}
    # The stages alone see frames as the pipeline's reader thread hands them over.
    decoded = replace(decoded, frames=[track_tracker.prepare_frame(frame) for frame in decoded.frames])
    backbone = None
    if "onnx" in opts.accels and onnx_available():
        depth = track_tracker.finder.config.depth if track_tracker.finder is not None else 1
        backbone = backbone_speed(CapeModel.from_checkpoint(opts.checkpoint), depth, 1, 10 * opts.repeat)

    names = ("decode", "model", "track", "track_tracks_only", "write", "encode")
    stages: dict[str, Stage | None] = dict.fromkeys(names)
    baselines: dict[str, Stage] = {}
    smoother_ms = smoother_ms_100 = kalman_ms_100 = float("inf")
    runs: dict[str, PipelineRun] = {}
    paired: list[tuple[float, float]] = []  # per round: (with video, tracks only) efficiency, from that round alone

    def pipeline(name: str) -> PipelineRun:
        (tracker, note), v = pipelines[name]
        with cpu_threads(v.threads):
            run = pipeline_run(tracker, opts.video, opts.frames, out, name, device, note, v.video)
        if name not in runs or run.fps > runs[name].fps:
            runs[name] = run
        return run

    with tempfile.TemporaryDirectory(prefix="cape-fps-") as tmp:
        out = Path(tmp)
        for r in range(opts.repeat):
            log(f"round {r + 1}/{opts.repeat}: {len(stages)} stages, {len(pipelines)} pipeline runs ...")
            # The stages the efficiency is computed from, then the two pipelines it is about, back to back: the
            # effective speed of this shared machine drifts by +-20 % over tens of seconds.
            now: dict[str, Stage] = {}
            again = decode_stage(opts.video, opts.frames, track_tracker.prepare_frame, keep=False)
            now["decode"] = Stage.timed(again.count, again.seconds, again.cpu)
            now["track"], tracked = track_stage(track_tracker, decoded, device)
            now["track_tracks_only"], _ = track_stage(tracks_tracker, decoded, device)
            tracks = file_sinks(out, "write", video=False)[0]
            now["write"] = sink_stage(tracks, decoded, tracked, info, device)
            now["encode"] = sink_stage(VideoSink(out / "encode.mp4"), decoded, tracked, info, device)
            main, tracks_only = pipeline("main"), pipeline("tracks_only")
            paired.append((efficiency(main, now, WITH_VIDEO_STAGES), efficiency(tracks_only, now, TRACKS_STAGES)))
            for name, stage in now.items():
                stages[name] = stage.best(stages[name])
            model, raw = track_stage(model_tracker, decoded, device)
            stages["model"] = model.best(stages["model"])
            for name, stage in baseline_stages(track_tracker, decoded, tracked, opts.support, device).items():
                baselines[name] = stage.best(baselines.get(name))
            smoother_ms = min(smoother_ms, smoother_stage(decoded.frames, raw))
            smoother_ms_100 = min(smoother_ms_100, smoother_stage(decoded.frames, raw, SMOOTHER_KEYPOINTS))
            kalman_ms_100 = min(kalman_ms_100, smoother_stage(decoded.frames, raw, SMOOTHER_KEYPOINTS, flow=False))
            for name in [n for n in pipelines if n not in ("main", "tracks_only")]:
                pipeline(name)
    smoother = (smoother_ms, smoother_ms_100, kalman_ms_100)
    return report(opts, decoded, stages, runs, smoother, backbone, track_tracker, baselines, paired)


@contextlib.contextmanager
def cpu_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op threads and OpenCV's set to `threads` inside the block (None: unchanged)."""
    before = torch.get_num_threads(), cv2.getNumThreads()
    if threads:
        torch.set_num_threads(threads)
        cv2.setNumThreads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])


def cpu_limit(stages: dict[str, Stage], names: Sequence[str], cores: int) -> float:
    """Frames per second `cores` could sustain if the stages `names` shared them perfectly: cores / the sum of
    their CPU seconds per frame, each measured alone."""
    return cores / (sum(stages[s].cpu_ms for s in names) / 1000.0)


def efficiency(run: PipelineRun, stages: dict[str, Stage], names: Sequence[str]) -> float:
    """`cpu_efficiency`: the pipeline's fps over what its stages `names` allow, the slowest alone or the CPU limit."""
    slowest = min(stages[s].fps for s in names)
    return run.fps / min(slowest, cpu_limit(stages, names, usable_cores()))


def report(
    opts: Options,
    decoded: Decoded,
    stages: dict[str, Stage],
    runs: dict[str, PipelineRun],
    smoother: tuple[float, float, float],
    backbone: dict[str, float] | None,
    tracker: Tracker,
    baselines: dict[str, Stage],
    paired: Sequence[tuple[float, float]],
) -> dict[str, object]:
    """The JSON report. Every figure is its best round; `paired` holds each round's efficiencies (with the video,
    tracks only) computed from that round's own stages and pipelines, measured back to back."""
    main, per_frame, tracks_only = runs["main"], runs["support_per_frame"], runs["tracks_only"]
    cores = usable_cores()
    limit = cpu_limit(stages, WITH_VIDEO_STAGES, cores)
    limit_tracks = cpu_limit(stages, TRACKS_STAGES, cores)
    slowest = min(WITH_VIDEO_STAGES, key=lambda s: stages[s].fps)
    by_batch = {b: runs["keyframes_off" if b == opts.batch else f"batch{b}"] for b in sorted({1, opts.batch})}
    by_batch |= {b: runs["keyframes_off" if b == opts.batch else f"batch{b}"] for b in opts.batches}
    by_accel = {a: runs[f"accel_{a}"] for a in opts.accels}
    best_batch = max(by_batch, key=lambda b: by_batch[b].fps)
    reference = by_accel.get("none", main)
    smoother_ms, smoother_ms_100, kalman_ms_100 = smoother
    model = tracker.model
    out: dict[str, object] = {
        "pipeline_fps": main.fps,
        "with_video_fps": main.fps,
        "tracks_only_fps": tracks_only.fps,
        "cpu_limit_fps": limit,
        "cpu_efficiency": efficiency(main, stages, WITH_VIDEO_STAGES),
        "cpu_efficiency_tracks_only": efficiency(tracks_only, stages, TRACKS_STAGES),
        "cpu_efficiency_rounds": {
            "with_video": [v for v, _ in paired],
            "tracks_only": [t for _, t in paired],
            "median_with_video": float(np.median([v for v, _ in paired])),
            "median_tracks_only": float(np.median([t for _, t in paired])),
        },
        "overlap_ratio": main.fps / stages[slowest].fps,
        "cached_vs_naive_ratio": main.fps / per_frame.fps,
        "vs_eager_per_frame_ratio": {
            "with_video": main.fps / runs["eager_per_frame"].fps,
            "tracks_only": tracks_only.fps / runs["eager_per_frame_tracks_only"].fps,
        },
        "threads": {
            "default": torch.get_num_threads(),
            "all_cores_fps": runs["threads_all_cores"].fps,
            "default_vs_all_cores_ratio": main.fps / runs["threads_all_cores"].fps,
        },
        "keyframes": {
            "every": tracker.config.keyframe_every,
            "share": main.keyframes / max(main.frames, 1),
            "vs_off_ratio": main.fps / runs["keyframes_off"].fps,
        },
        "latency_ms": {"median": float(np.median(main.latency_ms)), "p95": float(np.percentile(main.latency_ms, 95))},
        "stages": {
            **{f"{name}_fps": stage.fps for name, stage in stages.items()},
            **{f"{name}_cpu_ms": stage.cpu_ms for name, stage in stages.items()},
            "smoother_ms": smoother_ms,
            "smoother_ms_100kp": smoother_ms_100,
            "smoother_ms_100kp_without_flow": kalman_ms_100,
            "slowest": slowest,
        },
        "cpu_limit_fps_tracks_only": limit_tracks,
        "baselines": {
            **{f"{name}_fps": stage.fps for name, stage in baselines.items()},
            **{f"tracker_vs_{name}_ratio": stages["track"].fps / stage.fps for name, stage in baselines.items()},
        },
        "naive_pipeline_fps": per_frame.fps,
        "batch": {
            "fps": {str(b): run.fps for b, run in sorted(by_batch.items())},
            "best": best_batch,
            "best_vs_batch1_ratio": by_batch[best_batch].fps / by_batch[1].fps,
        },
        "accel": {
            "fps": {a: run.fps for a, run in by_accel.items()},
            "vs_none_ratio": {a: run.fps / reference.fps for a, run in by_accel.items()},
            "notes": {a: run.note for a, run in by_accel.items() if run.note},
            "default": tracker.accel.accel,
        },
        "runs": {name: run.summary() for name, run in runs.items()},
        "targets": {
            "tracks_only_fps": TRACKS_ONLY_TARGET,
            "with_video_fps": WITH_VIDEO_TARGET,
            "cpu_efficiency": EFFICIENCY_TARGET,
            "overlap_ratio": OVERLAP_TARGET,
            "cached_vs_naive_ratio_1shot": CACHED_TARGET,
            "smoother_ms_100kp": SMOOTHER_TARGET_MS,
        },
        "setup": {
            "video": str(opts.video),
            "frames": main.frames,
            "width": decoded.frames[0].image.shape[1],
            "height": decoded.frames[0].image.shape[0],
            "support": list(opts.support_files),
            "shots": opts.support.shots,
            "keypoints": opts.support.num_keypoints,
            "checkpoint": opts.checkpoint or "default",
            "backbone": model.config.backbone.name,
            "parameters": sum(p.numel() for p in model.parameters()),
            "input_size": model.input_size,
            "batch": opts.batch,
            "warmup_rounds": opts.warmup,
            "repeat": opts.repeat,
        },
        "machine": machine_facts(opts.device),
    }
    if backbone is not None:
        out["onnx_vs_eager_ratio"] = {
            "backbone": backbone["onnx_vs_eager_ratio"],
            "pipeline": runs["accel_onnx"].fps / runs["accel_none"].fps if "accel_none" in runs else None,
        }
        out["backbone"] = backbone
    return out


def format_table(report: dict) -> str:
    """The report as a fixed-width table with the targets beside the ratios."""
    st, setup, tg = report["stages"], report["setup"], report["targets"]
    lines = [
        f"{setup['video']}: {setup['frames']} frames {setup['width']}x{setup['height']}, {setup['keypoints']} "
        f"keypoints, {setup['shots']}-shot, {setup['backbone']} ({setup['parameters'] / 1e6:.1f} M params), "
        f"batch {setup['batch']}, {report['machine']['device']}, {report['machine']['torch_threads']} torch threads,"
        f" accel {report['accel']['default']}, keyframe every {report['keyframes']['every']}",
        "",
        f"{'stage (alone)':<34}{'frames/s':>10}{'ms/frame':>10}{'CPU ms':>9}",
    ]
    for name, key in (
        ("decode (+ flow, half image)", "decode"),
        ("model (crop + network, every fr.)", "model"),
        ("track (keyframes, flow, Kalman)", "track"),
        ("  on every core (tracks only)", "track_tracks_only"),
        ("write tracks (JSON + CSV)", "write"),
        ("encode (draw + H.264)", "encode"),
    ):
        fps = st[f"{key}_fps"]
        lines.append(f"{name:<34}{fps:>10.1f}{1000.0 / fps:>10.2f}{st[f'{key}_cpu_ms']:>9.2f}")
    for name, ms in (
        (f"smoother ({setup['keypoints']} kp)", st["smoother_ms"]),
        (f"smoother ({SMOOTHER_KEYPOINTS} kp)", st["smoother_ms_100kp"]),
        (f"  without flow ({SMOOTHER_KEYPOINTS} kp)", st["smoother_ms_100kp_without_flow"]),
    ):
        lines.append(f"{name:<34}{1000.0 / ms:>10.1f}{ms:>10.2f}")
    lat, kf, vs, th = report["latency_ms"], report["keyframes"], report["vs_eager_per_frame_ratio"], report["threads"]
    main_run, rounds = report["runs"]["main"], report["cpu_efficiency_rounds"]
    lines += [
        "",
        f"with video         {report['with_video_fps']:6.1f} fps  (latency median {lat['median']:.0f} ms, p95 "
        f"{lat['p95']:.0f} ms)   target >= {tg['with_video_fps']}; x{vs['with_video']:.2f} today's eager "
        "per-frame path",
        f"tracks only        {report['tracks_only_fps']:6.1f} fps   target >= {tg['tracks_only_fps']}; "
        f"x{vs['tracks_only']:.2f} the eager per-frame path",
        f"cpu limit          {report['cpu_limit_fps']:6.1f} fps  {report['machine']['usable_cores']} cores / CPU per "
        f"frame of the stages ({report['cpu_limit_fps_tracks_only']:.1f} tracks only)",
        f"pipeline CPU       {main_run['cpu_ms']:6.2f}  ms per frame ({main_run['cores_busy']:.2f} cores busy) vs "
        f"{sum(st[f'{k}_cpu_ms'] for k in ('decode', 'track', 'write', 'encode')):.2f} for the stages alone",
        f"cpu efficiency     {report['cpu_efficiency']:6.2f}  pipeline / min(slowest stage, cpu limit)   target >= "
        f"{tg['cpu_efficiency']} ({report['cpu_efficiency_tracks_only']:.2f} tracks only)",
        f"  round by round   {rounds['median_with_video']:6.2f}  median ({min(rounds['with_video']):.2f}-"
        f"{max(rounds['with_video']):.2f}; tracks only {rounds['median_tracks_only']:.2f}), each round's stages and "
        "pipelines back to back",
        f"overlap ratio      {report['overlap_ratio']:6.2f}  pipeline / slowest stage ({st['slowest']}) "
        f"  target >= {tg['overlap_ratio']} (a limit 2 cores cannot reach: see cpu efficiency)",
        f"threads            {th['default_vs_all_cores_ratio']:6.2f}  {th['default']} torch/OpenCV thread(s), ORT's "
        "per run, vs "
        f"all {report['machine']['usable_cores']} cores ({th['all_cores_fps']:.1f} fps)",
        f"keyframes          {kf['vs_off_ratio']:6.2f}  x fps vs the network on every frame ({100 * kf['share']:.0f} %"
        " of frames were keyframes)",
        f"cached vs naive    {report['cached_vs_naive_ratio']:6.2f}  {report['pipeline_fps']:.1f} fps vs "
        f"{report['naive_pipeline_fps']:.1f} fps with the support re-encoded per network call"
        f"   target >= {tg['cached_vs_naive_ratio_1shot']} (1-shot)",
        f"smoother 100 kp    {st['smoother_ms_100kp']:6.2f}  ms per frame ({st['smoother_ms_100kp_without_flow']:.2f}"
        f" without optical flow)   target < {tg['smoother_ms_100kp']} ms",
    ]
    names = {"optical_flow": "LK optical flow", "nn_matching": "NN feature matching"}
    for name, label in names.items():
        if f"{name}_fps" in report["baselines"]:
            lines.append(
                f"vs {name:<15} {report['baselines'][f'tracker_vs_{name}_ratio']:6.2f}  the tracker alone vs {label} "
                f"alone ({report['baselines'][f'{name}_fps']:.1f} fps), same decoded frames"
            )
    if "backbone" in report:
        bb, ratio = report["backbone"], report["onnx_vs_eager_ratio"]
        pipeline = f", pipeline x{ratio['pipeline']:.2f}" if ratio["pipeline"] else ""
        lines.append(
            f"onnx vs eager      {ratio['backbone']:6.2f}  backbone {bb['onnx_ms']:.1f} vs {bb['eager_ms']:.1f} ms "
            f"per crop{pipeline}"
        )
    batch = report["batch"]
    sweep = ", ".join(f"{b}: {fps:.1f}" for b, fps in batch["fps"].items())
    lines.append(
        f"batch              {batch['best_vs_batch1_ratio']:6.2f}  best {batch['best']} vs 1, network on every "
        f"frame (fps {sweep})"
    )
    accel = report["accel"]
    for name, fps in accel["fps"].items():
        note = f"   ({accel['notes'][name]})" if name in accel["notes"] else ""
        lines.append(f"accel {name:<12} {accel['vs_none_ratio'][name]:6.2f}  {fps:.1f} fps{note}")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    """Horizontal bars of each stage's throughput and the pipeline's, with the CPU limit and the 0.9 x target."""
    from matplotlib.figure import Figure  # optional: only for --plot; Figure needs no global pyplot state

    st = report["stages"]
    bars = {
        "decode": st["decode_fps"],
        "track": st["track_fps"],
        "write tracks": st["write_fps"],
        "encode": st["encode_fps"],
        "pipeline,\ntracks only": report["tracks_only_fps"],
        "pipeline,\nwith video": report["pipeline_fps"],
        "eager, network\nevery frame": report["runs"]["eager_per_frame"]["fps"],
    }
    fig = Figure(figsize=(7, 4.0), layout="constrained")
    ax = fig.add_subplot()
    colors = ["tab:blue"] * 4 + ["tab:green"] * 2 + ["tab:gray"]
    ax.barh(list(bars)[::-1], list(bars.values())[::-1], color=colors[::-1])
    for y, value in enumerate(list(bars.values())[::-1]):
        ax.text(value, y, f" {value:.1f}", va="center", fontsize=8)
    limit = min(report["cpu_limit_fps"], st[f"{st['slowest']}_fps"])
    ax.axvline(limit, color="tab:orange", linestyle=":", linewidth=1, label="min(slowest stage, CPU limit)")
    ax.axvline(EFFICIENCY_TARGET * limit, color="tab:red", linestyle="--", linewidth=1, label="0.9 x that")
    ax.set_xscale("log")
    ax.set_xlim(right=2.0 * max(bars.values()))  # room for the value labels
    ax.set_xlabel("frames per second (log scale)")
    setup = report["setup"]
    ax.set_title(f"{Path(setup['video']).name}, {setup['frames']} frames, {report['machine']['device']}", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.savefig(path, dpi=120)


# --------------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m {PROG}", description=__doc__.split("\n\n")[0])
    p.add_argument("--video", required=True, type=Path, help="the clip to measure on")
    p.add_argument("--support", required=True, action="append", metavar="IMAGE", help="support image (repeat: K-shot)")
    p.add_argument("--keypoints", action="append", metavar="FILE", help="keypoint file (default: IMAGE's .json)")
    p.add_argument("--checkpoint", help="model checkpoint (default: the embedded model)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: auto)")
    p.add_argument("--batch", type=int, default=4, metavar="N", help="frames per model call (default: 4)")
    p.add_argument(
        "--batches", type=int, nargs="+", default=[1, 2, 4, 8], metavar="N", help="batch sizes compared (1 2 4 8)"
    )
    p.add_argument("--accel", nargs="+", choices=ACCELS[1:], help="accelerators compared (default: all available)")
    p.add_argument("--frames", type=int, metavar="N", help="use the first N frames only (default: the whole clip)")
    p.add_argument("--warmup", type=int, default=2, metavar="W", help="warm-up calls per batch shape (default: 2)")
    p.add_argument("--repeat", type=int, default=3, metavar="R", help="rounds; each figure is its best (default: 3)")
    p.add_argument(
        "--threads",
        type=int,
        metavar="T",
        help="torch, OpenCV and ONNX Runtime CPU threads (default: the CLI's choice)",
    )
    p.add_argument("--json", type=Path, metavar="OUT", help="write the report there")
    p.add_argument("--plot", type=Path, metavar="PNG", help="draw the stage throughputs there")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    optional = [n for n in (args.frames, args.threads) if n is not None]
    if min(args.batch, *args.batches, args.repeat, *optional) < 1 or args.warmup < 0:
        parser.error("--batch, --batches, --frames, --repeat and --threads must be >= 1, --warmup >= 0")
    try:
        device = select_device(args.device)
        if args.threads:
            torch.set_num_threads(args.threads)
            cv2.setNumThreads(args.threads)
        else:
            configure_cpu_threads(device)  # as the CLI and the page do
        support = SupportSet.from_files(args.support, args.keypoints)
        opts = Options(
            video=args.video,
            support=support,
            support_files=tuple(args.support),
            checkpoint=args.checkpoint,
            device=device,
            batch=args.batch,
            batches=tuple(args.batches),
            accels=tuple(args.accel or available_accels(device)),
            frames=args.frames,
            warmup=args.warmup,
            repeat=args.repeat,
            threads=args.threads,
        )
        report = measure(opts, log=lambda msg: print(f"{PROG}: {msg}", file=sys.stderr, flush=True))
    except CapeError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    print(format_table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if args.plot:
        plot(report, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

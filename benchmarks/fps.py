"""Tracker speed, measured in one run on one clip and one model: each stage alone (decode, model, smoother, encode),
the whole pipeline (throughput and per-frame latency), the cached support against re-encoding it every frame, batch
sizes and accelerators. The ratios are the targets of DESIGN.md; a table is printed and `--json` keeps the figures.

    python -m cape_track.benchmarks.fps --video samples/sample.mp4 --support samples/sample.jpg --frames 60 \\
        --json fps.json
"""

from __future__ import annotations

import argparse
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

from cape_track.model import CapeError, CapeModel, Prediction, SupportEmbedding, SupportSet
from cape_track.model.matching import FinderConfig, match_support
from cape_track.tracker import (
    Accelerator,
    Frame,
    FrameResult,
    KalmanSmoother,
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
from cape_track.tracker.accel import ACCELS

PROG = "cape_track.benchmarks.fps"
STAGES = ("decode", "model", "smoother", "encode")
OVERLAP_TARGET = 0.9  # pipeline fps / slowest stage fps (DESIGN.md, Targets)
CACHED_TARGET = 1.5  # cached / per-frame support fps, 1-shot
SMOOTHER_KEYPOINTS = 100  # the smoother target is stated for 100 keypoints ...
SMOOTHER_TARGET_MS = 1.0  # ... per frame


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

    def __iter__(self) -> Iterator[Frame]:
        for frame in islice(self.inner, self.limit):
            self.taken[frame.index] = time.perf_counter()
            yield frame

    def close(self) -> None:
        self.inner.close()


class SupportPerFrameModel(CapeModel):
    """The cost model of the paper's demo: the support images go through the network again for every frame, instead
    of the cached `SupportEmbedding` (same weights, same outputs, more work)."""

    def __init__(self, model: CapeModel, support: SupportSet) -> None:
        # No ImageNet initialisation: the weights are copied from `model` right away.
        config = replace(model.config, backbone=replace(model.config.backbone, imagenet_init=False))
        super().__init__(config)
        self.load_state_dict(model.state_dict())
        self.support_set = support

        self.backbone = _SupportPerFrameBackbone(self.backbone, self, support)

    def predict(self, images: torch.Tensor, support: SupportEmbedding) -> Prediction:
        for _ in range(images.shape[0]):  # one support pass per frame of the batch
            support = self.encode_support_set(self.support_set)
        return super().predict(images, support)


class _SupportPerFrameBackbone(torch.nn.Module):
    """The same for the keypoint finder (which reads the backbone's levels, not `predict`): the finder's support
    (its hypercolumns, upright and rotated) is computed again for every frame before the frame's own levels."""

    def __init__(self, inner: torch.nn.Module, model: CapeModel, support: SupportSet) -> None:
        super().__init__()
        self.inner = inner
        self.inputs = model.support_inputs(support)
        self.has_pyramid = inner.has_pyramid
        self.channels = inner.channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.inner(images)

    def pyramid(self, images: torch.Tensor, depth: int = 2) -> list[torch.Tensor]:
        shots, keypoints, visible = self.inputs
        rotations = FinderConfig().rotations
        for _ in range(images.shape[0]):
            match_support(lambda x: self.inner.pyramid(x, depth), shots, keypoints, visible, rotations)
        return self.inner.pyramid(images, depth)


# --------------------------------------------------------------------------------------------------- stages
@dataclass(frozen=True)
class Decoded:
    frames: list[Frame]
    fps: float  # the clip's nominal rate
    name: str
    seconds: float  # decode time of `frames`, first frame included


def decode_stage(video: Path, limit: int | None) -> Decoded:
    """Decode alone: the source thread fills its queue as fast as it can and the frames are only collected."""
    start = time.perf_counter()
    source = VideoFileSource(video)
    try:
        frames = list(islice(source, limit))
        seconds = time.perf_counter() - start
    finally:
        source.close()
    return Decoded(frames, source.fps, source.name, seconds)


def make_tracker(
    model: CapeModel, support: SupportSet, config: TrackerConfig, device: torch.device, accel: str = "none"
) -> tuple[Tracker, str]:
    """A tracker built as the CLI builds it, and why the accelerator fell back ('' when it did not)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TrackerWarning)
        tracker = Tracker(model, support, config, Accelerator.for_device(device, accel))
    return tracker, "; ".join(str(w.message) for w in caught if issubclass(w.category, TrackerWarning))


def warm_up(tracker: Tracker, frames: Sequence[Frame], fps: float, rounds: int) -> None:
    """Run the batch size of a timed run over `frames` and that of its last, shorter batch, so no first call
    (allocator, cuDNN autotuning, `torch.compile` recompiling for a new shape) falls inside the timing."""
    batch = tracker.config.batch
    for size in sorted({min(batch, len(frames)), len(frames) % batch} - {0}):
        for _ in range(rounds):
            tracker.step(frames[:size], tracker.init_state(fps))


def model_stage(tracker: Tracker, decoded: Decoded, device: torch.device) -> tuple[float, list[FrameResult]]:
    """Crop + network alone on pre-decoded frames, with the tracker's ROI follow (build it with `smooth=False`)."""
    with Clock(device) as clock:
        results = list(tracker.run(FrameListSource(decoded.frames, decoded.fps)))
    return len(results) / clock.seconds, results


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


def encode_stage(decoded: Decoded, results: Sequence[FrameResult], info: TrackInfo, path: Path) -> float:
    """Annotated H.264 alone (drawing + encoding in the sink's thread), frames per second until the file is done."""
    sink = VideoSink(path)
    start = time.perf_counter()
    sink.open(info)
    try:
        for frame, result in zip(decoded.frames, results, strict=True):
            sink.write(frame, result)
    finally:
        sink.close()
    return len(results) / (time.perf_counter() - start)


# --------------------------------------------------------------------------------------------------- pipeline
@dataclass(frozen=True)
class PipelineRun:
    fps: float
    frames: int
    latency_ms: np.ndarray  # [T] per frame, from leaving the decode queue to its result
    note: str = ""  # why a requested accelerator was not used ('' when it was)

    def summary(self) -> dict[str, float | int | str]:
        out: dict[str, float | int | str] = {
            "fps": self.fps,
            "frames": self.frames,
            "latency_ms_median": float(np.median(self.latency_ms)),
            "latency_ms_p95": float(np.percentile(self.latency_ms, 95)),
        }
        return {**out, "note": self.note} if self.note else out


def pipeline_run(
    tracker: Tracker, video: Path, limit: int | None, out_dir: Path, stem: str, device: torch.device, note: str = ""
) -> PipelineRun:
    """The whole thing, as `cape-track` runs it: decode thread, ROI crops, batched model, smoother, and the three
    file sinks (annotated video in its thread, JSON, CSV). The source is opened inside the timing."""
    sinks = file_sinks(out_dir, stem)
    latencies = []
    with Clock(device) as clock:
        source = StampedSource(VideoFileSource(video), limit)
        try:
            for result in tracker.run(source, sinks):
                latencies.append(time.perf_counter() - source.taken[result.index])
        finally:
            source.close()
    n = len(latencies)
    return PipelineRun(n / clock.seconds, n, 1000.0 * np.array(latencies), note)


def available_accels(device: torch.device) -> list[str]:
    """Accelerators that can work here: `compile` needs a C++ compiler on the CPU (inductor), `tensorrt` needs CUDA
    and the torch-tensorrt package."""
    accels = ["none"]
    if device.type == "cuda" or shutil.which(os.environ.get("CXX", "g++")):
        accels.append("compile")
    if device.type == "cuda" and importlib.util.find_spec("torch_tensorrt") is not None:
        accels.append("tensorrt")
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
        "torch_threads": torch.get_num_threads(),
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


def measure(opts: Options, log: Callable[[str], None] = lambda _: None) -> dict[str, object]:
    """Every measurement on one clip and model; returns the report (the JSON written by `--json`).

    All trackers are built and warmed up first; then each round times every stage and every pipeline variant in
    turn, and each figure keeps its best round, so a burst of load from elsewhere on a shared machine biases the
    ratios as little as possible (the `timeit` convention)."""
    device = opts.device
    log("decode ...")
    decoded = decode_stage(opts.video, opts.frames)
    n = len(decoded.frames)
    height, width = decoded.frames[0].image.shape[:2]
    info = TrackInfo(decoded.name, decoded.fps, width, height, opts.support.names, opts.support.skeleton)

    def build(batch: int, accel: str = "none", per_frame: bool = False, smooth: bool = True) -> tuple[Tracker, str]:
        model = CapeModel.from_checkpoint(opts.checkpoint, device=device)  # fresh: accelerators patch it in place
        if per_frame:
            model = SupportPerFrameModel(model, opts.support)
        config = TrackerConfig(batch=batch, smooth=smooth)
        tracker, note = make_tracker(model, opts.support, config, device, accel)
        warm_up(tracker, decoded.frames, decoded.fps, opts.warmup)
        return tracker, note

    variants = {"main": (opts.batch, "none", False), "support_per_frame": (opts.batch, "none", True)}
    variants |= {f"batch{b}": (b, "none", False) for b in sorted({1, *opts.batches}) if b != opts.batch}
    variants |= {f"accel_{a}": (opts.batch, a, False) for a in opts.accels if a != "none"}
    log(f"building and warming up {len(variants) + 1} trackers ...")
    stage_tracker, _ = build(opts.batch, smooth=False)
    pipelines = {name: build(*variant) for name, variant in variants.items()}

    decode_fps = model_fps = encode_fps = 0.0
    smoother_ms = smoother_ms_100 = kalman_ms_100 = float("inf")
    runs: dict[str, PipelineRun] = {}
    with tempfile.TemporaryDirectory(prefix="cape-fps-") as tmp:
        out = Path(tmp)
        for r in range(opts.repeat):
            log(f"round {r + 1}/{opts.repeat}: 4 stages, {len(pipelines)} pipeline runs ...")
            decode_fps = max(decode_fps, n / decode_stage(opts.video, opts.frames).seconds)
            fps, raw = model_stage(stage_tracker, decoded, device)
            model_fps = max(model_fps, fps)
            smoother_ms = min(smoother_ms, smoother_stage(decoded.frames, raw))
            smoother_ms_100 = min(smoother_ms_100, smoother_stage(decoded.frames, raw, SMOOTHER_KEYPOINTS))
            kalman_ms_100 = min(kalman_ms_100, smoother_stage(decoded.frames, raw, SMOOTHER_KEYPOINTS, flow=False))
            encode_fps = max(encode_fps, encode_stage(decoded, raw, info, out / "encode.mp4"))
            for name, (tracker, note) in pipelines.items():
                run = pipeline_run(tracker, opts.video, opts.frames, out, name, device, note)
                if name not in runs or run.fps > runs[name].fps:
                    runs[name] = run

    main, per_frame = runs["main"], runs["support_per_frame"]
    by_batch = {b: runs["main" if b == opts.batch else f"batch{b}"] for b in sorted({1, opts.batch, *opts.batches})}
    by_accel = {a: runs["main" if a == "none" else f"accel_{a}"] for a in opts.accels}
    stage_fps = {"decode": decode_fps, "model": model_fps, "smoother": 1000.0 / smoother_ms, "encode": encode_fps}
    slowest = min(stage_fps, key=stage_fps.__getitem__)
    best_batch = max(by_batch, key=lambda b: by_batch[b].fps)
    model = stage_tracker.model
    return {
        "pipeline_fps": main.fps,
        "overlap_ratio": main.fps / stage_fps[slowest],
        "cached_vs_naive_ratio": main.fps / per_frame.fps,
        "latency_ms": {"median": float(np.median(main.latency_ms)), "p95": float(np.percentile(main.latency_ms, 95))},
        "stages": {
            "decode_fps": decode_fps,
            "model_fps": model_fps,
            "smoother_ms": smoother_ms,
            "smoother_ms_100kp": smoother_ms_100,
            "smoother_ms_100kp_without_flow": kalman_ms_100,
            "encode_fps": encode_fps,
            "slowest": slowest,
        },
        "naive_pipeline_fps": per_frame.fps,
        "batch": {
            "fps": {str(b): run.fps for b, run in by_batch.items()},
            "best": best_batch,
            "best_vs_batch1_ratio": by_batch[best_batch].fps / by_batch[1].fps,
        },
        "accel": {
            "fps": {a: run.fps for a, run in by_accel.items()},
            "vs_none_ratio": {a: run.fps / main.fps for a, run in by_accel.items()},
            "notes": {a: run.note for a, run in by_accel.items() if run.note},
        },
        "runs": {name: run.summary() for name, run in runs.items()},
        "targets": {
            "overlap_ratio": OVERLAP_TARGET,
            "cached_vs_naive_ratio_1shot": CACHED_TARGET,
            "smoother_ms_100kp": SMOOTHER_TARGET_MS,
        },
        "setup": {
            "video": str(opts.video),
            "frames": n,
            "width": width,
            "height": height,
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
        "machine": machine_facts(device),
    }


def format_table(report: dict) -> str:
    """The report as a fixed-width table with the targets beside the ratios."""
    st, setup = report["stages"], report["setup"]
    lines = [
        f"{setup['video']}: {setup['frames']} frames {setup['width']}x{setup['height']}, {setup['keypoints']} "
        f"keypoints, {setup['shots']}-shot, {setup['backbone']} ({setup['parameters'] / 1e6:.1f} M params), "
        f"batch {setup['batch']}, {report['machine']['device']}, {report['machine']['torch_threads']} torch threads",
        "",
        f"{'stage (alone)':<28}{'frames/s':>10}{'ms/frame':>10}",
    ]
    for name, fps in (
        ("decode", st["decode_fps"]),
        ("model (crop + network)", st["model_fps"]),
        (f"smoother ({setup['keypoints']} kp)", 1000.0 / st["smoother_ms"]),
        (f"smoother ({SMOOTHER_KEYPOINTS} kp)", 1000.0 / st["smoother_ms_100kp"]),
        (f"  without flow ({SMOOTHER_KEYPOINTS} kp)", 1000.0 / st["smoother_ms_100kp_without_flow"]),
        ("encode (draw + H.264)", st["encode_fps"]),
    ):
        lines.append(f"{name:<28}{fps:>10.1f}{1000.0 / fps:>10.2f}")
    lat = report["latency_ms"]
    lines += [
        f"{'pipeline (all together)':<28}{report['pipeline_fps']:>10.1f}{1000.0 / report['pipeline_fps']:>10.2f}"
        f"   latency median {lat['median']:.0f} ms, p95 {lat['p95']:.0f} ms",
        "",
        f"overlap ratio      {report['overlap_ratio']:.2f}  pipeline / slowest stage ({st['slowest']})"
        f"   target >= {OVERLAP_TARGET}",
        f"cached vs naive    {report['cached_vs_naive_ratio']:.2f}  {report['pipeline_fps']:.1f} fps vs "
        f"{report['naive_pipeline_fps']:.1f} fps with the support re-encoded every frame"
        f"   target >= {CACHED_TARGET} (1-shot)",
        f"smoother 100 kp    {st['smoother_ms_100kp']:.2f} ms per frame ({st['smoother_ms_100kp_without_flow']:.2f} "
        f"without optical flow)   target < {SMOOTHER_TARGET_MS} ms",
    ]
    batch = report["batch"]
    sweep = ", ".join(f"{b}: {fps:.1f}" for b, fps in batch["fps"].items())
    lines.append(f"batch              {batch['best_vs_batch1_ratio']:.2f}  best {batch['best']} vs 1   (fps {sweep})")
    accel = report["accel"]
    for name, fps in accel["fps"].items():
        note = f"   ({accel['notes'][name]})" if name in accel["notes"] else ""
        lines.append(f"accel {name:<12} {accel['vs_none_ratio'][name]:.2f}  {fps:.1f} fps{note}")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    """Horizontal bars of each stage's throughput and the pipeline's, with the 0.9 x slowest-stage target line."""
    from matplotlib.figure import Figure  # optional: only for --plot; Figure needs no global pyplot state

    st = report["stages"]
    bars = {
        "decode": st["decode_fps"],
        "model": st["model_fps"],
        "smoother": 1000.0 / st["smoother_ms"],
        "encode": st["encode_fps"],
        "pipeline": report["pipeline_fps"],
        "pipeline,\nsupport per frame": report["naive_pipeline_fps"],
    }
    fig = Figure(figsize=(7, 3.6), layout="constrained")
    ax = fig.add_subplot()
    colors = ["tab:blue"] * 4 + ["tab:green", "tab:gray"]
    ax.barh(list(bars)[::-1], list(bars.values())[::-1], color=colors[::-1])
    for y, value in enumerate(list(bars.values())[::-1]):
        ax.text(value, y, f" {value:.1f}", va="center", fontsize=8)
    slowest = min(bars[s] for s in STAGES)
    ax.axvline(OVERLAP_TARGET * slowest, color="tab:red", linestyle="--", linewidth=1, label="0.9 x slowest stage")
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
    p.add_argument("--accel", nargs="+", choices=ACCELS, help="accelerators compared (default: all available)")
    p.add_argument("--frames", type=int, metavar="N", help="use the first N frames only (default: the whole clip)")
    p.add_argument("--warmup", type=int, default=2, metavar="W", help="warm-up calls per batch shape (default: 2)")
    p.add_argument("--repeat", type=int, default=3, metavar="R", help="rounds; each figure is its best (default: 3)")
    p.add_argument("--threads", type=int, metavar="T", help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", type=Path, metavar="OUT", help="write the report there")
    p.add_argument("--plot", type=Path, metavar="PNG", help="draw the stage throughputs there")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if min(args.batch, *args.batches, args.repeat, 1 if args.frames is None else args.frames) < 1 or args.warmup < 0:
        parser.error("--batch, --batches, --frames and --repeat must be >= 1, --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = select_device(args.device)
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

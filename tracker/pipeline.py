"""The streaming tracker: frames -> ROI crops -> batched `CapeModel.predict` with the support embedding computed
once -> frame coordinates -> smoother -> sinks. `Tracker.step` is the core on an explicit `TrackState`;
`Tracker.run` is the generator loop over it, with per-stage timers for the benchmarks."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field, fields, replace
from itertools import islice

import numpy as np
import torch

from cape_track.model import CapeModel, SupportSet
from cape_track.model.matching import FinderConfig, Found, KeypointFinder
from cape_track.model.transforms import SquareBox, crop_to_input, halved, input_to_frame, normalize_images
from cape_track.tracker.accel import Accelerator, HostResult, network_threads
from cape_track.tracker.flow import FlowImage
from cape_track.tracker.frames import Frame, FrameResult, TrackInfo
from cape_track.tracker.roi import RoiConfig, follow, whole_frame
from cape_track.tracker.sinks import Sink
from cape_track.tracker.smoothing import KalmanSmoother, Motion, SmootherConfig, SmootherState, StepRecord
from cape_track.tracker.sources import Source
from cape_track.tracker.support import FINDERS, TrackSupport

Progress = Callable[[int, int | None], None]  # (frames done, frames expected or None)
SEARCH_CHUNK = 8  # crops per model call of the tiled search, at most


@dataclass(frozen=True)
class TrackerConfig:
    batch: int = 4  # frames per model call for files and folders (live sources always use 1)
    smooth: bool = True  # Kalman smoothing; False reports the network's raw keypoints
    offline: bool = False  # add a backward RTS pass (files only: results come after the whole video is read)
    roi: RoiConfig = field(default_factory=RoiConfig)
    smoother: SmootherConfig = field(default_factory=SmootherConfig)  # its min_score also gates raw visibility
    # Who places the keypoints: "match" = the keypoint finder (`model.matching`: hypercolumn matching + the
    # support's layout), "network" = the graph decoder's prediction, "auto" = the finder where the backbone has a
    # finer level (the embedded default model), the network otherwise (the paper's SwinV2 checkpoints, unchanged).
    finder: str = "auto"
    finder_config: FinderConfig = field(default_factory=FinderConfig)
    # Searching (start, lost track): besides the whole frame, overlapping tiles of 1/2 and 1/3 of its longer side,
    # so a small object is seen at a working scale; the best-placed layout wins.
    search_tiles: tuple[int, ...] = (2, 3)
    search_every: int = 10  # while lost, the tiled search runs at most once per this many frames (it costs ~20 crops)
    # Keyframes: the network runs at least every this many frames, and the smoother's optical flow carries the
    # keypoints in between; earlier where the flow cannot be trusted (`keyframe_reason`). 1 = the network on every
    # frame (batched). Needs the smoother with flow; without it every frame is a keyframe. Development set, mean
    # PCK@0.05 / 0.1 against the network on every frame (README, *Keyframes and accuracy*): every 2 is level or
    # better on every group but the generated clips, photos of other faces +0.7 / +1.0 (22 runs); every 4 fell behind
    # on those photos by -0.7 / -1.4 (and on the evaluation clip's by 4.7 / 5.6), every 3 by -1.0 / -1.3.
    keyframe_every: int = 2
    # Files, with the smoother: a result waits for this many later keyframes and is smoothed backward from them
    # (`_Settling`). 0 writes each frame as soon as it is tracked (live sources always do).
    settle: int = 2
    cut_threshold: float = 0.1  # thumbnail change (`FlowImage.change`) that counts as a scene cut
    edge_margin: float = 0.02  # a visible keypoint this close to the frame's edge (fraction of its longer side)
    # Threads of one network call in a run (ONNX Runtime); 0 = per run, the usable cores less one for each sink
    # that encodes in a thread of its own (`accel.network_threads`): both of 2 cores for tracks only, one beside
    # the annotated video's encoder.
    network_threads: int = 0

    def __post_init__(self) -> None:
        if self.finder not in FINDERS:
            raise ValueError(f"finder {self.finder!r} not in {FINDERS}")
        if self.keyframe_every < 1:
            raise ValueError(f"keyframe_every must be >= 1, got {self.keyframe_every}")
        if self.settle < 0:
            raise ValueError(f"settle must be >= 0, got {self.settle}")
        if self.network_threads < 0:
            raise ValueError(f"network_threads must be >= 0, got {self.network_threads}")


@dataclass(frozen=True)
class TrackState:
    """Everything carried from one frame to the next (SAM 2 / TAPNext style: passed in, returned)."""

    fps: float  # nominal rate: turns timestamp gaps into frame steps for the motion model
    frames_done: int = 0
    last_index: int = -1  # index of the last frame folded in
    last_time: float | None = None
    xy: np.ndarray | None = None  # [N, 2] frame px of the last frame's keypoints (None: nothing tracked yet)
    velocity: np.ndarray | None = None  # [N, 2] px per frame
    visible: np.ndarray | None = None  # [N] bool
    filter: SmootherState | None = None  # None without smoothing
    last_search: int | None = None  # index of the last frame searched with tiles (bounds the cost while lost)
    last_keyframe: int | None = None  # index of the last frame the network ran on
    scores: np.ndarray | None = None  # [N] the last keyframe's scores (reported until the next one)


@dataclass
class StageTimes:
    """Seconds spent per stage during one `run` (counters, cheap). Decode and encode run in their own threads, so
    the pipeline can approach the slowest single stage rather than the sum."""

    frames: int = 0
    decode: float = 0.0  # source thread: demux, decode, colour conversion, the flow and half images (`Source.prepare`)
    prepare: float = 0.0  # ROI crops, resize, copy to the device, normalisation
    model: float = 0.0  # predict, plus waiting for its results
    smooth: float = 0.0  # optical flow (and the flow images the source did not make) + Kalman filter (+ RTS offline)
    encode: float = 0.0  # video sink thread: drawing + H.264
    write: float = 0.0  # sink calls on the main thread (JSON, CSV, window, hand-over to the encoder)
    wall: float = 0.0  # the whole run

    def fps(self) -> dict[str, float]:
        """Frames per second each stage alone would sustain, and the whole run's (`wall`)."""
        return {f.name: self.frames / v for f in fields(self) if f.name != "frames" and (v := getattr(self, f.name))}


class TrackRun(Iterator[FrameResult]):
    """What `Tracker.run` returns: iterate it for the frames' results; `times` holds this run's stage timers
    (complete once the run has ended); `close()` ends it early, closing the sinks (their files stay valid)."""

    def __init__(self, results: Iterator[FrameResult], times: StageTimes) -> None:
        self._results = results
        self.times = times

    def __iter__(self) -> TrackRun:
        return self

    def __next__(self) -> FrameResult:
        return next(self._results)

    def close(self) -> None:
        self._results.close()


@dataclass(frozen=True)
class _Submitted:
    """A batch whose model call is started. `result` is None for a batch whose every frame is to be searched
    (`Tracker._submit`): the search's own whole-frame view stands in for that call."""

    frames: list[Frame]
    boxes: list[SquareBox]
    result: HostResult | None  # network: (xy_input [B, N, 2], scores [B, N]); finder: its similarity maps
    searching: list[bool]  # per frame: its box is the whole frame (nothing tracked yet, or the track was lost)


@dataclass(frozen=True)
class _Closer:
    """A searched batch's second, closer look, in flight like any batch: the first look's keypoints, of which the rows
    `redo` are replaced by `result`, the crops at `boxes[redo]`. `ahead` places the crops of the batches submitted
    meanwhile (from the first look: the closer look's keypoints are not known yet)."""

    submitted: _Submitted
    boxes: list[SquareBox]
    xy_input: np.ndarray  # [B, N, 2] input px of `boxes`
    scores: np.ndarray  # [B, N]
    redo: list[int]
    result: HostResult
    last_search: int | None
    ahead: TrackState

    @property
    def frames(self) -> list[Frame]:
        return self.submitted.frames

    def completed(self, again: Found, state: TrackState) -> _Looked:
        """The batch's keypoints once the closer look `again` is back (rows `redo`), and the state with its search."""
        xy_input, scores = self.xy_input.copy(), self.scores.copy()
        xy_input[self.redo], scores[self.redo] = again.keypoints, again.scores
        return _Looked(self.boxes, xy_input, scores, replace(state, last_search=self.last_search))


@dataclass(frozen=True)
class _Looked:
    """A batch's keypoints as the network (or finder) placed them, before smoothing."""

    boxes: list[SquareBox]
    xy_input: np.ndarray  # [B, N, 2] input px of `boxes`
    scores: np.ndarray  # [B, N]
    state: TrackState  # the state before the batch, with its search recorded


class Tracker:
    """Tracks the support's keypoints through a stream. The support is prepared once (here for a `SupportSet`, or
    beforehand as a `TrackSupport`).

    `model` is moved to the accelerator's device and put in eval mode; `compile`/`tensorrt`/`onnx` (the
    accelerator's choice) patch its backbone's `forward` (and the `pyramid` the finder reads) in place, once per
    model.
    """

    def __init__(
        self,
        model: CapeModel,
        support: SupportSet | TrackSupport,
        config: TrackerConfig | None = None,
        accelerator: Accelerator | None = None,
    ) -> None:
        self.config = config or TrackerConfig()
        if self.config.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.config.batch}")
        self.accel = accelerator or Accelerator.for_device(model.device)
        self.model = model.to(self.accel.device).eval()
        if isinstance(support, SupportSet):
            c = self.config
            support = TrackSupport.prepare(self.model, support, c.roi, c.finder, c.finder_config)
        if self.config.finder == "match" and support.match is None:
            raise ValueError("the keypoint finder needs the SupportSet (images and keypoints), not an embedding")
        self.support = support
        self.embedding = support.embedding.to(self.accel.device)
        use_finder = support.match is not None and self.config.finder != "network"
        self.finder = (
            KeypointFinder(support.match.to(self.accel.device), self.model.input_size, self.config.finder_config)
            if use_finder
            else None
        )
        # The ROI keeps query crops at the support's scale unless the config fixes one.
        fraction = self.config.roi.object_fraction or support.object_fraction
        self.roi = replace(self.config.roi, object_fraction=fraction)
        self.names, self.skeleton = support.names, support.skeleton
        self.smoother = KalmanSmoother(self.config.smoother) if self.config.smooth else None
        s = self.model.input_size
        example = normalize_images(torch.zeros(self.config.batch, 3, s, s, dtype=torch.uint8, device=self.accel.device))
        self.accel.optimize(self.model, example, self.finder.config.depth if self.finder is not None else 1)
        self._times = StageTimes()  # the running `TrackRun`'s timers; a scratch set for `step` between runs
        self._times_lock = threading.Lock()

    @property
    def num_keypoints(self) -> int:
        return len(self.names)

    def init_state(self, fps: float) -> TrackState:
        """The state before the first frame: no keypoints yet, so the first crop is the whole frame."""
        filt = self.smoother.init_state(self.num_keypoints) if self.smoother else None
        return TrackState(fps=fps, filter=filt)

    def step(self, frames: Sequence[Frame], state: TrackState) -> tuple[list[FrameResult], TrackState]:
        """Track a batch of consecutive frames: one model call, then the smoother frame by frame."""
        results, state, _ = self._finish_now(self._submit(list(frames), state), state)
        return results, state

    def run(self, source: Source, sinks: Iterable[Sink] = (), progress: Progress | None = None) -> TrackRun:
        """Track every frame of `source`, writing each result to `sinks`: iterate the returned run for the results
        as they come (a file's once they are settled, `TrackerConfig.settle`); its `times` are the run's stage
        timers.

        Sinks are opened when the run starts and always closed (Ctrl-C, a decode error and an early `close()` of the
        run included), so their files are valid for every frame done. A sink's `stop_requested` ends the run.
        """
        times = StageTimes()
        return TrackRun(self._run(source, list(sinks), progress, times), times)

    def _run(
        self, source: Source, sinks: list[Sink], progress: Progress | None, times: StageTimes
    ) -> Iterator[FrameResult]:
        info = TrackInfo(source.name, source.fps, source.width, source.height, self.names, self.skeleton)
        self._times = times
        start = time.perf_counter()
        encoders = sum(getattr(sink, "encoder_threads", 0) for sink in sinks)
        threads = self.config.network_threads or network_threads(encoders)
        try:
            with ExitStack() as stack:
                # For the calls of the thread that runs the tracker (a run is a generator: from its first result to
                # its end or `close`).
                stack.enter_context(self.accel.network_threads(self.model, threads))
                self._hand_preparation(source, stack)
                for sink in sinks:
                    sink.open(info)
                    stack.callback(sink.close)
                if self.config.offline and self.smoother is not None:
                    yield from self._run_offline(source, sinks, progress)
                    return
                settling = _Settling(self.smoother, self.config.settle) if self._settles(source) else None
                try:
                    for frame, result in self._settled(self._track(source), settling):
                        go_on = self._emit(frame, result, sinks)
                        if progress is not None:
                            progress(self._times.frames, source.frame_count)
                        yield result
                        if not go_on:
                            return
                except (Exception, KeyboardInterrupt):  # a broken source, Ctrl-C: the held frames come out as they are
                    for frame, result in settling.flush() if settling else ():
                        self._emit(frame, result, sinks)
                        yield result
                    raise
                finally:  # closed early: the held frames still reach the files
                    for frame, result in settling.flush() if settling else ():
                        self._emit(frame, result, sinks)
        finally:
            self._times.decode += source.busy_seconds
            self._times.encode = sum(getattr(s, "busy_seconds", 0.0) for s in sinks)
            self._times.wall = time.perf_counter() - start
            self._times = StageTimes()  # the run's timers are its own from now on

    def prepare_frame(self, frame: Frame) -> Frame:
        """`frame` with what the tracker's chain would otherwise make from it: its optical-flow image (`Frame.flow`,
        with the smoother's flow) and, in frames over twice the network's input, its half-size image for the crops
        (`Frame.half`). A run hands this to its source (`Source.prepare`), whose reader thread then makes them ahead,
        off the critical chain (the main thread's, which the annotated video's encoder, on the other core, waits
        for). On the `make run` sample, two cores, each costs the reader about 0.5 ms a frame; the flow image is
        used on every frame, the half only by keyframes whose box is over twice the input (most of them there)."""
        flow = frame.flow
        if flow is None and self.smoother is not None and self.smoother.config.flow:
            flow = FlowImage.from_rgb(frame.image)
        return self._with_half(frame if flow is frame.flow else replace(frame, flow=flow))

    # ------------------------------------------------------------------------------------------------ internals
    def _with_half(self, frame: Frame) -> Frame:
        """`frame` with its half-size image (`Frame.half`) if it is over twice the network's input (and at least two
        pixels on each side: a crop never halves less)."""
        shape = frame.image.shape[:2]
        if frame.half is not None or max(shape) <= 2 * self.model.input_size or min(shape) < 2:
            return frame
        return replace(frame, half=halved(frame.image))

    def _hand_preparation(self, source: Source, stack: ExitStack) -> None:
        """Have `source`'s reader prepare the frames for this run (`Source.prepare`), its own hook back after it. A
        source that takes no hook (duck-typed, slots, a read-only attribute) is left alone: the tracker makes what it
        needs itself."""
        before = getattr(source, "prepare", None)
        try:
            source.prepare = self.prepare_frame
        except (AttributeError, TypeError):
            return
        stack.callback(setattr, source, "prepare", before)

    @property
    def keyframing(self) -> bool:
        """Whether frames between keyframes are carried by optical flow (else the network sees every frame)."""
        return self.config.keyframe_every > 1 and self.smoother is not None and self.smoother.config.flow

    def _settled(
        self, tracked: Iterator[tuple[Frame, FrameResult, StepRecord | None]], settling: _Settling | None
    ) -> Iterator[tuple[Frame, FrameResult]]:
        """The tracked frames in order, through `settling` (held and smoothed backward) when there is one."""
        for frame, result, record in tracked:
            if settling is None:
                yield frame, result
                continue
            start = time.perf_counter()
            settling.push(frame, result, record)
            self._times.smooth += time.perf_counter() - start
            yield from settling.take()
        if settling is not None:
            settling.finish()
            yield from settling.take()

    def _settles(self, source: Source) -> bool:
        """Settling needs the smoother's steps (every tracked frame then has one) and a source read ahead of time."""
        return self.smoother is not None and self.config.settle > 0 and not source.live

    def _track(self, source: Source) -> Iterator[tuple[Frame, FrameResult, StepRecord | None]]:
        """Every frame's result, in order, with the smoother's step (None without the smoother)."""
        if self.keyframing:
            yield from self._track_keyframes(source)
        else:
            yield from self._track_batches(source)

    def _track_keyframes(self, source: Source) -> Iterator[tuple[Frame, FrameResult, StepRecord | None]]:
        """Frame by frame: optical flow first, then the network only where `keyframe_reason` asks for it (a
        keyframe's crop is placed from the flow-carried keypoints, so it needs the frame before it finished)."""
        state = self.init_state(source.fps)
        for frame in source:
            start = time.perf_counter()
            motion = self.smoother.motion(state.filter, frame.image, frame.flow)
            self._times.smooth += time.perf_counter() - start
            if keyframe_reason(self.config, frame, state, motion):
                results, state, records = self._finish_now(self._submit([frame], state), state, [motion])
            else:
                results, state, records = self._carry(frame, state, motion)
            yield frame, results[0], records[0]

    def _track_batches(self, source: Source) -> Iterator[tuple[Frame, FrameResult, StepRecord | None]]:
        """Batches in order, with up to `in_flight` batches submitted before the oldest is finished (CUDA overlaps
        copies and compute that way; its crops are placed from keypoints one batch older, moved by velocity).

        A searched batch's closer look is one more batch in flight: it is finished first, but with two or more in
        flight the next batch is submitted before it is waited for (placed from the first look), so the device has
        work queued behind it. The tiled search itself (`_search`) still waits for its own calls: it runs only on
        the first frame and while the track is lost, at most every `search_every` frames."""
        batch = 1 if source.live else self.config.batch
        depth = 1 if source.live else self.accel.in_flight
        state = self.init_state(source.fps)
        ahead = state  # what the next crops are placed from
        queued: deque[_Submitted | _Closer] = deque()
        frames = iter(source)
        while True:
            chunk = list(islice(frames, batch))
            if chunk:
                queued.append(self._submit(chunk, ahead))
            while queued:
                room = depth + 1 if depth > 1 and isinstance(queued[0], _Closer) else depth
                if chunk and len(queued) < room:
                    break
                item = queued.popleft()
                done = self._finish(item, state)
                if isinstance(done, _Closer):
                    queued.appendleft(done)
                    ahead = done.ahead
                    continue
                results, state, records = done
                ahead = state
                yield from zip(item.frames, results, records or [None] * len(results), strict=True)
            if not chunk:
                return

    def _submit(self, frames: list[Frame], state: TrackState) -> _Submitted:
        boxes = [self._box(frame, state) for frame in frames]
        wholes = [whole_frame(f.image.shape[1], f.image.shape[0]) for f in frames]
        searching = [box == whole for box, whole in zip(boxes, wholes, strict=True)]
        # A batch whose every frame is searched gets no first look: the search's own whole-frame view replaces it.
        # On the first frame that look was a network call on one core before the search could start on all of them.
        if all(self._searched(frames, searching, state.last_search)):
            return _Submitted(frames, boxes, None, searching)
        return _Submitted(frames, boxes, self._predict(frames, boxes), searching)

    def _searched(self, frames: Sequence[Frame], searching: Sequence[bool], last_search: int | None) -> list[bool]:
        """Which of the batch's frames get the tiled search: with the keypoint finder (the network alone has no
        search), those searching (nothing tracked) when the last search is at least `search_every` frames back,
        counting the batch's own."""
        out = []
        for frame, whole in zip(frames, searching, strict=True):
            due = whole and self.finder is not None
            due = due and (last_search is None or frame.index - last_search >= self.config.search_every)
            last_search = frame.index if due else last_search
            out.append(due)
        return out

    def _predict(self, frames: Sequence[Frame], boxes: Sequence[SquareBox]) -> HostResult:
        """Crop, upload and start the model on one batch; the result arrives asynchronously on accelerators."""
        start = time.perf_counter()
        s = self.model.input_size
        host = self.accel.staging((len(frames), s, s, 3))
        crops = host.numpy()  # [B, S, S, 3] uint8, written in place
        for i, (frame, box) in enumerate(zip(frames, boxes, strict=True)):
            crops[i] = crop_to_input(frame.image, box, s, frame.half)
        images = normalize_images(self.accel.upload(host).permute(0, 3, 1, 2))  # [B, 3, S, S] on the device
        mid = time.perf_counter()
        with self.accel.autocast(), torch.no_grad():
            if self.finder is not None:
                levels = self.model.backbone.pyramid(images, self.finder.config.depth)
                result = self.accel.download(*self.finder.similarity(levels))
            else:
                prediction = self.model.predict(images, self.embedding)
                result = self.accel.download(prediction.keypoints, prediction.scores)
        self._add_times(prepare=mid - start, model=time.perf_counter() - mid)
        return result

    def _found(self, result: HostResult) -> Found:
        """The host side of a model call: the finder's layout fit on the similarity maps, or the network's output.
        Its time (the wait included) is the model stage's; `_predict` times the rest."""
        start = time.perf_counter()
        arrays = result.wait()
        if self.finder is not None:
            found = self.finder.locate(*arrays)
        else:
            xy, scores = arrays
            found = Found(xy, scores, scores.mean(axis=1), xy)
        self._add_times(model=time.perf_counter() - start)
        return found

    def _search(self, frame: Frame) -> tuple[SquareBox, Found]:
        """Nothing tracked: look at the whole frame and at overlapping tiles of a few smaller sizes (a small person in
        a wide street frame covers a few cells of the whole-frame view), keep the best-placed layout.

        The ~20 crops are independent, so they go in as many chunks at once as the accelerator can run
        (`Accelerator.parallel_calls`): the search is most of the time to the first result, and while it runs
        nothing else has work (no frame is tracked yet to draw or encode). On the `make run` sample, two cores,
        interleaved runs: first result after 391 ms instead of 582 (medians of 5), 51.4 instead of 42.2 fps with the
        annotated video."""
        height, width = frame.image.shape[:2]
        boxes = [whole_frame(width, height)]
        if self.finder is not None:
            boxes += search_tiles(width, height, self.config.search_tiles)
        workers = min(self.accel.parallel_calls, len(boxes))
        rounds = math.ceil(len(boxes) / (workers * SEARCH_CHUNK))
        chunks = _split(boxes, workers * rounds)

        def look(chunk: list[SquareBox]) -> Found:
            return self._found(self._predict([frame] * len(chunk), chunk))

        if workers > 1:
            with ThreadPoolExecutor(workers, thread_name_prefix="cape-search") as pool:  # torch's count each
                found = list(pool.map(look, chunks))
        else:
            found = [look(chunk) for chunk in chunks]
        keypoints, scores, placement, layout = (
            np.concatenate([getattr(f, name) for f in found]) for name in ("keypoints", "scores", "placement", "layout")
        )
        i = int(np.argmax(placement))
        return boxes[i], Found(keypoints[i : i + 1], scores[i : i + 1], placement[i : i + 1], layout[i : i + 1])

    def _add_times(self, **seconds: float) -> None:
        """Add to this run's stage timers; the search's model calls run in threads of their own, hence the lock
        (their seconds add up, like CPU time)."""
        with self._times_lock:
            for name, value in seconds.items():
                setattr(self._times, name, getattr(self._times, name) + value)

    def _look(self, submitted: _Submitted, state: TrackState) -> _Looked | _Closer:
        """A batch's keypoints, or, for a batch with searched frames, its closer look started (`_Closer.completed`
        gives the keypoints once it is back).

        Searched frames (nothing tracked yet, or the track was lost) are searched at several scales, then looked at
        a second time through a crop around what the search found, at the support's scale. The whole frame shows a
        small object at too low a resolution to place its keypoints well, and a track started from there would carry
        that error (the flow-driven smoother trusts its start)."""
        frames = submitted.frames
        due = self._searched(frames, submitted.searching, state.last_search)
        if submitted.result is None and not all(due):
            # Submitted from an older state while a batch in flight searched (`_track_batches`): the whole-frame
            # look it went without is taken now, so the search keeps to `search_every`.
            submitted = replace(submitted, result=self._predict(frames, submitted.boxes))
        # A searched frame halved once for the search's ~20 crops and its closer look (the first frames come before
        # the reader was told to prepare them).
        looked = [self._with_half(frame) if due[i] else frame for i, frame in enumerate(frames)]
        searched = {i: self._search(looked[i]) for i in range(len(frames)) if due[i]}
        if submitted.result is None:  # every frame searched
            xy_input = np.concatenate([best.keypoints for _, best in searched.values()])
            scores = np.concatenate([best.scores for _, best in searched.values()])
        else:
            found = self._found(submitted.result)
            if not any(submitted.searching):
                return _Looked(submitted.boxes, found.keypoints, found.scores, state)
            xy_input, scores = found.keypoints.copy(), found.scores.copy()
        last_search = max((frames[i].index for i in searched), default=state.last_search)
        s = self.model.input_size
        boxes = list(submitted.boxes)
        redo: list[int] = []
        last_xy = None  # the last frame's keypoints (frame px) as searched, before its closer look
        for i, frame in enumerate(frames):
            if not submitted.searching[i]:
                continue
            if i in searched:
                boxes[i], best = searched[i]
                xy_input[i], scores[i] = best.keypoints[0], best.scores[0]
            height, width = frame.image.shape[:2]
            xy = input_to_frame(xy_input[i].astype(np.float64), boxes[i], s)
            if i == len(frames) - 1:
                last_xy = xy
            closer = follow(xy, scores[i] >= self.config.smoother.min_score, width, height, self.roi)
            if closer != boxes[i]:
                boxes[i] = closer
                redo.append(i)
        if not redo:
            return _Looked(boxes, xy_input, scores, replace(state, last_search=last_search))
        result = self._predict([looked[i] for i in redo], [boxes[i] for i in redo])
        # Batches submitted before the closer look is back are placed from the first look at the batch's last frame
        # (searched, or as the batch's call saw it), and know of the batch's searches (`_submit` asks whether theirs
        # are due).
        if last_xy is None:
            last_xy = input_to_frame(xy_input[-1].astype(np.float64), boxes[-1], s)
        visible = np.isfinite(last_xy).all(axis=1) & (scores[-1] >= self.config.smoother.min_score)
        last_xy = np.where(visible[:, None], last_xy, 0.0)
        ahead = replace(
            state,
            last_index=frames[-1].index,
            xy=last_xy,
            velocity=None,
            visible=visible,
            last_search=last_search,
        )
        return _Closer(submitted, boxes, xy_input, scores, redo, result, last_search, ahead)

    def _box(self, frame: Frame, state: TrackState) -> SquareBox:
        height, width = frame.image.shape[:2]
        if state.xy is None:
            return whole_frame(width, height)
        ahead = frame.index - state.last_index
        return follow(state.xy, state.visible, width, height, self.roi, state.velocity, ahead)

    def _carry(
        self, frame: Frame, state: TrackState, motion: Motion
    ) -> tuple[list[FrameResult], TrackState, list[StepRecord]]:
        """A frame between keyframes: the smoother moves the keypoints by the flow alone; the scores are the last
        keyframe's."""
        start = time.perf_counter()
        box = self._box(frame, state)
        dt = 1.0 if state.last_time is None else max(frame.time - state.last_time, 0.0) * state.fps
        out = self.smoother.step(state.filter, None, None, scale=box.size, dt=dt, motion=motion)
        # A keypoint the smoother never started has no filtered position: it stays where the last keyframe put it.
        xy = np.where(out.state.tracked[:, None], out.xy, state.xy)
        scores = np.where(_inside(xy, frame.image.shape), state.scores, 0.0)
        result = FrameResult(frame.index, frame.time, xy, scores, out.visible, box, keyframe=False)
        state = _advanced(state, frame, xy, out.state.velocity, out.visible, out.state)
        self._times.smooth += time.perf_counter() - start
        return [result], state, [out.record]

    def _finish(
        self, item: _Submitted | _Closer, state: TrackState, motions: Sequence[Motion] | None = None
    ) -> tuple[list[FrameResult], TrackState, list[StepRecord]] | _Closer:
        """The batch's results and the state after it, or its closer look, started (`_look`): finish that next."""
        looked = (
            item.completed(self._found(item.result), state) if isinstance(item, _Closer) else self._look(item, state)
        )
        if isinstance(looked, _Closer):
            return looked
        state = looked.state
        start = time.perf_counter()
        s = self.model.input_size
        results, records = [], []
        motions = motions if motions is not None else [None] * len(item.frames)
        rows = zip(item.frames, looked.boxes, looked.xy_input, looked.scores, motions, strict=True)
        for frame, box, xy_in, score, motion in rows:
            xy = input_to_frame(xy_in.astype(np.float64), box, s)
            score = np.where(_inside(xy, frame.image.shape), score.astype(np.float64), 0.0)  # never seen outside
            # A prediction that is not finite (a damaged checkpoint, an overflow) is no measurement: score 0, and
            # the position of the last frame (or 0), so no NaN ever reaches the smoother or the files.
            bad = ~(np.isfinite(xy).all(axis=1) & np.isfinite(score))
            if bad.any():
                fallback = state.xy if state.xy is not None else np.zeros_like(xy)
                xy, score = np.where(bad[:, None], fallback, xy), np.where(bad, 0.0, score)
            if self.smoother is not None:
                dt = 1.0 if state.last_time is None else max(frame.time - state.last_time, 0.0) * state.fps
                if motion is None:
                    motion = self.smoother.motion(state.filter, frame.image, frame.flow)
                out = self.smoother.step(state.filter, xy, score, box.size, dt, motion=motion)
                xy, visible, velocity, filt = out.xy, out.visible, out.state.velocity, out.state
                records.append(out.record)
            else:
                visible, velocity, filt = score >= self.config.smoother.min_score, None, None
            results.append(FrameResult(frame.index, frame.time, xy, score, visible, box))
            state = _advanced(state, frame, xy, velocity, visible, filt, last_keyframe=frame.index, scores=score)
        self._times.smooth += time.perf_counter() - start
        return results, state, records

    def _finish_now(
        self, submitted: _Submitted, state: TrackState, motions: Sequence[Motion] | None = None
    ) -> tuple[list[FrameResult], TrackState, list[StepRecord]]:
        """`_finish`, waiting for a closer look at once (nothing else is in flight to overlap it with)."""
        done = self._finish(submitted, state, motions)
        return self._finish(done, state, motions) if isinstance(done, _Closer) else done

    def _emit(self, frame: Frame, result: FrameResult, sinks: list[Sink]) -> bool:
        """Write one result to every sink; False when a sink asked to stop."""
        start = time.perf_counter()
        for sink in sinks:
            sink.write(frame, result)
        self._times.write += time.perf_counter() - start
        self._times.frames += 1
        return not any(sink.stop_requested for sink in sinks)

    def _run_offline(self, source: Source, sinks: list[Sink], progress: Progress | None) -> Iterator[FrameResult]:
        """Forward pass (no output), RTS smoothing, then a second decode to write the smoothed tracks. Progress
        counts both passes."""
        total = 2 * source.frame_count if source.frame_count else None
        again = source.reopen()  # fails now, before any work, for a source that cannot be read twice
        records: list[StepRecord] = []
        forward: list[FrameResult] = []
        with again:
            for _, result, record in self._track(source):
                forward.append(result)
                records.append(record)
                if progress is not None:
                    progress(len(forward), total)
            start = time.perf_counter()
            smoothed = self.smoother.smooth_offline(records)  # [T, N, 2]
            self._times.smooth += time.perf_counter() - start
            try:
                for frame, result, xy in zip(again, forward, smoothed, strict=False):
                    result = replace(result, xy_frame=xy)
                    go_on = self._emit(frame, result, sinks)
                    if progress is not None:
                        progress(len(forward) + self._times.frames, total)
                    yield result
                    if not go_on:
                        return
            finally:
                self._times.decode += again.busy_seconds


class _Settling:
    """A file's results, held until `keyframes` more keyframes are fused, then smoothed backward from the newest
    (a Rauch-Tung-Striebel pass over the held steps): a fixed-lag smoother in keyframes.

    Optical flow drifts a little each frame and the network, on keyframes, is noisier than the flow from one frame to
    the next; a forward filter can only correct the drift when the keyframe comes, and each keyframe's own estimate
    leans on its single noisy measurement. Smoothed backward, the correction is spread over the frames that drifted
    and a keyframe's estimate also draws on the ones after it. Development set (keyframes every 4, PCK@0.05 / 0.1, 6
    frame supports): forward 69.9 / 95.3, one keyframe of lag 71.6 / 96.1, two 73.1 / 96.6, three 73.1 / 96.9, the
    whole clip (`--offline`) 73.0 / 96.9. The cost: a result comes out up to two keyframes late, hence files only."""

    def __init__(self, smoother: KalmanSmoother, keyframes: int) -> None:
        self.smoother = smoother
        self.keyframes = keyframes
        self.held: list[tuple[Frame, FrameResult, StepRecord]] = []  # waiting for later keyframes
        self.ready: deque[tuple[Frame, FrameResult]] = deque()  # settled, not taken yet

    def push(self, frame: Frame, result: FrameResult, record: StepRecord) -> None:
        """Fold in `frame` (with its smoother step `record`); the frames it settles become `ready`."""
        self.held.append((frame, result, record))
        keys = [i for i, (_, held, _) in enumerate(self.held) if held.keyframe]
        if result.keyframe and len(keys) > self.keyframes:
            first_kept = keys[-self.keyframes]
            self.ready.extend(self._smoothed(first_kept))
            self.held = self.held[first_kept:]

    def finish(self) -> None:
        """The stream ended: the held frames become ready, smoothed from the last one."""
        self.ready.extend(self._smoothed(len(self.held)))
        self.held = []

    def take(self) -> Iterator[tuple[Frame, FrameResult]]:
        """The ready frames, in order, each removed as it is handed out."""
        while self.ready:
            yield self.ready.popleft()

    def flush(self) -> list[tuple[Frame, FrameResult]]:
        """Everything not taken yet, in order; the held frames as the forward pass left them (the run broke off: the
        files get them at once)."""
        rest = [*self.ready, *((frame, result) for frame, result, _ in self.held)]
        self.ready.clear()
        self.held = []
        return rest

    def _smoothed(self, count: int) -> list[tuple[Frame, FrameResult]]:
        """The first `count` held frames, smoothed backward from the last held step."""
        if count == 0:
            return []
        smoothed = self.smoother.smooth_offline([record for _, _, record in self.held])  # [held, N, 2]
        ready = []
        for (frame, result, record), xy in zip(self.held[:count], smoothed, strict=False):
            xy = np.where(record.fresh[:, None], result.xy_frame, xy)  # (re)started or never started: as it was
            scores = np.where(_inside(xy, frame.image.shape), result.scores, 0.0)
            ready.append((frame, replace(result, xy_frame=xy, scores=scores)))
        return ready


def keyframe_reason(config: TrackerConfig, frame: Frame, state: TrackState, motion: Motion) -> str:
    """Why `frame` needs the network ('' when optical flow can carry the keypoints to it): nothing is tracked yet
    or nothing is visible (searching), `keyframe_every` frames passed, the flow lost a visible keypoint (its
    forward-backward check failed or it left the frame), a scene cut, or a visible keypoint near the frame's edge
    (the network must say whether it is still there).

    Also tried on the development set: a keyframe while the last one's network disagreed with the track (a gated
    measurement) or scored a visible keypoint low. Mean PCK@0.1 75.2 vs 74.2 without, within the noise of single
    runs (+-5 per support), and on the `make run` sample it made 124 of 132 frames keyframes: not kept."""
    if state.filter is None or state.last_keyframe is None or state.xy is None or state.visible is None:
        return "start"
    followed = state.visible & state.filter.tracked
    if not followed.any():
        return "lost"
    if frame.index - state.last_keyframe >= config.keyframe_every:
        return "due"
    moved = motion.displacement[followed]
    if np.isnan(moved).any():
        return "flow"
    if (
        motion.image is not None
        and state.filter.flow is not None
        and motion.image.change(state.filter.flow) > (config.cut_threshold)
    ):
        return "cut"
    height, width = frame.image.shape[:2]
    margin = config.edge_margin * max(width, height)
    xy = state.xy[followed] + moved
    if ((xy < margin) | (xy > np.array([width - 1, height - 1]) - margin)).any():
        return "edge"
    return ""


def search_tiles(width: int, height: int, divisions: Sequence[int]) -> list[SquareBox]:
    """Square tiles of side longer/d for each d, overlapping by half, covering the frame (clamped inside it)."""
    longest = max(width, height)
    tiles = []
    for d in divisions:
        side = longest / d
        xs = _starts(width, side)
        ys = _starts(height, side)
        tiles += [SquareBox(x, y, side) for y in ys for x in xs]
    return tiles


def _starts(extent: int, side: float) -> list[float]:
    """Window starts along one axis: half-overlapping, the last one flush with the far edge (centred if wider)."""
    if side >= extent:
        return [(extent - side) / 2.0]
    count = math.ceil((extent - side) / (side / 2)) + 1
    return [float(v) for v in np.linspace(0.0, extent - side, count)]


def _split(items: list[SquareBox], parts: int) -> list[list[SquareBox]]:
    """`items` in `parts` consecutive runs whose lengths differ by one at most (so parallel calls finish together)."""
    size, extra = divmod(len(items), parts)
    bounds = np.cumsum([0] + [size + (i < extra) for i in range(parts)])
    return [items[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _advanced(
    state: TrackState,
    frame: Frame,
    xy: np.ndarray,
    velocity: np.ndarray | None,
    visible: np.ndarray,
    filt: SmootherState | None,
    **more: object,
) -> TrackState:
    """`state` after `frame` was folded in (a keyframe also passes its `last_keyframe` and `scores`)."""
    return replace(
        state,
        frames_done=state.frames_done + 1,
        last_index=frame.index,
        last_time=frame.time,
        xy=xy,
        velocity=velocity,
        visible=visible,
        filter=filt,
        **more,
    )


def _inside(xy: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """[N] bool: the points lie on the frame (pixel centres at integers, so the edges are at -0.5 and size - 0.5)."""
    height, width = shape[:2]
    return (xy[:, 0] >= -0.5) & (xy[:, 0] <= width - 0.5) & (xy[:, 1] >= -0.5) & (xy[:, 1] <= height - 0.5)

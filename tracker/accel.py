"""THE only home of device-specific speed-ups: device selection, pinned host memory, CUDA copy streams that overlap
compute, asynchronous results, and for the backbone `torch.compile`, TensorRT and ONNX Runtime. The CPU path is the
same calls with plain copies and no streams; a requested but unavailable speed-up warns once and falls back."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import os
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from cape_track.model.backbone import Backbone
from cape_track.model.errors import first_line
from cape_track.tracker.errors import TrackerWarning
from cape_track.tracker.threads import usable_cores

ACCELS = ("auto", "none", "compile", "tensorrt", "onnx")
# ONNX Runtime's backbone is checked against eager on its first call: max |onnx - eager| must stay below this
# fraction of max |eager| (measured on the embedded model: ~2e-6; float32 reordering alone gives ~1e-6).
ONNX_TOLERANCE = 1e-3


def resolve_accel(accel: str, device: torch.device | str) -> str:
    """`auto`: ONNX Runtime on the CPU when it is installed (measured 2.5x the eager backbone on one thread), else
    none; on CUDA none (the streams overlap copies and compute; TensorRT stays opt-in: unverified here)."""
    if accel != "auto":
        return accel
    if torch.device(device).type == "cpu" and onnx_available():
        return "onnx"
    return "none"


def onnx_available() -> bool:
    """ONNX Runtime runs the graphs, the `onnx` package is what torch's exporter writes them with."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx"))


def cache_dir() -> Path:
    """The user's cache folder for exported graphs: $CAPE_TRACK_CACHE, else $XDG_CACHE_HOME/cape-track, else
    ~/.cache/cape-track (never inside the installed package)."""
    if env := os.environ.get("CAPE_TRACK_CACHE"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cape-track"


def configure_cpu_threads(device: torch.device) -> None:
    """On CPU, leave one core to the decode and encode threads: torch (whose count ONNX Runtime's calls take unless
    a run sets theirs, `network_threads`) and OpenCV (crops, flow images, Lucas-Kanade) get the others; both take
    every core by default. An explicit OMP_NUM_THREADS wins. Measured on 2 loaded cores: model 13.7 fps with 1
    torch thread, 6.0 fps with 2. OpenCV's idle worker busy-waits for its next job, taking the core from the other
    stages: on the `make run` sample, 2 cores, 52.1 fps with the video with one OpenCV thread against 49.6 with two,
    72.4 against 68.6 tracks only (interleaved runs, medians of 6)."""
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, usable_cores() - 1)
        torch.set_num_threads(threads)
        cv2.setNumThreads(threads)


def network_threads(encoders: int) -> int:
    """Threads one network call may take on the CPU while `encoders` threads of the run's sinks (the annotated
    video's writer) each keep a core busy: the usable cores less those, at least one. An explicit OMP_NUM_THREADS
    wins, as in `configure_cpu_threads`. The decoder's thread is not counted: it needs a fifth of a core at 720p."""
    if "OMP_NUM_THREADS" in os.environ:
        return torch.get_num_threads()
    return max(1, usable_cores() - encoders)


class HostResult:
    """Tensors on their way to the host; `wait()` blocks until the copies are done and returns numpy arrays."""

    def __init__(self, tensors: list[torch.Tensor], wait_copies: Callable[[], None] | None = None) -> None:
        self._tensors = tensors
        self._wait_copies = wait_copies

    def wait(self) -> list[np.ndarray]:
        if self._wait_copies is not None:
            self._wait_copies()
            self._wait_copies = None
        return [t.numpy() for t in self._tensors]


class Accelerator:
    """The plain path (CPU, or any device without overlap): synchronous copies, full precision.

    The tracker calls `staging` -> `upload` -> model under `autocast` -> `download` -> `HostResult.wait`, and may
    have `in_flight` batches submitted before it waits for the oldest one (one more while a searched batch's closer
    look is outstanding, when `in_flight` > 1).
    """

    in_flight = 1

    def __init__(self, device: torch.device | str = "cpu", accel: str = "none", half: bool = False) -> None:
        if accel not in ACCELS:
            raise ValueError(f"unknown accel {accel!r}; choose one of: {', '.join(ACCELS)}")
        self.device = torch.device(device)
        self.accel = resolve_accel(accel, self.device)
        self.half = half

    @property
    def parallel_calls(self) -> int:
        """How many independent model calls may run at once (the tiled search's chunks). On the CPU, the cores over
        the threads one call takes (torch's, which ONNX Runtime's calls from the search's workers take too): two
        cores with one thread each run two calls side by side. One on a GPU, whose calls queue on one stream
        anyway, and under `compile`, whose compiled graphs are not meant to be entered from two threads at once."""
        if self.device.type != "cpu" or self.accel == "compile":
            return 1
        return max(1, usable_cores() // torch.get_num_threads())

    @staticmethod
    def for_device(device: torch.device | str, accel: str = "none", half: bool = False) -> Accelerator:
        """The CUDA implementation for a CUDA device, the plain one otherwise."""
        if torch.device(device).type == "cuda":
            return CudaAccelerator(device, accel, half)
        return Accelerator(device, accel, half)

    def optimize(self, model: nn.Module, example: torch.Tensor, depth: int = 1) -> nn.Module:
        """Apply the requested speed-up to `model.backbone` in place: its `forward`, and its `pyramid` up to `depth`
        levels (what the keypoint finder reads); state-dict keys stay unchanged. `example` [B, 3, S, S] on the
        device runs through it now, so a failure falls back here, before any frame."""
        if self.accel == "none":
            return model
        backbone = model.backbone
        if self.accel == "onnx":
            attached = _onnx_runner(model)
            if attached is not None and attached.depth >= depth:
                return model  # a model shared between trackers (many inputs, the page): accelerated already
            runner = self._onnx(backbone, model.input_size, depth)
            if runner is not None:
                backbone.forward = runner.forward
                if depth > 1:
                    backbone.pyramid = runner.pyramid
            return model
        if self.accel == "tensorrt":
            fast = self._tensorrt(backbone, example)
            if fast is None:
                return model
            backbone.forward = fast
        else:
            backbone.forward = torch.compile(backbone.forward)
            if depth > 1:
                backbone.pyramid = torch.compile(backbone.pyramid)
        try:
            with torch.inference_mode(), self.autocast():
                backbone(example)
                if depth > 1:
                    backbone.pyramid(example, depth)
        except Exception as exc:  # any compiler failure: warn once and keep the eager path
            backbone.__dict__.pop("forward", None)
            backbone.__dict__.pop("pyramid", None)
            _note(f"{self.accel} failed ({first_line(exc)}); running eager")
        return model

    def network_threads(self, model: nn.Module, threads: int) -> contextlib.AbstractContextManager:
        """Inside the block, network calls of `model` made from this thread take `threads` threads where its
        backbone runs in ONNX Runtime; other threads' calls (the tiled search's workers, another run sharing the
        model) keep theirs. The eager and compiled paths keep torch's count, a process-wide setting."""
        runner = _onnx_runner(model)
        return runner.use_threads(threads) if runner is not None else contextlib.nullcontext()

    def _onnx(self, backbone: nn.Module, input_size: int, depth: int) -> OnnxBackbone | None:
        if self.device.type != "cpu":
            _note("onnx runs on the CPU here; running eager on the GPU")
            return None
        if not onnx_available():
            _note("onnx needs onnxruntime (pip install 'cape-track[onnx]'); running eager")
            return None
        try:
            runner = OnnxBackbone.load(backbone, input_size, depth)
        except Exception as exc:  # an exporter or runtime failure, or a graph that disagrees: keep eager
            _note(f"onnx failed ({first_line(exc)}); running eager")
            return None
        return runner

    def _tensorrt(self, backbone: nn.Module, example: torch.Tensor) -> nn.Module | None:
        if self.device.type != "cuda":
            _note("tensorrt needs a CUDA device; running eager")
            return None
        try:
            import torch_tensorrt  # lazily: large, GPU-only, an optional extra
        except ImportError:
            _note("tensorrt not installed (pip install 'cape-track[tensorrt]'); running eager")
            return None
        batch = example.shape[0]
        shape = tuple(example.shape[1:])
        spec = torch_tensorrt.Input(
            min_shape=(1, *shape), opt_shape=(batch, *shape), max_shape=(batch, *shape), dtype=example.dtype
        )
        precisions = {torch.float16, torch.float32} if self.half else {torch.float32}
        try:
            return torch_tensorrt.compile(backbone, ir="dynamo", inputs=[spec], enabled_precisions=precisions)
        except Exception as exc:  # TensorRT rejects some graphs: fall back rather than fail the run
            _note(f"tensorrt failed ({first_line(exc)}); running eager")
            return None

    def staging(self, shape: tuple[int, ...]) -> torch.Tensor:
        """A host uint8 buffer the caller fills with crops (its `.numpy()` view) before `upload`."""
        return torch.empty(shape, dtype=torch.uint8)

    def upload(self, host: torch.Tensor) -> torch.Tensor:
        return host.to(self.device)

    def download(self, *tensors: torch.Tensor) -> HostResult:
        return HostResult([t.detach().to("cpu") for t in tensors])

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.half and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()


class OnnxBackbone:
    """The backbone's levels computed by ONNX Runtime (CPU provider) from a graph exported once per backbone and
    cached in `cache_dir()` under the hash of its weights, configuration and the exporter's versions.

    A call takes torch's thread count (`configure_cpu_threads` leaves a core to decoding and encoding), or what the
    calling thread asked for with `use_threads` (a tracker's run, `Accelerator.network_threads`): per thread, so
    the tiled search's workers and other runs sharing the model keep their own. One session per thread count, made
    when first needed."""

    def __init__(self, data: bytes, depth: int) -> None:
        self.data = data
        self.depth = depth
        self._sessions: dict[int, object] = {}
        self._lock = threading.Lock()
        self._asked = threading.local()  # .threads: this thread's `use_threads`
        self._session(self.threads)  # a graph ONNX Runtime cannot load fails here, not at the first frame

    @property
    def threads(self) -> int:
        """The threads a call from this thread takes now."""
        return getattr(self._asked, "threads", None) or torch.get_num_threads()

    @contextlib.contextmanager
    def use_threads(self, threads: int) -> Iterator[None]:
        """Calls from this thread inside the block take `threads` threads."""
        before = getattr(self._asked, "threads", None)
        self._asked.threads = threads
        try:
            yield
        finally:
            self._asked.threads = before

    @classmethod
    def load(cls, backbone: nn.Module, input_size: int, depth: int) -> OnnxBackbone:
        """The checked graph from the cache, or exported now, checked, and then cached. A cached file that cannot
        be read or disagrees with eager (damaged, or stale) is replaced, never used."""
        from cape_track.model.export import backbone_onnx

        path = cache_dir() / "onnx" / f"{_graph_key(backbone, input_size, depth)}.onnx"
        if path.is_file():
            try:
                runner = cls(path.read_bytes(), depth)
                runner.check(backbone, input_size)
                return runner
            except Exception:  # noqa: BLE001 - any defect of the cached file means: export it again
                pass
        data = backbone_onnx(backbone, input_size, depth)
        runner = cls(data, depth)
        runner.check(backbone, input_size)
        _write_atomic(path, data)  # a cache that cannot be written only costs the export next time
        return runner

    def _session(self, threads: int) -> object:
        with self._lock:
            if threads not in self._sessions:
                self._sessions[threads] = _onnx_session(self.data, threads)
            return self._sessions[threads]

    def levels(self, images: torch.Tensor) -> list[torch.Tensor]:
        session = self._session(self.threads)
        arrays = session.run(None, {"images": images.detach().float().contiguous().numpy()})
        return [torch.from_numpy(a) for a in arrays]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.levels(images)[-1]

    def pyramid(self, images: torch.Tensor, depth: int = 2) -> list[torch.Tensor]:
        if depth > self.depth:
            raise ValueError(f"the ONNX backbone was exported with {self.depth} levels, {depth} asked")
        return self.levels(images)[-depth:]

    def check(self, backbone: nn.Module, input_size: int) -> None:
        """Compare with the eager backbone (its class's methods: an instance may already run an accelerated
        graph) on fixed random batches of 1 and 3 (the batch axis is dynamic); raises when a level differs by more
        than ONNX_TOLERANCE of its range."""
        generator = torch.Generator().manual_seed(0)
        for batch in (1, 3):
            images = torch.rand(batch, 3, input_size, input_size, generator=generator) * 4.0 - 2.0  # ~normalised
            with torch.inference_mode():
                if self.depth == 1:
                    eager = [Backbone.forward(backbone, images)]
                else:
                    eager = list(Backbone.pyramid(backbone, images, self.depth))
            for i, (ours, ref) in enumerate(zip(self.levels(images), eager, strict=True)):
                error = float((ours - ref).abs().max()) / max(float(ref.abs().max()), 1e-6)
                if not error <= ONNX_TOLERANCE:
                    raise ValueError(f"level {i} differs from eager by {error:.1e} of its range (batch {batch})")


def _onnx_runner(model: nn.Module) -> OnnxBackbone | None:
    """The ONNX Runtime backbone attached to `model` by `Accelerator.optimize`, if any."""
    attached = getattr(model.backbone.__dict__.get("forward"), "__self__", None)
    return attached if isinstance(attached, OnnxBackbone) else None


def _graph_key(backbone: nn.Module, input_size: int, depth: int) -> str:
    """A hash of everything the exported graph depends on: weights, configuration, the adapter's code and the
    versions of torch, onnx, timm and the opset."""
    import timm  # the backbone's code is timm's

    from cape_track.model import backbone as backbone_module
    from cape_track.model.export import OPSET

    # The exporter's version changes the graph. Read from the package's metadata: importing onnx for its
    # `__version__` (and ml_dtypes with it) slowed the start of every run that finds its graph cached.
    onnx = importlib.metadata.version("onnx")
    versions = f"{torch.__version__}|{onnx}|{timm.__version__}|{OPSET}"
    digest = hashlib.sha256(f"{backbone.cfg!r}|{input_size}|{depth}|{versions}".encode())
    digest.update(Path(backbone_module.__file__).read_bytes())  # our adapter's code, which the graph traces
    for name, tensor in backbone.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


def _onnx_session(data: bytes, threads: int) -> object:
    """An ONNX Runtime CPU session on `threads` intra-op threads. Its workers spin between the operators of a call
    and stop when the call returns: on 2 idle cores, a 256 px crop of the embedded model takes 8.3 ms on two
    threads so (16.6 ms of CPU) against 13.4 on one (13.8), and 9.0-12.8 ms when the workers sleep between
    operators instead (each wakes up dozens of times a call). Left spinning after the call, as by default, they
    burnt 28.7 ms of CPU per call when calls came 10 ms apart, taking the cores of the other stages."""
    from cape_track.model.export import import_onnxruntime  # lazily, as the exporter: an optional extra

    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if threads > 1 else "0")
    options.add_session_config_entry("session.force_spinning_stop", "1")
    options.log_severity_level = 3  # errors only: its warnings are about graph details, not the user's run
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _write_atomic(path: Path, data: bytes) -> None:
    """Write through a temporary file and rename, so a concurrent run never reads half a graph. A failure (a
    read-only home, a full disk) is ignored: the graph is only exported again next time."""
    part = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        part.write_bytes(data)
        os.replace(part, path)
    except OSError:
        with contextlib.suppress(OSError):
            part.unlink(missing_ok=True)


class CudaStreams:
    """The CUDA stream operations the accelerator uses, in one place so a fake can stand in for tests on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def new_stream(self) -> torch.cuda.Stream:
        return torch.cuda.Stream(self.device)

    def current(self) -> torch.cuda.Stream:
        return torch.cuda.current_stream(self.device)

    def use(self, stream: torch.cuda.Stream) -> contextlib.AbstractContextManager:
        return torch.cuda.stream(stream)

    def wait(self, waiter: torch.cuda.Stream, producer: torch.cuda.Stream) -> None:
        waiter.wait_stream(producer)

    def keep_alive(self, tensor: torch.Tensor, stream: torch.cuda.Stream) -> None:
        """Tell the caching allocator `tensor` is used on `stream`, so its memory is not reused too early."""
        tensor.record_stream(stream)

    def record(self, stream: torch.cuda.Stream) -> torch.cuda.Event:
        event = torch.cuda.Event()
        event.record(stream)
        return event

    def synchronize(self, event: torch.cuda.Event) -> None:
        event.synchronize()


class CudaAccelerator(Accelerator):
    """Pinned host buffers; host-to-device copies on an upload stream and results on a download stream, both
    overlapping the compute stream; two batches in flight, so batch k+1 is copied while batch k computes."""

    in_flight = 2

    def __init__(
        self,
        device: torch.device | str = "cuda",
        accel: str = "none",
        half: bool = False,
        streams: CudaStreams | None = None,
        pin: bool = True,
    ) -> None:
        super().__init__(device, accel, half)
        self.streams = streams or CudaStreams(self.device)
        self.pin = pin
        self._upload = self.streams.new_stream()
        self._download = self.streams.new_stream()

    def staging(self, shape: tuple[int, ...]) -> torch.Tensor:
        # Freed pinned blocks are only reused after their pending copies finish (PyTorch's caching host allocator).
        return torch.empty(shape, dtype=torch.uint8, pin_memory=self.pin)

    def upload(self, host: torch.Tensor) -> torch.Tensor:
        compute = self.streams.current()
        with self.streams.use(self._upload):
            device = host.to(self.device, non_blocking=True)
        self.streams.wait(compute, self._upload)
        self.streams.keep_alive(device, compute)
        return device

    def download(self, *tensors: torch.Tensor) -> HostResult:
        compute = self.streams.current()
        self.streams.wait(self._download, compute)
        with self.streams.use(self._download):
            hosts = [torch.empty(t.shape, dtype=t.dtype, pin_memory=self.pin) for t in tensors]
            for host, tensor in zip(hosts, tensors, strict=True):
                host.copy_(tensor.detach(), non_blocking=True)
                self.streams.keep_alive(tensor, self._download)
            event = self.streams.record(self._download)
        return HostResult(hosts, lambda: self.streams.synchronize(event))


def _note(message: str) -> None:
    warnings.warn(message, TrackerWarning, stacklevel=3)

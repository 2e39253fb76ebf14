"""THE only home of device-specific speed-ups: device selection, pinned host memory, CUDA copy streams that overlap
compute, asynchronous results, `torch.compile` and TensorRT for the backbone. The CPU path is the same calls with
plain copies and no streams; a requested but unavailable speed-up warns once and falls back."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from cape_track.tracker.errors import DeviceError, TrackerWarning

ACCELS = ("none", "compile", "tensorrt")


def select_device(spec: str = "auto") -> torch.device:
    """`auto` (CUDA when present), `cpu`, `cuda` or `cuda:N`; a device this machine lacks is a `DeviceError`."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise DeviceError(f"device {spec}: unknown (choose auto, cpu or cuda)") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {spec}: CUDA is not available on this machine (use --device cpu or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"device {spec}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type != "cpu":
        raise DeviceError(f"device {spec}: unsupported (choose auto, cpu or cuda)")
    return device


def configure_cpu_threads(device: torch.device) -> None:
    """On CPU, leave one core to the decode and encode threads (torch takes them all by default). An explicit
    OMP_NUM_THREADS wins. Measured on 2 loaded cores: model 13.7 fps with 1 thread, 6.0 fps with 2."""
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - 1))


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
    have `in_flight` batches submitted before it waits for the oldest one.
    """

    in_flight = 1

    def __init__(self, device: torch.device | str = "cpu", accel: str = "none", half: bool = False) -> None:
        if accel not in ACCELS:
            raise ValueError(f"unknown accel {accel!r}; choose one of: {', '.join(ACCELS)}")
        self.device = torch.device(device)
        self.accel = accel
        self.half = half

    @staticmethod
    def for_device(device: torch.device | str, accel: str = "none", half: bool = False) -> Accelerator:
        """The CUDA implementation for a CUDA device, the plain one otherwise."""
        if torch.device(device).type == "cuda":
            return CudaAccelerator(device, accel, half)
        return Accelerator(device, accel, half)

    def optimize(self, model: nn.Module, example: torch.Tensor) -> nn.Module:
        """Apply the requested speed-up to `model.backbone`'s forward only (state-dict keys stay unchanged), in
        place; `example` [B, 3, S, S] on the device triggers compilation now, so a failure falls back here."""
        if self.accel == "none":
            return model
        backbone = model.backbone
        if self.accel == "tensorrt":
            fast = self._tensorrt(backbone, example)
            if fast is None:
                return model
            backbone.forward = fast
        else:
            backbone.forward = torch.compile(backbone.forward)
        try:
            with torch.inference_mode(), self.autocast():
                backbone(example)
        except Exception as exc:  # any compiler failure: warn once and keep the eager path
            del backbone.forward
            _note(f"{self.accel} failed ({_first_line(exc)}); running eager")
        return model

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
            _note(f"tensorrt failed ({_first_line(exc)}); running eager")
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


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__

"""Device selection, the one home below the tracker and training: `--device auto|cpu|cuda|cuda:N` everywhere."""

from __future__ import annotations

import torch

from .errors import DeviceError


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

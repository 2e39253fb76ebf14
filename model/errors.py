"""The one exception family users see: every message is one line, `<thing>: <what is wrong> (<what to do>)`."""

from __future__ import annotations


class CapeError(Exception):
    """Base of every error caused by user input (files, flags, checkpoints), as opposed to internal bugs."""


class SupportFileError(CapeError, ValueError):
    """A support image or its keypoint file is missing, unreadable or malformed."""


class CheckpointError(CapeError, ValueError):
    """A checkpoint file cannot be read or does not fit the network."""


class DeviceError(CapeError, RuntimeError):
    """The requested device does not exist on this machine."""

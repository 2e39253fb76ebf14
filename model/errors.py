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


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (an OS error's own reason without its errno and path), or its
    type's name: what a one-line error quotes."""
    text = (getattr(exc, "strerror", None) or str(exc)).strip().splitlines()
    return text[0] if text else type(exc).__name__

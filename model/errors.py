"""The one exception family users see: every message is one line, `<thing>: <what is wrong> (<what to do>)`."""

from __future__ import annotations

import json
from numbers import Real


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


def short(value: object, limit: int = 40) -> str:
    """A one-line rendering of a value from a user's file, at most `limit` characters: what a message quotes."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):  # not JSON (a set, a numpy scalar, a circular structure): Python's own form
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_number(value: object) -> bool:
    """A real number as a file gives it (JSON's true/false are not numbers here)."""
    return isinstance(value, Real) and not isinstance(value, bool)

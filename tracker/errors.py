"""The tracker's user-facing errors and warnings (subclasses of model's `CapeError`, one-line messages)."""

from __future__ import annotations

from cape_track.model.errors import CapeError


class SourceError(CapeError, OSError):
    """A video, image folder or webcam cannot be opened or stops delivering frames."""


class SinkError(CapeError, OSError):
    """An output (folder, video encoder, window) cannot be created or written."""


class TrackerWarning(UserWarning):
    """A degraded path was taken (accelerator unavailable, truncated video); the CLI prints it as a note."""

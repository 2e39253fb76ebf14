"""The page's background tracking job (streamlit_app/job.py): it writes the tracker's files, a cancel stops it
early with valid files, and an undecodable video is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures_media import Clip, write_clip, write_support

from cape_track.model import CapeModel, SupportSet
from cape_track.streamlit_app.job import JobState, TrackingJob
from cape_track.tracker import TrackerConfig


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random model saved in our checkpoint format (what a user would pick on the page)."""
    path = tmp_path_factory.mktemp("ckpt") / "test.pt"
    CapeModel.from_preset("test").save(path)
    return path


def _support(clip: Clip, folder: Path) -> SupportSet:
    return SupportSet.from_files([write_support(clip, folder)])


def test_job_tracks_a_clip_into_the_tracker_files(tmp_path: Path, checkpoint: Path) -> None:
    clip = write_clip(tmp_path, frames=12)
    model = CapeModel.from_checkpoint(checkpoint)
    job = TrackingJob(model, _support(clip, tmp_path / "s"), clip.path, tmp_path / "out", "clip", TrackerConfig())
    job.join(60)
    assert job.state is JobState.DONE, job.error
    assert job.progress().frames == 12 and job.progress().total == 12 and job.progress().fraction == 1.0
    tracks = json.loads(job.paths["json"].read_text())
    assert len(tracks["frames"]) == 12 and tracks["names"] == list(clip.names)
    assert job.paths["video"].stat().st_size > 0 and job.paths["csv"].is_file()


def test_job_cancel_stops_early_and_leaves_valid_files(tmp_path: Path, checkpoint: Path) -> None:
    clip = write_clip(tmp_path, frames=40)
    model = CapeModel.from_checkpoint(checkpoint)
    job = TrackingJob(model, _support(clip, tmp_path / "s"), clip.path, tmp_path / "out", "clip", TrackerConfig())
    job.cancel()
    job.join(60)
    assert job.state is JobState.CANCELLED
    done = len(json.loads(job.paths["json"].read_text())["frames"])
    assert 1 <= done < 40 and done == job.progress().frames


def test_job_reports_an_undecodable_video_in_one_line(tmp_path: Path, checkpoint: Path) -> None:
    clip = write_clip(tmp_path, frames=4)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 64 + b"definitely not a video" * 10)
    model = CapeModel.from_checkpoint(checkpoint)
    job = TrackingJob(model, _support(clip, tmp_path / "s"), bad, tmp_path / "out", "bad", TrackerConfig())
    job.join(60)
    assert job.state is JobState.FAILED
    assert job.error.startswith(str(bad)) and "\n" not in job.error

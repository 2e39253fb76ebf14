"""The tracks file: what the JSON sink streams reads back as the same arrays, a whole-file write reads back
unchanged, a reference without times and scores is read, and every malformed file is one error naming it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cape_track.model.transforms import SquareBox
from cape_track.tracker.frames import Frame, FrameResult, TrackInfo
from cape_track.tracker.sinks import JsonSink
from cape_track.tracker.tracks import Tracks, TracksFileError

NAMES = ("a", "b", "c")


def results(frames: int = 5) -> list[FrameResult]:
    rng = np.random.default_rng(0)
    return [
        FrameResult(
            t,
            t / 25.0,
            rng.uniform(0, 100, (3, 2)),
            rng.uniform(0, 1, 3),
            rng.uniform(0, 1, 3) > 0.3,
            SquareBox(0.0, 0.0, 100.0),
            keyframe=t % 2 == 0,
        )
        for t in range(frames)
    ]


def test_what_the_sink_streams_reads_back(tmp_path: Path) -> None:
    sink = JsonSink(tmp_path / "t.json", every=2)
    sink.open(TrackInfo("clip.mp4", 25.0, 160, 120, NAMES, ((0, 1), (1, 2))))
    written = results()
    image = np.zeros((120, 160, 3), np.uint8)
    for r in written:
        sink.write(Frame(r.index, r.time, image), r)
    sink.close()
    tracks = Tracks.read(tmp_path / "t.json")
    assert tracks.names == NAMES and tracks.skeleton == ((0, 1), (1, 2))
    assert (tracks.video, tracks.fps, tracks.width, tracks.height) == ("clip.mp4", 25.0, 160, 120)
    expected = Tracks.from_results(written, NAMES)
    np.testing.assert_allclose(tracks.xy, expected.xy, atol=1e-3)
    np.testing.assert_allclose(tracks.scores, expected.scores, atol=1e-4)
    np.testing.assert_array_equal(tracks.visible, expected.visible)
    np.testing.assert_allclose(tracks.time, expected.time)


def test_a_whole_file_round_trips_with_its_extra_fields(tmp_path: Path) -> None:
    original = Tracks.from_results(results(), NAMES)
    original = Tracks(**{**original.__dict__, "video": "v.mp4", "extra": {"source": "generated, seed 0"}})
    original.write(tmp_path / "r.json")
    back = Tracks.read(tmp_path / "r.json")
    assert back.extra == {"source": "generated, seed 0"} and back.video == "v.mp4"
    np.testing.assert_allclose(back.xy, original.xy, atol=1e-3)
    assert not list(tmp_path.glob(".*part"))  # written through a rename


def test_a_reference_without_times_or_scores(tmp_path: Path) -> None:
    data = {
        "names": list(NAMES),
        "frames": [{"index": 4, "keypoints": [[1, 2], [3, 4], [5, 6]], "visible": [True, False, True]}],
    }
    (tmp_path / "t.json").write_text(json.dumps(data))
    tracks = Tracks.read(tmp_path / "t.json")
    assert tracks.names == NAMES and tracks.index.tolist() == [4] and tracks.scores is None and tracks.time is None
    np.testing.assert_array_equal(tracks.xy[0], [[1, 2], [3, 4], [5, 6]])
    assert tracks.visible.tolist() == [[True, False, True]]
    tracks.write(tmp_path / "again.json")  # and it writes back without inventing them
    assert "scores" not in json.loads((tmp_path / "again.json").read_text())["frames"][0]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "not a JSON file"),
        ('{"frames": []}', "no 'frames' list"),
        ('{"frames": [{"keypoints": [[1, 2]]}]}', "malformed frame record"),
        ('{"frames": [{"index": 0, "keypoints": [1, 2]}]}', "expected [T, N, 2]"),
        ('{"names": ["a"], "frames": [{"index": 0, "keypoints": [[1, 2], [3, 4]]}]}', "1 names for 2 keypoints"),
        ('{"frames": [{"index": 0, "keypoints": [[1, 2]], "scores": [0.5, 0.5]}]}', "scores or times"),
    ],
)
def test_malformed_files_are_one_error_naming_the_file(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "bad.json").write_text(content)
    with pytest.raises(TracksFileError, match="bad.json") as caught:
        Tracks.read(tmp_path / "bad.json")
    assert message in str(caught.value)
    with pytest.raises(TracksFileError, match="cannot read"):
        Tracks.read(tmp_path / "missing.json")

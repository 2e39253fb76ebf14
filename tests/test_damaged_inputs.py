"""A corpus of damaged and hostile inputs, generated here (PyAV and plain bytes), each run through the real CLI in a
subprocess with a timeout: the contract is the exit-code class, one line on stderr for a refusal, no traceback, no
hang, and results that agree with each other (JSON frames == CSV rows == MP4 frames) whatever the ending."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from fixtures_media import write_clip, write_support

from cape_track.model import CapeModel
from cape_track.tracker.sinks import output_paths

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 120


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("corpus")
    torch.manual_seed(0)
    CapeModel.from_preset("test", input_size=128).save(tmp / "test.pt")
    clip = write_clip(tmp, frames=24)
    ref = write_support(clip, tmp / "support")
    data = clip.path.read_bytes()
    files = {"clip": clip.path, "ref": ref, "checkpoint": tmp / "test.pt"}
    (tmp / "truncated.mp4").write_bytes(data[: len(data) * 2 // 3])
    flipped = bytearray(data)
    for i in range(len(flipped) // 3, len(flipped), 997):
        flipped[i] ^= 0x5A
    (tmp / "flipped.mp4").write_bytes(bytes(flipped))
    os.mkfifo(tmp / "fifo.mp4")
    os.mkfifo(tmp / "fifo.json")
    spec = json.loads(ref.with_suffix(".json").read_text())
    (tmp / "hidden.json").write_text(json.dumps(dict(spec, visible=[0] * len(spec["keypoints"]))))
    (tmp / "nested.json").write_text("[" * 100_000 + "]" * 100_000)
    (tmp / "bigint.json").write_text('{"keypoints": [[' + "9" * 5000 + ", 1]]}")
    (tmp / "huge.json").write_text(json.dumps(dict(spec, names=[f"n{i}" for i in range(5)], pad="x" * (5 << 20))))
    (tmp / "empty.pt").write_bytes(b"")
    files |= {name: tmp / name for name in ("truncated.mp4", "flipped.mp4", "fifo.mp4", "fifo.json")}
    files |= {name: tmp / name for name in ("hidden.json", "nested.json", "bigint.json", "huge.json", "empty.pt")}
    files["out"] = tmp / "out"
    return files


def _command(*args: object) -> list[str]:
    return [sys.executable, "-m", "cape_track.tracker.cli", *(str(a) for a in args)]


def _cli(*args: object, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(_command(*args), capture_output=True, text=True, timeout=TIMEOUT, cwd=cwd, env=env)


def _refused(done: subprocess.CompletedProcess, words: str) -> None:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("cape-track: error: ") and words in lines[0], lines
    assert "Traceback" not in done.stderr


def _consistent(out: Path, stem: str) -> int:
    """The three result files hold the same frames; returns how many."""
    paths = output_paths(out, stem)
    frames = json.loads(paths["json"].read_text())["frames"]
    rows = paths["csv"].read_text().splitlines()[1:]
    assert len(rows) == len(frames)
    if frames:
        decoded = 0
        with av.open(str(paths["video"])) as container:
            try:  # a file cut by a full disk ends in a partial fragment: a player shows the frames before it
                for _ in container.decode(video=0):
                    decoded += 1
            except av.FFmpegError:
                pass
        assert decoded == len(frames)
    times = [f["time"] for f in frames]
    assert times == sorted(times)  # never backwards
    assert not list(out.glob(".*.tmp"))  # no temporary file left
    return len(frames)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("empty-path", "empty path"),
        ("fifo-video", "FIFO"),
        ("fifo-keypoints", "not a regular file"),
        ("folder-keypoints", "folder"),
        ("all-hidden", "no keypoint is visible"),
        ("nested-json", "not a keypoint file"),
        ("5000-digit-number", "not a keypoint file"),
        ("huge-keypoint-file", "too large"),
        ("batch-huge", "more than 256"),
        ("batch-float", "not a whole number"),
        ("empty-checkpoint", "not a PyTorch checkpoint"),
        ("negative-webcam", "webcam"),
        ("newline-in-name", "bad\\nname.png"),
        ("name-too-long", "File name too long"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(corpus, case: str, words: str) -> None:
    c = corpus
    base = ["--support", c["ref"], "--checkpoint", c["checkpoint"], "--out", c["out"] / case]
    argv = {
        "empty-path": ["", *base],
        "fifo-video": [c["fifo.mp4"], *base],
        "fifo-keypoints": [c["clip"], *base, "--keypoints", c["fifo.json"]],
        "folder-keypoints": [c["clip"], *base, "--keypoints", c["out"].parent],
        "all-hidden": [c["clip"], *base, "--keypoints", c["hidden.json"]],
        "nested-json": [c["clip"], *base, "--keypoints", c["nested.json"]],
        "5000-digit-number": [c["clip"], *base, "--keypoints", c["bigint.json"]],
        "huge-keypoint-file": [c["clip"], *base, "--keypoints", c["huge.json"]],
        "batch-huge": [c["clip"], *base, "--batch", "99999999999999999999"],
        "batch-float": [c["clip"], *base, "--batch", "1e9"],
        "empty-checkpoint": [c["clip"], "--support", c["ref"], "--checkpoint", c["empty.pt"], "--out", c["out"]],
        "negative-webcam": ["--webcam", "-1", "--support", c["ref"], "--record", c["out"] / case],
        "newline-in-name": [c["clip"], "--support", c["out"].parent / "bad\nname.png", "--out", c["out"]],
        "name-too-long": ["x" * 5000 + ".mp4", *base],
    }[case]
    _refused(_cli(*argv), words)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["truncated.mp4", "flipped.mp4"])
def test_a_damaged_video_is_tracked_as_far_as_it_goes(corpus, name: str) -> None:
    c = corpus
    out = c["out"] / name
    done = _cli(c[name], "--support", c["ref"], "--checkpoint", c["checkpoint"], "--out", out, "--batch", "2")
    assert done.returncode in (0, 1, 2), done.stderr
    assert "Traceback" not in done.stderr
    if done.returncode == 2:  # refused before any work: one line
        assert len(done.stderr.strip().splitlines()) == 1
    else:
        assert _consistent(out, Path(name).stem) >= 1


@pytest.mark.slow
def test_a_closed_stdout_pipe_is_not_a_failure(corpus) -> None:
    """`cape-track ... | head -c 0`: the summary line cannot be written, the run and its files are fine."""
    c = corpus
    out = c["out"] / "pipe"
    command = _command(c["clip"], "--support", c["ref"], "--checkpoint", c["checkpoint"], "--out", out)
    reader, writer = os.pipe()
    os.close(reader)  # nobody reads: the first write to stdout is a broken pipe
    done = subprocess.run(command, stdout=writer, stderr=subprocess.PIPE, text=True, timeout=TIMEOUT, cwd=REPO)
    os.close(writer)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert _consistent(out, "clip") == 24


@pytest.mark.slow
def test_a_closed_stderr_still_writes_the_results(corpus) -> None:
    c = corpus
    out = c["out"] / "no-stderr"
    command = _command(c["clip"], "--support", c["ref"], "--checkpoint", c["checkpoint"], "--out", out)
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=TIMEOUT, cwd=REPO)
    assert done.returncode == 0
    assert _consistent(out, "clip") == 24


def _write_ts(path: Path, size: tuple[int, int], frames: int, start: int) -> None:
    with av.open(str(path), "w", format="mpegts") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(frames):
            image = np.full((size[1], size[0], 3), 90, np.uint8)
            image[20 + i : 60 + i, 30:80] = (200, 80, 40)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = start + i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


@pytest.mark.slow
def test_a_resolution_change_mid_stream_keeps_tracking_at_the_first_size(corpus, tmp_path: Path) -> None:
    """Two MPEG-TS pieces of different sizes spliced byte for byte (as broadcast streams are): every frame is
    tracked, rescaled to the first size, with one note; the files agree and the times never go backwards."""
    first, second = tmp_path / "a.ts", tmp_path / "b.ts"
    _write_ts(first, (160, 120), 8, 0)
    _write_ts(second, (192, 144), 8, 8)
    spliced = tmp_path / "spliced.ts"
    spliced.write_bytes(first.read_bytes() + second.read_bytes())
    c = corpus
    out = tmp_path / "out"
    done = _cli(spliced, "--support", c["ref"], "--checkpoint", c["checkpoint"], "--out", out, "--batch", "2")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "resolution changes from 160x120 to 192x144" in done.stderr
    assert _consistent(out, "spliced") == 16
    data = json.loads(output_paths(out, "spliced")["json"].read_text())
    assert (data["width"], data["height"]) == (160, 120)


@pytest.mark.slow
def test_a_size_limit_ends_the_run_in_one_line_with_the_files_agreeing(corpus) -> None:
    """A file-size limit (as a full disk) hit by the annotated video mid-run: exit 1, one line naming the file,
    and the JSON, CSV and MP4 hold the same frames."""
    import resource

    c = corpus
    out = c["out"] / "fsize"
    clip = write_clip(c["out"].parent, frames=60, size=(320, 240), path=c["out"].parent / "long.mp4")
    limit = 40_000  # bytes: the MP4 reaches it part-way, the JSON and CSV (14 kB, 8 kB whole) never

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    command = _command(clip.path, "--support", c["ref"], "--checkpoint", c["checkpoint"], "--out", out, "--batch", 2)
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, cwd=REPO, preexec_fn=cap)
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert done.returncode == 1 and len(errors) == 1 and "long.tracked.mp4" in errors[0], done.stderr
    assert 1 <= _consistent(out, "long") < 60

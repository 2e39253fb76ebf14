"""cape-track CLI: outputs of a full run, one `cape-track: error:` line and exit 2 for every bad input (in-process
and in a real subprocess), notes for fallbacks, the webcam path, and Ctrl-C in a real subprocess."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import av
import pytest
import torch
from fixtures_media import FakeCapture, write_clip, write_support

from cape_track.model import CapeModel
from cape_track.tracker import cli
from cape_track.tracker.errors import TrackerWarning
from cape_track.tracker.sinks import output_paths
from cape_track.tracker.sources import WebcamSource

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "test.pt"
    torch.manual_seed(0)
    CapeModel.from_preset("test", input_size=128).save(path)
    return path


@pytest.fixture
def inputs(tmp_path: Path):
    clip = write_clip(tmp_path, frames=5)
    return clip, write_support(clip, tmp_path / "support")


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str], str]:
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.err.splitlines(), captured.out


def test_warnings_are_notes_but_not_the_collectors(inputs, checkpoint, tmp_path, capsys, monkeypatch) -> None:
    """A run's warnings come out as one-line notes; a ResourceWarning (any object of the process being collected,
    say a page session's folder in the same interpreter) does not."""
    clip, ref = inputs

    def run(args) -> int:
        warnings.warn("a file left open", ResourceWarning, stacklevel=1)
        warnings.warn("the accelerator fell back", TrackerWarning, stacklevel=1)
        return 0

    monkeypatch.setattr(cli, "_run", run)
    code, err, _ = _run([clip.path, "--support", ref, "--checkpoint", checkpoint, "--out", tmp_path], capsys)
    assert (code, err) == (0, ["cape-track: note: the accelerator fell back"])


def test_tracks_a_video_into_the_three_files(inputs, checkpoint, tmp_path, capsys) -> None:
    clip, ref = inputs
    out = tmp_path / "results"
    code, err, stdout = _run([clip.path, "--support", ref, "--checkpoint", checkpoint, "--out", out], capsys)
    assert code == 0 and err == []
    assert "5 frames" in stdout and str(out) in stdout
    paths = output_paths(out, "clip")
    data = json.loads(paths["json"].read_text())
    assert data["names"] == list(clip.names) and len(data["frames"]) == 5 and data["video"] == str(clip.path)
    rows = list(csv.reader(paths["csv"].open()))
    assert rows[0][:5] == ["frame", "time", "top_left_x", "top_left_y", "top_left_score"] and len(rows) == 6
    with av.open(str(paths["video"])) as container:
        assert len(list(container.decode(video=0))) == 5


def test_no_video_writes_the_tracks_alone_and_leaves_an_old_video_alone(inputs, checkpoint, tmp_path, capsys) -> None:
    clip, ref = inputs
    out = tmp_path / "results"
    paths = output_paths(out, "clip")
    out.mkdir()
    paths["video"].write_bytes(b"an earlier run's video")
    code, err, _ = _run([clip.path, "--support", ref, "--checkpoint", checkpoint, "--out", out, "--no-video"], capsys)
    # The old video is no result of this run: no "already exists", but a note that it is not these tracks' video.
    assert code == 0 and err == [
        f"cape-track: note: {paths['video']} is left from an earlier run (--no-video writes none)"
    ]
    assert len(json.loads(paths["json"].read_text())["frames"]) == 5
    assert len(list(csv.reader(paths["csv"].open()))) == 6
    assert paths["video"].read_bytes() == b"an earlier run's video"
    code, err, _ = _run([clip.path, "--support", ref, "--checkpoint", checkpoint, "--out", out, "--no-video"], capsys)
    assert code == 2 and "already exists" in err[0]  # the tracks are


def test_options_that_change_the_path_still_finish(inputs, checkpoint, tmp_path, capsys) -> None:
    clip, ref = inputs
    base = [clip.path, "--support", ref, "--checkpoint", checkpoint, "--device", "cpu"]
    code, err, _ = _run([*base, "--out", tmp_path / "a", "--offline", "--batch", "2", "--accel", "tensorrt"], capsys)
    assert code == 0 and err == ["cape-track: note: tensorrt needs a CUDA device; running eager"]
    code, err, _ = _run([*base, "--out", tmp_path / "h", "--half"], capsys)
    assert code == 0 and err == ["cape-track: note: --half is for CUDA devices; running in fp32"]
    code, err, _ = _run(
        [*base, "--out", tmp_path / "b", "--no-smooth", "--keypoints", ref.with_suffix(".json")], capsys
    )
    assert code == 0 and err == []


def _bad_inputs(tmp_path: Path, clip, ref: Path, checkpoint: Path) -> dict[str, tuple[list, str]]:
    """name -> (argv, expected message fragment) for every bad input the CLI must explain in one line."""
    good = ["--support", ref, "--checkpoint", checkpoint, "--out", tmp_path / "out"]
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "notes.mp4").write_text("not a video\n" * 20)
    (tmp_path / "cut.mp4").write_bytes(clip.path.read_bytes()[: clip.path.stat().st_size // 2])
    (tmp_path / "garbage.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (tmp_path / "garbage.json").write_text(ref.with_suffix(".json").read_text())
    lonely = tmp_path / "lonely.png"
    lonely.write_bytes(ref.read_bytes())
    broken_json = tmp_path / "broken.json"
    broken_json.write_text('{"keypoints": [[1, 2],')
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"keypoints": [[1000, 2]]}))
    (tmp_path / "text.pt").write_text("not a checkpoint")
    state = torch.load(checkpoint, weights_only=True)
    state["state_dict"].pop(next(iter(state["state_dict"])))
    torch.save(state, tmp_path / "misfit.pt")
    (tmp_path / "a_file").write_text("x")
    video = clip.path
    cases = {
        "missing video": ([tmp_path / "nope.mp4", *good], "nope.mp4: no such file"),
        "empty video": ([tmp_path / "empty.mp4", *good], "empty file"),
        "not a video": ([tmp_path / "notes.mp4", *good], "not a readable video file"),
        "truncated video": ([tmp_path / "cut.mp4", *good], "not a readable video file"),
        "missing support": ([video, "--support", tmp_path / "none.jpg"], "none.jpg: no such image file"),
        "unreadable support": ([video, "--support", tmp_path / "garbage.jpg"], "not an image"),
        "no keypoint file": ([video, "--support", lonely], "lonely.json: no such keypoint file"),
        "malformed keypoints": ([video, "--support", ref, "--keypoints", broken_json], "not valid JSON"),
        "keypoint outside": ([video, "--support", ref, "--keypoints", outside], "lies outside"),
        "keypoint file count": (
            [video, "--support", ref, "--support", ref, *["--keypoints", outside] * 3],
            "3 keypoint files for 2 images",
        ),
        "missing checkpoint": ([video, "--support", ref, "--checkpoint", tmp_path / "no.pt"], "no such checkpoint"),
        "not a checkpoint": ([video, "--support", ref, "--checkpoint", tmp_path / "text.pt"], "not a PyTorch"),
        "checkpoint misfit": ([video, "--support", ref, "--checkpoint", tmp_path / "misfit.pt"], "does not fit"),
        "unwritable out": ([video, *good[:4], "--out", tmp_path / "a_file" / "sub"], "cannot write results there"),
        "unknown device": ([video, *good, "--device", "tpu"], "device tpu: unknown"),
        "no input": ([*good], "give a VIDEO"),
        "video and webcam": ([video, "--webcam", "0", *good], "not both"),
        "no support": ([video], "--support IMAGE is required"),
        "batch zero": ([video, *good, "--batch", "0"], "0 is not >= 1"),
        "settle negative": ([video, *good, "--settle", "-1"], "-1 is not >= 0"),
        "no video of a webcam": (["--webcam", "0", "--support", ref, "--no-video"], "--no-video is about the files"),
        "keyframes not a number": ([video, *good, "--keyframe-every", "x"], "'x' is not a whole number of frames"),
        "settle not a number": ([video, *good, "--settle", "2.5"], "'2.5' is not a whole number of keyframes"),
        "unknown accel": ([video, *good, "--accel", "warp"], "invalid choice: 'warp'"),
        "unknown flag": ([video, *good, "--fast"], "unrecognized arguments: --fast"),
        "offline webcam": (["--webcam", "0", *good, "--offline"], "--offline needs files"),
        "offline raw": ([video, *good, "--offline", "--no-smooth"], "drop --no-smooth"),
        "record a file": ([video, *good, "--record", tmp_path], "--record is for --webcam"),
        "no webcam": (
            ["--webcam", "97", "--support", ref, "--record", tmp_path / "rec"],
            "webcam 97: cannot be opened",
        ),
        "show without display": ([video, *good, "--show"], "no display available"),
        "webcam without display": (["--webcam", "0", "--support", ref], "add --record DIR"),
    }
    if not torch.cuda.is_available():
        cases["no cuda"] = ([video, *good, "--device", "cuda"], "CUDA is not available")
    return cases


def test_every_bad_input_is_one_line_and_exit_2(inputs, checkpoint, tmp_path, capfd, monkeypatch) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr("sys.platform", "linux")
    clip, ref = inputs
    for name, (argv, message) in _bad_inputs(tmp_path, clip, ref, checkpoint).items():
        code = cli.main([str(a) for a in argv])
        err = capfd.readouterr().err.splitlines()
        assert code == 2, name
        assert len(err) == 1 and err[0].startswith("cape-track: error: "), (name, err)
        assert message in err[0], (name, err[0])
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing written


@pytest.mark.slow
def test_bad_input_in_a_real_process(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cape_track.tracker.cli",
            str(tmp_path / "missing.mp4"),
            "--support",
            str(tmp_path / "r.jpg"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"cape-track: error: {tmp_path / 'r.jpg'}: no such image file (check the path)"]


def test_help_exits_0(capsys) -> None:
    assert cli.main(["--help"]) == 0
    assert "--support" in capsys.readouterr().out


def test_webcam_records_without_a_display(inputs, checkpoint, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr("sys.platform", "linux")
    monkeypatch.setattr(
        "cape_track.tracker.sources.WebcamSource",
        lambda index: WebcamSource(index, open_capture=lambda i: FakeCapture(i, limit=12, period=0.005, size=(64, 48))),
    )
    _, ref = inputs
    code, err, _ = _run(["--webcam", "0", "--support", ref, "--checkpoint", checkpoint, "--record", tmp_path], capsys)
    assert code == 0
    assert err == ["cape-track: note: no display: recording without a window (Ctrl-C stops)"]
    data = json.loads(output_paths(tmp_path, "webcam0")["json"].read_text())
    assert 1 <= len(data["frames"]) <= 12 and (data["width"], data["height"]) == (64, 48)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "code", "verb"),
    [
        (signal.SIGINT, 130, "interrupted"),
        (signal.SIGTERM, 143, "stopped by SIGTERM"),
        (signal.SIGHUP, 129, "stopped by SIGHUP"),
    ],
)
def test_a_stop_signal_leaves_valid_files_and_says_how_far_it_got(
    checkpoint, tmp_path: Path, sig: int, code: int, verb: str
) -> None:
    """Ctrl-C, and the SIGTERM / SIGHUP that job schedulers and closed terminals send: the same orderly stop."""
    clip = write_clip(tmp_path, frames=300)
    ref = write_support(clip, tmp_path / "support")
    out = tmp_path / "out"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cape_track.tracker.cli",
            str(clip.path),
            "--support",
            str(ref),
            "--checkpoint",
            str(checkpoint),
        ]
        + ["--out", str(out), "--batch", "1"],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    paths = output_paths(out, "clip")
    deadline = time.monotonic() + 120
    while not (paths["csv"].exists() and len(paths["csv"].read_text().splitlines()) > 3):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == code, stderr
    last = stderr.splitlines()[-1]
    assert last.startswith(f"cape-track: {verb} after ") and last.endswith(f"frames; partial results in {out}/")
    frames = int(last.split("after ")[1].split(" frames")[0])
    assert 3 <= frames < 300
    data = json.loads(paths["json"].read_text())
    assert [f["index"] for f in data["frames"]] == list(range(frames))
    assert len(paths["csv"].read_text().splitlines()) == frames + 1
    with av.open(str(paths["video"])) as container:
        assert len(list(container.decode(video=0))) == frames


def test_help_version_and_argument_errors_import_no_torch() -> None:
    """They answer at once: torch, timm, PyAV and OpenCV are imported only when there is work to do."""
    code = (
        "import sys\n"
        "from cape_track.tracker.cli import main\n"
        "codes = [main(['--help']), main(['--batch', '0', 'x.mp4']), main([])]\n"
        "heavy = [m for m in ('torch', 'timm', 'av', 'cv2') if m in sys.modules]\n"
        "print(codes, heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "[0, 2, 2] []", done.stderr
    assert "usage: cape-track" in done.stderr  # no arguments: the usage line, then the error


def test_the_accel_choices_are_the_accelerators() -> None:
    from cape_track.tracker.accel import ACCELS
    from cape_track.tracker.cli import ACCEL_CHOICES

    assert ACCEL_CHOICES == ACCELS


def test_the_tracking_defaults_are_the_trackers() -> None:
    """The parser is built before the pipeline is imported, so it repeats the defaults; they must not drift."""
    from cape_track.tracker.pipeline import TrackerConfig

    args = cli.build_parser().parse_args(["clip.mp4", "--support", "ref.jpg"])
    assert (args.keyframe_every, args.settle, args.batch) == (
        TrackerConfig.keyframe_every,
        TrackerConfig.settle,
        TrackerConfig.batch,
    )


def test_many_inputs_never_share_results_and_a_bad_one_does_not_stop_the_others(checkpoint, tmp_path, capsys) -> None:
    clip = write_clip(tmp_path, frames=3)
    ref = write_support(clip, tmp_path / "support")
    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "clip.mkv").write_bytes(clip.path.read_bytes())  # same stem as clip.mp4, another container
    (folder / "broken.mp4").write_bytes(b"not a video")
    out = tmp_path / "out"
    code, err, stdout = _run([clip.path, folder, "--support", ref, "--checkpoint", checkpoint, "--out", out], capsys)
    assert code == 2  # the worst of the inputs: broken.mp4 is bad input
    assert "2 of 3 inputs done, 1 failed" in stdout
    assert any("broken.mp4" in line and "not a readable video" in line for line in err), err
    for stem in ("broken", "clip.mp4", "clip.mkv"):
        done = output_paths(out, stem)["json"].is_file()
        assert done == (stem != "broken"), stem


def test_existing_results_are_refused_skipped_or_replaced(checkpoint, tmp_path, capsys) -> None:
    clip = write_clip(tmp_path, frames=3)
    ref = write_support(clip, tmp_path / "support")
    base = [clip.path, "--support", ref, "--checkpoint", checkpoint, "--out", tmp_path / "out"]
    assert _run(base, capsys)[0] == 0
    code, err, _ = _run(base, capsys)
    assert code == 2 and len(err) == 1 and "already exists (pass --overwrite" in err[0]
    code, err, _ = _run([*base, "--skip-existing"], capsys)
    assert code == 0 and err == [
        f"cape-track: note: {tmp_path / 'out' / 'clip.tracked.mp4'} exists: skipped (--skip-existing)"
    ]
    assert _run([*base, "--overwrite"], capsys)[0] == 0
    code, err, _ = _run([*base, "--overwrite", "--skip-existing"], capsys)
    assert code == 2 and "not allowed with" in err[0]


def test_out_beside_writes_next_to_each_input(checkpoint, tmp_path, capsys) -> None:
    (tmp_path / "here").mkdir()
    clip = write_clip(tmp_path / "here", frames=3)
    ref = write_support(clip, tmp_path / "support")
    assert _run([clip.path, "--support", ref, "--checkpoint", checkpoint, "--out-beside"], capsys)[0] == 0
    assert output_paths(tmp_path / "here", "clip")["csv"].is_file()

"""benchmarks/: PCK of tracks on crafted values, the optical-flow baseline on a clip with known motion, finding the
support's frame, and both command lines end to end on generated media (figures are never asserted on speed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fixtures_media import write_clip, write_support

from cape_track.benchmarks import fps, pck
from cape_track.benchmarks.flow_baseline import track_optical_flow
from cape_track.benchmarks.pck import BenchmarkError, locate_support_frame, pck_of_tracks
from cape_track.model import CapeModel
from cape_track.model.support import load_image
from cape_track.tracker.sources import read_frames
from cape_track.tracker.tracks import Tracks

NAMES = ("a", "b", "c")


def _tracks(xy: list, visible: list | None = None, index: list | None = None) -> Tracks:
    xy = np.asarray(xy, dtype=np.float64)
    visible = np.ones(xy.shape[:2], bool) if visible is None else np.asarray(visible, bool)
    index = np.arange(len(xy)) if index is None else np.asarray(index)
    return Tracks(NAMES, index, xy, visible)


# A reference with a 100 px box in frame 0 (x from 0 to 100) and a 50 px box in frame 1 (y from 0 to 50).
REFERENCE = _tracks(
    [[[0, 0], [100, 0], [50, 40]], [[10, 0], [10, 50], [0, 20]]],
    visible=[[1, 1, 1], [1, 1, 0]],  # frame 1: keypoint c is not visible, so it is not scored
)


def test_pck_of_tracks_matches_a_hand_computed_value() -> None:
    # Errors: frame 0 -> 3, 8, 30 px on a 100 px box (0.03, 0.08, 0.30); frame 1 -> 4, 12 px on a 50 px box
    # (0.08, 0.24); keypoint c of frame 1 is 500 px off but invisible in the reference, so it must not count.
    tracks = _tracks([[[3, 0], [100, 8], [50, 70]], [[10, 4], [10, 62], [500, 20]]])
    result = pck_of_tracks(tracks, REFERENCE, thresholds=(0.05, 0.1, 0.2))
    assert result.keypoints == 5 and result.frames == 2
    assert result.pck == pytest.approx({0.05: 1 / 5, 0.1: 3 / 5, 0.2: 3 / 5})
    assert result.mean_error_px == pytest.approx((3 + 8 + 30 + 4 + 12) / 5)


def test_pck_threshold_is_strict_at_the_edge() -> None:
    # 10 px on a 100 px box is exactly 0.1: wrong at 0.1 (distance / size < threshold, as mmpose), right at 0.2.
    on_edge = _tracks([[[10, 0], [100, 0], [50, 40]]])
    result = pck_of_tracks(on_edge, _tracks(REFERENCE.xy[:1]), thresholds=(0.1, 0.2))
    assert result.pck[0.1] == pytest.approx(2 / 3)
    assert result.pck[0.2] == 1.0


def test_pck_counts_missing_frames_as_wrong_and_skips_the_support_frame() -> None:
    perfect_frame0 = Tracks(NAMES, np.array([0]), REFERENCE.xy[:1], np.ones((1, 3), bool))
    assert pck_of_tracks(perfect_frame0, REFERENCE).pck[0.2] == pytest.approx(3 / 5)  # frame 1 missing: 0 of 2
    assert pck_of_tracks(perfect_frame0, REFERENCE, skip=[1]).pck[0.05] == 1.0
    with pytest.raises(BenchmarkError, match="no frame"):
        pck_of_tracks(perfect_frame0, REFERENCE, skip=[0, 1])


def test_pck_refuses_tracks_of_other_keypoints() -> None:
    other = Tracks(("x", "y", "z"), REFERENCE.index, REFERENCE.xy, REFERENCE.visible)
    with pytest.raises(BenchmarkError, match="reference"):
        pck_of_tracks(other, REFERENCE)


@pytest.mark.parametrize("start", [0, 12])
def test_optical_flow_follows_known_motion_both_ways(tmp_path: Path, start: int) -> None:
    clip = write_clip(tmp_path, frames=24)
    frames, _, _ = read_frames(clip.path)
    xy, visible = track_optical_flow(frames, start, clip.keypoints[start])
    assert np.linalg.norm(clip.keypoints[-1] - clip.keypoints[0], axis=1).min() > 30  # the square really moves
    assert visible.all()
    assert np.linalg.norm(xy - clip.keypoints, axis=2).max() < 2.5  # px, on every frame before and after start


def test_optical_flow_freezes_points_it_loses() -> None:
    frames = [np.zeros((40, 40, 3), np.uint8)] * 3
    xy, visible = track_optical_flow(frames, 1, np.array([[-30.0, 10.0]]))  # outside: lost at once
    assert visible[:, 0].tolist() == [False, True, False]
    np.testing.assert_array_equal(xy[:, 0], [[-30, 10]] * 3)


def test_support_frame_is_found_in_the_clip(tmp_path: Path) -> None:
    clip = write_clip(tmp_path, frames=12)
    frames, _, _ = read_frames(clip.path)
    support = write_support(clip, tmp_path / "s", index=7)
    assert locate_support_frame(frames, load_image(support)) == 7
    with pytest.raises(BenchmarkError, match="not a frame"):
        locate_support_frame(frames, 255 - load_image(support))


@pytest.mark.slow
def test_fps_runs_end_to_end_and_writes_the_fixed_keys(tmp_path: Path) -> None:
    clip = write_clip(tmp_path, frames=8)
    support = write_support(clip, tmp_path / "support")
    checkpoint = tmp_path / "test.pt"
    CapeModel.from_preset("test").save(checkpoint)
    out, png = tmp_path / "fps.json", tmp_path / "fps.png"
    argv = ["--video", str(clip.path), "--support", str(support), "--checkpoint", str(checkpoint), "--device", "cpu"]
    argv += ["--batch", "2", "--batches", "1", "--accel", "none", "--frames", "6", "--warmup", "1", "--repeat", "1"]
    assert fps.main([*argv, "--json", str(out), "--plot", str(png)]) == 0
    report = json.loads(out.read_text())
    for key in ("pipeline_fps", "overlap_ratio", "cached_vs_naive_ratio"):
        assert report[key] > 0
    assert report["setup"]["frames"] == 6 and report["runs"]["main"]["frames"] == 6
    assert set(report["batch"]["fps"]) == {"1", "2"}
    assert set(report["baselines"]) == {
        "optical_flow_fps",
        "nn_matching_fps",
        "tracker_vs_optical_flow_ratio",
        "tracker_vs_nn_matching_ratio",
    }
    assert all(value > 0 for value in report["baselines"].values())
    # One round: its own efficiencies are the report's (the same stages and pipelines).
    rounds = report["cpu_efficiency_rounds"]
    assert rounds["with_video"] == [pytest.approx(report["cpu_efficiency"])]
    assert rounds["tracks_only"] == [pytest.approx(report["cpu_efficiency_tracks_only"])]
    assert png.stat().st_size > 0


def test_pck_tracks_command_compares_tracker_and_flow(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    clip = write_clip(tmp_path, frames=8)
    support = write_support(clip, tmp_path / "support", index=3)
    reference = {
        "names": list(clip.names),
        "frames": [{"index": t, "keypoints": clip.keypoints[t].tolist()} for t in range(clip.frames)],
    }
    (tmp_path / "ref.json").write_text(json.dumps(reference))
    checkpoint = tmp_path / "test.pt"
    CapeModel.from_preset("test").save(checkpoint)
    out = tmp_path / "pck.json"
    argv = ["tracks", "--video", str(clip.path), "--support", str(support), "--reference", str(tmp_path / "ref.json")]
    assert pck.main([*argv, "--checkpoint", str(checkpoint), "--device", "cpu", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    methods = [r["method"] for r in rows]
    assert methods == [
        "cape-track",
        "cape-track, network every frame (keyframes off)",
        "cape-track raw (no smoother)",
        "graph network + smoother (finder off)",
        "NN matching s16 (reference crop)",
        "NN matching s8+16 (reference crop)",
        "LK optical flow",
        "support layout fitted to the reference (ceiling)",
    ]
    assert all(r["support_frame"] == 3 and r["frames"] == 7 for r in rows)  # the support's frame is left out
    by_method = dict(zip(methods, rows, strict=True))
    assert by_method["LK optical flow"]["pck"]["0.1"] == 1.0  # the flow baseline on clean synthetic motion
    # The square moves rigidly: its own layout fitted to the reference is exact.
    assert by_method["support layout fitted to the reference (ceiling)"]["pck"]["0.05"] == 1.0
    assert "| LK optical flow |" in capsys.readouterr().out
    assert pck.main([*argv, "--checkpoint", str(checkpoint), "--tracker-only", "--json", str(out)]) == 0
    assert [r["method"] for r in json.loads(out.read_text())["rows"]] == methods[:2]


def test_pck_dataset_command_reports_the_official_pck(tmp_path: Path, generated_mp100: Path) -> None:
    checkpoint = tmp_path / "test.pt"
    CapeModel.from_preset("test").save(checkpoint)
    out = tmp_path / "dataset.json"
    argv = ["dataset", "--checkpoint", str(checkpoint), "--data-root", str(generated_mp100 / "images")]
    argv += ["--ann-file", str(generated_mp100 / "annotations" / "mp100_split1_test.json")]
    assert pck.main([*argv, "--episodes", "2", "--queries", "1", "--device", "cpu", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["pck"]) == {"0.05", "0.1", "0.2"}
    assert all(0.0 <= v <= 1.0 for v in report["pck"].values())


def test_warped_clip_ground_truth_follows_the_content(tmp_path: Path) -> None:
    """The generated clip's reference keypoints sit on the same photo content in every frame (patch correlation
    far above that of points 4 px off), its supports are clip frames, and LK from exact points scores high."""
    import cv2

    from cape_track.benchmarks.warped_clip import ClipConfig, write_benchmark

    config = ClipConfig(frames=16, size=(240, 180), key_every=8)
    paths = write_benchmark(tmp_path, "coffee", seed=1, config=config)
    reference = Tracks.read(paths["reference"])
    frames, _, _ = read_frames(paths["video"])
    assert len(frames) == 16 and reference.xy.shape[0] == 16

    def patch(image: np.ndarray, xy: np.ndarray) -> np.ndarray | None:
        x, y = np.round(xy).astype(int)
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float64)
        if 5 <= x < gray.shape[1] - 5 and 5 <= y < gray.shape[0] - 5:
            p = gray[y - 5 : y + 6, x - 5 : x + 6]
            return (p - p.mean()) / (p.std() + 1e-9)
        return None

    def agreement(offset: float) -> float:
        scores = []
        for t in range(1, 16):
            for a_xy, b_xy in zip(reference.xy[t - 1], reference.xy[t], strict=True):
                a, b = patch(frames[t - 1], a_xy), patch(frames[t], b_xy + offset)
                if a is not None and b is not None:
                    scores.append(float((a * b).mean()))
        return float(np.median(scores))

    assert agreement(0.0) > 0.8 and agreement(4.0) < 0.5
    for name, frame in (("support_f000", 0), ("support_f012", 12)):
        image = load_image(paths[name])
        assert locate_support_frame(frames, image) == frame
        support = json.loads(paths[name].with_suffix(".json").read_text())
        np.testing.assert_allclose(support["keypoints"], reference.xy[frame], atol=1e-3)
    xy, visible = track_optical_flow(frames, 0, reference.xy[0])
    assert pck_of_tracks(Tracks(reference.names, reference.index, xy, visible), reference, skip={0}).pck[0.1] > 0.9


def test_warped_clip_command_reports_an_unwritable_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from cape_track.benchmarks import warped_clip

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert warped_clip.main(["--out", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("python -m cape_track.benchmarks.warped_clip: error: cannot write")


def test_a_scaled_clip_keeps_its_points_on_the_same_content(tmp_path: Path) -> None:
    """Downscaled by 1/2: the video, the reference and the supports shrink together (pixel centres at integers, so
    the frame's corners stay its corners), the support is still a frame of the clip, and the content under each
    reference point is the original's, averaged."""
    import cv2

    from cape_track.benchmarks.scaled_clip import main, scaled_points
    from cape_track.benchmarks.warped_clip import ClipConfig, write_benchmark

    np.testing.assert_allclose(
        scaled_points(np.array([[-0.5, -0.5], [239.5, 179.5]]), 0.5), [[-0.5, -0.5], [119.5, 89.5]]
    )
    write_benchmark(tmp_path / "big", "coffee", seed=2, config=ClipConfig(frames=12, size=(240, 180), key_every=6))
    assert main(["--clip", str(tmp_path / "big"), "--out", str(tmp_path / "small"), "--scale", "0.5"]) == 0
    big, small = Tracks.read(tmp_path / "big/reference.json"), Tracks.read(tmp_path / "small/reference.json")
    frames, _, _ = read_frames(tmp_path / "small/clip.mp4")
    originals, _, _ = read_frames(tmp_path / "big/clip.mp4")
    assert frames[0].shape == (90, 120, 3) and (small.width, small.height) == (120, 90)
    np.testing.assert_allclose(small.xy, scaled_points(big.xy, 0.5), atol=2e-3)
    assert np.array_equal(small.index, big.index) and small.names == big.names
    for t in (0, 11):
        shrunk = cv2.resize(originals[t], (120, 90), interpolation=cv2.INTER_AREA).astype(float)
        aligned = np.abs(frames[t] - shrunk).mean()  # H.264's and 4:2:0's losses only
        assert aligned < 6.0 and aligned < 0.5 * np.abs(frames[t] - np.roll(shrunk, 2, axis=1)).mean()
    support = json.loads((tmp_path / "small/support_f009.json").read_text())
    np.testing.assert_allclose(support["keypoints"], small.xy[9], atol=2e-3)
    assert locate_support_frame(frames, load_image(tmp_path / "small/support_f009.png")) == 9


def test_scaled_clip_refuses_a_bad_scale_or_clip(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from cape_track.benchmarks.scaled_clip import main

    assert main(["--clip", str(tmp_path), "--out", str(tmp_path / "o"), "--scale", "2"]) == 2
    assert "scale must be in (0, 1]" in capsys.readouterr().err
    write_clip(tmp_path, frames=4)  # a clip without its reference: one line, and nothing written
    assert main(["--clip", str(tmp_path), "--out", str(tmp_path / "o"), "--scale", "0.5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "reference.json" in err and not (tmp_path / "o").exists()


def test_a_long_clip_turns_without_a_repeated_frame_or_a_cut() -> None:
    from cape_track.benchmarks.long_clip import back_and_forth

    assert back_and_forth([0, 1, 2], 1) == [0, 1, 2]
    assert back_and_forth([0, 1, 2], 4) == [0, 1, 2, 1, 0, 1, 2, 1, 0]
    with pytest.raises(ValueError, match="times must be >= 1"):
        back_and_forth([0, 1], 0)


def test_long_clip_command_writes_the_passes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from cape_track.benchmarks.long_clip import main
    from cape_track.tracker.sources import read_frames

    clip = write_clip(tmp_path, frames=5)
    out = tmp_path / "long" / "x3.mp4"
    assert main(["--clip", str(clip.path), "--out", str(out), "--times", "3"]) == 0
    frames, _, fps = read_frames(out)
    short, _, short_fps = read_frames(clip.path)
    assert len(frames) == 13 and fps == short_fps
    assert np.abs(frames[8].astype(int) - short[0]).mean() < 3  # the pass back ends on the first frame
    assert main(["--clip", str(clip.path), "--out", str(out), "--times", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "times must be >= 1" in err

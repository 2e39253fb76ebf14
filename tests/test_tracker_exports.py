"""`--export dlc,sleap,coco`: the files the field's own readers load (pandas, movement, sleap-io, pycocotools, each
where installed; the dev extra installs all four), with the right frame count, names, skeleton and hidden points."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_media import write_clip, write_support

from cape_track.model import CapeModel
from cape_track.tracker import cli
from cape_track.tracker.exports import export_tracks, parse_exports
from cape_track.tracker.sinks import output_paths

FRAMES = 6


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One CLI run with every export, on a generated clip, with a random network that hides some points."""
    tmp = tmp_path_factory.mktemp("exports")
    torch.manual_seed(0)
    checkpoint = tmp / "test.pt"
    CapeModel.from_preset("test", input_size=128).save(checkpoint)
    clip = write_clip(tmp, frames=FRAMES)
    ref = write_support(clip, tmp / "support")
    out = tmp / "out"
    argv = [clip.path, "--support", ref, "--checkpoint", checkpoint, "--out", out, "--export", "dlc,sleap,coco"]
    assert cli.main([str(a) for a in argv]) == 0
    return out, json.loads(output_paths(out, "clip")["json"].read_text())


def test_the_csv_marks_hidden_points(tracked) -> None:
    out, tracks = tracked
    rows = list(csv.DictReader(output_paths(out, "clip")["csv"].open()))
    assert len(rows) == FRAMES
    for row, frame in zip(rows, tracks["frames"], strict=True):
        assert [row[f"{n}_visible"] == "1" for n in tracks["names"]] == frame["visible"]


def test_deeplabcut_files_read_with_pandas_and_movement(tracked) -> None:
    pd = pytest.importorskip("pandas")
    out, tracks = tracked
    frame = pd.read_csv(out / "clip.dlc.csv", header=[0, 1, 2], index_col=0)
    assert frame.shape == (FRAMES, 3 * len(tracks["names"]))
    assert list(frame.columns.names) == ["scorer", "bodyparts", "coords"]
    assert list(frame.columns.get_level_values("bodyparts").unique()) == tracks["names"]
    hdf = pd.read_hdf(out / "clip.dlc.h5", key="df_with_missing")
    np.testing.assert_allclose(hdf.to_numpy(), frame.to_numpy(), atol=1e-3, equal_nan=True)
    hidden = ~np.array([f["visible"] for f in tracks["frames"]])
    assert np.isnan(frame.xs("x", axis=1, level="coords").to_numpy()[hidden]).all()
    load_poses = pytest.importorskip("movement.io.load_poses")
    for path in (out / "clip.dlc.csv", out / "clip.dlc.h5"):
        ds = load_poses.from_dlc_file(path, fps=25)
        assert ds.sizes["time"] == FRAMES and list(ds.coords["keypoints"].values) == tracks["names"]


def test_sleap_files_read_with_sleap_io(tracked) -> None:
    sio = pytest.importorskip("sleap_io")
    out, tracks = tracked
    labels = sio.load_file(str(out / "clip.slp"))
    skeleton = labels.skeletons[0]
    assert skeleton.node_names == tracks["names"]
    assert sorted(skeleton.edge_inds) == sorted(tuple(e) for e in tracks["skeleton"])
    with_points = [f for f in tracks["frames"] if any(f["visible"])]
    assert len(labels.labeled_frames) == len(with_points)
    first = labels.labeled_frames[0].instances[0].numpy()
    hidden = ~np.array(with_points[0]["visible"])
    assert np.isnan(first[hidden]).all() and np.isfinite(first[~hidden]).all()
    analysis = sio.load_file(str(out / "clip.analysis.h5"))
    assert len(analysis.labeled_frames) == len(with_points)


def test_coco_file_reads_with_pycocotools(tracked) -> None:
    coco_module = pytest.importorskip("pycocotools.coco")
    out, tracks = tracked
    coco = coco_module.COCO(str(out / "clip.coco.json"))
    assert len(coco.getImgIds()) == FRAMES and len(coco.getAnnIds()) == FRAMES
    category = coco.loadCats(1)[0]
    assert category["keypoints"] == tracks["names"]
    assert category["skeleton"] == [[a + 1, b + 1] for a, b in tracks["skeleton"]]
    ann = coco.loadAnns(coco.getAnnIds(imgIds=[1]))[0]
    v = np.array(ann["keypoints"]).reshape(-1, 3)[:, 2]
    assert ((v == 2) == np.array(tracks["frames"][0]["visible"])).all() and set(v) <= {0, 2}


def test_export_names_are_checked() -> None:
    assert parse_exports("coco, dlc,coco") == ("coco", "dlc")
    with pytest.raises(ValueError, match="choose from dlc, sleap, coco"):
        parse_exports("dlc,nwb")


def test_an_interrupted_run_exports_the_frames_it_did(tracked, tmp_path: Path) -> None:
    """The exports come from the tracks file, valid on every ending: a shortened tracks file exports its frames."""
    out, tracks = tracked
    short = dict(tracks, frames=tracks["frames"][:2])
    path = tmp_path / "cut.keypoints.json"
    path.write_text(json.dumps(short))
    written = export_tracks(path, ["coco"])
    assert written == [tmp_path / "cut.coco.json"]
    assert len(json.loads(written[0].read_text())["images"]) == 2

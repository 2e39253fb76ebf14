"""The Streamlit page's flows through Streamlit's AppTest (streamlit_app/app.py): clicks, names, undo, skeleton,
save/load, tracking a generated clip, and every bad input shown as a message, never a traceback. Its state and its
tracking job have their own files (test_streamlit_state.py, test_streamlit_job.py)."""

from __future__ import annotations

import gc
import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from fixtures_media import write_clip, write_support
from streamlit.testing.v1 import AppTest

from cape_track.model import CapeModel
from cape_track.streamlit_app.job import JobState
from cape_track.streamlit_app.state import Annotation

APP = str(Path(__file__).resolve().parent.parent / "streamlit_app" / "app.py")


def _click(x: float, y: float, width: int = 160, height: int = 120, t: int = 0) -> dict:
    return {"x1": x, "y1": y, "x2": x, "y2": y, "width": width, "height": height, "unix_time": t}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random model saved in our checkpoint format (what a user would pick on the page)."""
    path = tmp_path_factory.mktemp("ckpt") / "test.pt"
    CapeModel.from_preset("test").save(path)
    return path


# ---------------------------------------------------------------------------------------------------- app.py
@pytest.fixture
def page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception
    return at


def _errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def _selectbox(at: AppTest, label: str):
    return next(s for s in at.selectbox if s.label == label)


def _button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def _upload(at: AppTest, name: str, file_name: str, data: bytes, mime: str) -> None:
    """Upload into the page's `name` uploader (whose key changes each time it takes a file) and rerun."""
    widget = next(u for u in at.file_uploader if u.key and u.key.rsplit("_", 1)[0] == name)
    widget.set_value((file_name, data, mime)).run()


def _upload_support(at: AppTest, image: Path) -> None:
    _upload(at, "support_image", image.name, image.read_bytes(), "image/png")


def _annotation(at: AppTest) -> Annotation:
    return at.session_state["history"].current


def _use_checkpoint(at: AppTest, checkpoint: Path) -> None:
    at.radio(key="checkpoint_choice").set_value("File on this machine").run()
    at.text_input(key="checkpoint_path").set_value(str(checkpoint)).run()


def test_page_says_when_the_embedded_model_is_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from cape_track import model

    monkeypatch.setattr(model.checkpoint, "DEFAULT_CHECKPOINT", tmp_path / "default.safetensors")
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception
    assert any("embedded default model is not available" in e for e in _errors(at))
    _button(at, "Track").click().run()
    assert any(e.startswith("support: no support image") for e in _errors(at))


def test_click_name_hide_undo_delete_and_link(page: AppTest, tmp_path: Path) -> None:
    clip = write_clip(tmp_path, frames=2)
    _upload_support(page, write_support(clip, tmp_path))
    assert not page.exception and _annotation(page).shots[0].label == "ref.png"
    for t, (x, y) in enumerate([(100, 80), (300, 90), (200, 300)], start=1):
        page.session_state["clicks_0"] = _click(x, y, width=640, height=480, t=t)  # the click component's event
        page.run()
    a = _annotation(page)
    assert a.names == ("kp0", "kp1", "kp2")
    assert a.shots[0].xy[0] == pytest.approx((24.625, 19.625))  # 640x480 display of a 160x120 image
    page.run()  # the same event again (a plain rerun) is not a new click
    assert _annotation(page).num_keypoints == 3

    page.text_input(key="name_0").set_value("nose").run()
    page.text_input(key="name_1").set_value("nose").run()
    assert any("already used" in e for e in _errors(page))
    page.checkbox(key="visible_2_0").uncheck().run()
    a = _annotation(page)
    assert a.names == ("nose", "kp1", "kp2") and a.shots[0].visible == (True, True, False)

    _selectbox(page, "Link").set_value(0).run()
    _selectbox(page, "to").set_value(2).run()
    _button(page, "Link").click().run()
    assert _annotation(page).skeleton == ((0, 2),)
    page.button_group[0].set_value(0).run()  # click the edge pill: unlinked
    assert _annotation(page).skeleton == ()

    page.button(key="delete_1").click().run()
    assert _annotation(page).names == ("nose", "kp2")
    _button(page, "↶ Undo").click().run()
    assert _annotation(page).names == ("nose", "kp1", "kp2")
    assert page.text_input(key="name_0").value == "nose"
    assert not page.exception


def test_renaming_the_keypoints_in_the_link_selectors_keeps_the_page(page: AppTest, tmp_path: Path) -> None:
    """Renaming the keypoint shown in the "to" box (the second one by default) used to crash the page (a name
    compared with a position); the selectors hold stable ids, so renames, deletes and undo keep them valid."""
    clip = write_clip(tmp_path, frames=2)
    _upload_support(page, write_support(clip, tmp_path))
    for t, (x, y) in enumerate([(100, 80), (300, 90), (200, 300)], start=1):
        page.session_state["clicks_0"] = _click(x, y, width=640, height=480, t=t)
        page.run()
    assert _selectbox(page, "to").value == 1
    page.text_input(key="name_1").set_value("tail").run()
    page.text_input(key="name_0").set_value("nose").run()
    assert not page.exception
    assert _selectbox(page, "to").value == 1 and "tail" in _selectbox(page, "to").options
    _button(page, "Link").click().run()
    assert _annotation(page).skeleton == ((0, 1),)
    page.button(key="delete_1").click().run()  # the keypoint in the "to" box goes away
    assert not page.exception and _selectbox(page, "to").value in (0, 2)
    _button(page, "↶ Undo").click().run()
    page.text_input(key="name_2").set_value("ear").run()
    assert not page.exception and _annotation(page).names == ("nose", "tail", "ear")


def test_k_shot_a_second_image_takes_the_same_keypoint_list(page: AppTest, tmp_path: Path) -> None:
    clip = write_clip(tmp_path, frames=2)
    _upload_support(page, write_support(clip, tmp_path))
    for t, (x, y) in enumerate([(10, 10), (50, 50)], start=1):
        page.session_state["clicks_0"] = _click(x, y, t=t)
        page.run()
    second = tmp_path / "other.png"
    cv2.imwrite(str(second), np.full((60, 80, 3), 90, np.uint8))
    _upload_support(page, second)
    assert page.radio(key="shot_picker").value == 1  # the new image is the one to click on
    assert "Click to place **kp0** (keypoint 1 of 2)." in [m.value for m in page.markdown]
    page.session_state["clicks_1"] = _click(5, 6, width=80, height=60, t=3)
    page.run()
    assert _annotation(page).shots[1].xy == ((5.0, 6.0), None)
    page.radio(key="shot_picker").set_value(0).run()
    assert page.session_state["shot"] == 0
    _button(page, "Remove this image").click().run()
    a = _annotation(page)
    assert [s.label for s in a.shots] == ["other.png"] and a.names == ("kp0", "kp1")
    assert not page.exception


def test_save_then_load_the_support_file(page: AppTest, tmp_path: Path) -> None:
    clip = write_clip(tmp_path, frames=2)
    image = write_support(clip, tmp_path)
    for t, (x, y) in enumerate([(10, 20), (60, 30)], start=1):
        if t == 1:
            _upload_support(page, image)
        page.session_state["clicks_0"] = _click(x, y, t=t)
        page.run()
    page.text_input(key="name_1").set_value("tail").run()
    assert page.download_button[0].label == "Save ref.json"
    saved = page.session_state["workdir"].path / "saved" / "ref.json"  # the bytes the button offers
    assert json.loads(saved.read_text())["names"] == ["kp0", "tail"]

    fresh = AppTest.from_file(APP, default_timeout=60)
    fresh.run()
    _upload_support(fresh, image)
    _upload(fresh, "keypoints", "ref.json", saved.read_bytes(), "application/json")
    assert not fresh.exception
    assert [s.value for s in fresh.success] == ["Loaded 2 keypoints from ref.json."]
    assert _annotation(fresh).names == ("kp0", "tail")
    assert _annotation(fresh).shots[0].xy == ((10.0, 20.0), (60.0, 30.0))


def test_sample_support_and_clip(page: AppTest) -> None:
    _button(page, "Use the sample support").click().run()
    _button(page, "Use the sample clip").click().run()
    assert not page.exception and not [e for e in _errors(page) if "embedded" not in e]
    a = _annotation(page)
    assert a.num_keypoints == 10 and len(a.skeleton) == 10 and a.shots[0].size == (1280, 720)
    assert page.session_state["video"].summary.startswith("1280×720, 132 frames")


def test_a_frame_of_the_video_becomes_the_support_image(page: AppTest, tmp_path: Path) -> None:
    clip = write_clip(tmp_path, frames=6)
    _upload(page, "video", "clip.mp4", clip.path.read_bytes(), "video/mp4")
    page.slider(key="pick_frame").set_value(3).run()
    _button(page, "Use frame 3 as a support image").click().run()
    assert not page.exception
    shot = _annotation(page).shots[0]
    assert shot.label == "clip_frame3.png" and shot.frame == 3 and shot.size == (160, 120)
    decoded = cv2.cvtColor(cv2.imread(str(shot.image)), cv2.COLOR_BGR2RGB)
    assert np.abs(decoded.astype(int) - clip.render(3).astype(int)).mean() < 12  # frame 3 as decoded (lossy clip)
    page.session_state["clicks_0"] = _click(50, 40, width=640, height=480, t=1)
    page.run()
    assert _annotation(page).shots[0].xy == (pytest.approx((12.125, 9.625)),)
    assert any("--support-frame 3 --keypoints clip_frame3.json" in c.value for c in page.caption)


def test_zoom_and_link_by_clicking(page: AppTest, tmp_path: Path) -> None:
    clip = write_clip(tmp_path, frames=2)
    _upload_support(page, write_support(clip, tmp_path))
    for t, (x, y) in enumerate([(100, 80), (300, 90), (200, 300)], start=1):
        page.session_state["clicks_0"] = _click(x, y, width=640, height=480, t=t)
        page.run()
    page.select_slider(key="zoom_0").set_value(2).run()
    page.slider(key="pan_x_0").set_value(40).run()
    page.slider(key="pan_y_0").set_value(30).run()  # the top-left quarter, 80x60 image px
    page.session_state["clicks_0"] = _click(320, 240, width=640, height=480, t=4)
    page.run()
    assert _annotation(page).shots[0].xy[3] == pytest.approx((39.5625, 29.5625))  # the middle of the window
    page.select_slider(key="zoom_0").set_value(1).run()
    page.toggle(key="link_mode").set_value(True).run()
    page.session_state["clicks_0"] = _click(100, 80, width=640, height=480, t=5)
    page.run()
    assert page.session_state["link_pending"] == 0
    page.session_state["clicks_0"] = _click(200, 300, width=640, height=480, t=6)
    page.run()
    assert _annotation(page).skeleton == ((0, 2),) and page.session_state["link_pending"] is None
    assert _annotation(page).num_keypoints == 4  # link clicks place nothing
    assert not page.exception


@pytest.mark.slow
def test_track_a_generated_clip(page: AppTest, tmp_path: Path, checkpoint: Path) -> None:
    clip = write_clip(tmp_path, frames=16)
    image = write_support(clip, tmp_path)
    _upload_support(page, image)
    keypoints = (tmp_path / "ref.json").read_bytes()
    _upload(page, "keypoints", "ref.json", keypoints, "application/json")
    _upload(page, "video", "my clip.mp4", clip.path.read_bytes(), "video/mp4")
    assert any(m.value == "**my clip.mp4** · 160×120, 16 frames at 25 fps" for m in page.markdown)
    _use_checkpoint(page, checkpoint)
    assert not _errors(page)

    _button(page, "Track").click().run()
    job = page.session_state["job"]
    job.join(60)
    page.run()
    assert not page.exception and not _errors(page)
    assert job.state is JobState.DONE
    assert page.success[-1].value.startswith("Tracked 16 frames")
    assert [b.label for b in page.download_button][1:] == ["⬇ tracked.mp4", "⬇ keypoints.json", "⬇ keypoints.csv"]
    assert job.paths["video"].name == "my_clip.tracked.mp4"
    assert page.multiselect[0].value == list(clip.names)
    assert [t.label for t in page.tabs][:4] == ["Video", "Step and correct", "Compare runs", "Plots"]
    assert json.loads(job.paths["json"].read_text())["names"] == list(clip.names)

    # one correction round: step to frame 8, drag keypoint 0 by 10 px, keep all but the last, add and re-track
    page.slider(key="step_1").set_value(8).run()
    shot = page.session_state["correction"][2]
    assert shot.frame == 8 and shot.label == "my clip_frame8.png" and shot.size == (160, 120)
    tracked = json.loads(job.paths["json"].read_text())["frames"][8]
    assert shot.xy[0] == pytest.approx(tuple(tracked["keypoints"][0]), abs=1e-6)
    (x, y) = shot.xy[0]
    drag = {"x1": x * 4 + 1.5, "y1": y * 4 + 1.5, "x2": x * 4 + 41.5, "y2": y * 4 + 1.5, "width": 640, "height": 480}
    page.session_state["correct_1_8"] = {**drag, "unix_time": 1}
    page.run()
    assert page.session_state["correction"][2].xy[0] == pytest.approx((x + 10, y))
    page.session_state["correct_1_8"] = {**drag, "x1": 5.0, "y1": 5.0, "x2": 5.0, "y2": 5.0, "unix_time": 2}
    page.run()  # a click where every point is placed: the keypoint list stays the run's
    assert page.session_state["correction"][2].xy[0] == pytest.approx((x + 10, y))
    assert _annotation(page).num_keypoints == len(clip.names)
    last = len(clip.names) - 1
    page.checkbox(key=f"confirm_{last}").uncheck().run()
    _button(page, "Add this frame as a support shot and re-track").click().run()
    support = _annotation(page)
    assert len(support.shots) == 2 and support.shots[1].visible[last] is False and support.usable().all()
    runs = page.session_state["runs"]
    assert len(runs) == 2 and runs[1].shots == 2
    runs[1].job.join(60)
    page.run()
    assert not page.exception and not _errors(page) and runs[1].job.state is JobState.DONE
    assert json.loads(runs[1].job.paths["json"].read_text())["names"] == list(clip.names)  # none dropped
    table = page.dataframe[0].value
    assert list(table["keypoint"]) == list(clip.names) and table.shape == (len(clip.names), 3)

    # another video chosen meanwhile: a correction of run 2 still re-tracks run 2's video
    other = write_clip(tmp_path, frames=5, path=tmp_path / "other.mp4")
    _upload(page, "video", "other.mp4", other.path.read_bytes(), "video/mp4")
    page.slider(key="step_2").set_value(3).run()
    _button(page, "Add this frame as a support shot and re-track").click().run()
    assert runs[2].video.path == runs[0].video.path and runs[2].shots == 3
    runs[2].job.join(60)
    page.run()
    page.text_input(key="name_0").set_value("renamed").run()  # the support's keypoints now differ from the runs'
    assert any("keypoints changed since this run" in i.value for i in page.info)
    assert not page.exception


def test_bad_uploads_and_too_few_keypoints_are_messages(page: AppTest, tmp_path: Path, checkpoint: Path) -> None:
    _upload(page, "support_image", "notes.png", b"hello, not a picture", "image/png")
    assert "notes.png: not an image OpenCV can decode (use a JPEG or PNG file)" in _errors(page)
    assert not _annotation(page).shots

    _upload(page, "video", "film.mp4", b"\x00" * 2048, "video/mp4")
    assert any(e.startswith("film.mp4: ") for e in _errors(page))
    assert "video" not in page.session_state

    image = tmp_path / "grey.png"
    cv2.imwrite(str(image), np.full((48, 64, 3), 128, np.uint8))
    _upload_support(page, image)
    _upload(page, "keypoints", "k.json", b"{not json", "application/json")
    assert any(e.startswith("k.json: not valid JSON") for e in _errors(page))

    clip = write_clip(tmp_path, frames=2)
    _upload(page, "video", "clip.mp4", clip.path.read_bytes(), "video/mp4")
    _use_checkpoint(page, tmp_path / "missing.pt")
    assert any("missing.pt: no such checkpoint file" in e for e in _errors(page))
    _use_checkpoint(page, checkpoint)
    _button(page, "Track").click().run()
    assert any(e.startswith("support: too few keypoints") for e in _errors(page))
    assert "job" not in page.session_state
    assert not page.exception


def test_a_sessions_folder_goes_with_it_and_without_a_warning() -> None:
    from cape_track.streamlit_app.session import _Workdir

    folder = _Workdir()
    path = folder.path
    (path / "upload.png").write_bytes(b"x")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del folder
        gc.collect()
    assert not path.exists() and caught == []

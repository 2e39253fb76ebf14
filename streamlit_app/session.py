"""The page's per-session plumbing: the session folder and its files, the annotation history, one-shot notices,
cached decoding of images and video frames, and the click canvas (a picture with keypoints drawn, and the new
pointer event on it). Shared by the page's sections (`app`, `results`); nothing here lays anything out."""

from __future__ import annotations

import re
import shutil
import tempfile
import weakref
from pathlib import Path

import cv2
import numpy as np
import streamlit as st
from streamlit.runtime.uploaded_file_manager import UploadedFile
from streamlit_image_coordinates import streamlit_image_coordinates

from cape_track.model import CapeError
from cape_track.model.support import load_image
from cape_track.streamlit_app.runs import (
    Video,
)
from cape_track.streamlit_app.state import (
    Annotation,
    AnnotationError,
    History,
    View,
)
from cape_track.tracker import draw_pose, keypoint_colors
from cape_track.tracker.sources import read_frame

DISPLAY_SIDE = 960  # longest side of the support image as drawn; clicks are mapped back to its own pixels
MAX_UPSCALE = 4.0  # small images are drawn larger so the points stay crisp
LIST_ROWS, LIST_HEIGHT = 7, 360  # keypoint rows shown before the list scrolls, and its height then (px)


class _Workdir:
    """A session's folder, deleted when the session ends and this object is collected. A `TemporaryDirectory` left to
    the collector does the same but warns (`ResourceWarning`) as it does, which is the normal end of a session."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="cape-track-page-"))
        weakref.finalize(self, shutil.rmtree, self.path, ignore_errors=True)


def workdir() -> Path:
    """This session's folder for uploads and results; deleted when the session ends (its object is collected)."""
    if "workdir" not in st.session_state:
        st.session_state.workdir = _Workdir()
    return st.session_state.workdir.path


def history() -> History:
    if "history" not in st.session_state:
        st.session_state.history = History()
    return st.session_state.history


def next_number(name: str) -> int:
    """A per-session counter: fresh file names and fresh (emptied) upload widgets."""
    number = st.session_state.get(f"count_{name}", 0)
    st.session_state[f"count_{name}"] = number + 1
    return number


def uploader_key(name: str) -> str:
    """The key of an upload widget that empties itself once its file is taken (a new key is a new widget)."""
    return f"{name}_{st.session_state.get(f'round_{name}', 0)}"


def taken(name: str) -> None:
    st.session_state[f"round_{name}"] = st.session_state.get(f"round_{name}", 0) + 1


def save_upload(upload: UploadedFile, stem: str) -> Path:
    """Write an upload into the session folder under a name of ours (the user's name only gives the suffix)."""
    suffix = Path(upload.name).suffix.lower()
    suffix = suffix if re.fullmatch(r"\.[a-z0-9]{1,5}", suffix) else ""
    path = workdir() / f"{stem}{next_number(stem)}{suffix}"
    path.write_bytes(upload.getvalue())
    return path


def notify(area: str, message: str, kind: str = "error") -> None:
    """Keep a message for `area` until the page is next drawn (it survives the rerun an upload triggers)."""
    st.session_state.setdefault("notices", {}).setdefault(area, []).append((kind, message))


def show_notices(area: str) -> None:
    for kind, message in st.session_state.get("notices", {}).pop(area, []):
        getattr(st, kind)(message)


def user_message(exc: CapeError, path: Path, name: str) -> str:
    """An error about a file in the session folder, naming it as the user did."""
    return str(exc).replace(str(path), name)


@st.cache_data(max_entries=32, show_spinner=False)
def read_image(path: str, stamp: float) -> np.ndarray:
    """`[H, W, 3]` uint8 RGB (each call returns its own copy, safe to draw on)."""
    return load_image(path)


def image_of(path: Path) -> np.ndarray:
    return read_image(str(path), path.stat().st_mtime)


@st.cache_data(max_entries=16, show_spinner=False)
def decoded_frame(path: str, stamp: float, index: int) -> np.ndarray:
    """Frame `index` of the video, `[H, W, 3]` uint8 RGB."""
    return read_frame(path, index)


def frame_of(video: Path, index: int) -> np.ndarray:
    return decoded_frame(str(video), video.stat().st_mtime, index)


def frame_file(video: Video, index: int, image: np.ndarray) -> Path:
    """The frame written into the session folder as a PNG (a support image is a file, like an uploaded one)."""
    path = workdir() / f"frame{next_number('frame')}.png"
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise AnnotationError(f"{video.label}: frame {index} could not be saved in the session folder")
    return path


def frame_label(video: Video, index: int) -> str:
    return f"{Path(video.label).stem}_frame{index}.png"


def canvas(image: np.ndarray, key: str) -> dict | None:
    """`image` as the click component; the new press/release event (a rerun repeats the last one: not new)."""
    event = streamlit_image_coordinates(
        image, key=key, click_and_drag=True, width="stretch", image_format="JPEG", jpeg_quality=90, cursor="crosshair"
    )
    if not event or "x1" not in event or event.get("unix_time") == st.session_state.get(f"{key}_last"):
        return None
    st.session_state[f"{key}_last"] = event.get("unix_time")
    return event


def drawn(
    annotation: Annotation, k: int, view: View, pending: int | None = None, image: np.ndarray | None = None
) -> np.ndarray:
    """The part `view` of shot `k` (of `image` when given: a video frame not saved yet), resized for display, with
    its placed keypoints, names and skeleton drawn by the tracker's `draw_pose` (colours match the tracked video;
    a hidden one as a ring, where it can still be dragged); `pending`, a keypoint picked for linking, ringed."""
    shot = annotation.shots[k]
    image = image_of(shot.image) if image is None else image
    x0, y0 = int(view.left), int(view.top)  # `View.of` keeps whole pixels: this crop is exactly the view
    window = image[y0 : y0 + int(view.height), x0 : x0 + int(view.width)]
    scale = min(DISPLAY_SIDE / max(window.shape[:2]), MAX_UPSCALE * shot.size[0] / view.width)
    size = (max(1, round(window.shape[1] * scale)), max(1, round(window.shape[0] * scale)))
    picture = cv2.resize(window, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    placed = [i for i, p in enumerate(shot.xy) if p is not None]
    if not placed:
        return picture
    sx, sy = size[0] / window.shape[1], size[1] / window.shape[0]
    xy = (np.array([shot.xy[i] for i in placed]) + 0.5 - (x0, y0)) * (sx, sy) - 0.5  # image px -> display px
    slot = {i: j for j, i in enumerate(placed)}
    colors = keypoint_colors(annotation.num_keypoints)
    draw_pose(
        picture,
        xy,
        visible=np.array([shot.visible[i] for i in placed]),
        skeleton=[(slot[a], slot[b]) for a, b in annotation.skeleton if a in slot and b in slot],
        names=[annotation.names[i] for i in placed],
        colors=colors[placed],
        radius=canvas_radius(picture),
        rings=True,
    )
    if pending in slot:
        center = tuple(int(v) for v in np.round(xy[slot[pending]]))
        cv2.circle(picture, center, max(8, round(min(size) / 40)), (255, 255, 255), 2, cv2.LINE_AA)
    return picture


def canvas_radius(picture: np.ndarray) -> int:
    """Dots big enough to see and grab on a picture the page shows at about half its pixels."""
    return max(5, round(min(picture.shape[:2]) / 60))


def frame_slider(label: str, video: Video, key: str, last: int | None = None) -> int:
    """A frame index of `video`, up to `last` (default its last frame); a number box when the container does not
    give the count, nothing to choose for a one-frame video."""
    last = (video.frames - 1 if video.frames else None) if last is None else last
    if last is None:
        return int(st.number_input(label, min_value=0, step=1, key=key))
    if last < 1:
        return 0
    return st.slider(label, 0, last, key=key)

"""The cape-track page: choose a video, click keypoints on one of its frames or on support image(s), link a
skeleton, track with a progress bar, then watch, step, correct a frame (it becomes another support shot and the
clip is re-tracked), compare runs, plot and download. UI only: the edits are `state`'s, the runs' arithmetic is
`runs`', loading, drawing and tracking are the model's and tracker's public API; uploads and extracted frames
live in a per-session temporary folder."""

from __future__ import annotations

import re
import tempfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import altair as alt
import cv2
import numpy as np
import pandas as pd
import streamlit as st
import torch
from streamlit.runtime.uploaded_file_manager import UploadedFile
from streamlit_image_coordinates import streamlit_image_coordinates

from cape_track.model import CapeError, CapeModel, KeypointFile
from cape_track.model.support import load_image
from cape_track.streamlit_app.job import JobState, TrackingJob
from cape_track.streamlit_app.runs import (
    Run,
    Video,
    correction_points,
    disagreement,
    mean_disagreement,
    row_of,
)
from cape_track.streamlit_app.state import (
    Annotation,
    AnnotationError,
    History,
    View,
    link_click,
    pointer_edit,
)
from cape_track.tracker import TrackerConfig, draw_pose, keypoint_colors, open_source, select_device
from cape_track.tracker.accel import configure_cpu_threads
from cape_track.tracker.drawing import hex_color
from cape_track.tracker.sources import read_frame
from cape_track.tracker.tracks import Tracks, TracksFileError

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
IMAGE_TYPES = ["jpg", "jpeg", "png", "bmp", "webp", "tif", "tiff"]
VIDEO_TYPES = ["mp4", "mov", "m4v", "mkv", "webm", "avi", "mpg", "mpeg"]
CHECKPOINT_TYPES = ["pt", "pth", "ckpt"]
DISPLAY_SIDE = 960  # longest side of the support image as drawn; clicks are mapped back to its own pixels
MAX_UPSCALE = 4.0  # small images are drawn larger so the points stay crisp
LIST_ROWS, LIST_HEIGHT = 7, 360  # keypoint rows shown before the list scrolls, and its height then (px)
POLL_S = 0.5  # how often the progress bar refreshes while tracking
CHECKPOINTS = ("Embedded default", "File on this machine", "Upload a file")
ZOOMS = (1, 2, 3, 4)  # support canvas magnifications
PLOTTED = 12  # keypoints plotted by default (all are selectable)


@dataclass(frozen=True)
class Settings:
    model: CapeModel | None  # None: the chosen checkpoint could not be loaded (the sidebar says why)
    config: TrackerConfig


# ---------------------------------------------------------------------------------------------------- session
def workdir() -> Path:
    """This session's folder for uploads and results; deleted when the session ends (its object is collected)."""
    if "workdir" not in st.session_state:
        st.session_state.workdir = tempfile.TemporaryDirectory(prefix="cape-track-page-")
    return Path(st.session_state.workdir.name)


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


@st.cache_resource(max_entries=2, show_spinner="Loading the model…")
def load_model(checkpoint: str | None, stamp: float, device: str) -> CapeModel:
    """One model per (checkpoint, file time, device), shared by every session; `stamp` renews it when the file
    changes. Torch gets the CLI's thread count (one core left to decoding and encoding), so the page tracks at the
    CLI's speed. Uploaded checkpoints are never unpickled (weights-only loading, no --trust-checkpoint here)."""
    model = CapeModel.from_checkpoint(checkpoint, device=device)
    configure_cpu_threads(model.device)
    return model


@st.cache_data(max_entries=32, show_spinner=False)
def read_image(path: str, stamp: float) -> np.ndarray:
    """`[H, W, 3]` uint8 RGB (each call returns its own copy, safe to draw on)."""
    return load_image(path)


def image_of(path: Path) -> np.ndarray:
    return read_image(str(path), path.stat().st_mtime)


# ---------------------------------------------------------------------------------------------------- sidebar
def sidebar() -> Settings:
    with st.sidebar:
        st.header("Model")
        choice = st.radio("Checkpoint", CHECKPOINTS, key="checkpoint_choice")
        checkpoint: Path | None = None
        if choice == CHECKPOINTS[1]:
            text = st.text_input("Checkpoint path", key="checkpoint_path", placeholder="/path/to/model.pt").strip()
            checkpoint = Path(text).expanduser() if text else None
        elif choice == CHECKPOINTS[2]:
            upload = st.file_uploader("Checkpoint file", type=CHECKPOINT_TYPES, key="checkpoint_upload")
            if upload is not None:
                if st.session_state.get("checkpoint_file_id") != upload.file_id:
                    st.session_state.checkpoint_file = save_upload(upload, "checkpoint")
                    st.session_state.checkpoint_file_id = upload.file_id
                checkpoint = st.session_state.checkpoint_file
        devices = ["auto", "cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        device_spec = st.selectbox("Device", devices, key="device")
        st.header("Tracking")
        smooth = st.toggle("Smooth the tracks (Kalman filter)", value=True, key="smooth")
        offline = st.toggle(
            "Offline smoothing pass", value=False, key="offline", disabled=not smooth, help="reads the video twice"
        )
        batch = st.slider("Frames per model call", 1, 16, 4, key="batch")
        model = None
        if choice != CHECKPOINTS[0] and checkpoint is None:
            st.info("Give a checkpoint file to track with.")
        else:
            try:
                device = str(select_device(device_spec))
                stamp = checkpoint.stat().st_mtime if checkpoint is not None and checkpoint.is_file() else 0.0
                model = load_model(str(checkpoint) if checkpoint is not None else None, stamp, device)
                name = "embedded default" if checkpoint is None else checkpoint.name
                st.caption(f"✓ Model: {name} ({model.config.backbone.name}) on {device}")
            except CapeError as exc:
                if checkpoint is None:
                    st.error(
                        f"The embedded default model is not available yet ({exc}). Choose “{CHECKPOINTS[1]}” or "
                        f"“{CHECKPOINTS[2]}” to track with another checkpoint."
                    )
                else:
                    st.error(str(exc))
    return Settings(model, TrackerConfig(batch=batch, smooth=smooth, offline=smooth and offline))


# ---------------------------------------------------------------------------------------------------- support
def support_section() -> None:
    st.subheader("2 · Support: click the keypoints to track")
    add, sample = st.columns([2, 1], vertical_alignment="bottom")
    with add:
        upload = st.file_uploader(
            "Add a support image (more images with the same keypoints make a K-shot support)",
            type=IMAGE_TYPES,
            key=uploader_key("support_image"),
        )
    with sample:
        st.button("Use the sample support", on_click=use_sample_support, width="stretch")
    if upload is not None:
        add_shot(upload)
        taken("support_image")
        st.rerun()
    show_notices("support")
    annotation = history().current
    if not annotation.shots:
        st.info(
            "Pick a frame of the video above, upload a support image or use the sample, then click on it to place "
            "keypoints in order."
        )
        return
    k = active_shot(annotation)
    picture, side = st.columns([1, 1], gap="medium")
    with picture:
        annotate(annotation, k)
    with side:
        keypoint_list(annotation, k)
        skeleton_editor(annotation)
        files(annotation, k)


def use_sample_support() -> None:
    image = SAMPLES / "sample.jpg"
    try:
        size = image_size(image)
        file = KeypointFile.load(SAMPLES / "sample.json", image_size=size)
        history().apply(Annotation().add_shot(image, image.name, size).with_file(0, file))
    except CapeError as exc:
        notify("support", str(exc))
        return
    st.session_state.shot = 0


def image_size(path: Path) -> tuple[int, int]:
    height, width = image_of(path).shape[:2]
    return width, height


def add_shot(upload: UploadedFile) -> None:
    path = save_upload(upload, "support")
    try:
        size = image_size(path)
    except CapeError as exc:
        path.unlink(missing_ok=True)
        notify("support", user_message(exc, path, upload.name))
        return
    annotation = history().current.add_shot(path, upload.name, size)
    history().apply(annotation)
    st.session_state.shot = len(annotation.shots) - 1


def active_shot(annotation: Annotation) -> int:
    """The shot being clicked on: the newest one added, or the one picked when there are several."""
    k = min(st.session_state.get("shot", 0), len(annotation.shots) - 1)
    st.session_state.shot = k
    if len(annotation.shots) > 1:
        st.session_state.shot_picker = k
        st.radio(
            "Support image",
            range(len(annotation.shots)),
            format_func=lambda i: f"{i + 1}: {annotation.shots[i].label}",
            horizontal=True,
            key="shot_picker",
            on_change=pick_shot,
        )
    return k


def pick_shot() -> None:
    st.session_state.shot = st.session_state.shot_picker


def annotate(annotation: Annotation, k: int) -> None:
    """The support image with its keypoints and skeleton drawn, as a click component: a click places the next
    keypoint, a drag moves one; in link mode two clicks join two keypoints. Zoom shows a window of the image."""
    shot = annotation.shots[k]
    n = annotation.num_keypoints
    zoom_box, link_box = st.columns(2, vertical_alignment="bottom")
    zoom = zoom_box.select_slider("Zoom", ZOOMS, key=f"zoom_{k}", format_func=lambda z: f"{z}×")
    linking = link_box.toggle("Link by clicking", key="link_mode", help="click two keypoints to join them")
    view = View.of(shot.size)
    if zoom > 1 and min(shot.size) > 1:
        across, down = st.columns(2)
        cx = across.slider("Pan ↔", 0, shot.size[0] - 1, shot.size[0] // 2, key=f"pan_x_{k}")
        cy = down.slider("Pan ↕", 0, shot.size[1] - 1, shot.size[1] // 2, key=f"pan_y_{k}")
        view = View.of(shot.size, zoom, (cx, cy))
    if not linking:
        st.session_state.pop("link_pending", None)
    pending_id = st.session_state.get("link_pending")  # a stable id: deletes and undo cannot retarget it
    pending = annotation.ids.index(pending_id) if pending_id in annotation.ids else None
    following = shot.next_unplaced()
    if linking:
        picked = (
            f"**{annotation.names[pending]}** picked: click the keypoint to join it to" if pending is not None else ""
        )
        st.markdown(picked or "Click a keypoint, then another, to join them (again to remove the edge).")
    elif following is not None:
        st.markdown(f"Click to place **{annotation.names[following]}** (keypoint {following + 1} of {n}).")
    else:
        st.markdown("Click to add a keypoint · drag a keypoint to move it.")
    event = canvas(drawn(annotation, k, view, pending), f"clicks_{k}")
    if event is not None:
        if linking:
            edited, st.session_state.link_pending = link_click(annotation, k, event, pending_id, view)
        else:
            edited = pointer_edit(annotation, k, event, view)
        history().apply(edited)
        st.rerun()
    undo, drop = st.columns(2)
    undo.button("↶ Undo", on_click=history().undo, disabled=not history().can_undo, width="stretch")
    drop.button("Remove this image", on_click=remove_shot, args=(k,), width="stretch")
    st.caption(f"{shot.label}: {shot.size[0]}×{shot.size[1]} px, {shot.placed} of {n} keypoints placed")


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


def remove_shot(k: int) -> None:
    history().apply(history().current.remove_shot(k))
    st.session_state.shot = max(0, k - 1)


def keypoint_list(annotation: Annotation, k: int) -> None:
    """Names (editable), visibility on this image, delete: one row per keypoint, keyed by its stable id."""
    shot = annotation.shots[k]
    st.markdown(f"**Keypoints** · {annotation.num_keypoints}")
    show_notices("keypoints")
    if not annotation.num_keypoints:
        st.caption("None yet: click on the image.")
        return
    colors = keypoint_colors(annotation.num_keypoints)
    st.caption("name · visible on this image · delete")
    with st.container(height=LIST_HEIGHT if annotation.num_keypoints > LIST_ROWS else "content", border=False):
        for i, (uid, name) in enumerate(zip(annotation.ids, annotation.names, strict=True)):
            swatch, label, flag, delete = st.columns([0.3, 2.4, 0.6, 0.7], vertical_alignment="center")
            swatch.markdown(
                f"<span style='color:{hex_color(colors[i])};font-size:1.4em'>●</span>", unsafe_allow_html=True
            )
            st.session_state[f"name_{uid}"] = name  # the list is the truth (undo, loads); the box shows it
            label.text_input("name", key=f"name_{uid}", on_change=rename, args=(uid,), label_visibility="collapsed")
            if shot.xy[i] is None:
                flag.caption("next" if i == shot.next_unplaced() else "not placed")
            else:
                st.session_state[f"visible_{uid}_{k}"] = shot.visible[i]
                flag.checkbox(
                    "visible",
                    key=f"visible_{uid}_{k}",
                    on_change=toggle_visible,
                    args=(uid, k),
                    label_visibility="collapsed",
                    help=f"{name} visible on this image (untick: occluded here)",
                )
            delete.button("✕", key=f"delete_{uid}", on_click=delete_keypoint, args=(uid,), help=f"delete {name}")


def index_of(uid: int) -> int:
    return history().current.ids.index(uid)


def rename(uid: int) -> None:
    try:
        history().apply(history().current.rename(index_of(uid), st.session_state[f"name_{uid}"]))
    except AnnotationError as exc:
        notify("keypoints", str(exc))


def toggle_visible(uid: int, k: int) -> None:
    history().apply(history().current.set_visible(k, index_of(uid), st.session_state[f"visible_{uid}_{k}"]))


def delete_keypoint(uid: int) -> None:
    history().apply(history().current.delete(index_of(uid)))


def skeleton_editor(annotation: Annotation) -> None:
    count = len(annotation.skeleton)
    st.markdown(f"**Skeleton** · {count} edge{'' if count == 1 else 's'}")
    show_notices("skeleton")
    n = annotation.num_keypoints
    if n < 2:
        st.caption("Place two keypoints to link them.")
        return
    # The selectors hold stable keypoint ids, never positions or names: a rename, delete or undo changes the labels
    # and positions under them. Their keys carry the names, so a rename draws them anew (a browser keeps showing a
    # kept selector's old label); the pair chosen survives in `link_ids`, and a stale id falls back to the default.
    ids = list(annotation.ids)
    chosen = st.session_state.setdefault("link_ids", {})
    start = chosen.get("from") if chosen.get("from") in ids else ids[0]
    end = chosen.get("to") if chosen.get("to") in ids else ids[1]
    name_of = dict(zip(ids, annotation.names, strict=True))
    names = zlib.crc32("\x1f".join(annotation.names).encode())
    first, second, button = st.columns([2, 2, 1.3], vertical_alignment="bottom")
    chosen["from"] = first.selectbox(
        "Link", ids, index=ids.index(start), format_func=name_of.get, key=f"link_from_{names}"
    )
    chosen["to"] = second.selectbox("to", ids, index=ids.index(end), format_func=name_of.get, key=f"link_to_{names}")
    button.button("Link", on_click=link, width="stretch")
    if annotation.skeleton:
        st.pills(
            "Edges (click one to remove it)",
            range(len(annotation.skeleton)),
            format_func=lambda e: " – ".join(annotation.names[i] for i in annotation.skeleton[e]),
            key=f"edges_{len(annotation.skeleton)}",
            on_change=unlink,
            args=(len(annotation.skeleton),),
            wrap=True,
        )


def link() -> None:
    try:
        history().apply(
            history().current.link(
                index_of(st.session_state.link_ids["from"]), index_of(st.session_state.link_ids["to"])
            )
        )
    except AnnotationError as exc:
        notify("skeleton", str(exc))


def unlink(count: int) -> None:
    edge = st.session_state[f"edges_{count}"]
    if edge is not None:
        history().apply(history().current.unlink(edge))


def files(annotation: Annotation, k: int) -> None:
    """Save this image's keypoints as the support file the CLI reads (`ref.json` beside `ref.jpg`), or load one."""
    shot = annotation.shots[k]
    st.markdown("**Support file**")
    show_notices("files")
    save, load = st.columns(2, vertical_alignment="top")
    name = f"{Path(shot.label).stem}.json"
    if annotation.num_keypoints:
        path = workdir() / "saved" / name
        path.parent.mkdir(exist_ok=True)
        annotation.keypoint_file(k).save(path)
        save.download_button(
            f"Save {name}",
            path.read_bytes(),
            file_name=name,
            mime="application/json",
            on_click="ignore",
            width="stretch",
        )
    else:
        save.button(f"Save {name}", disabled=True, width="stretch")
    upload = load.file_uploader(
        "Load keypoints (.json)", type=["json"], key=uploader_key("keypoints"), label_visibility="collapsed"
    )
    if shot.frame is None:
        st.caption(f"Keep {name} beside {shot.label} so that `cape-track VIDEO --support {shot.label}` finds it.")
    else:
        st.caption(
            f"Track from the command line with `cape-track VIDEO --support-frame {shot.frame} --keypoints {name}`."
        )
    if upload is not None:
        load_keypoints(upload, k)
        taken("keypoints")
        st.rerun()


def load_keypoints(upload: UploadedFile, k: int) -> None:
    path = save_upload(upload, "keypoints")
    current = history().current
    try:
        file = KeypointFile.load(path, image_size=current.shots[k].size)
        history().apply(current.with_file(k, file))
    except CapeError as exc:
        notify("files", user_message(exc, path, upload.name))
        return
    notify("files", f"Loaded {len(file.names)} keypoints from {upload.name}.", "success")


# ---------------------------------------------------------------------------------------------------- video
def video_section() -> None:
    st.subheader("1 · Video")
    add, sample = st.columns([2, 1], vertical_alignment="bottom")
    with add:
        upload = st.file_uploader("Upload a video", type=VIDEO_TYPES, key=uploader_key("video"))
    with sample:
        st.button("Use the sample clip", on_click=choose_video, args=(SAMPLES / "sample.mp4",), width="stretch")
    if upload is not None:
        path = save_upload(upload, "video")
        choose_video(path, upload.name)
        taken("video")
        st.rerun()
    show_notices("video")
    video: Video | None = st.session_state.get("video")
    if video is None:
        st.info("Upload the video to track (or use the sample clip).")
        return
    st.markdown(f"**{video.label}** · {video.summary}")
    frame_picker(video)


def choose_video(path: Path, label: str | None = None) -> None:
    """Probe the video (its first frame must decode) and make it the one to track."""
    label = label or path.name
    try:
        with open_source(path) as source:
            frames = f"{source.frame_count} frames" if source.frame_count else "frame count unknown"
            summary = f"{source.width}×{source.height}, {frames} at {source.fps:.3g} fps"
            count = source.frame_count
    except CapeError as exc:
        if path.parent == workdir():
            path.unlink(missing_ok=True)
        notify("video", user_message(exc, path, label))
        return
    st.session_state.video = Video(path, label, summary, count)


@st.cache_data(max_entries=16, show_spinner=False)
def decoded_frame(path: str, stamp: float, index: int) -> np.ndarray:
    """Frame `index` of the video, `[H, W, 3]` uint8 RGB."""
    return read_frame(path, index)


def frame_of(video: Path, index: int) -> np.ndarray:
    return decoded_frame(str(video), video.stat().st_mtime, index)


def frame_slider(label: str, video: Video, key: str, last: int | None = None) -> int:
    """A frame index of `video`, up to `last` (default its last frame); a number box when the container does not
    give the count, nothing to choose for a one-frame video."""
    last = (video.frames - 1 if video.frames else None) if last is None else last
    if last is None:
        return int(st.number_input(label, min_value=0, step=1, key=key))
    if last < 1:
        return 0
    return st.slider(label, 0, last, key=key)


def frame_picker(video: Video) -> None:
    """Step through the video and take a frame as a support image, to click the keypoints on (the usual start:
    label frame 0 of your own clip)."""
    with st.expander("Pick a frame as the support image", expanded=not history().current.shots):
        index = frame_slider("Frame to label", video, "pick_frame")
        try:
            image = frame_of(video.path, index)
        except CapeError as exc:
            st.error(user_message(exc, video.path, video.label))
            return
        st.image(image, caption=f"{video.label}, frame {index}", width="stretch")
        st.button(f"Use frame {index} as a support image", on_click=use_frame, args=(video, index), type="primary")


def frame_file(video: Video, index: int, image: np.ndarray) -> Path:
    """The frame written into the session folder as a PNG (a support image is a file, like an uploaded one)."""
    path = workdir() / f"frame{next_number('frame')}.png"
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise AnnotationError(f"{video.label}: frame {index} could not be saved in the session folder")
    return path


def frame_label(video: Video, index: int) -> str:
    return f"{Path(video.label).stem}_frame{index}.png"


def use_frame(video: Video, index: int) -> None:
    try:
        image = frame_of(video.path, index)
        path = frame_file(video, index, image)
    except CapeError as exc:
        notify("video", user_message(exc, video.path, video.label))
        return
    size = (image.shape[1], image.shape[0])
    annotation = history().current.add_shot(path, frame_label(video, index), size, frame=index)
    history().apply(annotation)
    st.session_state.shot = len(annotation.shots) - 1


# ---------------------------------------------------------------------------------------------------- tracking
def running() -> bool:
    job: TrackingJob | None = st.session_state.get("job")
    return job is not None and job.running


def track_section(settings: Settings) -> None:
    st.subheader("3 · Track")
    busy = running()
    if st.button("Track", type="primary", disabled=busy, icon="▶"):
        try:
            start_tracking(settings, st.session_state.get("video"))
        except CapeError as exc:
            st.error(str(exc))
        else:
            st.rerun()
    st.session_state.job_shown_finished = "job" in st.session_state and not busy
    st.fragment(show_progress, run_every=POLL_S if busy else None)()


def start_tracking(settings: Settings, video: Video | None) -> None:
    """Check everything the run needs (cheapest first), then start it in the background as the next run. One run
    at a time: they would share the cores, and the progress and Cancel are the running one's."""
    if running():
        raise AnnotationError("tracking: a run is going (wait for it, or cancel it)")
    annotation = history().current
    if not annotation.shots:
        raise AnnotationError("support: no support image (upload one, or pick a video frame, and click its keypoints)")
    if video is None:
        raise AnnotationError("video: none chosen (upload a video or use the sample clip)")
    if settings.model is None:
        raise AnnotationError("model: no checkpoint loaded (choose one in the sidebar)")
    support = annotation.support_set([image_of(shot.image) for shot in annotation.shots])
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(video.label).stem) or "video"
    number = next_number("run") + 1
    job = TrackingJob(settings.model, support, video.path, workdir() / f"run{number}", stem, settings.config)
    st.session_state.setdefault("runs", []).append(Run(number, job, video, support.shots))
    st.session_state.job = job
    st.session_state.run_shown = number  # the results show this run once it ends


def show_progress() -> None:
    """Redrawn every `POLL_S` while a run is going; reruns the whole page once the run has ended."""
    job: TrackingJob | None = st.session_state.get("job")
    if job is None:
        return
    if not job.running:
        if not st.session_state.get("job_shown_finished"):
            st.rerun()
        return
    p = job.progress()
    label = st.session_state["runs"][-1].video.label
    if p.frames:
        left = f" · {p.eta:.0f} s left" if p.eta is not None else ""
        text = f"Tracking {label}: {p.frames} / {p.total or '?'} frames · {p.fps:.1f} fps{left}"
    else:
        text = f"Tracking {label}: encoding the support, reading the first frames…"
    st.progress(p.fraction, text=text)
    st.button("Cancel", on_click=job.cancel, key="cancel")


# ---------------------------------------------------------------------------------------------------- results
def results_section(settings: Settings) -> None:
    runs: list[Run] = [r for r in st.session_state.get("runs", []) if not r.job.running]
    if not runs:
        return
    st.subheader("4 · Results")
    numbers = [r.number for r in runs]
    shown = st.session_state.get("run_shown")
    index = numbers.index(shown) if shown in numbers else len(runs) - 1
    if len(runs) > 1:
        # Unkeyed: a new finished run changes the options, hence the widget, so `index` (the newest) applies.
        index = st.selectbox("Run", range(len(runs)), index=index, format_func=lambda i: runs[i].title)
        if shown in numbers:  # a run still going stays the one to show once it ends
            st.session_state.run_shown = numbers[index]
    run = runs[index]
    p = run.job.progress()
    if run.job.state is JobState.DONE:
        st.success(f"Tracked {p.frames} frames in {p.seconds:.1f} s ({p.fps:.1f} fps).")
    elif run.job.state is JobState.CANCELLED:
        st.warning(f"Cancelled after {p.frames} frames; the results below cover those frames.")
    else:
        st.error(run.job.error or "tracking failed")
    tracks = tracks_of(run)
    if tracks is None:
        return
    watch, correct, compare, plots = st.tabs(["Video", "Step and correct", "Compare runs", "Plots"])
    with watch:
        video_and_downloads(run)
    with correct:
        correction(run, tracks, settings)
    with compare:
        comparison(runs, run)
    with plots:
        plot_tracks(tracks)


def tracks_of(run: Run) -> Tracks | None:
    """The run's tracks, read once per run (a finished run's files do not change)."""
    cache = st.session_state.setdefault("tracks", {})
    if run.number not in cache:
        try:
            cache[run.number] = run.tracks()
        except TracksFileError:
            cache[run.number] = None  # a run stopped before its first frame: its file has no frames
    return cache[run.number]


def video_and_downloads(run: Run) -> None:
    paths = run.job.paths
    if paths["video"].is_file():
        st.video(str(paths["video"]))
    buttons = st.columns(3)
    for column, (kind, mime) in zip(
        buttons, (("video", "video/mp4"), ("json", "application/json"), ("csv", "text/csv")), strict=True
    ):
        path = paths[kind]
        if path.is_file():
            column.download_button(
                f"⬇ {path.name.split('.', 1)[1]}",
                path.read_bytes,
                file_name=path.name,
                mime=mime,
                on_click="ignore",
                width="stretch",
                key=f"download_{kind}_{run.number}",
            )


def annotated_frame(run: Run, tracks: Tracks, index: int) -> np.ndarray:
    """Frame `index` of the run's video with the run's points drawn as in its annotated video."""
    image = frame_of(run.video.path, index).copy()
    row = row_of(tracks, index)
    if row is not None:
        scores = tracks.scores[row] if tracks.scores is not None else None
        colors = keypoint_colors(len(tracks.names))
        radius = canvas_radius(image) * max(image.shape[:2]) // DISPLAY_SIDE  # as on the canvas once shown
        draw_pose(image, tracks.xy[row], scores, tracks.visible[row], tracks.skeleton, tracks.names, colors, radius)
    return image


def correction(run: Run, tracks: Tracks, settings: Settings) -> None:
    """Step to any frame with the run's points pre-filled; drag the wrong ones, untick the ones not to confirm,
    then add the frame as a support shot and re-track.

    Only the corrected shot is kept (`correction`, with its run and frame); it joins the support as it is when
    the button is pressed, so edits made to the support meanwhile are kept. The frame is written to a file only
    then."""
    first, last = int(tracks.index[0]), int(tracks.index[-1])
    index = st.slider("Frame to check", first, last, key=f"step_{run.number}") if last > first else first
    base = history().current
    if base.names != tracks.names:
        st.image(annotated_frame(run, tracks, index), caption=f"frame {index}", width="stretch")
        st.info("The support's keypoints changed since this run: track again to correct its frames.")
        return
    try:
        image = frame_of(run.video.path, index)
    except CapeError as exc:
        st.error(user_message(exc, run.video.path, run.video.label))
        return
    kept = st.session_state.get("correction")
    if kept is None or kept[:2] != (run.number, index):
        size = (image.shape[1], image.shape[0])
        points = correction_points(tracks, index)
        shot = Annotation(names=base.names).add_shot(run.video.path, frame_label(run.video, index), size, points, index)
        kept = st.session_state.correction = (run.number, index, shot.shots[0])
    draft = replace(base, shots=(*base.shots, kept[2]))
    k = len(draft.shots) - 1
    picture, side = st.columns([3, 2], gap="medium")
    with picture:
        st.markdown("Drag a wrong point to where it belongs · click to place a missing one.")
        event = canvas(drawn(draft, k, View.of(draft.shots[k].size), image=image), f"correct_{run.number}_{index}")
        if event is not None:
            st.session_state.correction = (run.number, index, pointer_edit(draft, k, event, grow=False).shots[k])
            st.rerun()
    with side:
        shot = draft.shots[k]
        confirmed = sum(shot.visible)
        st.markdown(f"**Confirmed on this frame** · {confirmed} of {draft.num_keypoints}")
        st.caption("Unticked points are ignored on this frame only; the other support images still describe them.")
        colors = keypoint_colors(draft.num_keypoints)
        with st.container(height=LIST_HEIGHT if draft.num_keypoints > LIST_ROWS else "content", border=False):
            for i, name in enumerate(draft.names):
                swatch, row = st.columns([0.12, 1], vertical_alignment="center")
                swatch.markdown(f"<span style='color:{hex_color(colors[i])}'>●</span>", unsafe_allow_html=True)
                if shot.xy[i] is None:
                    following = " (click to place it)" if i == shot.next_unplaced() else ""
                    row.markdown(f"{name} · not placed{following}")
                    continue
                st.session_state[f"confirm_{i}"] = shot.visible[i]
                row.checkbox(name, key=f"confirm_{i}", on_change=confirm, args=(i,))
        st.button(
            "Add this frame as a support shot and re-track",
            on_click=add_correction,
            args=(settings, run),
            type="primary",
            disabled=confirmed == 0 or running(),
            help="one run at a time" if running() else None,
            width="stretch",
        )
        show_notices("correction")


def confirm(i: int) -> None:
    number, index, shot = st.session_state.correction
    visible = (
        shot.visible[:i] + (bool(st.session_state[f"confirm_{i}"]) and shot.xy[i] is not None,) + shot.visible[i + 1 :]
    )
    st.session_state.correction = (number, index, replace(shot, visible=visible))


def add_correction(settings: Settings, run: Run) -> None:
    """The corrected frame joins the support as it is now (undo takes it out again), and the run's video is
    tracked anew."""
    _, index, shot = st.session_state.correction
    base = history().current
    try:
        if base.names != tuple(run.job.names):
            raise AnnotationError("correction: the support's keypoints changed since this run (track again first)")
        path = frame_file(run.video, index, frame_of(run.video.path, index))
        annotation = replace(base, shots=(*base.shots, replace(shot, image=path)))
        history().apply(annotation)
        st.session_state.shot = len(annotation.shots) - 1
        st.session_state.pop("correction", None)
        start_tracking(settings, run.video)
    except CapeError as exc:
        notify("correction", str(exc))


def comparison(runs: list[Run], run: Run) -> None:
    """Two runs of the same video and keypoints side by side at a chosen frame, with how far apart they put each
    keypoint there and on average."""
    names = tracks_of(run).names
    same = [r for r in runs if r.video.path == run.video.path and (t := tracks_of(r)) is not None and t.names == names]
    if len(same) < 2:
        st.info("Correct a frame (or track again) to compare two runs of this video and these keypoints here.")
        return
    titles = {r.number: r.title for r in same}
    numbers = list(titles)
    left, right = st.columns(2)
    # Unkeyed: when a run is added the options change, and the pair shown becomes the newest two again.
    a = left.selectbox("Run A", numbers, index=len(numbers) - 2, format_func=titles.get)
    b = right.selectbox("Run B", numbers, index=len(numbers) - 1, format_func=titles.get)
    ra, rb = (next(r for r in same if r.number == n) for n in (a, b))
    ta, tb = tracks_of(ra), tracks_of(rb)
    last = int(max(ta.index[-1], tb.index[-1]))
    index = st.slider("Frame to compare", 0, last, key="compare_frame") if last > 0 else 0
    for column, r, t in ((left, ra, ta), (right, rb, tb)):
        column.image(annotated_frame(r, t, index), caption=f"Run {r.number}, frame {index}", width="stretch")
    here, overall = disagreement(ta, tb, index), mean_disagreement(ta, tb)
    columns = {f"px apart on frame {index}": here, "mean px apart (all frames)": overall}
    table = pd.DataFrame({"keypoint": ta.names, **columns}).round(1)
    number = {name: st.column_config.NumberColumn(format="%.1f") for name in columns}
    st.dataframe(table, hide_index=True, width="stretch", column_config=number)
    st.caption("Empty: hidden in either run on that frame.")


def plot_tracks(tracks: Tracks) -> None:
    """Each chosen keypoint's x, y and score over time, in the keypoint colours of the video; hidden points are
    gaps, and the legend lists every keypoint plotted."""
    names = list(tracks.names)
    colors = keypoint_colors(len(names))
    chosen = st.multiselect("Keypoints to plot", names, default=names[:PLOTTED], key="plot_keypoints")
    if not chosen:
        st.caption("Choose keypoints to plot.")
        return
    time = tracks.time if tracks.time is not None else tracks.index.astype(float)
    axis = "time (s)" if tracks.time is not None else "frame"
    xy = tracks.hidden_nan()
    columns = {"x": xy[..., 0], "y": xy[..., 1]}
    if tracks.scores is not None:
        columns["score"] = tracks.scores
    scale = alt.Scale(domain=chosen, range=[hex_color(colors[names.index(n)]) for n in chosen])
    legend = alt.Legend(orient="bottom", columns=min(len(chosen), 6), title=None, symbolLimit=0, labelLimit=160)
    for tab, (field, values) in zip(st.tabs(list(columns)), columns.items(), strict=True):
        with tab:
            frame = pd.DataFrame({"time": np.repeat(time, len(chosen)), "keypoint": np.tile(chosen, len(time))}).assign(
                value=values[:, [names.index(n) for n in chosen]].ravel()
            )
            chart = (
                alt.Chart(frame)
                .mark_line()
                .encode(
                    x=alt.X("time:Q", title=axis),
                    y=alt.Y("value:Q", title=f"{field} (px)" if field != "score" else "score"),
                    color=alt.Color("keypoint:N", scale=scale, legend=legend),
                )
                .properties(height=280)
            )
            st.altair_chart(chart, width="stretch")


def main() -> None:
    st.set_page_config(page_title="cape-track", page_icon="🎯", layout="wide")
    st.title("cape-track")
    st.caption(
        "Track the keypoints you click on a frame of your video or on support images: any object category "
        "(graph-based category-agnostic pose estimation, Pose Anything). Correct a frame and re-track."
    )
    settings = sidebar()
    video_section()
    st.divider()
    support_section()
    st.divider()
    track_section(settings)
    results_section(settings)


if __name__ == "__main__":
    main()

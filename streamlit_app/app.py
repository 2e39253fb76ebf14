"""The cape-track page: click keypoints on support image(s), link a skeleton, track a video with a progress bar,
then watch, plot and download the results. UI only: loading, drawing and tracking are the model's and tracker's
public API; uploads live in a per-session temporary folder."""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

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
from cape_track.streamlit_app.state import Annotation, AnnotationError, History, pointer_edit
from cape_track.tracker import TrackerConfig, draw_pose, keypoint_colors, open_source, select_device
from cape_track.tracker.accel import configure_cpu_threads

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
IMAGE_TYPES = ["jpg", "jpeg", "png", "bmp", "webp", "tif", "tiff"]
VIDEO_TYPES = ["mp4", "mov", "m4v", "mkv", "webm", "avi", "mpg", "mpeg"]
CHECKPOINT_TYPES = ["pt", "pth", "ckpt"]
DISPLAY_SIDE = 960  # longest side of the support image as drawn; clicks are mapped back to its own pixels
MAX_UPSCALE = 4.0  # small images are drawn larger so the points stay crisp
LIST_ROWS, LIST_HEIGHT = 7, 360  # keypoint rows shown before the list scrolls, and its height then (px)
POLL_S = 0.5  # how often the progress bar refreshes while tracking
CHECKPOINTS = ("Embedded default", "File on this machine", "Upload a file")


@dataclass(frozen=True)
class Video:
    path: Path  # the file tracked (in the session folder, or the bundled sample)
    label: str  # the name the user knows it by
    summary: str  # size, frames and rate, for the page


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
    st.subheader("1 · Support: click the keypoints to track")
    add, sample = st.columns([3, 1], vertical_alignment="bottom")
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
        st.info("Upload a support image (or use the sample), then click on it to place keypoints in order.")
        return
    k = active_shot(annotation)
    picture, side = st.columns([3, 2], gap="large")
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
    keypoint, a drag moves one."""
    shot = annotation.shots[k]
    n = annotation.num_keypoints
    following = shot.next_unplaced()
    if following is not None:
        st.markdown(f"Click to place **{annotation.names[following]}** (keypoint {following + 1} of {n}).")
    else:
        st.markdown("Click to add a keypoint · drag a keypoint to move it.")
    event = streamlit_image_coordinates(
        drawn_shot(annotation, k),
        key=f"clicks_{k}",
        click_and_drag=True,
        width="stretch",
        image_format="JPEG",
        jpeg_quality=90,
        cursor="crosshair",
    )
    if event and "x1" in event and event.get("unix_time") != st.session_state.get("last_click"):
        st.session_state.last_click = event.get("unix_time")
        history().apply(pointer_edit(annotation, k, event))
        st.rerun()
    undo, drop = st.columns(2)
    undo.button("↶ Undo", on_click=history().undo, disabled=not history().can_undo, width="stretch")
    drop.button("Remove this image", on_click=remove_shot, args=(k,), width="stretch")
    st.caption(f"{shot.label}: {shot.size[0]}×{shot.size[1]} px, {shot.placed} of {n} keypoints placed")


def drawn_shot(annotation: Annotation, k: int) -> np.ndarray:
    """The shot resized for display with its placed keypoints, names and skeleton drawn by the tracker's
    `draw_pose` (colours match the tracked video)."""
    shot = annotation.shots[k]
    image = image_of(shot.image)
    width, height = shot.size
    scale = min(DISPLAY_SIDE / max(width, height), MAX_UPSCALE)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    canvas = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    placed = [i for i, p in enumerate(shot.xy) if p is not None]
    if placed:
        sx, sy = size[0] / width, size[1] / height
        xy = np.array([shot.xy[i] for i in placed]) + 0.5  # image px -> display px, pixel centres kept
        xy = xy * (sx, sy) - 0.5
        slot = {i: j for j, i in enumerate(placed)}
        edges = [(slot[a], slot[b]) for a, b in annotation.skeleton if a in slot and b in slot]
        draw_pose(
            canvas,
            xy,
            visible=np.array([shot.visible[i] for i in placed]),
            skeleton=edges,
            names=[annotation.names[i] for i in placed],
            colors=keypoint_colors(annotation.num_keypoints)[placed],
        )
    return canvas


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
    with st.container(height=LIST_HEIGHT if annotation.num_keypoints > LIST_ROWS else "content", border=False):
        for i, (uid, name) in enumerate(zip(annotation.ids, annotation.names, strict=True)):
            swatch, label, flag, delete = st.columns([0.3, 2.4, 1.3, 0.6], vertical_alignment="center")
            r, g, b = (int(c) for c in colors[i])
            swatch.markdown(
                f"<span style='color:#{r:02x}{g:02x}{b:02x};font-size:1.4em'>●</span>", unsafe_allow_html=True
            )
            st.session_state[f"name_{uid}"] = name  # the list is the truth (undo, loads); the box shows it
            label.text_input("name", key=f"name_{uid}", on_change=rename, args=(uid,), label_visibility="collapsed")
            if shot.xy[i] is None:
                flag.caption("next" if i == shot.next_unplaced() else "not placed")
            else:
                st.session_state[f"visible_{uid}_{k}"] = shot.visible[i]
                flag.checkbox("visible", key=f"visible_{uid}_{k}", on_change=toggle_visible, args=(uid, k))
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
    # and positions under them, and a stale value (of any type) is dropped rather than compared.
    ids = list(annotation.ids)
    for key in ("link_from", "link_to"):
        if key in st.session_state and st.session_state[key] not in ids:
            del st.session_state[key]
    name_of = dict(zip(ids, annotation.names, strict=True))
    first, second, button = st.columns([2, 2, 1], vertical_alignment="bottom")
    first.selectbox("Link", ids, format_func=name_of.get, key="link_from")
    second.selectbox("to", ids, index=1, format_func=name_of.get, key="link_to")
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
            history().current.link(index_of(st.session_state.link_from), index_of(st.session_state.link_to))
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
    st.caption(f"Keep {name} beside {shot.label} so that `cape-track VIDEO --support {shot.label}` finds it.")
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
    st.subheader("2 · Video")
    add, sample = st.columns([3, 1], vertical_alignment="bottom")
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
    else:
        st.markdown(f"**{video.label}** · {video.summary}")


def choose_video(path: Path, label: str | None = None) -> None:
    """Probe the video (its first frame must decode) and make it the one to track."""
    label = label or path.name
    try:
        with open_source(path) as source:
            frames = f"{source.frame_count} frames" if source.frame_count else "frame count unknown"
            summary = f"{source.width}×{source.height}, {frames} at {source.fps:.3g} fps"
    except CapeError as exc:
        if path.parent == workdir():
            path.unlink(missing_ok=True)
        notify("video", user_message(exc, path, label))
        return
    st.session_state.video = Video(path, label, summary)


# ---------------------------------------------------------------------------------------------------- tracking
def track_section(settings: Settings) -> None:
    st.subheader("3 · Track")
    job: TrackingJob | None = st.session_state.get("job")
    running = job is not None and job.running
    if st.button("Track", type="primary", disabled=running, icon="▶"):
        try:
            start_tracking(settings)
        except CapeError as exc:
            st.error(str(exc))
        else:
            st.rerun()
    st.session_state.job_shown_finished = job is not None and not running
    st.fragment(show_progress, run_every=POLL_S if running else None)()


def start_tracking(settings: Settings) -> None:
    """Check everything the run needs (cheapest first), then start it in the background."""
    annotation = history().current
    if not annotation.shots:
        raise AnnotationError("support: no support image (upload one and click its keypoints first)")
    video: Video | None = st.session_state.get("video")
    if video is None:
        raise AnnotationError("video: none chosen (upload a video or use the sample clip)")
    if settings.model is None:
        raise AnnotationError("model: no checkpoint loaded (choose one in the sidebar)")
    support = annotation.support_set([image_of(shot.image) for shot in annotation.shots])
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(video.label).stem) or "video"
    out = workdir() / f"run{next_number('run')}"
    st.session_state.job = TrackingJob(settings.model, support, video.path, out, stem, settings.config)
    st.session_state.job_label = video.label


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
    label = st.session_state.get("job_label", job.video.name)
    if p.frames:
        text = f"Tracking {label}: {p.frames} / {p.total or '?'} frames · {p.fps:.1f} fps"
    else:
        text = f"Tracking {label}: encoding the support, reading the first frames…"
    st.progress(p.fraction, text=text)
    st.button("Cancel", on_click=job.cancel, key="cancel")


# ---------------------------------------------------------------------------------------------------- results
def results_section() -> None:
    job: TrackingJob | None = st.session_state.get("job")
    if job is None or job.running:
        return
    p = job.progress()
    st.subheader("4 · Results")
    if job.state is JobState.DONE:
        st.success(f"Tracked {p.frames} frames in {p.seconds:.1f} s ({p.fps:.1f} fps).")
    elif job.state is JobState.CANCELLED:
        st.warning(f"Cancelled after {p.frames} frames; the results below cover those frames.")
    else:
        st.error(job.error or "tracking failed")
    paths = job.paths
    if not paths["csv"].is_file() or p.frames == 0:
        return
    watch, plots = st.columns([3, 2], gap="large")
    with watch:
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
                )
    with plots:
        plot_tracks(paths["csv"], job)


def plot_tracks(csv: Path, job: TrackingJob) -> None:
    """Each chosen keypoint's x, y and score over time, in the keypoint colours of the video."""
    tracks = pd.read_csv(csv)
    names = list(job.names)
    colors = keypoint_colors(len(names))
    chosen = st.multiselect("Keypoints to plot", names, default=names[:6], key=f"plot_{id(job)}")
    if not chosen:
        st.caption("Choose keypoints to plot.")
        return
    palette = ["#{:02x}{:02x}{:02x}".format(*(int(c) for c in colors[names.index(n)])) for n in chosen]
    for tab, (field, unit) in zip(
        st.tabs(["x", "y", "score"]), (("x", "x (px)"), ("y", "y (px)"), ("score", "score")), strict=True
    ):
        with tab:
            columns = [f"{n}_{field}" for n in chosen]
            st.line_chart(tracks, x="time", y=columns, x_label="time (s)", y_label=unit, color=palette, height=260)


def main() -> None:
    st.set_page_config(page_title="cape-track", page_icon="🎯", layout="wide")
    st.title("cape-track")
    st.caption(
        "Track the keypoints you click on one or more support images through a video: any object category "
        "(graph-based category-agnostic pose estimation, Pose Anything)."
    )
    settings = sidebar()
    support_section()
    st.divider()
    video_section()
    st.divider()
    track_section(settings)
    results_section()


if __name__ == "__main__":
    main()

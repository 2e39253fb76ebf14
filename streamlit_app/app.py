"""The cape-track page: choose a video, click keypoints on one of its frames or on support image(s), link a
skeleton, then track, correct and compare (`results`). UI only: the edits are `state`'s, the per-session plumbing
`session`'s; loading, drawing and tracking are the model's and tracker's public API."""

from __future__ import annotations

import zlib
from pathlib import Path

import streamlit as st
import torch
from streamlit.runtime.uploaded_file_manager import UploadedFile

from cape_track.model import CapeError, CapeModel, KeypointFile
from cape_track.streamlit_app.results import Settings, results_section, track_section
from cape_track.streamlit_app.runs import (
    Video,
)
from cape_track.streamlit_app.session import (
    LIST_HEIGHT,
    LIST_ROWS,
    canvas,
    drawn,
    frame_file,
    frame_label,
    frame_of,
    frame_slider,
    history,
    image_of,
    notify,
    save_upload,
    show_notices,
    taken,
    uploader_key,
    user_message,
    workdir,
)
from cape_track.streamlit_app.state import (
    Annotation,
    AnnotationError,
    View,
    link_click,
    pointer_edit,
)
from cape_track.tracker import TrackerConfig, keypoint_colors, open_source, select_device
from cape_track.tracker.accel import configure_cpu_threads
from cape_track.tracker.drawing import hex_color

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
IMAGE_TYPES = ["jpg", "jpeg", "png", "bmp", "webp", "tif", "tiff"]
VIDEO_TYPES = ["mp4", "mov", "m4v", "mkv", "webm", "avi", "mpg", "mpeg"]
CHECKPOINT_TYPES = ["pt", "pth", "ckpt"]
CHECKPOINTS = ("Embedded default", "File on this machine", "Upload a file")
ZOOMS = (1, 2, 3, 4)  # support canvas magnifications


@st.cache_resource(max_entries=2, show_spinner="Loading the model…")
def load_model(checkpoint: str | None, stamp: float, device: str) -> CapeModel:
    """One model per (checkpoint, file time, device), shared by every session; `stamp` renews it when the file
    changes. Torch gets the CLI's thread count (one core left to decoding and encoding), so the page tracks at the
    CLI's speed. Uploaded checkpoints are never unpickled (weights-only loading, no --trust-checkpoint here)."""
    model = CapeModel.from_checkpoint(checkpoint, device=device)
    configure_cpu_threads(model.device)
    return model


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

"""The page's tracking and results: start a run (one at a time) and follow it, then the runs kept side by side:
watch and download, step to a frame and correct it (it joins the support as another shot and the run's video is
tracked again), compare two runs, plot the tracks. The arithmetic lives in `runs`, the edits in `state`."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from cape_track.model import CapeError, CapeModel
from cape_track.streamlit_app.job import JobState, TrackingJob
from cape_track.streamlit_app.runs import (
    Run,
    Video,
    correction_points,
    disagreement,
    mean_disagreement,
    row_of,
)
from cape_track.streamlit_app.session import (
    DISPLAY_SIDE,
    LIST_HEIGHT,
    LIST_ROWS,
    canvas,
    canvas_radius,
    drawn,
    frame_file,
    frame_label,
    frame_of,
    history,
    image_of,
    next_number,
    notify,
    show_notices,
    user_message,
    workdir,
)
from cape_track.streamlit_app.state import (
    Annotation,
    AnnotationError,
    View,
    pointer_edit,
)
from cape_track.tracker import TrackerConfig, draw_pose, keypoint_colors
from cape_track.tracker.drawing import hex_color
from cape_track.tracker.tracks import Tracks, TracksFileError

POLL_S = 0.5  # how often the progress bar refreshes while tracking
PLOTTED = 12  # keypoints plotted by default (all are selectable)


@dataclass(frozen=True)
class Settings:
    model: CapeModel | None  # None: the chosen checkpoint could not be loaded (the sidebar says why)
    config: TrackerConfig


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
        try:
            column.image(annotated_frame(r, t, index), caption=f"Run {r.number}, frame {index}", width="stretch")
        except CapeError as exc:  # a frame the video cannot give (past its end, damaged)
            column.error(user_message(exc, r.video.path, r.video.label))
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

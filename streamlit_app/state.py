"""What the page edits: the support annotation (keypoint names, skeleton, each shot's clicked points) as an
immutable value whose edits return a new value, so undo is a stack, plus the click component's pointer events
turned into edits. Support files and support sets are built and validated by `model.support`, never here."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from cape_track.model import CapeError, KeypointFile, SupportSet

MIN_KEYPOINTS = 1  # keypoints visible on at least one shot needed to track
HISTORY_LIMIT = 200  # undo steps kept
CLICK_SLOP = 4.0  # display px a press may travel and still count as a click, not a drag
GRAB_RADIUS = 14.0  # display px around a keypoint where a drag picks it up

Point = tuple[float, float]


class AnnotationError(CapeError, ValueError):
    """An edit the support cannot take: an empty or repeated name, keypoint lists that differ between shots, too
    few keypoints to track."""


@dataclass(frozen=True)
class Shot:
    """One support image and where each keypoint lies on it."""

    image: Path  # the image file: in the session's folder, or the bundled sample
    label: str  # the name the user knows it by (the uploaded file's name)
    size: tuple[int, int]  # (W, H) px
    xy: tuple[Point | None, ...] = ()  # [N] image px; None: not placed on this shot yet
    visible: tuple[bool, ...] = ()  # [N]; False for a point marked hidden (occluded) and for one not placed
    frame: int | None = None  # the frame of the tracked video this image is, when it was taken from it

    @property
    def placed(self) -> int:
        return sum(p is not None for p in self.xy)

    def next_unplaced(self) -> int | None:
        """The first keypoint of the list not clicked on this shot yet: where the next click goes."""
        return next((i for i, p in enumerate(self.xy) if p is None), None)

    def clamp(self, xy: Point) -> Point:
        """`xy` moved inside the image (pixel centres run from 0 to W - 1)."""
        width, height = self.size
        return (min(max(float(xy[0]), 0.0), width - 1.0), min(max(float(xy[1]), 0.0), height - 1.0))


@dataclass(frozen=True)
class Annotation:
    """N keypoints (names, skeleton) placed on K shots; every edit returns a new `Annotation`."""

    names: tuple[str, ...] = ()  # [N]
    ids: tuple[int, ...] = ()  # [N] stable ids (widget keys that survive deletions)
    skeleton: tuple[tuple[int, int], ...] = ()  # edges between keypoint indices
    shots: tuple[Shot, ...] = ()  # K
    next_id: int = 0

    @property
    def num_keypoints(self) -> int:
        return len(self.names)

    # ------------------------------------------------------------------------------------------------ shots
    def add_shot(
        self,
        image: Path,
        label: str,
        size: tuple[int, int],
        xy: Sequence[Point | None] | None = None,
        frame: int | None = None,
    ) -> Annotation:
        """A new support image with the same keypoint list: none placed yet, or placed at `xy` [N] (image px; None:
        not placed), as a corrected video frame whose tracked points come pre-filled. `frame`: the video frame the
        image is."""
        n = self.num_keypoints
        shot = Shot(Path(image), label, size, frame=frame)
        if xy is None:
            return replace(self, shots=(*self.shots, replace(shot, xy=(None,) * n, visible=(False,) * n)))
        if len(xy) != n:
            raise AnnotationError(f"new support image: {len(xy)} points for {n} keypoints")
        placed = tuple(None if p is None else shot.clamp(p) for p in xy)
        return replace(self, shots=(*self.shots, replace(shot, xy=placed, visible=tuple(p is not None for p in xy))))

    def remove_shot(self, k: int) -> Annotation:
        """Drop shot `k`; removing the last one also clears the keypoint list (a new support starts)."""
        shots = self.shots[:k] + self.shots[k + 1 :]
        return replace(self, shots=shots) if shots else replace(Annotation(), next_id=self.next_id)

    # ------------------------------------------------------------------------------------------------ points
    def place(self, k: int, xy: Point) -> Annotation:
        """A click on shot `k`: places the next keypoint not placed there yet, or adds a new keypoint to the list
        (unplaced on the other shots) when all are placed."""
        shot = self.shots[k]
        xy = shot.clamp(xy)
        i = shot.next_unplaced()
        if i is not None:
            return self._with_shot(k, _set(shot.xy, i, xy), _set(shot.visible, i, True))
        name = _free_name(self.names)
        shots = tuple(
            replace(s, xy=(*s.xy, xy if j == k else None), visible=(*s.visible, j == k))
            for j, s in enumerate(self.shots)
        )
        return replace(
            self, names=(*self.names, name), ids=(*self.ids, self.next_id), shots=shots, next_id=self.next_id + 1
        )

    def move(self, k: int, i: int, xy: Point) -> Annotation:
        """Drag keypoint `i` of shot `k` to `xy` (image px, clamped into the image)."""
        shot = self.shots[k]
        return self._with_shot(k, _set(shot.xy, i, shot.clamp(xy)), shot.visible)

    def set_visible(self, k: int, i: int, visible: bool) -> Annotation:
        """Mark a placed keypoint of shot `k` visible or hidden (occluded); an unplaced one stays hidden."""
        shot = self.shots[k]
        return self._with_shot(k, shot.xy, _set(shot.visible, i, bool(visible) and shot.xy[i] is not None))

    def delete(self, i: int) -> Annotation:
        """Remove keypoint `i` from the list, from every shot and from the skeleton."""

        def drop(values: tuple) -> tuple:
            return values[:i] + values[i + 1 :]

        skeleton = tuple(
            (a - (a > i), b - (b > i)) for a, b in self.skeleton if i not in (a, b)
        )  # later indices move down by one
        shots = tuple(replace(s, xy=drop(s.xy), visible=drop(s.visible)) for s in self.shots)
        return replace(self, names=drop(self.names), ids=drop(self.ids), skeleton=skeleton, shots=shots)

    def nearest(self, k: int, xy: Point, radius: float) -> int | None:
        """The placed keypoint of shot `k` closest to `xy` within `radius` (image px), if any."""
        best, best_d = None, radius
        for i, p in enumerate(self.shots[k].xy):
            if p is not None and (d := math.dist(p, xy)) <= best_d:
                best, best_d = i, d
        return best

    # ------------------------------------------------------------------------------------------------ list
    def rename(self, i: int, name: str) -> Annotation:
        name = name.strip()
        if not name:
            raise AnnotationError(f"keypoint {i}: the name is empty (type a name, e.g. kp{i})")
        if name in self.names[:i] + self.names[i + 1 :]:
            raise AnnotationError(f"keypoint {i}: the name {name!r} is already used (give every keypoint its own)")
        return replace(self, names=_set(self.names, i, name))

    def link(self, i: int, j: int) -> Annotation:
        """Join keypoints `i` and `j` in the skeleton (once, in either direction)."""
        if i == j:
            raise AnnotationError(f"skeleton: {self.names[i]!r} cannot be linked to itself (pick two keypoints)")
        if (i, j) in self.skeleton or (j, i) in self.skeleton:
            return self
        return replace(self, skeleton=(*self.skeleton, (i, j)))

    def unlink(self, edge: int) -> Annotation:
        return replace(self, skeleton=self.skeleton[:edge] + self.skeleton[edge + 1 :])

    # ------------------------------------------------------------------------------------------------ files
    def keypoint_file(self, k: int) -> KeypointFile:
        """Shot `k` as the support file of DESIGN.md (unplaced keypoints are written hidden at (0, 0))."""
        shot = self.shots[k]
        xy = [p if p is not None else (0.0, 0.0) for p in shot.xy]
        return KeypointFile.from_arrays(xy, shot.visible, self.names, self.skeleton, source=shot.label)

    def with_file(self, k: int, file: KeypointFile) -> Annotation:
        """Shot `k`'s points (and the skeleton) from a support file. A file with other keypoint names replaces the
        keypoint list, which is only possible while `k` is the only shot."""
        shot = self.shots[k]
        file.check_inside(shot.size, image_name=f"image {shot.label}")
        xy = tuple((float(x), float(y)) for x, y in file.keypoints)
        visible = tuple(bool(v) for v in file.visible)
        if file.names == self.names:
            return replace(self._with_shot(k, xy, visible), skeleton=file.skeleton)
        if len(self.shots) > 1:
            raise AnnotationError(
                f"{file.source}: its keypoints ({', '.join(file.names)}) differ from this support's "
                "(every image of a support lists the same keypoints; load it on a support with one image)"
            )
        n = len(file.names)
        return replace(
            self,
            names=file.names,
            ids=tuple(range(self.next_id, self.next_id + n)),
            skeleton=file.skeleton,
            shots=(replace(shot, xy=xy, visible=visible),),
            next_id=self.next_id + n,
        )

    def usable(self) -> np.ndarray:
        """[N] bool: placed and visible on at least one shot. A keypoint missing from a shot is ignored on that
        shot only (`SupportSet.with_shot`), so the tracker finds every usable keypoint."""
        if not self.shots:
            return np.zeros(self.num_keypoints, bool)
        return np.array([s.visible for s in self.shots], bool).reshape(len(self.shots), -1).any(axis=0)

    def support_set(self, images: Sequence[np.ndarray]) -> SupportSet:
        """The `SupportSet` to track with, from the shots' images `[H, W, 3]` RGB uint8 (one per shot)."""
        usable = int(self.usable().sum())
        if usable < MIN_KEYPOINTS:
            raise AnnotationError(
                f"support: too few keypoints ({usable} placed and visible; click at least {MIN_KEYPOINTS} on a "
                "support image)"
            )
        xy = [[p if p is not None else (0.0, 0.0) for p in s.xy] for s in self.shots]
        visible = [s.visible for s in self.shots]
        return SupportSet.from_arrays(list(images), xy, visible, self.names, self.skeleton)

    def _with_shot(self, k: int, xy: tuple[Point | None, ...], visible: tuple[bool, ...]) -> Annotation:
        return replace(self, shots=_set(self.shots, k, replace(self.shots[k], xy=xy, visible=visible)))


@dataclass(frozen=True)
class View:
    """The part of a shot the canvas shows (image px): the whole image, or a zoomed window onto it."""

    left: float
    top: float
    width: float
    height: float

    @classmethod
    def of(cls, size: tuple[int, int], zoom: float = 1.0, center: Point | None = None) -> View:
        """A window `zoom` times smaller than the image `size` (W, H) around `center` (default: the middle),
        kept inside the image, in whole pixels: the canvas crops exactly this window, so clicks map back exactly."""
        width = max(1, round(size[0] / max(zoom, 1.0)))
        height = max(1, round(size[1] / max(zoom, 1.0)))
        cx, cy = center if center is not None else (size[0] / 2, size[1] / 2)
        left = min(max(round(cx - width / 2), 0), size[0] - width)
        top = min(max(round(cy - height / 2), 0), size[1] - height)
        return cls(float(left), float(top), float(width), float(height))

    def to_image(self, event: Mapping[str, float], x: float, y: float) -> Point:
        """Display px (pixel centres) of a canvas drawn `event["width"]` x `event["height"]` -> image px."""
        sx, sy = self.width / event["width"], self.height / event["height"]
        return (self.left + (x + 0.5) * sx - 0.5, self.top + (y + 0.5) * sy - 0.5)

    def image_per_display(self, event: Mapping[str, float]) -> float:
        return max(self.width / event["width"], self.height / event["height"])


def pointer_edit(
    annotation: Annotation, k: int, event: Mapping[str, float], view: View | None = None, grow: bool = True
) -> Annotation:
    """The edit one event of the click component (`click_and_drag` mode) makes on shot `k`.

    `event` holds the press `x1, y1` and release `x2, y2` in display px of the canvas, drawn `width` x `height`
    from `view` (default: the whole shot). A press released where it started places a keypoint (see
    `Annotation.place`; with `grow` False, as on a corrected frame, only one not placed yet: the keypoint list
    stays that of the run); a drag that starts on a keypoint moves it; any other drag changes nothing.
    """
    view = view or View.of(annotation.shots[k].size)
    down, up = view.to_image(event, event["x1"], event["y1"]), view.to_image(event, event["x2"], event["y2"])
    if math.dist((event["x1"], event["y1"]), (event["x2"], event["y2"])) <= CLICK_SLOP:
        if not grow and annotation.shots[k].next_unplaced() is None:
            return annotation
        return annotation.place(k, up)
    grabbed = annotation.nearest(k, down, GRAB_RADIUS * view.image_per_display(event))
    return annotation if grabbed is None else annotation.move(k, grabbed, up)


def link_click(
    annotation: Annotation, k: int, event: Mapping[str, float], pending: int | None, view: View | None = None
) -> tuple[Annotation, int | None]:
    """Skeleton editing by clicks on shot `k`: the first click on a keypoint picks it (returned as `pending`, its
    stable id, so edits in between cannot make it point elsewhere), a click on a second one joins the two (or
    removes their edge when they are already joined); a click on the picked keypoint or away from every keypoint,
    or a pick whose keypoint is gone, drops the pick."""
    view = view or View.of(annotation.shots[k].size)
    at = view.to_image(event, event["x2"], event["y2"])
    hit = annotation.nearest(k, at, GRAB_RADIUS * view.image_per_display(event))
    picked = annotation.ids.index(pending) if pending in annotation.ids else None
    if hit is None or hit == picked:
        return annotation, None
    if picked is None:
        return annotation, annotation.ids[hit]
    edge = next((e for e, pair in enumerate(annotation.skeleton) if set(pair) == {picked, hit}), None)
    return (annotation.link(picked, hit) if edge is None else annotation.unlink(edge)), None


@dataclass
class History:
    """The annotation now and the values before it (undo)."""

    current: Annotation = field(default_factory=Annotation)
    past: list[Annotation] = field(default_factory=list)

    def apply(self, annotation: Annotation) -> None:
        if annotation == self.current:
            return
        self.past = [*self.past[-(HISTORY_LIMIT - 1) :], self.current]
        self.current = annotation

    def undo(self) -> None:
        if self.past:
            self.current = self.past.pop()

    @property
    def can_undo(self) -> bool:
        return bool(self.past)


def _set(values: tuple, i: int, value: object) -> tuple:
    return (*values[:i], value, *values[i + 1 :])


def _free_name(names: Sequence[str]) -> str:
    """`kp<i>` with the smallest i >= len(names) not taken."""
    i = len(names)
    while f"kp{i}" in names:
        i += 1
    return f"kp{i}"

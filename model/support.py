"""THE support-file format (`ref.json` beside `ref.jpg`: keypoints in pixels of the support image) and `SupportSet`,
the validated support images + keypoints a model encodes. Every user mistake is caught here, before any model work."""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .errors import SupportFileError, is_number, short

MAX_KEYPOINTS = 100  # the paper's padded keypoint count; the network has no slots beyond it
_KEYS = ("keypoints", "names", "visible", "skeleton")
_HOW_TO_WRITE = '{"keypoints": [[x, y], ...], "names": [...], "visible": [1, ...], "skeleton": [[0, 1], ...]}'


@dataclass(frozen=True, eq=False)
class KeypointFile:
    """The content of one support keypoint file (`ref.json`); construction validates it.

    Accepts lists or arrays and stores arrays. `source` names the file (or thing) in error messages.
    """

    keypoints: np.ndarray  # [N, 2] float64 (x, y) px of the support image, pixel centres at integers
    visible: np.ndarray  # [N] bool; hidden keypoints are ignored by the model
    names: tuple[str, ...]  # N
    skeleton: tuple[tuple[int, int], ...] = ()  # edges between keypoint indices
    source: str = field(default="keypoints", repr=False)

    def __post_init__(self) -> None:
        keypoints = _check_points(self.keypoints, self.source)
        n = len(keypoints)
        object.__setattr__(self, "keypoints", keypoints)
        object.__setattr__(self, "visible", _check_visible(self.visible, n, self.source))
        object.__setattr__(self, "names", _check_names(self.names, n, self.source))
        object.__setattr__(self, "skeleton", _check_skeleton(self.skeleton, n, self.source))

    @classmethod
    def from_arrays(
        cls,
        keypoints: np.ndarray | Sequence[Sequence[float]],
        visible: np.ndarray | Sequence[bool | int] | None = None,
        names: Sequence[str] | None = None,
        skeleton: Sequence[Sequence[int]] | None = None,
        source: str = "keypoints",
    ) -> KeypointFile:
        """Build from `[N, 2]` points; omitted parts default to all visible, names `kp0 .. kp{N-1}`, no skeleton."""
        n = len(keypoints) if _is_list(keypoints) else 0
        visible = [True] * n if visible is None else visible
        names = tuple(f"kp{i}" for i in range(n)) if names is None else names
        return cls(keypoints, visible, names, () if skeleton is None else skeleton, source)

    @classmethod
    def load(cls, path: str | Path, image_size: tuple[int, int] | None = None) -> KeypointFile:
        """Read and validate a support keypoint file; with `image_size` (W, H), visible points must lie inside."""
        where = str(path)
        try:
            _check_readable(Path(path), "keypoint file", MAX_KEYPOINT_FILE_BYTES)
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise SupportFileError(f"{where}: no such keypoint file (write one beside the support image)") from None
        except (OSError, UnicodeDecodeError) as e:
            raise SupportFileError(f"{where}: cannot read the keypoint file ({type(e).__name__}: {e})") from e
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SupportFileError(
                f"{where}: not valid JSON at line {e.lineno} column {e.colno}: {e.msg} (write {_HOW_TO_WRITE})"
            ) from None
        except (ValueError, RecursionError) as e:  # a number too long to convert, nesting too deep to parse
            raise SupportFileError(
                f"{where}: not a keypoint file ({type(e).__name__}) (write {_HOW_TO_WRITE})"
            ) from None
        if not isinstance(data, dict):
            raise SupportFileError(
                f"{where}: the top level is {_json_type(data)}, not an object (write {_HOW_TO_WRITE})"
            )
        for key in data:
            if key not in _KEYS:
                close = difflib.get_close_matches(key, _KEYS, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"allowed keys: {', '.join(_KEYS)}"
                raise SupportFileError(f"{where}: unknown key {key!r} ({hint})")
        if "keypoints" not in data:
            raise SupportFileError(f'{where}: no "keypoints" entry (write {_HOW_TO_WRITE})')
        result = cls.from_arrays(
            data["keypoints"], data.get("visible"), data.get("names"), data.get("skeleton"), source=where
        )
        if image_size is not None:
            result.check_inside(image_size)
        return result

    def save(self, path: str | Path) -> None:
        """Write the file `load` reads (all four keys; coordinates as exact floats)."""
        data = {
            "keypoints": self.keypoints.tolist(),
            "names": list(self.names),
            "visible": [int(v) for v in self.visible],
            "skeleton": [list(edge) for edge in self.skeleton],
        }
        Path(path).write_text(json.dumps(data) + "\n", encoding="utf-8")

    def check_inside(self, image_size: tuple[int, int], image_name: str = "support image") -> None:
        """Raise if a visible keypoint lies outside a `(W, H)` image, half-pixel border included.

        Hidden keypoints are not checked: the model ignores their coordinates.
        """
        width, height = image_size
        for i, ((x, y), shown) in enumerate(zip(self.keypoints, self.visible, strict=True)):
            if shown and not (-0.5 <= x <= width - 0.5 and -0.5 <= y <= height - 0.5):
                raise SupportFileError(
                    f"{self.source}: keypoint {i} at ({x:g}, {y:g}) lies outside the {width}x{height} {image_name} "
                    f"(coordinates are pixels of that image: x in [-0.5, {width - 0.5:g}], "
                    f"y in [-0.5, {height - 0.5:g}])"
                )


MAX_KEYPOINT_FILE_BYTES = 4 << 20  # a support of 100 keypoints is a few kB; a bigger file is not one (and never read)


def _check_readable(path: Path, what: str, limit: int) -> None:
    """Refuse, before reading, what would block or exhaust memory: a FIFO, a device or a folder instead of a regular
    file, or a file larger than `limit` bytes."""
    import stat

    try:
        info = path.stat()
    except FileNotFoundError:
        raise
    except OSError as e:
        raise SupportFileError(f"{path}: cannot read the {what} ({e.strerror or e})") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file (a FIFO or a device)"
        raise SupportFileError(f"{path}: is {kind}, not a {what}")
    if info.st_size > limit:
        raise SupportFileError(f"{path}: {info.st_size} bytes is too large for a {what} (at most {limit})")


def load_image(path: str | Path) -> np.ndarray:
    """Read a support image as `[H, W, 3]` uint8 RGB (grayscale is replicated, alpha dropped)."""
    where = str(path)
    path = Path(path)
    if not path.is_file():
        what = "a folder, not an image file" if path.is_dir() else "no such image file"
        raise SupportFileError(f"{where}: {what} (check the path)")
    try:
        data = np.fromfile(path, dtype=np.uint8)  # imdecode, unlike imread, copes with non-ASCII paths
    except OSError as e:
        raise SupportFileError(f"{where}: cannot read the image ({type(e).__name__}: {e})") from e
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise SupportFileError(f"{where}: not an image OpenCV can decode (use a JPEG or PNG file)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


@dataclass(frozen=True, eq=False)
class SupportSet:
    """K support shots of one object category: images with the same N keypoints on each; construction validates.

    Keypoints stay in pixels of each shot's own image; mapping to the network input is the model's job.
    """

    images: tuple[np.ndarray, ...]  # K x [H, W, 3] uint8 RGB, sizes may differ
    keypoints: np.ndarray  # [K, N, 2] float64 (x, y) px of each shot's image
    visible: np.ndarray  # [K, N] bool
    names: tuple[str, ...]  # N
    skeleton: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        images = tuple(self.images)
        if not images:
            raise SupportFileError("support: no support images (give at least one image with its keypoints)")
        for k, image in enumerate(images):
            if not (
                isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
            ):
                got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
                raise SupportFileError(f"support image {k}: expected [H, W, 3] uint8 RGB, got {got} (use load_image)")
        try:
            keypoints = np.asarray(self.keypoints, dtype=np.float64)
        except (TypeError, ValueError):
            raise SupportFileError("support: keypoints are not an array of numbers (give [K, N, 2] pixels)") from None
        visible = np.asarray(self.visible)
        shots = len(images)
        if keypoints.ndim != 3 or keypoints.shape[0] != shots or keypoints.shape[2] != 2:
            raise SupportFileError(
                f"support: keypoints have shape {keypoints.shape}, expected [{shots}, N, 2] for {shots} image(s) "
                "(one row of N points per shot)"
            )
        if visible.shape != keypoints.shape[:2]:
            raise SupportFileError(
                f"support: visible has shape {visible.shape}, expected {keypoints.shape[:2]} (one flag per keypoint)"
            )
        shot_files = [
            KeypointFile(keypoints[k], visible[k], self.names, self.skeleton, source=f"support shot {k}")
            for k in range(shots)
        ]
        for shot, image in zip(shot_files, images, strict=True):
            shot.check_inside((image.shape[1], image.shape[0]))
        if not any(shot.visible.any() for shot in shot_files):
            raise SupportFileError(
                "support: no keypoint is visible on any support image (nothing to track: mark the placed ones visible)"
            )
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "keypoints", np.stack([s.keypoints for s in shot_files]))
        object.__setattr__(self, "visible", np.stack([s.visible for s in shot_files]))
        object.__setattr__(self, "names", shot_files[0].names)
        object.__setattr__(self, "skeleton", shot_files[0].skeleton)

    @property
    def shots(self) -> int:
        return len(self.images)

    @property
    def num_keypoints(self) -> int:
        return self.keypoints.shape[1]

    def with_shot(
        self, image: np.ndarray, keypoints: np.ndarray | Sequence, visible: np.ndarray | Sequence | None = None
    ) -> SupportSet:
        """This support plus one shot: `image` `[H, W, 3]` uint8 RGB (e.g. a frame of the tracked video) with the
        same N keypoints `[N, 2]` (its px). `visible` `[N]` (default all) marks the keypoints confirmed on it; the
        others are ignored on this shot only (`CapeModel.encode_support_set`), so no keypoint leaves the run.
        Correcting a frame and re-tracking is `Tracker(model, support.with_shot(frame, fixed, confirmed))`."""
        keypoints = np.asarray(keypoints, dtype=np.float64)
        if keypoints.shape != (self.num_keypoints, 2):
            raise SupportFileError(
                f"new support shot: keypoints have shape {keypoints.shape}, expected ({self.num_keypoints}, 2) "
                f"(one point for each of {', '.join(self.names[:5])}{', ...' if self.num_keypoints > 5 else ''})"
            )
        visible = np.ones(self.num_keypoints, bool) if visible is None else np.asarray(visible, bool)
        if visible.shape != (self.num_keypoints,):
            raise SupportFileError(
                f"new support shot: visible has shape {visible.shape}, expected ({self.num_keypoints},)"
            )
        return SupportSet(
            (*self.images, image),
            np.concatenate([self.keypoints, keypoints[None]]),
            np.concatenate([self.visible, visible[None]]),
            self.names,
            self.skeleton,
        )

    @classmethod
    def from_arrays(
        cls,
        images: np.ndarray | Sequence[np.ndarray],
        keypoints: np.ndarray | Sequence,
        visible: np.ndarray | Sequence | None = None,
        names: Sequence[str] | None = None,
        skeleton: Sequence[Sequence[int]] = (),
    ) -> SupportSet:
        """Build from in-memory images (one `[H, W, 3]` array or a sequence) and keypoints `[N, 2]` or `[K, N, 2]`.

        `visible` (`[N]` or `[K, N]`) defaults to all visible, `names` to `kp0 .. kp{N-1}`.
        """
        images = (images,) if isinstance(images, np.ndarray) and images.ndim < 4 else tuple(images)
        try:
            keypoints = np.asarray(keypoints, dtype=np.float64)
        except (TypeError, ValueError):
            raise SupportFileError("support: keypoints are not an array of numbers (give [N, 2] pixels)") from None
        if keypoints.ndim == 2:
            keypoints = keypoints[None]
        if keypoints.ndim != 3:
            raise SupportFileError(f"support: keypoints have shape {keypoints.shape} (expected [N, 2] or [K, N, 2])")
        shots, n = keypoints.shape[:2]
        visible = np.ones((shots, n), dtype=bool) if visible is None else np.asarray(visible)
        if visible.ndim == 1:
            visible = np.broadcast_to(visible, (shots, len(visible)))
        names = tuple(f"kp{i}" for i in range(n)) if names is None else tuple(names)
        return cls(images, keypoints, visible, names, tuple(tuple(edge) for edge in skeleton))

    @classmethod
    def from_files(
        cls,
        image_paths: Sequence[str | Path] | str | Path,
        keypoint_paths: Sequence[str | Path] | str | Path | None = None,
    ) -> SupportSet:
        """Read K support shots: each image with `<image stem>.json` beside it, or with `keypoint_paths`
        (one file for every shot, or one per shot). All shots must list the same keypoints (names, skeleton).
        """
        image_paths = [image_paths] if isinstance(image_paths, (str, Path)) else list(image_paths)
        if not image_paths:
            raise SupportFileError("support: no support images given (pass at least one image)")
        if keypoint_paths is None:
            keypoint_paths = [Path(p).with_suffix(".json") for p in image_paths]
        elif isinstance(keypoint_paths, (str, Path)):
            keypoint_paths = [keypoint_paths] * len(image_paths)
        else:
            keypoint_paths = list(keypoint_paths)
            if len(keypoint_paths) == 1:
                keypoint_paths = keypoint_paths * len(image_paths)
        if len(keypoint_paths) != len(image_paths):
            raise SupportFileError(
                f"support: {len(keypoint_paths)} keypoint files for {len(image_paths)} images "
                "(give one keypoint file for every shot, or one per image)"
            )
        images = [load_image(p) for p in image_paths]
        files = [KeypointFile.load(p) for p in keypoint_paths]
        for file, image, image_path in zip(files, images, image_paths, strict=True):
            file.check_inside((image.shape[1], image.shape[0]), image_name=f"image {image_path}")
        first = files[0]
        for other in files[1:]:
            _check_same_category(first, other)
        return cls(
            tuple(images),
            np.stack([f.keypoints for f in files]),
            np.stack([f.visible for f in files]),
            first.names,
            first.skeleton,
        )


def _check_same_category(first: KeypointFile, other: KeypointFile) -> None:
    """K-shot support only makes sense when every shot annotates the same keypoints in the same order."""
    fix = "every shot must list the same keypoints in the same order, with the same names and skeleton"
    if len(other.names) != len(first.names):
        raise SupportFileError(
            f"{other.source}: {len(other.names)} keypoints but {first.source} has {len(first.names)} ({fix})"
        )
    if other.names != first.names:
        i = next(i for i, (a, b) in enumerate(zip(first.names, other.names, strict=True)) if a != b)
        raise SupportFileError(
            f"{other.source}: keypoint {i} is named {other.names[i]!r} but {first.names[i]!r} in {first.source} ({fix})"
        )
    if other.skeleton != first.skeleton:
        raise SupportFileError(f"{other.source}: the skeleton differs from the one in {first.source} ({fix})")


def _is_list(value: object) -> bool:
    return isinstance(value, (list, tuple, np.ndarray))


def _as_list(value: object) -> object:
    """Arrays become nested lists of Python scalars so JSON and array input are checked by the same code."""
    return value.tolist() if isinstance(value, np.ndarray) else value


def _check_points(raw: object, where: str) -> np.ndarray:
    raw = _as_list(raw)
    if not isinstance(raw, (list, tuple)):
        raise SupportFileError(f"{where}: keypoints is {_json_type(raw)}, not a list (write [[x, y], ...])")
    if not raw:
        raise SupportFileError(f"{where}: no keypoints at all (add at least one [x, y] pair)")
    if len(raw) > MAX_KEYPOINTS:
        raise SupportFileError(
            f"{where}: {len(raw)} keypoints, more than {MAX_KEYPOINTS} (the model has {MAX_KEYPOINTS} slots)"
        )
    for i, point in enumerate(raw):
        if not (isinstance(point, (list, tuple)) and len(point) == 2):
            raise SupportFileError(f"{where}: keypoint {i} is {short(point)}, not a pair of numbers (write [x, y])")
        for axis, value in zip("xy", point, strict=True):
            if not is_number(value):
                raise SupportFileError(
                    f"{where}: keypoint {i} has a non-numeric {axis} coordinate {short(value)} (write numbers)"
                )
            if math.isnan(value) or math.isinf(value):
                what = "a NaN" if math.isnan(value) else "an infinite"
                raise SupportFileError(
                    f"{where}: keypoint {i} has {what} {axis} coordinate (write finite pixel coordinates)"
                )
    return np.array(raw, dtype=np.float64).reshape(len(raw), 2)


def _check_visible(raw: object, n: int, where: str) -> np.ndarray:
    raw = _as_list(raw)
    if not isinstance(raw, (list, tuple)):
        raise SupportFileError(f"{where}: visible is {_json_type(raw)}, not a list (write [1, 0, ...] or leave it out)")
    if len(raw) != n:
        raise SupportFileError(
            f"{where}: visible has {len(raw)} flags for {n} keypoints (give one 0/1 per keypoint, or leave it out)"
        )
    for i, value in enumerate(raw):
        if not (isinstance(value, bool) or (isinstance(value, int) and value in (0, 1))):
            raise SupportFileError(
                f"{where}: visible[{i}] is {short(value)} (use 1 or true for visible, 0 or false for hidden)"
            )
    return np.array(raw, dtype=bool).reshape(n)


def _check_names(raw: object, n: int, where: str) -> tuple[str, ...]:
    raw = _as_list(raw)
    if not isinstance(raw, (list, tuple)):
        raise SupportFileError(f'{where}: names is {_json_type(raw)}, not a list (write ["nose", ...] or leave it out)')
    if len(raw) != n:
        raise SupportFileError(
            f"{where}: names has {len(raw)} names for {n} keypoints (give one name per keypoint, or leave it out)"
        )
    for i, name in enumerate(raw):
        if not isinstance(name, str) or not name:
            raise SupportFileError(
                f'{where}: names[{i}] is {short(name)}, not a non-empty string (name it, e.g. "kp{i}")'
            )
    if len(set(raw)) != n:
        twice = next(name for name in raw if raw.count(name) > 1)
        raise SupportFileError(f"{where}: the name {twice!r} is used twice (give every keypoint its own name)")
    return tuple(raw)


def _check_skeleton(raw: object, n: int, where: str) -> tuple[tuple[int, int], ...]:
    raw = _as_list(raw)
    if not isinstance(raw, (list, tuple)):
        raise SupportFileError(f"{where}: skeleton is {_json_type(raw)}, not a list (write [[i, j], ...] or [])")
    for e, edge in enumerate(raw):
        if not (
            isinstance(edge, (list, tuple))
            and len(edge) == 2
            and all(isinstance(i, int) and not isinstance(i, bool) for i in edge)
        ):
            raise SupportFileError(
                f"{where}: skeleton edge {e} is {short(edge)}, not a pair of keypoint indices (write [i, j])"
            )
        if not all(0 <= i < n for i in edge):
            raise SupportFileError(
                f"{where}: skeleton edge {e} {list(edge)} refers to a keypoint that does not exist "
                f"(indices run from 0 to {n - 1})"
            )
    return tuple((int(i), int(j)) for i, j in raw)


def _json_type(value: object) -> str:
    """`value`'s JSON type with its article, e.g. "an object"."""
    names = {dict: "an object", list: "a list", tuple: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number" if is_number(value) else f"a {type(value).__name__}")

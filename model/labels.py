"""Labels the user already has, as a support shot: a COCO keypoints annotation file (CVAT, Label Studio, ...), a
DeepLabCut `CollectedData_*.h5` / `.csv`, or a SLEAP `.slp`. One labelled frame becomes one shot, with the names and
skeleton of the file, so nothing has to be clicked again.

Which frame: `index` (the n-th labelled frame in the file, 0 by default) or `image` (its image file name).

A SLEAP file's frames may live in a video. sleap-io reads the containers its backends know (MP4, AVI, MOV, MKV); the
caller can pass its own `read_frame` for the rest, so that a `.slp` written for a WebM or MPEG-TS clip (by
`cape-track --export sleap`, say) still gives its support. The model layer decodes no video itself: the tracker's
reader does, with the rotation and colours that it tracks with.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import CapeError, SupportFileError
from .support import SupportSet, _check_readable, load_image

if TYPE_CHECKING:
    from sleap_io import LabeledFrame

MAX_LABELS_BYTES = 512 << 20  # labels files carry many frames, and SLEAP's may embed images

FrameReader = Callable[[str, int], np.ndarray]  # (video file, 0-based frame index) -> [H, W, 3] uint8 RGB


def support_from_labels(
    path: str | Path, index: int | None = None, image: str | None = None, read_frame: FrameReader | None = None
) -> SupportSet:
    """The labelled frame of `path` chosen by `index` or `image` name, as a 1-shot `SupportSet`; `read_frame` reads
    a SLEAP frame's video where sleap-io cannot."""
    path = Path(path)
    try:
        _check_readable(path, "labels file", MAX_LABELS_BYTES)
    except FileNotFoundError:
        raise SupportFileError(f"{path}: no such labels file (check the path)") from None
    suffix = path.suffix.lower()
    if suffix == ".slp":
        return _from_sleap(path, index, image, read_frame)
    if suffix in (".h5", ".hdf5") or (suffix == ".csv" and _looks_like_dlc(path)):
        return _from_deeplabcut(path, index, image)
    if suffix == ".json":
        return _from_coco(path, index, image)
    raise SupportFileError(f"{path}: not a labels file this reads (COCO .json, DeepLabCut .h5/.csv, SLEAP .slp)")


def _pick(names: list[str], index: int | None, image: str | None, where: Path) -> int:
    """Position of the chosen frame among `names` (image file names, in file order)."""
    if not names:
        raise SupportFileError(f"{where}: no labelled frame")
    if image is not None:
        base = [Path(n).name for n in names]
        if image in names:
            return names.index(image)
        if Path(image).name in base:
            return base.index(Path(image).name)
        raise SupportFileError(f"{where}: no labelled image named {image!r} (it has e.g. {', '.join(base[:3])})")
    k = 0 if index is None else index
    if not 0 <= k < len(names):
        raise SupportFileError(
            f"{where}: labelled frame {k} asked for, the file has {len(names)} (0 to {len(names) - 1})"
        )
    return k


def _find_image(where: Path, name: str) -> Path:
    """An image named in a labels file, looked up where annotation tools put it relative to that file."""
    candidates = [where.parent / name, where.parent / "images" / name, where.parent / Path(name).name]
    candidates += [where.parent.parent / name, where.parent.parent / "images" / Path(name).name]
    for candidate in candidates:
        if os.path.isfile(candidate):  # never raises (Path.is_file does, for a name over 255 bytes)
            return candidate
    raise SupportFileError(f"{where}: cannot find its image {name!r} (put it beside the labels file or in images/)")


# ----------------------------------------------------------------------------------------------------- COCO
def _from_coco(path: Path, index: int | None, image: str | None) -> SupportSet:
    """A COCO keypoints file, as CVAT, Label Studio and the COCO tools write it. Files come from many tools and get
    edited by hand, so each part is checked for what it must be before use, and a wrong one is named."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        images, annotations, categories = data["images"], data["annotations"], data["categories"]
    except (OSError, ValueError, RecursionError) as exc:
        raise SupportFileError(f"{path}: not a readable COCO file ({type(exc).__name__})") from None
    except (KeyError, TypeError):
        raise SupportFileError(f"{path}: not a COCO keypoints file (needs images, annotations, categories)") from None
    parts = (images, annotations, categories)
    if not all(isinstance(part, list) and all(isinstance(x, dict) for x in part) for part in parts):
        raise SupportFileError(f"{path}: not a COCO keypoints file (images, annotations, categories: lists of objects)")
    by_image: dict[object, dict] = {}  # image id -> its first annotation with keypoints
    try:
        for a in annotations:
            if a.get("num_keypoints", 1) and a.get("keypoints"):
                by_image.setdefault(a["image_id"], a)
        labelled = [im for im in images if im["id"] in by_image]
    except KeyError as exc:
        raise SupportFileError(f"{path}: an image or annotation has no {exc} (COCO needs one on each)") from None
    except TypeError:  # an id that is a list or an object
        raise SupportFileError(f"{path}: an image id or annotation image_id is not a number or a string") from None
    if not labelled:
        raise SupportFileError(f"{path}: no image has keypoint annotations")
    files = [im.get("file_name") for im in labelled]
    if not all(isinstance(f, str) and f for f in files):
        bad = next(f for f in files if not (isinstance(f, str) and f))
        raise SupportFileError(f"{path}: an image's file_name is {bad!r}, not a file name")
    chosen = _pick(files, index, image, path)
    name = files[chosen]
    ann = by_image[labelled[chosen]["id"]]
    category = next((c for c in categories if c.get("id") == ann.get("category_id")), None)
    if category is None or not isinstance(category.get("keypoints"), list):
        raise SupportFileError(
            f"{path}: the annotation of {name!r} has category_id {ann.get('category_id')!r}, which no category with "
            "keypoint names has"
        )
    names = list(category["keypoints"])
    numbers = ann["keypoints"]
    if not isinstance(numbers, list) or len(numbers) % 3:
        count = len(numbers) if isinstance(numbers, list) else type(numbers).__name__
        raise SupportFileError(f"{path}: the annotation of {name!r} has {count} keypoint numbers, not x, y, v triples")
    try:
        triples = np.asarray(numbers, dtype=np.float64).reshape(-1, 3)
    except (TypeError, ValueError, OverflowError):  # a string, a list, or an integer beyond a float's range
        bad = next((v for v in numbers if not isinstance(v, float) and not _small_int(v)), numbers)
        raise SupportFileError(
            f"{path}: the annotation of {name!r} has a keypoint value {bad!r} (write numbers)"
        ) from None
    if len(triples) != len(names):
        raise SupportFileError(f"{path}: {len(triples)} keypoints annotated, the category names {len(names)}")
    edges = category.get("skeleton") or []
    where = f"{path}: category {category.get('name', '?')!r}"
    if not isinstance(edges, list):
        raise SupportFileError(f"{where} has the skeleton {edges!r}, not a list of [a, b] keypoint numbers")
    for edge in edges:
        if not _coco_edge(edge, len(names)):
            raise SupportFileError(
                f"{where}: skeleton edge {edge!r} is not a pair of keypoint numbers from 1 to {len(names)} "
                "(COCO counts keypoints from 1)"
            )
    skeleton = [(int(a) - 1, int(b) - 1) for a, b in edges]
    picture = load_image(_find_image(path, name))
    return SupportSet.from_arrays(picture, triples[:, :2], triples[:, 2] > 0, names, skeleton)


def _coco_edge(edge: object, count: int) -> bool:
    """A COCO skeleton edge: two keypoint numbers in 1..count (whole numbers; some tools write them as 2.0)."""
    return (
        isinstance(edge, list)
        and len(edge) == 2
        and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and 1 <= v <= count and float(v).is_integer()
            for v in edge
        )
    )


def _small_int(value: object) -> bool:
    """An integer (not a bool) that a float holds."""
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2.0**1023


def _looks_like_dlc(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.readline().lower().startswith("scorer")
    except OSError:
        return False


def _from_deeplabcut(path: Path, index: int | None, image: str | None) -> SupportSet:
    """DeepLabCut's CollectedData: columns (scorer, bodyparts, coords x/y), one row per labelled image, the row
    index the image path (one string, or DeepLabCut >= 2.2's three levels). The skeleton comes from the project's
    config.yaml when it is found above the file."""
    import pandas as pd

    try:
        if path.suffix.lower() == ".csv":
            frame = pd.read_csv(path, header=[0, 1, 2])
            # The leading columns name the image: one ("labeled-data/video/img.png") or, since DeepLabCut 2.2, three.
            lead = [c for c in frame.columns if c[2] not in ("x", "y", "likelihood")]
            frame = frame.set_index(lead) if lead else frame
            frame.columns = frame.columns.set_names(["scorer", "bodyparts", "coords"])
        else:
            frame = pd.read_hdf(path)
    except (OSError, ValueError, KeyError, ImportError, TypeError, RuntimeError) as exc:  # HDF5 errors: Runtime
        raise SupportFileError(f"{path}: not a readable DeepLabCut labels file ({type(exc).__name__})") from None
    if frame.columns.nlevels < 3 or "bodyparts" not in (frame.columns.names or []):
        raise SupportFileError(f"{path}: not DeepLabCut's layout (columns scorer / bodyparts / coords)")
    names = list(dict.fromkeys(frame.columns.get_level_values("bodyparts")))
    rows = ["/".join(map(str, i)) if isinstance(i, tuple) else str(i) for i in frame.index]
    k = _pick(rows, index, image, path)
    row = frame.iloc[k]
    coords = row.droplevel("scorer") if "scorer" in (row.index.names or []) else row
    try:
        xy = np.array([[coords[(n, "x")], coords[(n, "y")]] for n in names], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise SupportFileError(f"{path}: malformed DeepLabCut row {rows[k]!r} ({type(exc).__name__})") from None
    visible = np.isfinite(xy).all(axis=1)
    xy = np.where(visible[:, None], xy, 0.0)
    picture = load_image(_find_image(path, rows[k]))
    return SupportSet.from_arrays(picture, xy, visible, names, _dlc_skeleton(path, names))


def _dlc_skeleton(path: Path, names: list[str]) -> list[tuple[int, int]]:
    """`skeleton:` of the DeepLabCut project's config.yaml (two or three folders up), as index pairs."""
    for folder in (path.parent, path.parent.parent, path.parent.parent.parent):
        config = folder / "config.yaml"
        if config.is_file():
            import yaml

            try:
                pairs = (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("skeleton") or []
                return [(names.index(a), names.index(b)) for a, b in pairs if a in names and b in names]
            except (yaml.YAMLError, OSError, ValueError, TypeError):
                return []
    return []


# ----------------------------------------------------------------------------------------------------- SLEAP
def _from_sleap(path: Path, index: int | None, image: str | None, read_frame: FrameReader | None) -> SupportSet:
    try:
        import sleap_io as sio
    except ImportError:
        raise SupportFileError(
            f"{path}: reading SLEAP files needs sleap-io (pip install 'cape-track[sleap]')"
        ) from None
    try:
        labels = sio.load_slp(str(path))
    except Exception as exc:  # noqa: BLE001 - sleap-io raises many kinds for a damaged file: all mean "unreadable"
        raise SupportFileError(f"{path}: not a readable SLEAP file ({type(exc).__name__})") from None
    frames = [lf for lf in labels.labeled_frames if lf.user_instances or lf.instances]
    tags = [_frame_tag(lf.video, lf.frame_idx) for lf in frames]
    chosen = frames[_pick(tags, index, image, path)]
    instance = (chosen.user_instances or chosen.instances)[0]
    skeleton = instance.skeleton
    names = list(skeleton.node_names)
    xy = np.asarray(instance.numpy(), dtype=np.float64)
    visible = np.isfinite(xy).all(axis=1)
    picture = _sleap_image(chosen, read_frame)
    if picture is None:
        raise SupportFileError(
            f"{path}: the frame's image cannot be read (is its video at {_video_name(chosen.video)}?)"
        )
    picture = np.asarray(picture)
    if picture.ndim == 2 or picture.shape[-1] == 1:
        picture = np.repeat(picture.reshape(picture.shape[0], picture.shape[1], 1), 3, axis=2)
    edges = [tuple(e) for e in skeleton.edge_inds]
    return SupportSet.from_arrays(
        np.ascontiguousarray(picture, dtype=np.uint8), np.where(visible[:, None], xy, 0.0), visible, names, edges
    )


def _sleap_image(frame: LabeledFrame, read_frame: FrameReader | None) -> np.ndarray | None:
    """The image of a SLEAP labelled frame: by sleap-io, else (a video in a container its backends do not know) by
    `read_frame`; None when neither can."""
    try:
        picture = frame.image
    except Exception:  # noqa: BLE001 - sleap-io's video backends raise many kinds for a missing or bad video
        picture = None
    filename = getattr(frame.video, "filename", None)
    if picture is None and read_frame is not None and isinstance(filename, str) and os.path.isfile(filename):
        try:
            picture = read_frame(filename, frame.frame_idx)
        except CapeError:  # the reader's own one-line error ("has no frame 9 ...") says more than ours would
            raise
        except Exception:  # noqa: BLE001 - any other failure of the caller's reader: this frame cannot be read
            picture = None
    return picture


def _frame_tag(video: object, frame_idx: int) -> str:
    """How `--labels-image` names a SLEAP frame: its image file for an image sequence, else `video.mp4:N`."""
    filename = getattr(video, "filename", "")
    if isinstance(filename, list) and 0 <= frame_idx < len(filename):
        return Path(filename[frame_idx]).name
    return f"{Path(str(filename)).name}:{frame_idx}"


def _video_name(video: object) -> str:
    filename = getattr(video, "filename", "")
    return filename[0] if isinstance(filename, list) and filename else str(filename)

"""Shared pytest fixtures: generated media and support files, so no test depends on binary blobs."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

# onnxruntime reads its telemetry switch when it is first imported, and test modules import it while being collected
# (the package itself imports it through `model.export.import_onnxruntime`, which does the same).
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

# --- support_files: a valid ref.jpg + ref.json pair, and malformed variants of the JSON --------------------------


@dataclass
class SupportFiles:
    """`image` (64x48 JPEG) with `keypoints` (its valid ref.json, content `data`) in one folder."""

    image: Path
    keypoints: Path
    data: dict

    @property
    def size(self) -> tuple[int, int]:
        return 64, 48  # (W, H) of `image`

    def variant(self, name: str = "bad.json", **changes: object) -> Path:
        """Write `data` with keys replaced (a value of `None` removes the key) and return the new file."""
        data = {**self.data, **changes}
        return self.raw(json.dumps({k: v for k, v in data.items() if v is not None}), name)

    def raw(self, text: str, name: str = "bad.json") -> Path:
        """Write arbitrary text as a keypoint file (for malformed JSON)."""
        path = self.image.parent / name
        path.write_text(text, encoding="utf-8")
        return path


@pytest.fixture
def support_files(tmp_path: Path) -> SupportFiles:
    """A generated support image (gradient + a bright square) and its 5-keypoint ref.json with names and skeleton."""
    w, h = 64, 48
    xs, ys = np.meshgrid(np.arange(w), np.arange(h))
    image = np.stack([xs * 4, ys * 5, np.full_like(xs, 60)], axis=-1).astype(np.uint8)
    image[10:30, 20:44] = 230
    cv2.imwrite(str(tmp_path / "ref.jpg"), image)
    data = {
        "keypoints": [[20.0, 10.0], [43.0, 10.0], [43.0, 29.0], [20.0, 29.0], [31.5, 19.5]],
        "names": ["top_left", "top_right", "bottom_right", "bottom_left", "centre"],
        "visible": [1, 1, 1, 0, 1],
        "skeleton": [[0, 1], [1, 2], [2, 3], [3, 0]],
    }
    (tmp_path / "ref.json").write_text(json.dumps(data), encoding="utf-8")
    return SupportFiles(tmp_path / "ref.jpg", tmp_path / "ref.json", data)


# --- seeded: every test starts from the same random state -----------------------------------------------------


@pytest.fixture(autouse=True)
def seeded() -> Iterator[None]:
    """Seed torch, numpy and random per test, so results never depend on test order; one torch thread, because
    two OpenMP threads on a loaded 2-core machine make small-model calls up to 100x slower (oversubscription)."""
    import random

    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- onnx_cache: exported graphs go to a per-run folder, never to the user's ~/.cache ----------------------------


@pytest.fixture(autouse=True, scope="session")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("cape-cache")
    before = os.environ.get("CAPE_TRACK_CACHE")
    os.environ["CAPE_TRACK_CACHE"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("CAPE_TRACK_CACHE", None)
    else:
        os.environ["CAPE_TRACK_CACHE"] = before


# --- generated_mp100: a small dataset in the MP-100 file layout (training tests) --------------------------------


@pytest.fixture(scope="session")
def generated_mp100(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a generated MP-100-layout dataset: 5 toy categories x 6 images (3 train, 1 val, 1 test), 2 splits."""
    from cape_track.training.synthetic import generate

    root = tmp_path_factory.mktemp("mp100")
    generate(root, categories=5, images_per_category=6, splits=2, seed=0, size_range=(96, 160))
    return root

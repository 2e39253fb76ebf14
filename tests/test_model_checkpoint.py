"""Loading the paper's released layouts strictly, and our own format round-tripping bit-exactly."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from reference_data import REFERENCE, VECTORS

from cape_track import model
from cape_track.model.checkpoint import infer_official_config, official_to_ours
from cape_track.model.errors import CheckpointError


def _released_layout(name: str) -> dict[str, torch.Tensor]:
    """A state dict laid out exactly like a released checkpoint (names, shapes, dtypes), random values."""
    keys = json.loads((REFERENCE / name).read_text())
    gen = torch.Generator().manual_seed(0)
    sd = {}
    for key, shape, dtype, _kind in keys:
        if dtype == "int64":
            sd[key] = torch.randint(0, 10, shape, generator=gen)
        else:
            sd[key] = torch.randn(shape, generator=gen) * 0.02
    return sd


@pytest.mark.slow
@pytest.mark.parametrize(
    ("keys", "depths", "input_size"),
    [
        ("keys_tiny_1shot.json", (2, 2, 6, 2), 256),
        ("keys_small_1shot.json", (2, 2, 18, 2), 256),
        ("keys_old_swinv2b_1shot_pre_feb2024.json", (2, 2, 18, 2), 224),
    ],
)
def test_released_layout_loads_strictly(keys: str, depths: tuple[int, ...], input_size: int) -> None:
    sd = _released_layout(keys)
    cfg = infer_official_config(sd)
    assert cfg.backbone.depths == depths and cfg.input_size == input_size
    m = model.CapeModel.from_official(sd)
    ours = m.state_dict()
    mapped = official_to_ours(sd)
    # Every tensor of the file is used, except the buffers timm recomputes and the unused ImageNet classifier ...
    recomputed = ("relative_position_index", "relative_coords_table", "attn_mask")
    dropped = {k for k in sd if k.endswith(recomputed) or k.startswith("backbone.head.")}
    assert len(mapped) == len(sd) - len(dropped) == len(ours)
    # ... and lands in the model unchanged.
    for k, v in mapped.items():
        assert torch.equal(ours[k], v), k
    assert not m.training
    x = torch.zeros(1, 3, input_size, input_size)
    with torch.no_grad():
        assert m.backbone(x).shape[-2:] == (input_size // 16, input_size // 16)


def test_unknown_or_missing_key_is_a_clear_error() -> None:
    sd = torch.load(VECTORS / "state_dict_mini.pt", weights_only=True)
    extra = dict(sd, **{"keypoint_head.something_new.weight": torch.zeros(3)})
    with pytest.raises(CheckpointError, match="1 unexpected"):
        model.CapeModel.from_official(extra)
    partial = {k: v for k, v in sd.items() if "kpt_branch.2" not in k}
    with pytest.raises(CheckpointError, match="missing"):
        model.CapeModel.from_official(partial)


def test_module_prefix_and_prerelease_names_are_accepted() -> None:
    sd = torch.load(VECTORS / "state_dict_mini.pt", weights_only=True)
    renamed = {}
    for k, v in sd.items():
        k2 = "encoder_sample." + k.removeprefix("backbone.") if k.startswith("backbone.") else k
        renamed["module." + k2] = v
        if k.startswith("backbone.patch_embed"):
            renamed["module.encoder_query." + k.removeprefix("backbone.")] = v
    a = model.CapeModel.from_official(sd).state_dict()
    b = model.CapeModel.from_official(renamed).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_own_format_round_trips_bit_exactly(tmp_path: Path) -> None:
    m = model.CapeModel.from_preset("test").eval()
    path = tmp_path / "m.pt"
    m.save(path)
    m2 = model.CapeModel.from_checkpoint(path)
    assert m2.config == m.config
    a, b = m.state_dict(), m2.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_half_storage_loads_as_float(tmp_path: Path) -> None:
    m = model.CapeModel.from_preset("test").eval()
    m.save(tmp_path / "h.pt", half=True)
    m2 = model.CapeModel.from_checkpoint(tmp_path / "h.pt")
    w = next(m2.parameters())
    assert w.dtype == torch.float32
    assert torch.allclose(w, next(m.parameters()), atol=1e-3)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such checkpoint"),
        (b"not a torch file", "not a PyTorch checkpoint"),
        ([1, 2], "expected a dict"),
        # a state dict pickled by hand (protocol 5): torch's refusal names the detail on a line of its own
        (pickle.dumps({"weight": [1.0]}, protocol=5), r"not a PyTorch checkpoint \(Unsupported operand \d+\)"),
    ],
)
def test_bad_checkpoint_files(tmp_path: Path, content: object, message: str) -> None:
    path = tmp_path / "bad.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(CheckpointError, match=message):
        model.CapeModel.from_checkpoint(path)


def test_other_network_does_not_fit(tmp_path: Path) -> None:
    m = model.CapeModel.from_preset("test")
    m.save(tmp_path / "m.pt")
    ckpt = torch.load(tmp_path / "m.pt", weights_only=True)
    ckpt["config"]["d_model"] = 64
    ckpt["config"]["similarity_proj_dim"] = 64
    torch.save(ckpt, tmp_path / "m2.pt")
    with pytest.raises(CheckpointError, match="does not fit"):
        model.CapeModel.from_checkpoint(tmp_path / "m2.pt")


class _Payload:
    """A crafted pickle: unpickling it calls `Path.touch` on a marker file (what an attacker's `os.system` would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_a_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "meta": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="refused.*--trust-checkpoint"):
        model.CapeModel.from_checkpoint(path)
    assert not marker.exists()


def test_trust_is_the_only_way_to_unpickle(tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "meta": _Payload(marker)}, path)
    with pytest.raises(CheckpointError):  # unpickled (the payload ran: trust means that), then no weights fit
        model.CapeModel.from_checkpoint(path, trust=True)
    assert marker.exists()


def test_a_file_laid_out_like_the_released_mmcv_checkpoints_loads_safely(tmp_path: Path) -> None:
    """mmcv's `save_checkpoint`: `meta` (versions, time, the config text, epoch/iter, hook messages holding a numpy
    best score), `state_dict` in the official layout, an `optimizer` state. Loads without `trust`."""
    import numpy as np

    sd = torch.load(VECTORS / "state_dict_mini.pt", weights_only=True)
    meta = {
        "mmcv_version": "1.7.0",
        "time": "Tue Feb 20 10:00:00 2024",
        "env_info": "sys.platform: linux",
        "config": "model = dict(type='PoseAnythingModel')\n",
        "seed": 0,
        "exp_name": "graph_split1_config.py",
        "epoch": 200,
        "iter": 44000,
        "hook_msgs": {"last_ckpt": "work_dirs/epoch_200.pth", "best_score": np.float64(0.91), "best_ckpt": "b.pth"},
        "mmpose_version": "0.29.0",
    }
    optimizer = {"state": {0: {"step": torch.tensor(1.0)}}, "param_groups": [{"lr": 1e-5, "params": [0]}]}
    path = tmp_path / "graph_split1.pth"
    torch.save({"meta": meta, "state_dict": sd, "optimizer": optimizer}, path)
    loaded = model.CapeModel.from_checkpoint(path)
    expected = model.CapeModel.from_official(sd).state_dict()
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in expected.items())


def test_nan_weights_are_refused(tmp_path: Path) -> None:
    m = model.CapeModel.from_preset("test").eval()
    with torch.no_grad():
        next(m.parameters()).fill_(float("nan"))
    m.save(tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match="NaN"):
        model.CapeModel.from_checkpoint(tmp_path / "nan.pt")


def test_safetensors_round_trip_and_the_embedded_model_is_safetensors(tmp_path: Path) -> None:
    from cape_track.model.checkpoint import DEFAULT_CHECKPOINT

    assert DEFAULT_CHECKPOINT.suffix == ".safetensors" and DEFAULT_CHECKPOINT.stat().st_size < 30e6
    m = model.CapeModel.from_preset("test").eval()
    m.save(tmp_path / "m.safetensors")
    m2 = model.CapeModel.from_checkpoint(tmp_path / "m.safetensors")
    assert m2.config == m.config
    a, b = m.state_dict(), m2.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    with pytest.raises(CheckpointError, match="not a safetensors checkpoint"):
        model.CapeModel.from_checkpoint(tmp_path / "bad.safetensors")


def test_numpy_1_pickles_of_meta_scalars_load_without_trust(tmp_path: Path) -> None:
    """The released files were written under numpy 1: their `meta` scalars name `numpy.core.multiarray.scalar`."""
    import numpy as np

    m = model.CapeModel.from_preset("test").eval()
    path = tmp_path / "np1.pt"
    m.save(path)
    ckpt = torch.load(path, weights_only=True)
    ckpt["meta"] = {"hook_msgs": {"best_score": np.float64(0.5)}}
    torch.save(ckpt, path)
    import io
    import zipfile

    new, old = b"numpy._core.multiarray", b"numpy.core.multiarray"
    source = zipfile.ZipFile(io.BytesIO(path.read_bytes()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as target:  # torch zips the pickle: rename inside data.pkl
        for item in source.infolist():
            data = source.read(item)
            if item.filename.endswith("data.pkl"):
                data = data.replace(new, old)
                assert old in data and new not in data  # the file now asks for numpy 1's name
            target.writestr(item, data)
    path.write_bytes(out.getvalue())
    loaded = model.CapeModel.from_checkpoint(path)
    assert loaded.config == m.config

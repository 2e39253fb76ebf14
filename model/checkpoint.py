"""Checkpoint files: our own format (config + weights) and the paper's released mmcv checkpoints.

The official key layout is mapped onto ours by one pure function with a table of renames (`official_to_ours`);
the architecture of an official file is inferred from tensor shapes (`infer_official_config`), so every released
size loads without a config file. Loads are strict: a key that is missing, left over or mis-shaped is an error.
"""

from __future__ import annotations

import json
import pickle
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import safetensors
import safetensors.torch
import torch
from torch import nn

from .config import BackboneConfig, CapeConfig
from .errors import CheckpointError

FORMAT = "cape-track"
FORMAT_VERSION = 1
DEFAULT_CHECKPOINT = Path(__file__).with_name("weights") / "default.safetensors"
# What the paper's released mmcv checkpoints hold besides tensors, dicts, lists and strings: `meta.hook_msgs` keeps
# numpy scalars (e.g. `best_score`), pickled as a numpy scalar of a numpy dtype. Unpickling is restricted to exactly
# these (plus torch's own weights-only set); anything else needs `trust=True` (`--trust-checkpoint`).
_SCALAR = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
_MMCV_META_GLOBALS = [
    np.dtype,
    *(type(np.dtype(t)) for t in ("float64", "float32", "float16", "int64", "int32", "bool")),
    _SCALAR,
    # The released files were pickled under numpy 1, which names the scalar constructor `numpy.core...`.
    (_SCALAR, "numpy.core.multiarray.scalar"),
]

# Official prefix -> our prefix, first match wins (order matters: the specific decoder rule precedes the generic).
_HEAD_RENAMES: tuple[tuple[str, str], ...] = (
    (r"keypoint_head\.input_proj\.", "input_proj."),
    (r"keypoint_head\.query_proj\.", "support_proj."),
    (r"keypoint_head\.transformer\.encoder\.", "encoder."),
    (r"keypoint_head\.transformer\.decoder\.layers\.(\d+)\.multihead_attn\.", r"decoder.layers.\1.cross_attn."),
    (r"keypoint_head\.transformer\.decoder\.", "decoder."),
    (r"keypoint_head\.transformer\.proposal_generator\.", "proposal."),
    (r"keypoint_head\.kpt_branch\.", "coord_heads."),
)
# Buffers the official SwinV2 saves but timm recomputes (non-persistent there), and the unused classifier.
_DROPPED = re.compile(r"\.(relative_position_index|relative_coords_table|attn_mask)$|^backbone\.head\.")


def official_to_ours(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an official PoseAnything state dict to CapeModel's keys (spec §4, §17).

    Handles the `module.` prefix of DataParallel saves and the pre-release 5-shot layout (`encoder_sample.` for
    the backbone plus an unused duplicate `encoder_query.`, GitHub issue #7 of the official repo).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if key.startswith("encoder_query."):
            continue
        if key.startswith("encoder_sample."):
            key = "backbone." + key.removeprefix("encoder_sample.")
        if _DROPPED.search(key):
            continue
        out[_rename(key)] = value
    return out


def _rename(key: str) -> str:
    if key.startswith("backbone.upsample."):
        return key
    if key.startswith("backbone."):
        key = key.removeprefix("backbone.")
        # Official SwinV2 merges patches at the end of stage i, timm at the start of stage i+1.
        m = re.match(r"layers\.(\d+)\.downsample\.(.*)", key)
        if m:
            key = f"layers.{int(m.group(1)) + 1}.downsample.{m.group(2)}"
        return "backbone.body." + key
    for pattern, repl in _HEAD_RENAMES:
        new, n = re.subn("^" + pattern, repl, key)
        if n:
            return new
    return key  # unknown keys are reported by the strict load


def infer_official_config(state_dict: Mapping[str, torch.Tensor]) -> CapeConfig:
    """The architecture of an official checkpoint, from tensor shapes alone (spec §17)."""
    sd = {k.removeprefix("module.").replace("encoder_sample.", "backbone.", 1): v for k, v in state_dict.items()}

    def shape(key: str) -> torch.Size:
        if key not in sd:
            raise CheckpointError(f"checkpoint: missing {key!r} (not a Pose Anything / GraphCape checkpoint)")
        return sd[key].shape

    def count(pattern: str) -> int:
        idx = {int(m.group(1)) for k in sd if (m := re.match(pattern, k))}
        return max(idx) + 1 if idx else 0

    embed_dim = shape("backbone.patch_embed.proj.weight")[0]
    stages = count(r"backbone\.layers\.(\d+)\.")
    depths = tuple(count(rf"backbone\.layers\.{s}\.blocks\.(\d+)\.") for s in range(stages))
    heads = tuple(shape(f"backbone.layers.{s}.blocks.0.attn.logit_scale")[0] for s in range(stages))
    deconv = "backbone.upsample.weight" in sd

    window = 16
    if "backbone.layers.0.blocks.0.attn.relative_position_index" in sd:
        window = round(sd["backbone.layers.0.blocks.0.attn.relative_position_index"].shape[0] ** 0.5)
    elif "backbone.layers.0.blocks.0.attn.relative_coords_table" in sd:
        window = (sd["backbone.layers.0.blocks.0.attn.relative_coords_table"].shape[1] + 1) // 2
    input_size = 224 if deconv else 256
    if "backbone.layers.0.blocks.1.attn_mask" in sd:
        windows_per_side = round(sd["backbone.layers.0.blocks.1.attn_mask"].shape[0] ** 0.5)
        input_size = windows_per_side * 4 * window

    d_model, in_channels = shape("keypoint_head.input_proj.weight")[:2]
    graph = "keypoint_head.transformer.decoder.layers.0.ffn1.conv.weight" in sd
    backbone = BackboneConfig(
        family="swinv2",
        name=f"swinv2_e{embed_dim}_d{'-'.join(map(str, depths))}_w{window}_{input_size}",
        embed_dim=embed_dim,
        depths=depths,
        num_heads=heads,
        window_size=window,
        # The pre-2024 SwinV2-B was fine-tuned from 12/12/12/6 windows (spec §2); current files use 0.
        pretrained_window_sizes=(12, 12, 12, 6) if deconv else (0,) * stages,
        upsample="deconv" if deconv else "bilinear",
    )
    return CapeConfig(
        backbone=backbone,
        input_size=input_size,
        d_model=d_model,
        nhead=8,  # not recoverable from shapes; every released head uses 8
        num_encoder_layers=count(r"keypoint_head\.transformer\.encoder\.layers\.(\d+)\."),
        num_decoder_layers=count(r"keypoint_head\.transformer\.decoder\.layers\.(\d+)\."),
        dim_feedforward=shape("keypoint_head.transformer.decoder.layers.0.ffn2.weight")[1],
        similarity_proj_dim=shape("keypoint_head.transformer.proposal_generator.support_proj.weight")[0],
        dynamic_proj_dim=shape("keypoint_head.transformer.proposal_generator.dynamic_proj.0.weight")[0],
        graph_decoder=graph,
    )


@dataclass(frozen=True)
class Weights:
    """What a checkpoint holds for the network: its configuration and its state dict in our key names. Reading
    stops here; `CapeModel.from_weights` builds the network (so this module needs no `CapeModel`)."""

    config: CapeConfig
    state_dict: dict[str, torch.Tensor]
    source: str  # where they came from, for messages


def read_official(path_or_state_dict: str | Path | Mapping[str, torch.Tensor]) -> Weights:
    """A released Pose Anything checkpoint (or an official-layout state dict): the configuration inferred from the
    tensor shapes, the keys renamed to ours."""
    if isinstance(path_or_state_dict, (str, Path)):
        ckpt = _read(Path(path_or_state_dict))
        state_dict = ckpt.get("state_dict", ckpt)
    else:
        state_dict = path_or_state_dict
    if not isinstance(state_dict, Mapping) or not state_dict:
        raise CheckpointError("checkpoint: no state_dict found (expected an mmcv checkpoint or a state dict)")
    return Weights(infer_official_config(state_dict), official_to_ours(state_dict), "official checkpoint")


def save_checkpoint(
    state_dict: Mapping[str, torch.Tensor],
    config: CapeConfig,
    path: str | Path,
    half: bool = False,
    train: Mapping[str, object] | None = None,
) -> None:
    """Our format: one file with the config, so `read_checkpoint` rebuilds the exact network. A `.safetensors` path
    writes safetensors (the config as JSON metadata: nothing in the file can run code); any other a torch file,
    which may also hold `train`, the state a training run resumes from (`read_training_checkpoint`). Written
    through a rename: an interrupted save leaves the previous file."""
    sd = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu() for k, v in state_dict.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f".{path.name}.part")
    if path.suffix == ".safetensors":
        if train is not None:
            raise ValueError("training state is kept in torch files only (use a .pt path)")
        meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "config": json.dumps(config.to_dict())}
        safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, str(part), metadata=meta)
    else:
        ckpt = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": config.to_dict(), "state_dict": sd}
        torch.save({**ckpt, "train": dict(train)} if train is not None else ckpt, part)
    part.replace(path)


def read_training_checkpoint(path: str | Path) -> tuple[Weights, dict]:
    """A checkpoint written during training: its weights and the `train` state to resume from (read like every
    checkpoint, with `weights_only=True`)."""
    path = Path(path)
    ckpt = _read(path)
    if ckpt.get("format") != FORMAT or "train" not in ckpt:
        raise CheckpointError(f"{path}: a model-only checkpoint (use init_checkpoint to start from it)")
    return _our_weights(ckpt, path), ckpt["train"]


def read_checkpoint(path: str | Path | None = None, trust: bool = False) -> Weights:
    """Our own format or an official file (detected by content); `None` = the embedded default model.

    Nothing in the file is executed unless `trust` is set: torch files are read with `weights_only=True` and the
    few numpy types the released mmcv checkpoints hold; safetensors files hold tensors and strings only.
    """
    if path is None:
        path = DEFAULT_CHECKPOINT
        if not path.exists():
            raise CheckpointError(f"{path}: the embedded default model is missing (reinstall cape-track)")
    path = Path(path)
    ckpt = _read_safetensors(path) if path.suffix == ".safetensors" else _read(path, trust)
    if ckpt.get("format") != FORMAT:
        try:
            return read_official(ckpt.get("state_dict", ckpt))
        except CheckpointError as e:
            raise CheckpointError(f"{path}: {e}") from None
    return _our_weights(ckpt, path)


def _our_weights(ckpt: dict, path: Path) -> Weights:
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer cape-track (format {ckpt['format_version']}); upgrade")
    try:
        config = CapeConfig.from_dict(ckpt["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid model config ({e})") from None
    sd = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    if not all(torch.isfinite(v).all() for v in sd.values() if v.is_floating_point()):
        raise CheckpointError(f"{path}: holds NaN or infinite weights (a damaged or diverged checkpoint)")
    return Weights(config, sd, str(path))


def _read(path: Path, trust: bool = False) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        if trust:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        else:
            with torch.serialization.safe_globals(_MMCV_META_GLOBALS), warnings.catch_warnings():
                # torch warns of a pickle protocol other than its own before refusing such a file: the refusal says it
                warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
                ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" not in str(e):
            raise CheckpointError(f"{path}: not a PyTorch checkpoint ({_pickle_problem(e)})") from None
        what = str(e).split("Unsupported global: ")[-1].split(" was not")[0].removeprefix("GLOBAL").strip()[:80]
        raise CheckpointError(
            f"{path}: refused: it holds Python objects beyond weights ({what}), and unpickling them could run code "
            "(pass --trust-checkpoint only for a file you trust)"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError, AttributeError, TypeError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0][:80]
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({first})") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: not a checkpoint (expected a dict, found {type(ckpt).__name__})")
    return ckpt


def _pickle_problem(e: pickle.UnpicklingError) -> str:
    """The informative line of torch's long weights-only message (it starts with advice about PyTorch 2.6). The
    detail follows "WeightsUnpickler error:" on its line, or on the next one (a plain `pickle.dump` of protocol 4
    or 5: "Unsupported operand 149")."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if "WeightsUnpickler error" in line:
            rest = line.split("WeightsUnpickler error:")[-1].strip()
            return (rest or (lines[i + 1] if i + 1 < len(lines) else "unreadable"))[:80]
    detail = [line for line in lines if "load key" in line]
    return (detail or lines or ["unreadable"])[-1][:80]


def _read_safetensors(path: Path) -> dict:
    """Our format in safetensors: the config lives in the metadata as JSON."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no items()
        config = json.loads(meta["config"]) if "config" in meta else None
    except (OSError, ValueError, KeyError, safetensors.SafetensorError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0][:80]
        raise CheckpointError(f"{path}: not a safetensors checkpoint ({first})") from None
    if meta.get("format") != FORMAT:
        return {"state_dict": sd}  # plain weights: the official remap path decides whether they fit
    return {"format": FORMAT, "format_version": int(meta.get("format_version", 0)), "config": config, "state_dict": sd}


def load_strict(model: nn.Module, weights: Weights) -> None:
    """Fill `model` with `weights`: every parameter filled, every tensor used, every shape equal, or one
    `CheckpointError` naming what does not fit (strict, like the official loader's intent)."""
    state_dict, source = weights.state_dict, weights.source
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [k for k in own if k in state_dict and own[k].shape != state_dict[k].shape]
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {keys[0]})")
        raise CheckpointError(f"{source}: does not fit the network: {'; '.join(parts)}")
    model.load_state_dict(state_dict, strict=True)

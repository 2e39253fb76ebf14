"""ONNX graphs of the model, for runtimes without torch.

Two graphs, both with a dynamic batch axis:

- `backbone_onnx`: images -> the backbone's levels. The tracker's `--accel onnx` runs it under ONNX Runtime (the
  finder's similarity, layout fit and the smoother stay in torch/numpy: they are cheap and data-dependent).
- `export_network`: images + the cached support embedding -> keypoints and scores, the paper's whole prediction for
  a fixed keypoint count. With the embedding saved beside it (`save_embedding`), a deployment needs only
  onnxruntime and numpy (`cape-track export`; README, "ONNX").

Why the TorchScript exporter (`dynamo=False`): it traces the model in about a second and its graphs match eager
within 2e-4 input px; the dynamo exporter takes ~10 s for the backbone alone and refuses the decoder (its
data-dependent mask rule, before that rule was made branch-free). Tracing bakes Python branches on
tensor values into the graph; the model has none left (`cape._decoder_mask` is branch-free for this reason), and
the tests check the graph on supports other than the one it was traced with.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from torch import nn

from .backbone import Backbone
from .cape import CapeModel
from .outputs import SupportEmbedding

OPSET = 17
NETWORK_INPUTS = ("images", "support_tokens", "support_mask", "support_adjacency")
NETWORK_OUTPUTS = ("keypoints", "scores")
NETWORK_TOLERANCE_PX = 0.01  # max |onnxruntime - torch| keypoint difference accepted (measured: ~2e-4 input px)


def import_onnxruntime() -> ModuleType:
    """onnxruntime (an optional extra), imported with its telemetry off unless the user's environment says otherwise.

    Its recent Linux and macOS wheels (1.32 here) send usage events to Microsoft and keep a device ID and an event
    store under `~/.cache/Microsoft` from the first session on; a tracker of people's videos must not do that
    unasked. `ORT_DISABLE_TELEMETRY` is read when the module loads, so cape-track imports it only through here (a
    program that imported onnxruntime before cape-track keeps its own setting)."""
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import onnxruntime

    return onnxruntime


class BackboneGraph(nn.Module):
    """Images `[B, 3, S, S]` -> `depth` backbone levels finest first (`Backbone.pyramid`), or for `depth=1` the
    feature map (`Backbone.forward`, with its upsampling). Calls the class's methods, so a backbone whose instance
    methods were patched by an accelerator still exports its eager self."""

    def __init__(self, backbone: Backbone, depth: int = 1) -> None:
        super().__init__()
        self.backbone = backbone
        self.depth = depth

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.depth == 1:
            return (Backbone.forward(self.backbone, images),)
        return tuple(Backbone.pyramid(self.backbone, images, self.depth))


class NetworkGraph(nn.Module):
    """The query side of `CapeModel.predict` with the support embedding's three tensors as inputs."""

    def __init__(self, model: CapeModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, images: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, adjacency: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        prediction = self.model(images, SupportEmbedding(tokens, mask, adjacency))
        return prediction.keypoints, prediction.scores


def backbone_onnx(backbone: Backbone, input_size: int, depth: int = 1) -> bytes:
    """The serialized ONNX model of `BackboneGraph(backbone, depth)` (inputs `images`, outputs `level0..`)."""
    example = torch.zeros(2, 3, input_size, input_size, device=_device(backbone))  # batch 2: a dynamic axis
    names = [f"level{i}" for i in range(depth)]
    return _trace(BackboneGraph(backbone, depth), (example,), ["images"], names)


def export_network(model: CapeModel, path: str | Path, keypoints: int) -> None:
    """Write the network's prediction for `keypoints` keypoints to `path` (inputs `NETWORK_INPUTS`, outputs
    `NETWORK_OUTPUTS`; images ImageNet-normalised RGB `[B, 3, S, S]`, keypoints in input px)."""
    if keypoints < 1:
        raise ValueError(f"keypoints must be >= 1, got {keypoints}")
    s, d, dev = model.input_size, model.config.d_model, _device(model)
    example = (
        torch.zeros(2, 3, s, s, device=dev),  # batch 2 against a batch-1 support: the broadcast is traced
        torch.zeros(1, keypoints, d, device=dev),
        torch.zeros(1, keypoints, dtype=torch.bool, device=dev),
        torch.eye(keypoints, device=dev).expand(1, 2, keypoints, keypoints).contiguous(),
    )
    data = _trace(NetworkGraph(model), example, list(NETWORK_INPUTS), list(NETWORK_OUTPUTS))
    _write_replacing(Path(path), data)


def check_network(model: CapeModel, path: str | Path, keypoints: int, seed: int = 0) -> float:
    """Max |onnxruntime - torch| difference of the graph at `path`, keypoints in input px and scores x input size
    (so one number bounds both), on random images at batches 1 and 3 and a random support (some keypoints ignored,
    a random skeleton): not the all-zero, batch-2 example it was traced with."""
    from .decoder import skeleton_adjacency

    ort = import_onnxruntime()
    g = torch.Generator().manual_seed(seed)
    s, n, dev = model.input_size, keypoints, _device(model)
    mask = torch.rand(1, n, generator=g) < 0.3
    mask[0, 0] = False  # at least one keypoint stays
    edges = [[i, int(j)] for i in range(n) for j in torch.randint(0, n, (1,), generator=g) if i != int(j)]
    tokens = torch.randn(1, n, model.config.d_model, generator=g)
    adjacency = skeleton_adjacency([edges], ~mask)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    graph = NetworkGraph(model).eval()
    worst = 0.0
    for batch in (1, 3):
        images = torch.randn(batch, 3, s, s, generator=g)
        inputs = (images, tokens, mask, adjacency)
        ours = session.run(None, {name: t.numpy() for name, t in zip(NETWORK_INPUTS, inputs, strict=True)})
        with torch.no_grad():
            eager = [t.cpu().numpy() for t in graph(*(t.to(dev) for t in inputs))]
        worst = max(worst, float(np.abs(ours[0] - eager[0]).max()), float(np.abs(ours[1] - eager[1]).max()) * s)
    return worst


def save_embedding(embedding: SupportEmbedding, path: str | Path, names: tuple[str, ...] = ()) -> None:
    """The support embedding as a plain `.npz` (the exported network's `support_*` inputs, and the keypoint
    names): numpy reads it with `allow_pickle=False`, so a deployment loads no code with it."""
    buffer = io.BytesIO()
    np.savez(
        buffer,
        support_tokens=embedding.tokens.detach().cpu().numpy(),
        support_mask=embedding.mask.cpu().numpy(),
        support_adjacency=embedding.adjacency.cpu().numpy(),
        names=np.array(names, dtype=np.str_),
    )
    _write_replacing(Path(path), buffer.getvalue())


def _trace(module: nn.Module, example: tuple[torch.Tensor, ...], inputs: list[str], outputs: list[str]) -> bytes:
    """Trace `module` in eval mode (a wrapper in training mode would export BatchNorm's training branch), then
    restore every submodule's own mode; every input and output gets a dynamic batch axis 0."""
    modes = {m: m.training for m in module.modules()}
    module.eval()
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
            torch.onnx.export(
                module,
                example,
                buffer,
                input_names=inputs,
                output_names=outputs,
                dynamic_axes={name: {0: "batch"} for name in inputs[:1] + outputs},
                opset_version=OPSET,
                dynamo=False,
            )
    finally:
        for m, training in modes.items():
            m.training = training
    return buffer.getvalue()


def _write_replacing(path: Path, data: bytes) -> None:
    """Through a temporary file and a rename: an interrupted export leaves the old file or none, never half."""
    part = path.with_name(f".{path.name}.part")
    try:
        part.write_bytes(data)
        part.replace(path)
    finally:
        part.unlink(missing_ok=True)


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device

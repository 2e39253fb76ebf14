"""The CPU recipe of the embedded default model: a frozen ImageNet EfficientNet-Lite0 and the graph CAPE head,
started as a feature matcher and trained on two-view episodes of real photos and clip frames (`training.views`).
Resumable; logs a CSV curve.

    python -m cape_track.training.default_recipe --out runs/default --minutes 70
    python -m cape_track.training.default_recipe --out runs/default --export model/weights/default.safetensors  # then

A fine-tuning stage starts from a checkpoint and may add clip frame-pair episodes and train the last backbone
stages (both measured in the README's model card; neither was shipped):

    python -m cape_track.training.default_recipe --out runs/ft --init model/weights/default.safetensors \
        --lr 1e-4 --warmup 50 --steps 2000 --pairs --tune-blocks 1
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cape_track.model import CapeError, CapeModel, SupportEmbedding
from cape_track.model.config import get_preset
from cape_track.model.heatmaps import gaussian_heatmaps
from cape_track.model.transforms import normalize_images

from .losses import cape_losses
from .views import ViewConfig, load_clips, load_images, make_episode, make_pair_episode


@dataclasses.dataclass(frozen=True)
class RecipeConfig:
    preset: str = "lite0"
    episodes_per_step: int = 4  # E supports per step ...
    queries_per_episode: int = 3  # ... each with Q warped queries: E*(Q+1) backbone images per step
    steps: int = 2000
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup: int = 200
    val_every: int = 100
    val_episodes: int = 32
    seed: int = 0
    # The view mix. The defaults made the shipped model; `--pairs` turns on clip frame pairs, elastic warps and
    # keypoint sets of varied spread (measured as a fine-tuning stage: no gain, see the README's model card).
    pair_prob: float = 0.0  # episodes whose queries are other clip frames (training.views.make_pair_episode)
    elastic_prob: float = 0.0
    keypoint_spread: tuple[float, float] = (1.0, 1.0)
    tune_blocks: int = 0  # backbone stages trained (from the last, at a tenth of the learning rate); 0 = frozen


def build_model(cfg: RecipeConfig) -> CapeModel:
    preset = get_preset(cfg.preset)
    backbone = dataclasses.replace(preset.backbone, imagenet_init=True)
    # No dropout: the episodes are never repeated (fresh random views every step), and it halves the attention cost.
    model = CapeModel(dataclasses.replace(preset, backbone=backbone, dropout=0.0))
    matcher_init(model)
    # Frozen backbone: ImageNet features are kept (measured better than tuning them on this little data) and
    # the backward pass stops at the head, which makes a CPU step about twice as cheap.
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    if cfg.tune_blocks:
        stages = getattr(model.backbone.body, "blocks", None)
        if stages is None or cfg.tune_blocks > len(stages):
            raise ValueError(f"tune_blocks={cfg.tune_blocks}: the backbone has {len(stages or [])} stages to tune")
        for p in stages[len(stages) - cfg.tune_blocks :].parameters():
            p.requires_grad_(True)
    return model


@torch.no_grad()
def matcher_init(model: CapeModel) -> None:
    """Start the head as a plain feature matcher instead of from noise.

    Query and support features get the same random isometric projection, the encoder's residual branches start
    at zero (each layer is then a LayerNorm: a cosine-like normalisation), the proposal projections start as the
    identity and its dynamic gate closed. The similarity map is then a dot product of normalised backbone
    features, so the proposals are right from step 0 (measured: PCK@0.1 0.75 on warped views, against 0.05 for
    Xavier init after 600 steps) and training refines a working matcher. Architecture and keys are unchanged.
    """
    c, d = model.backbone.channels, model.config.d_model
    if c > d or model.config.similarity_proj_dim != d:
        raise ValueError(f"matcher init needs backbone channels ({c}) <= d_model ({d}) = similarity_proj_dim")
    q, _ = torch.linalg.qr(torch.randn(d, d))
    projection = q[:, :c] * (d / c) ** 0.5
    model.input_proj.weight.copy_(projection[:, :, None, None])
    model.support_proj.weight.copy_(projection)
    for layer in model.encoder.layers:
        for lin in (layer.self_attn.out_proj, layer.linear2):
            lin.weight.zero_()
            lin.bias.zero_()
    for lin in (model.proposal.support_proj, model.proposal.query_proj, model.input_proj, model.support_proj):
        lin.bias.zero_()
    for lin in (model.proposal.support_proj, model.proposal.query_proj):
        lin.weight.copy_(torch.eye(d))
    model.proposal.dynamic_proj[-1].weight.zero_()
    model.proposal.dynamic_proj[-1].bias.zero_()


def similarity_ce(
    similarity: torch.Tensor, xy_input: torch.Tensor, visible: torch.Tensor, ignored: torch.Tensor, input_size: int
) -> torch.Tensor:
    """Cross-entropy of the similarity map's softmax against the true cell (softened over neighbours).

    An auxiliary loss of this recipe, not the paper's: the official heatmap MSE and soft-argmax L1 give weak
    gradients to a saturated similarity map; a classification over the h x w cells does not.
    """
    h = similarity.shape[-1]
    target, weight = gaussian_heatmaps(xy_input, visible, input_size, h, sigma=0.25)
    target = target.flatten(2)
    target = target / target.sum(-1, keepdim=True).clamp(min=1e-8)
    ce = -(target * F.log_softmax(similarity.flatten(2), dim=-1)).sum(-1)  # [B, N]
    weight = weight * (~ignored).float()
    return (ce * weight).sum() / weight.sum().clamp(min=1.0)


def _pad(arrays: Sequence[np.ndarray], n: int, value: float = 0.0) -> np.ndarray:
    out = np.full((len(arrays), n, *arrays[0].shape[1:]), value, dtype=arrays[0].dtype)
    for i, a in enumerate(arrays):
        out[i, : len(a)] = a
    return out


def make_batch(
    images: Sequence[np.ndarray],
    episodes: int,
    queries: int,
    view: ViewConfig,
    rng: np.random.Generator,
    clips: Sequence[list[np.ndarray]] = (),
) -> dict[str, torch.Tensor | list]:
    """`episodes` episodes: from clip frame pairs with probability `view.pair_prob` (when clips are given), else
    warped stills."""
    eps = []
    for _ in range(episodes):
        if clips and rng.random() < view.pair_prob:
            eps.append(make_pair_episode(clips[int(rng.integers(len(clips)))], queries, view, rng))
        else:
            eps.append(make_episode(images[int(rng.integers(len(images)))], queries, view, rng))
    n = max(len(e["support_xy"]) for e in eps)
    sup_vis = _pad([np.ones(len(e["support_xy"]), bool) for e in eps], n, False)
    q_xy = np.concatenate([_pad(list(e["query_xy"]), n) for e in eps])
    q_vis = np.concatenate([_pad(list(e["query_visible"]), n, False) for e in eps])
    return {
        "support": normalize_images(np.stack([e["support"] for e in eps]))[None],  # [1, E, 3, S, S]
        "support_xy": torch.from_numpy(_pad([e["support_xy"] for e in eps], n))[None],
        "support_visible": torch.from_numpy(sup_vis)[None],
        "skeletons": [e["skeleton"] for e in eps],
        "queries": normalize_images(np.concatenate([e["queries"] for e in eps])),  # [E*Q, 3, S, S]
        "query_xy": torch.from_numpy(q_xy),
        "query_visible": torch.from_numpy(q_vis),
    }


def run_batch(model: CapeModel, batch: dict, queries: int):
    emb = model.encode_support(batch["support"], batch["support_xy"], batch["support_visible"], batch["skeletons"])
    emb = SupportEmbedding(
        emb.tokens.repeat_interleave(queries, 0),
        emb.mask.repeat_interleave(queries, 0),
        emb.adjacency.repeat_interleave(queries, 0),
    )
    return emb, model(batch["queries"], emb)


@torch.no_grad()
def validate(model: CapeModel, batches: Sequence[dict], queries: int) -> dict[str, float]:
    model.eval()
    dists, counts = [], 0
    for batch in batches:
        emb, pred = run_batch(model, batch, queries)
        ok = batch["query_visible"] & ~emb.mask
        d = (pred.keypoints - batch["query_xy"]).norm(dim=-1)[ok]
        dists.append(d)
        counts += int(ok.sum())
    d = torch.cat(dists) / model.input_size
    model.train()
    model.backbone.eval()
    return {"pck05": float((d < 0.05).float().mean()), "pck10": float((d < 0.1).float().mean()), "n": counts}


def lr_at(step: int, cfg: RecipeConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def train(out: Path, minutes: float, cfg: RecipeConfig, init: Path | None = None) -> None:
    """Train into `out` (resuming from its state.pt), starting a fresh run from the checkpoint `init` when given
    (a fine-tuning stage) or from the ImageNet backbone and the matcher init."""
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    if init is not None:
        model.load_state_dict(CapeModel.from_checkpoint(init).float().state_dict())
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    head = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("backbone.")]
    groups = [{"params": head, "scale": 1.0}] + ([{"params": backbone, "scale": 0.1}] if backbone else [])
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    step = 0
    state_path = out / "state.pt"
    if state_path.exists():
        state = torch.load(state_path, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step = state["step"]
        rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        print(f"resumed at step {step}", flush=True)

    view = ViewConfig(
        input_size=model.input_size,
        pair_prob=cfg.pair_prob,
        elastic_prob=cfg.elastic_prob,
        keypoint_spread=cfg.keypoint_spread,
    )
    train_images = load_images("train")
    train_clips = load_clips("train") if cfg.pair_prob else []
    val_rng = np.random.default_rng(12345)  # the same validation episodes in every run
    val_images = load_images("val")
    val_clips = load_clips("val") if cfg.pair_prob else []
    val_batches = [
        make_batch(val_images, cfg.episodes_per_step, cfg.queries_per_episode, view, val_rng, val_clips)
        for _ in range(cfg.val_episodes // cfg.episodes_per_step)
    ]
    log_path = out / "curve.csv"
    new_log = not log_path.exists()
    log = log_path.open("a", newline="")
    writer = csv.writer(log)
    if new_log:
        writer.writerow(["step", "seconds", "lr", "loss", "l1_last", "val_pck05", "val_pck10"])

    model.train()
    model.backbone.eval()  # frozen BatchNorm statistics
    t0 = time.perf_counter()
    running: list[float] = []
    running_l1: list[float] = []
    if step == 0:  # where training starts from: the matcher init, or the checkpoint being fine-tuned
        val = validate(model, val_batches, cfg.queries_per_episode)
        writer.writerow([0, 0, "", "", "", f"{val['pck05']:.4f}", f"{val['pck10']:.4f}"])
        print(f"step 0 val PCK@0.05 {val['pck05']:.3f} PCK@0.1 {val['pck10']:.3f}", flush=True)
    while step < cfg.steps and time.perf_counter() - t0 < minutes * 60:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg) * g["scale"]
        batch = make_batch(train_images, cfg.episodes_per_step, cfg.queries_per_episode, view, rng, train_clips)
        emb, pred = run_batch(model, batch, cfg.queries_per_episode)
        losses = cape_losses(pred, emb.mask, batch["query_xy"], batch["query_visible"], model.input_size)
        losses["similarity_ce"] = similarity_ce(
            pred.similarity, batch["query_xy"], batch["query_visible"], emb.mask, model.input_size
        )
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        running.append(loss.item())
        running_l1.append(losses[f"l1_loss_layer{model.config.num_decoder_layers - 1}"].item())
        if step % 50 == 0:
            print(f"step {step} loss {np.mean(running[-50:]):.4f} ({time.perf_counter() - t0:.0f}s)", flush=True)
        if step % cfg.val_every == 0 or step == cfg.steps:
            val = validate(model, val_batches, cfg.queries_per_episode)
            elapsed = time.perf_counter() - t0
            writer.writerow(
                [step, round(elapsed), f"{lr_at(step, cfg):.2e}", f"{np.mean(running):.4f}",
                 f"{np.mean(running_l1):.4f}", f"{val['pck05']:.4f}", f"{val['pck10']:.4f}"]
            )  # fmt: skip
            log.flush()
            print(
                f"step {step} loss {np.mean(running):.4f} l1 {np.mean(running_l1):.4f} "
                f"val PCK@0.05 {val['pck05']:.3f} PCK@0.1 {val['pck10']:.3f} ({elapsed:.0f}s)",
                flush=True,
            )
            running, running_l1 = [], []
            state = {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "step": step,
                "numpy_rng": rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
                "recipe": dataclasses.asdict(cfg),
            }
            torch.save(state, out / "state.tmp")
            (out / "state.tmp").replace(state_path)
    log.close()


def export(out: Path, dest: Path, cfg: RecipeConfig) -> None:
    """Write the trained weights in our checkpoint format, fp16 storage, without the training-only flags."""
    state = torch.load(out / "state.pt", weights_only=True)
    preset = get_preset(cfg.preset)
    final = CapeModel(dataclasses.replace(preset, dropout=0.0))
    own = final.state_dict()
    # Runs started before the backbone was cut after its feature level carry the unused later blocks: drop them.
    final.load_state_dict({k: v for k, v in state["model"].items() if k in own}, strict=True)
    final.save(dest, half=True)
    print(f"wrote {dest} (step {state['step']})")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/default"))
    p.add_argument("--minutes", type=float, default=90.0, help="stop (resumably) after this much wall time")
    p.add_argument("--steps", type=int, default=RecipeConfig.steps)
    p.add_argument("--lr", type=float, default=RecipeConfig.lr, help="peak learning rate")
    p.add_argument("--warmup", type=int, default=RecipeConfig.warmup, help="linear warm-up steps")
    p.add_argument("--init", type=Path, help="start from this checkpoint (a fine-tuning stage) instead of ImageNet")
    p.add_argument("--pairs", action="store_true", help="add clip frame-pair episodes, elastic warps, varied spread")
    p.add_argument("--tune-blocks", type=int, default=0, metavar="K", help="also train the last K backbone stages")
    p.add_argument("--export", type=Path, help="write the trained model here instead of training")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = p.parse_args(argv)
    cfg = RecipeConfig(steps=args.steps, lr=args.lr, warmup=args.warmup, tune_blocks=args.tune_blocks)
    if args.pairs:
        cfg = dataclasses.replace(cfg, pair_prob=0.3, elastic_prob=0.5, keypoint_spread=(0.4, 1.0))
    if args.threads:
        # On a machine shared with other jobs one thread avoids oversubscription (measured ~3x faster here).
        torch.set_num_threads(args.threads)
    try:
        if args.export:
            export(args.out, args.export, cfg)
        else:
            train(args.out, args.minutes, cfg, args.init)
    except CapeError as exc:  # a checkpoint given to --init that cannot be read or does not fit
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

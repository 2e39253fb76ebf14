"""cape-train: the one episodic training loop, top to bottom, on one CPU process or N GPUs (spec §12-13).

    cape-train tiny-1shot-split1                                   # the paper on MP-100 (GPU if there is one)
    torchrun --nproc_per_node 8 -m training.train tiny-1shot-split1 # DistributedDataParallel, one GPU each
    cape-train synthetic --set epochs=5 --resume auto               # continue the run in runs/synthetic/
    cape-train default --threads 1 --resume auto                    # the embedded model's CPU recipe (views)
    cape-train default --export model/weights/default.safetensors   # its last checkpoint, fp16, for shipping

The episodes come from a source: MP-100 (`Mp100Episodes`: fresh balanced episodes every epoch, validation by the
official protocol on the val split) or real-photo views (`training.views.ViewEpisodes`). Both train, log, validate
and checkpoint the same way; checkpoints hold everything needed to continue bit-exactly.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from cape_track.model import CapeError, CapeModel, CheckpointError
from cape_track.model.backbone import load_swinv2_imagenet
from cape_track.model.checkpoint import read_checkpoint, read_training_checkpoint, save_checkpoint
from cape_track.model.config import get_preset
from cape_track.model.device import select_device

from .config import ConfigError, TrainConfig, get_config
from .episodes import check_disjoint, training_episodes
from .evaluate import TABLE_KEYS, evaluate_split
from .losses import cape_losses, similarity_ce
from .mp100 import Mp100Split, annotation_file, load_split
from .pipeline import Augmentation, EpisodeBatch, EpisodeDataset, collate_episodes, predict_episodes
from .views import ViewEpisodes


def learning_rate(cfg: TrainConfig, step: int, epoch: int, total_steps: int) -> float:
    """The rate at optimiser step `step` of `total_steps`: mmcv's `step` policy (x`lr_gamma` at each of `lr_steps`,
    in epochs) or a cosine from `lr` down to `min_lr_ratio` x `lr`; both after a linear warm-up over the first
    `warmup_iters` iterations from `warmup_ratio` x the rate."""
    if cfg.schedule == "cosine":
        t = min(1.0, max(0, step - cfg.warmup_iters) / max(1, total_steps - cfg.warmup_iters))
        regular = cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))
    else:
        regular = cfg.lr * cfg.lr_gamma ** sum(epoch >= s for s in cfg.lr_steps)
    if step >= cfg.warmup_iters:
        return regular
    return regular * (1 - (1 - step / cfg.warmup_iters) * (1 - cfg.warmup_ratio))


def build_model(cfg: TrainConfig) -> CapeModel:
    """The network to train: a preset with the recipe's drop-path, dropout and backbone initialisation (the head
    as a feature matcher when asked), or a checkpoint to continue from; then what is frozen."""
    if cfg.init_checkpoint:
        model = CapeModel.from_checkpoint(cfg.init_checkpoint).float().train()
    else:
        try:
            preset = get_preset(cfg.model)
        except ValueError as e:
            raise ConfigError(f"config {cfg.name!r}: model {e}") from None
        backbone = replace(preset.backbone, drop_path_rate=cfg.drop_path, imagenet_init=cfg.imagenet_init)
        dropout = preset.dropout if cfg.dropout is None else cfg.dropout
        model = CapeModel(
            replace(preset, backbone=backbone, input_size=cfg.input_size or preset.input_size, dropout=dropout)
        )
        if cfg.backbone_weights:
            load_backbone_weights(model, cfg.backbone_weights)
        if cfg.matcher_init:
            matcher_init(model)
    if cfg.freeze_backbone:
        freeze_backbone(model, cfg.tune_blocks)
    return model


def load_backbone_weights(model: CapeModel, path: str | Path) -> None:
    """The official initialisation of a SwinV2 backbone (`model.backbone.load_swinv2_imagenet`, the one home)."""
    if model.config.backbone.family != "swinv2":
        raise ConfigError(f"{path}: backbone_weights is for SwinV2 backbones (use imagenet_init for timm ones)")
    load_swinv2_imagenet(model.backbone.body, path)


def freeze_backbone(model: CapeModel, tune_blocks: int = 0) -> None:
    """Keep the backbone's weights (all but its last `tune_blocks` stages) fixed. Its BatchNorm statistics stay
    fixed too (`train_mode`). Measured for the default model: ImageNet features kept beat tuning them on little
    data, and the backward pass stopping at the head makes a CPU step about twice as cheap."""
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    if tune_blocks:
        stages = getattr(model.backbone.body, "blocks", None)
        if stages is None or tune_blocks > len(stages):
            raise ConfigError(f"tune_blocks={tune_blocks}: the backbone has {len(stages or [])} stages to tune")
        for p in stages[len(stages) - tune_blocks :].parameters():
            p.requires_grad_(True)


def train_mode(model: CapeModel, cfg: TrainConfig) -> None:
    model.train()
    if cfg.freeze_backbone:
        model.backbone.eval()  # frozen BatchNorm statistics


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
        raise ConfigError(f"matcher_init needs backbone channels ({c}) <= d_model ({d}) = similarity_proj_dim")
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


def build_optimizer(model: CapeModel, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam (the paper) or AdamW over the trainable parameters; the backbone's at `backbone_lr_scale` x the rate.
    When that is 1, one group in the model's parameter order, as checkpoints written before the groups existed
    hold it (optimiser state is matched by position)."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    head = [p for n, p in trainable if not n.startswith("backbone.")]
    backbone = [p for n, p in trainable if n.startswith("backbone.")]
    if cfg.backbone_lr_scale == 1.0 or not backbone:
        groups = [{"params": [p for _, p in trainable], "scale": 1.0}]
    else:
        groups = [{"params": head, "scale": 1.0}, {"params": backbone, "scale": cfg.backbone_lr_scale}]
    kind = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return kind(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)


class EpisodeLoss(nn.Module):
    """Support encoding, query prediction and the losses in one forward, so DDP sees the whole episode."""

    def __init__(self, model: CapeModel, heatmap_weight: float, similarity_weight: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.heatmap_weight = heatmap_weight
        self.similarity_weight = similarity_weight

    def forward(self, batch: EpisodeBatch) -> dict[str, torch.Tensor]:
        m = self.model
        support, pred = predict_episodes(m, batch)
        xy, visible = batch.query_keypoints.flatten(0, 1), batch.query_visible.flatten(0, 1)
        losses = cape_losses(pred, support.mask, xy, visible, m.input_size, self.heatmap_weight)
        if self.similarity_weight:
            ce = similarity_ce(pred.similarity, xy, visible, support.mask, m.input_size)
            losses["similarity_loss"] = self.similarity_weight * ce
        return losses


class Mp100Episodes:
    """The episode source of the paper: MP-100's category-disjoint train/val splits, fresh balanced episodes each
    epoch, validation by the official protocol."""

    metric_keys = TABLE_KEYS

    def __init__(self, cfg: TrainConfig, input_size: int, rank: int, world: int, device: torch.device) -> None:
        self.cfg, self.input_size, self.rank, self.world, self.device = cfg, input_size, rank, world, device
        image_root = Path(cfg.data_root) / "images"

        def load(subset: str) -> Mp100Split:
            ann = annotation_file(cfg.data_root, cfg.split, subset)
            return load_split(
                ann, image_root, skip_missing_images=cfg.skip_missing_images, max_keypoints=cfg.max_keypoints
            )

        self.train_split = load(cfg.train_subset)
        self.val_split = load(cfg.val_subset) if cfg.val_every else None
        if self.val_split is not None and cfg.val_subset != cfg.train_subset:
            check_disjoint([self.train_split, self.val_split])
        self.augmentation = Augmentation(cfg.scale_factor, cfg.rot_factor, cfg.rot_prob) if cfg.augment else None
        split = self.train_split
        self.description = f"{len(split.instances)} train objects in {len(split.categories)} categories"

    def epoch(self, epoch: int, start: int) -> tuple[int, Iterable[EpisodeBatch]]:
        cfg = self.cfg
        episodes = training_episodes(
            self.train_split.by_category, cfg.shots, (cfg.seed, epoch), cfg.episodes_per_category
        )
        dataset = EpisodeDataset(
            self.train_split, episodes, self.input_size, cfg.max_keypoints, self.augmentation, seed=(cfg.seed, epoch)
        )
        order = list(DistributedSampler(dataset, self.world, self.rank, shuffle=False, drop_last=True))
        loader = DataLoader(
            dataset,
            batch_size=cfg.batch_size,
            sampler=order[start * cfg.batch_size :],
            drop_last=True,
            num_workers=cfg.workers,
            collate_fn=collate_episodes,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator(),
        )
        return len(order) // cfg.batch_size, loader

    def validate(self, model: CapeModel) -> dict[str, float]:
        cfg = self.cfg
        return evaluate_split(
            model, self.val_split, cfg.shots, cfg.val_episodes, cfg.queries, cfg.max_keypoints
        ).metrics


def episode_source(
    cfg: TrainConfig, input_size: int, rank: int, world: int, device: torch.device
) -> Mp100Episodes | ViewEpisodes:
    """The setting's episode source (`Mp100Episodes` or `views.ViewEpisodes`)."""
    if cfg.data == "views":
        return ViewEpisodes(cfg, input_size, rank)
    return Mp100Episodes(cfg, input_size, rank, world, device)


class RunLog:
    """Plain-text log and per-epoch CSV in the run folder (rank 0 only), plus TensorBoard when it is installed."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.run_dir = run_dir
        self.tb = None
        if enabled:
            run_dir.mkdir(parents=True, exist_ok=True)
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                pass  # TensorBoard is optional

    def text(self, line: str) -> None:
        if self.enabled:
            print(line, flush=True)
            with open(self.run_dir / "train.log", "a", encoding="utf-8") as f:
                f.write(line + "\n")

    def epoch(self, row: dict[str, float]) -> None:
        if not self.enabled:
            return
        path = self.run_dir / "metrics.csv"
        new = not path.exists()
        with open(path, "a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        if self.tb is not None:
            for key, value in row.items():
                if key not in ("epoch", "step") and not math.isnan(value):
                    self.tb.add_scalar(key, value, int(row["step"]))
            self.tb.flush()


def train(cfg: TrainConfig, device_name: str = "auto", resume: str | None = None) -> dict[str, float]:
    """Run (or continue) training as `cfg` says; returns the last validation metrics (empty if none ran)."""
    # ---- processes: torchrun sets RANK/LOCAL_RANK/WORLD_SIZE; otherwise a single process
    ddp = int(os.environ.get("RANK", -1)) != -1
    if ddp:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, timeout=timedelta(hours=1))  # validation runs on rank 0 alone
        rank, world = dist.get_rank(), dist.get_world_size()
        device = torch.device(f"cuda:{os.environ['LOCAL_RANK']}") if backend == "nccl" else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
    else:
        rank, world, device = 0, 1, select_device(device_name)
    master = rank == 0
    log = RunLog(cfg.run_dir, master)
    torch.manual_seed(cfg.seed)

    # ---- model, episodes, optimiser, precision
    model = build_model(cfg).to(device)
    source = episode_source(cfg, model.input_size, rank, world, device)
    optimizer = build_optimizer(model, cfg)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision) if device.type == "cuda" else None
    autocast = torch.autocast("cuda", dtype=amp_dtype) if amp_dtype else nullcontext()
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    # ---- resume: model, optimiser, scaler, position and RNG state
    epoch, step, start_batch, sums = 0, 0, 0, {}
    resume_path = cfg.run_dir / "last.pt" if resume == "auto" else Path(resume) if resume else None
    if resume_path is not None and (resume != "auto" or resume_path.exists()):
        if not resume_path.is_file():
            raise CheckpointError(f"{resume_path}: no checkpoint to resume from")
        weights, state = read_training_checkpoint(resume_path)
        model.load_state_dict(weights.state_dict)
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        epoch, step, start_batch, sums = state["epoch"], state["step"], state["batch"], state["sums"]
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and state["rng"]["cuda"] is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"][rank % len(state["rng"]["cuda"])], device)
        log.text(f"resumed from {resume_path} at epoch {epoch}, step {step}")
    runner = EpisodeLoss(model, cfg.heatmap_loss_weight, cfg.similarity_loss_weight)
    if ddp:
        # static_graph: the same parameters take part in every step (timm feature backbones keep a few unused ones)
        runner = DistributedDataParallel(
            runner, device_ids=[device] if device.type == "cuda" else None, static_graph=True
        )

    def checkpoint(path: Path, next_epoch: int, next_batch: int) -> None:
        cuda_rng = torch.cuda.get_rng_state_all() if device.type == "cuda" else None
        state = {
            "epoch": next_epoch,
            "step": step,
            "batch": next_batch,
            "sums": {k: float(v) for k, v in sums.items()},
            "config": cfg.to_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "cuda": cuda_rng},
        }
        save_checkpoint(model.state_dict(), model.config, path, train=state)
        if path.name != "last.pt":
            save_checkpoint(model.state_dict(), model.config, cfg.run_dir / "last.pt", train=state)

    def validate() -> dict[str, float]:
        metrics = source.validate(model)
        train_mode(model, cfg)
        return metrics

    log.text(
        f"{cfg.name}: {source.description}, {world} process(es) on {device}, batch {cfg.batch_size}/process, "
        f"{cfg.epochs} epochs"
    )
    val_metrics: dict[str, float] = {}
    if master and cfg.val_every and step == 0 and cfg.data == "views" and not ddp:
        # Where training starts from (a working matcher, or the model being fine-tuned): cheap on the views; a
        # full MP-100 validation before the first step would hold every other process at its first all-reduce.
        val_metrics = validate()
        log.text("start: " + " ".join(f"val_{k} {v:.4g}" for k, v in val_metrics.items()))
    stop, started = False, time.perf_counter()
    # ---- the loop
    while epoch < cfg.epochs and not stop:
        per_epoch, batches = source.epoch(epoch, start_batch)
        total = cfg.epochs * per_epoch
        train_mode(model, cfg)
        tic = time.perf_counter()
        next_batch = start_batch
        for batch in batches:
            lr = learning_rate(cfg, step, epoch, total)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("scale", 1.0)
            with autocast:
                losses = runner(batch.to(device))
            loss = sum(losses.values())
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            next_batch += 1
            for k, v in {"loss": loss, **losses}.items():
                sums[k] = sums.get(k, 0.0) + v.detach().double()  # stays on the device: no sync per step
            sums["batches"] = sums.get("batches", 0) + 1
            if step % cfg.log_every == 0:
                rate = (next_batch - start_batch) / (time.perf_counter() - tic)
                log.text(
                    f"epoch {epoch} [{next_batch}/{per_epoch}] step {step} lr {lr:.3g} loss {loss.item():.4f} "
                    + " ".join(f"{k.replace('_loss', '')} {v.item():.4f}" for k, v in losses.items())
                    + f" ({rate:.2f} it/s)"
                )
            out_of_time = cfg.max_minutes is not None and time.perf_counter() - started > cfg.max_minutes * 60
            if ddp and cfg.max_minutes is not None:  # every process stops at the same step: rank 0's clock decides
                flag = torch.tensor([float(out_of_time)], device=device)
                dist.broadcast(flag, 0)
                out_of_time = bool(flag.item())
            if (cfg.max_steps is not None and step >= cfg.max_steps) or out_of_time:
                stop = True
                break
        if stop and next_batch < per_epoch:  # stopped mid-epoch: the checkpoint resumes at the next batch
            if master:
                checkpoint(cfg.run_dir / "last.pt", epoch, next_batch)
            break

        # ---- end of epoch: mean losses over all processes, validation, checkpoint
        keys = sorted(sums)
        totals = torch.tensor([float(sums[k]) for k in keys], dtype=torch.float64, device=device)
        if ddp:
            dist.all_reduce(totals)
        totals = dict(zip(keys, totals.tolist(), strict=True))
        batches_done = max(1.0, totals.pop("batches", 0.0))
        mean = {k: v / batches_done for k, v in totals.items()}
        epoch += 1
        start_batch, sums = 0, {}
        validated: dict[str, float] = {}
        if cfg.val_every and (epoch % cfg.val_every == 0 or epoch == cfg.epochs) and master:
            validated = val_metrics = validate()
        row = _row(epoch, step, learning_rate(cfg, step - 1, epoch - 1, total), mean, validated, source.metric_keys)
        log.text(
            f"epoch {epoch} done: "
            + " ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch" and not math.isnan(v))
            + f" ({time.perf_counter() - tic:.0f} s)"
        )
        log.epoch(row)
        if master and (epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs or stop):
            checkpoint(cfg.run_dir / f"epoch_{epoch:03d}.pt", epoch, 0)
        elif master:
            checkpoint(cfg.run_dir / "last.pt", epoch, 0)  # a kill loses at most the epoch in progress
        if ddp:
            dist.barrier()

    if master and epoch == cfg.epochs:
        model.save(cfg.run_dir / "final.pt")
        log.text(f"finished: {cfg.run_dir / 'final.pt'}")
    if ddp:
        dist.destroy_process_group()
    return val_metrics


def _row(
    epoch: int,
    step: int,
    lr: float,
    losses: dict[str, float],
    metrics: dict[str, float],
    keys: Sequence[str],
) -> dict[str, float]:
    """One line of metrics.csv: fixed columns for the source's metrics (NaN = not validated this epoch)."""
    row = {"epoch": epoch, "step": step, "lr": lr, **losses}
    row.update({f"val_{k}": metrics.get(k, math.nan) for k in keys})
    return row


def export(checkpoint: Path, dest: Path) -> None:
    """A run's checkpoint as the file the tracker ships: our format, fp16 storage, no training state, and no
    training-only backbone initialisation in its config (loading it must not fetch ImageNet weights first)."""
    weights = read_checkpoint(checkpoint)
    config = weights.config
    backbone = replace(config.backbone, imagenet_init=False, weights_file=None)
    model = CapeModel.from_weights(replace(weights, config=replace(config, backbone=backbone)))
    model.save(dest, half=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cape-train", description="Train the graph CAPE model episodically (MP-100, or the default's views)."
    )
    parser.add_argument(
        "config",
        help="a setting (tiny-1shot-split1 ... small-5shot-split5, synthetic) or a "
        '.toml/.json file with `base = "..."` and field overrides',
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a config field, e.g. --set epochs=10 (repeatable)",
    )
    parser.add_argument("--resume", help="checkpoint to continue from, or `auto` for RUN_DIR/last.pt if present")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (torchrun: one GPU per process)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument(
        "--export", type=Path, metavar="DEST", help="write the run's last checkpoint (or --resume's) to DEST, fp16"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)  # one thread on a shared machine avoids oversubscription (~3x here)
    try:
        cfg = get_config(args.config, args.overrides)
        if args.export:
            source = Path(args.resume) if args.resume and args.resume != "auto" else cfg.run_dir / "last.pt"
            export(source, args.export)
            print(f"cape-train: wrote {args.export} from {source}")
            return 0
        train(cfg, args.device, args.resume)
    except CapeError as e:
        print(f"cape-train: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cape-train: interrupted (continue with --resume auto from the last checkpoint)", file=sys.stderr)
        return 130
    return 0


def run() -> None:
    raise SystemExit(main())


if __name__ == "__main__":
    run()

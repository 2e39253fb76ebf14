"""cape-train: the paper's episodic training loop, top to bottom, on one CPU process or N GPUs (spec §12-13).

    cape-train tiny-1shot-split1                                   # one process (GPU if there is one)
    torchrun --nproc_per_node 8 -m training.train tiny-1shot-split1 # DistributedDataParallel, one GPU each
    cape-train synthetic --set epochs=5 --resume auto               # continue the run in runs/synthetic/

Every epoch draws fresh balanced episodes; the learning rate follows the official warm-up and steps; validation
runs the official protocol on the val split; checkpoints hold everything needed to continue bit-exactly.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
from collections.abc import Sequence
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
from cape_track.model.checkpoint import read_training_checkpoint, save_checkpoint
from cape_track.model.config import get_preset
from cape_track.model.device import select_device
from cape_track.model.transforms import normalize_images

from .config import ConfigError, TrainConfig, get_config
from .episodes import check_disjoint, training_episodes
from .evaluate import TABLE_KEYS, evaluate_split
from .losses import cape_losses
from .mp100 import Mp100Split, annotation_file, load_split
from .pipeline import Augmentation, EpisodeBatch, EpisodeDataset, collate_episodes


def learning_rate(cfg: TrainConfig, step: int, epoch: int) -> float:
    """mmcv's `step` policy with linear warm-up: x`lr_gamma` at each of `lr_steps` (epochs), warm-up over the first
    `warmup_iters` iterations from `warmup_ratio` x the current rate."""
    regular = cfg.lr * cfg.lr_gamma ** sum(epoch >= s for s in cfg.lr_steps)
    if step >= cfg.warmup_iters:
        return regular
    return regular * (1 - (1 - step / cfg.warmup_iters) * (1 - cfg.warmup_ratio))


def build_model(cfg: TrainConfig) -> CapeModel:
    """The network to train: a preset with the recipe's drop-path and backbone initialisation, or a checkpoint."""
    if cfg.init_checkpoint:
        return CapeModel.from_checkpoint(cfg.init_checkpoint).train()
    try:
        preset = get_preset(cfg.model)
    except ValueError as e:
        raise ConfigError(f"config {cfg.name!r}: model {e}") from None
    backbone = replace(preset.backbone, drop_path_rate=cfg.drop_path, imagenet_init=cfg.imagenet_init)
    size = cfg.input_size or preset.input_size
    model = CapeModel(replace(preset, backbone=backbone, input_size=size))
    if cfg.backbone_weights:
        load_backbone_weights(model, cfg.backbone_weights)
    return model


def load_backbone_weights(model: CapeModel, path: str | Path) -> None:
    """The official initialisation of a SwinV2 backbone (`model.backbone.load_swinv2_imagenet`, the one home)."""
    if model.config.backbone.family != "swinv2":
        raise ConfigError(f"{path}: backbone_weights is for SwinV2 backbones (use imagenet_init for timm ones)")
    load_swinv2_imagenet(model.backbone.body, path)


class EpisodeLoss(nn.Module):
    """Support encoding, query prediction and the losses in one forward, so DDP sees the whole episode."""

    def __init__(self, model: CapeModel, heatmap_weight: float) -> None:
        super().__init__()
        self.model = model
        self.heatmap_weight = heatmap_weight

    def forward(self, batch: EpisodeBatch) -> dict[str, torch.Tensor]:
        m = self.model
        support = m.encode_support(
            normalize_images(batch.support_images), batch.support_keypoints, batch.support_visible, batch.skeletons
        )
        pred = m(normalize_images(batch.query_images[:, 0]), support)  # training episodes have one query
        return cape_losses(
            pred,
            support.mask,
            batch.query_keypoints[:, 0],
            batch.query_visible[:, 0],
            m.input_size,
            self.heatmap_weight,
        )


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

    # ---- data: category-disjoint train/val splits of the published layout
    image_root = Path(cfg.data_root) / "images"

    def load(subset: str) -> Mp100Split:
        ann = annotation_file(cfg.data_root, cfg.split, subset)
        return load_split(ann, image_root, skip_missing_images=cfg.skip_missing_images, max_keypoints=cfg.max_keypoints)

    train_split = load(cfg.train_subset)
    val_split = load(cfg.val_subset) if cfg.val_every else None
    if val_split is not None and cfg.val_subset != cfg.train_subset:
        check_disjoint([train_split, val_split])
    augmentation = Augmentation(cfg.scale_factor, cfg.rot_factor, cfg.rot_prob) if cfg.augment else None

    # ---- model, optimiser, precision
    model = build_model(cfg).to(device)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay
    )
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
    runner = EpisodeLoss(model, cfg.heatmap_loss_weight)
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

    log.text(
        f"{cfg.name}: {len(train_split.instances)} train objects in {len(train_split.categories)} categories, "
        f"{world} process(es) on {device}, batch {cfg.batch_size}/process, {cfg.epochs} epochs"
    )
    val_metrics: dict[str, float] = {}
    stop = False
    # ---- the loop
    while epoch < cfg.epochs and not stop:
        episodes = training_episodes(train_split.by_category, cfg.shots, (cfg.seed, epoch), cfg.episodes_per_category)
        dataset = EpisodeDataset(
            train_split, episodes, model.input_size, cfg.max_keypoints, augmentation, seed=(cfg.seed, epoch)
        )
        order = list(DistributedSampler(dataset, world, rank, shuffle=False, drop_last=True))
        per_epoch = len(order) // cfg.batch_size
        loader = DataLoader(
            dataset,
            batch_size=cfg.batch_size,
            sampler=order[start_batch * cfg.batch_size :],
            drop_last=True,
            num_workers=cfg.workers,
            collate_fn=collate_episodes,
            pin_memory=device.type == "cuda",
            generator=torch.Generator(),
        )
        model.train()
        tic = time.perf_counter()
        next_batch = start_batch
        for batch in loader:
            lr = learning_rate(cfg, step, epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
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
            if cfg.max_steps is not None and step >= cfg.max_steps:
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
        batches = max(1.0, totals.pop("batches", 0.0))
        mean = {k: v / batches for k, v in totals.items()}
        epoch += 1
        start_batch, sums = 0, {}
        row = {"epoch": epoch, "step": step, "lr": learning_rate(cfg, step - 1, epoch - 1), **mean}
        row.update({f"val_{k}": math.nan for k in TABLE_KEYS})  # fixed CSV columns; NaN = not validated
        if val_split is not None and (epoch % cfg.val_every == 0 or epoch == cfg.epochs) and master:
            result = evaluate_split(model, val_split, cfg.shots, cfg.val_episodes, cfg.queries, cfg.max_keypoints)
            val_metrics = result.metrics
            row.update({f"val_{k}": v for k, v in val_metrics.items()})
        log.text(
            f"epoch {epoch} done: "
            + " ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch" and not math.isnan(v))
            + f" ({time.perf_counter() - tic:.0f} s)"
        )
        log.epoch(row)
        if master and (epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs or stop):
            checkpoint(cfg.run_dir / f"epoch_{epoch:03d}.pt", epoch, 0)
        if ddp:
            dist.barrier()

    if master and epoch == cfg.epochs:
        model.save(cfg.run_dir / "final.pt")
        log.text(f"finished: {cfg.run_dir / 'final.pt'}")
    if ddp:
        dist.destroy_process_group()
    return val_metrics


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cape-train", description="Train the graph CAPE model episodically on MP-100."
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
    args = parser.parse_args(argv)
    try:
        cfg = get_config(args.config, args.overrides)
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

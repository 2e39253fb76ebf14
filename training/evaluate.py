"""cape-eval: the official MP-100 test protocol (spec §15) for any checkpoint, as a table and a JSON file.

    cape-eval tiny-1shot-split1 --checkpoint graph_split1_tiny.pth [--shots 5] [--split 3]
    cape-eval --data-root IMAGES --ann-file ANN.json --checkpoint CKPT --shots 1 --episodes 200 --queries 15

Same episodes as the official code for the same file, shots, episodes and queries; the same crop without
augmentation; predictions mapped back to the original image; the same metrics (`training.metrics`). The support
of an episode is encoded once and its queries run as one batch, which gives the official per-pair numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from cape_track.model import CapeError, CapeModel
from cape_track.model.device import select_device

from .config import get_config
from .episodes import official_test_episodes
from .metrics import QueryScores
from .mp100 import Mp100Split, annotation_file, load_split
from .pipeline import EpisodeBatch, EpisodeDataset, collate_episodes, input_to_image, predict_episodes

DEFAULT_EPISODES = 200
DEFAULT_QUERIES = 15
TABLE_KEYS = ("PCK@0.05", "PCK@0.1", "PCK@0.15", "PCK@0.2", "PCK@0.25", "mPCK", "NME", "AUC", "EPE")


@dataclass(frozen=True)
class EvalResult:
    """Split-level metrics (official key names), the same per category, and what was evaluated."""

    metrics: dict[str, float]
    per_category: dict[str, dict[str, float]]  # category name -> metrics, in file order
    shots: int
    episodes: int  # per category
    queries: int  # per episode
    num_queries: int  # evaluated in total

    def to_json(self) -> dict:
        return {
            "metrics": self.metrics,
            "per_category": self.per_category,
            "protocol": {
                "shots": self.shots,
                "episodes_per_category": self.episodes,
                "queries_per_episode": self.queries,
                "queries_evaluated": self.num_queries,
                "episode_seed": 1,
            },
        }

    def table(self) -> str:
        """A fixed-width table: one row per category, then the split mean (PCKs in %, NME/AUC as fractions)."""
        width = max([len("mean"), *(len(n) for n in self.per_category)])
        head = f"{'category':<{width}}  " + "  ".join(f"{k:>8}" for k in TABLE_KEYS)
        rows = [head, "-" * len(head)]
        for name, m in [*self.per_category.items(), ("mean", self.metrics)]:
            if name == "mean":
                rows.append("-" * len(head))
            rows.append(f"{name:<{width}}  " + "  ".join(_cell(k, m[k]) for k in TABLE_KEYS))
        return "\n".join(rows)


def _cell(key: str, value: float) -> str:
    return f"{100 * value:8.2f}" if "PCK" in key else f"{value:8.4f}"


@torch.no_grad()
def evaluate_split(
    model: CapeModel,
    split: Mp100Split,
    shots: int,
    episodes: int = DEFAULT_EPISODES,
    queries: int = DEFAULT_QUERIES,
    num_slots: int = 100,
    workers: int = 0,
) -> EvalResult:
    """Run the official protocol on `split` with `model` (put in eval mode here; fp32 on its device)."""
    was_training = model.training
    model.eval()
    device = model.device
    eps = official_test_episodes(split.by_category, shots, queries, episodes)
    dataset = EpisodeDataset(split, eps, model.input_size, num_slots)
    loader = DataLoader(dataset, batch_size=1, collate_fn=collate_episodes, num_workers=workers)
    preds, ids = [], []
    for batch in loader:
        preds.append(_predict_episode(model, batch.to(device)))
        ids.append((batch.support_ids[:, 0].numpy(), batch.query_ids[0].numpy()))
    model.train(was_training)

    n_total = sum(len(q) for _, q in ids)
    pred = np.zeros((n_total, num_slots, 2), dtype=np.float32)  # image px
    gt = np.zeros_like(pred)
    valid = np.zeros((n_total, num_slots), dtype=bool)
    normalizer = np.zeros(n_total)
    category = np.zeros(n_total, dtype=np.int64)
    row = 0
    for xy_input, (support_ids, query_ids) in zip(preds, ids, strict=True):
        support_visible = np.logical_and.reduce([split.instances[i].visible for i in support_ids])
        for q, xy in zip(query_ids, xy_input, strict=True):
            inst = split.instances[q]
            n = inst.num_keypoints
            pred[row, :n] = input_to_image(xy[:n], inst.center, inst.scale, model.input_size)
            gt[row, :n] = inst.keypoints
            valid[row, :n] = inst.visible & support_visible
            normalizer[row] = inst.normalizer
            category[row] = inst.category_id
            row += 1
    scores = QueryScores.compute(pred, gt, valid, normalizer)
    per_category = {cat.name: scores.subset(category == cat_id).summary() for cat_id, cat in split.categories.items()}
    return EvalResult(scores.summary(), per_category, shots, episodes, queries, n_total)


def _predict_episode(model: CapeModel, batch: EpisodeBatch) -> np.ndarray:
    """One episode (E = 1): support encoded once, its Q queries as a batch -> `[Q, N, 2]` float64 input px."""
    with torch.no_grad():
        _, pred = predict_episodes(model, batch)
    # The official decode scales the float32 sigmoid output in float64 (`PoseHead.decode`).
    return (pred.layers[-1].double() * model.input_size).cpu().numpy()


# ---------------------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cape-eval",
        description="Evaluate a checkpoint with the official MP-100 protocol (PCK@0.05-0.25, mPCK, NME, AUC, EPE).",
    )
    p.add_argument("config", nargs="?", help="a training config name (e.g. tiny-1shot-split1) or .toml/.json file")
    p.add_argument("--checkpoint", required=True, help="our checkpoint or a released Pose Anything file")
    p.add_argument("--shots", type=int, help="supports per episode, 1 or 5 (default: the config's, else 1)")
    p.add_argument("--split", type=int, help="MP-100 split 1-5 (default: the config's)")
    p.add_argument("--subset", default="test", help="annotation subset with a config (default test)")
    p.add_argument("--data-root", help="image folder (default: the config's data_root/images)")
    p.add_argument("--ann-file", help="annotation file (default: the config's data_root/annotations/...)")
    p.add_argument("--episodes", type=int, help=f"episodes per category (default {DEFAULT_EPISODES})")
    p.add_argument("--queries", type=int, help=f"queries per episode (default {DEFAULT_QUERIES})")
    p.add_argument("--max-keypoints", type=int, default=100, help="keypoint slots (official 100)")
    p.add_argument("--json", help="output file (default: eval_<annotation>_<K>shot.json here)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="image-loading processes")
    p.add_argument("--skip-missing-images", action="store_true", help="leave out objects whose image is missing")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a config field (repeatable)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        ann_file, image_root, shots, episodes, queries = _resolve(args, parser)
        device = select_device(args.device)
        split = load_split(
            ann_file, image_root, skip_missing_images=args.skip_missing_images, max_keypoints=args.max_keypoints
        )
        model = CapeModel.from_checkpoint(args.checkpoint, device)
        result = evaluate_split(model, split, shots, episodes, queries, args.max_keypoints, args.workers)
    except CapeError as e:
        print(f"cape-eval: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cape-eval: interrupted", file=sys.stderr)
        return 130
    out = Path(args.json) if args.json else Path(f"eval_{Path(ann_file).stem}_{shots}shot.json")
    report = {
        **result.to_json(),
        "annotation_file": str(ann_file),
        "image_root": str(image_root),
        "checkpoint": str(args.checkpoint),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(
        f"{split.name}: {shots}-shot, {len(split.categories)} categories x {episodes} episodes x {queries} queries "
        f"= {result.num_queries} queries"
    )
    print(result.table())
    print(f"wrote {out}")
    return 0


def _resolve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[Path, Path, int, int, int]:
    """Annotation file, image root, shots, episodes, queries from the config and/or the flags."""
    for flag in ("shots", "episodes", "queries"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"--{flag} must be at least 1")
    if args.config is None:
        if not (args.data_root and args.ann_file):
            parser.error("give a CONFIG, or both --data-root IMAGES and --ann-file ANN.json")
        if args.split is not None or args.overrides:
            parser.error("--split and --set need a CONFIG")
        return (
            Path(args.ann_file),
            Path(args.data_root),
            args.shots or 1,
            args.episodes or DEFAULT_EPISODES,
            args.queries or DEFAULT_QUERIES,
        )
    overrides = list(args.overrides)
    if args.split is not None:
        overrides.append(f"split={args.split}")
    if args.shots is not None:
        overrides.append(f"shots={args.shots}")
    cfg = get_config(args.config, overrides)
    ann = Path(args.ann_file) if args.ann_file else annotation_file(cfg.data_root, cfg.split, args.subset)
    images = Path(args.data_root) if args.data_root else Path(cfg.data_root) / "images"
    return ann, images, cfg.shots, args.episodes or cfg.test_episodes, args.queries or cfg.queries


def run() -> None:
    raise SystemExit(main())


if __name__ == "__main__":
    run()

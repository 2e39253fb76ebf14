"""training.train: the schedule, a few CPU steps lowering the loss, bit-exact resume, the CLI, backbone init, DDP."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cape_track.model import CapeModel
from cape_track.training.config import get_config
from cape_track.training.episodes import training_episodes
from cape_track.training.mp100 import annotation_file, load_split
from cape_track.training.pipeline import EpisodeDataset, collate_episodes
from cape_track.training.train import (
    EpisodeLoss,
    build_model,
    build_optimizer,
    learning_rate,
    load_backbone_weights,
    main,
    train,
)

REPO = Path(__file__).resolve().parents[1]


def _settings(root: Path, out: Path, *extra: str) -> list[str]:
    """A CPU-sized run of the synthetic config on the generated fixture."""
    return [
        f"data_root={root}", f"out_dir={out}", "model=test", "imagenet_init=false", "input_size=64",
        "batch_size=2", "episodes_per_category=2", "val_every=0", "log_every=1", "warmup_iters=2", *extra,
    ]  # fmt: skip


def test_one_optimiser_group_keeps_the_model_parameter_order() -> None:
    """Optimiser state is matched by position: checkpoints written before the groups existed (one group over
    `model.parameters()`) must resume onto the same parameters."""
    cfg = get_config("synthetic-overfit")
    model = build_model(cfg)
    (group,) = build_optimizer(model, cfg).param_groups
    assert [id(p) for p in group["params"]] == [id(p) for p in model.parameters()]


def test_the_cosine_schedule_warms_up_then_falls_to_its_floor() -> None:
    cfg = get_config("default")  # lr 3e-4, warm-up 200 iterations from lr / 200, floor 0.1 x lr
    assert learning_rate(cfg, 0, 0, 2000) == pytest.approx(1.5e-6)
    assert learning_rate(cfg, 100, 0, 2000) == pytest.approx(3e-4 * (1 - 0.5 * 0.995))
    assert learning_rate(cfg, 200, 1, 2000) == pytest.approx(3e-4)
    assert learning_rate(cfg, 1100, 11, 2000) == pytest.approx(3e-4 * (0.1 + 0.9 * 0.5))
    assert learning_rate(cfg, 2000, 19, 2000) == pytest.approx(3e-5)
    assert learning_rate(cfg, 5000, 19, 2000) == pytest.approx(3e-5)  # past the end: the floor


def test_learning_rate_follows_warmup_and_steps() -> None:
    cfg = get_config("tiny-1shot-split1")
    assert learning_rate(cfg, 0, 0, 10**6) == pytest.approx(1e-8)  # warm-up starts at 0.001 x lr
    assert learning_rate(cfg, 500, 0, 10**6) == pytest.approx(1e-5 * (1 - 0.5 * 0.999))
    assert learning_rate(cfg, 1000, 3, 10**6) == pytest.approx(1e-5)
    assert learning_rate(cfg, 99999, 159, 10**6) == pytest.approx(1e-5)
    assert learning_rate(cfg, 99999, 160, 10**6) == pytest.approx(1e-6)
    assert learning_rate(cfg, 99999, 199, 10**6) == pytest.approx(1e-7)


def test_a_few_cpu_steps_reduce_the_loss(generated_mp100: Path) -> None:
    cfg = get_config("synthetic", _settings(generated_mp100, Path("unused")))
    split = load_split(annotation_file(generated_mp100, 1, "train"), generated_mp100 / "images")
    episodes = training_episodes(split.by_category, 1, (0, 0), per_category=1)
    batch = collate_episodes([EpisodeDataset(split, episodes, 64, 20)[i] for i in range(3)])
    model = build_model(cfg)
    step = EpisodeLoss(model, 2.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(10):
        loss = sum(step(batch).values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_resume_continues_bit_exactly(generated_mp100: Path, tmp_path: Path) -> None:
    # 3 categories x 2 episodes / batch 2 = 3 steps per epoch: step 4 lies in the second epoch
    straight = get_config("synthetic", _settings(generated_mp100, tmp_path / "a", "max_steps=5"))
    train(straight, "cpu")
    halves = get_config("synthetic", _settings(generated_mp100, tmp_path / "b", "max_steps=2"))
    train(halves, "cpu")
    train(get_config("synthetic", _settings(generated_mp100, tmp_path / "b", "max_steps=5")), "cpu", resume="auto")
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert a["train"]["step"] == b["train"]["step"] == 5
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    for key, value in a["train"]["optimizer"]["state"].items():
        assert torch.equal(value["exp_avg"], b["train"]["optimizer"]["state"][key]["exp_avg"])
    assert torch.equal(a["train"]["rng"]["torch"], b["train"]["rng"]["torch"])


def test_cli_trains_validates_logs_and_saves(generated_mp100: Path, tmp_path: Path) -> None:
    sets = _settings(generated_mp100, tmp_path / "run", "epochs=1", "val_every=1", "val_subset=train",
                     "val_episodes=1", "queries=2")  # fmt: skip
    assert main(["synthetic", *sum((["--set", s] for s in sets), [])]) == 0
    run = tmp_path / "run"
    header, row = (run / "metrics.csv").read_text().splitlines()
    assert {"epoch", "step", "lr", "loss", "heatmap_loss", "val_PCK@0.2", "val_mPCK"} <= set(header.split(","))
    assert "epoch 1 done" in (run / "train.log").read_text()
    model = CapeModel.from_checkpoint(run / "final.pt")  # the result is a plain model checkpoint
    assert model.input_size == 64
    assert CapeModel.from_checkpoint(run / "last.pt").input_size == 64  # so is a training checkpoint


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tiny-1shot-splitt1"]) == 2
    assert main(["synthetic", "--set", f"data_root={tmp_path / 'none'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("cape-train: error: ") for line in err)
    assert "dataset root not found" in err[1]


def test_backbone_init_from_microsoft_swinv2_layout(tmp_path: Path) -> None:
    """A SwinV2 file in Microsoft's layout (SimMIM `encoder.` prefix, merge at stage end, buffers) loads exactly."""
    source = CapeModel.from_preset("mini")
    torch.nn.init.normal_(source.backbone.body.layers[1].downsample.reduction.weight)
    ms_layout = {}
    for key, value in source.backbone.body.state_dict().items():
        if ".downsample." in key:  # timm merges at the start of stage i, Microsoft at the end of stage i - 1
            stage = int(key.split(".")[1])
            key = key.replace(f"layers.{stage}.downsample", f"layers.{stage - 1}.downsample")
        ms_layout["encoder." + key] = value
    ms_layout["encoder.layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(3)  # dropped buffer
    torch.save({"model": ms_layout}, tmp_path / "swin.pth")
    target = CapeModel.from_preset("mini")
    load_backbone_weights(target, tmp_path / "swin.pth")
    for key, value in source.backbone.body.state_dict().items():
        assert torch.equal(value, target.backbone.body.state_dict()[key]), key


@pytest.mark.slow
def test_torchrun_two_cpu_processes(generated_mp100: Path, tmp_path: Path) -> None:
    sets = sum((["--set", s] for s in _settings(generated_mp100, tmp_path / "ddp", "max_steps=2")), [])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
           "-m", "cape_track.training.train", "synthetic", *sets, "--device", "cpu"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)["train"]["step"] == 2

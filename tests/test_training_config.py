"""training.config: the 20 released settings by name, strict TOML/JSON override files and --set values."""

from __future__ import annotations

from pathlib import Path

import pytest

from cape_track.training.config import CONFIGS, ConfigError, TrainConfig, get_config


def test_released_settings_are_generated_by_name() -> None:
    names = [f"{m}-{k}shot-split{s}" for m in ("tiny", "small") for k in (1, 5) for s in range(1, 6)]
    assert set(names) <= set(CONFIGS)
    tiny = get_config("tiny-1shot-split1")
    assert (tiny.model, tiny.shots, tiny.split, tiny.batch_size, tiny.drop_path) == ("tiny", 1, 1, 16, 0.2)
    small = get_config("small-5shot-split3")
    assert (small.model, small.shots, small.split, small.batch_size, small.drop_path) == ("small", 5, 3, 8, 0.3)
    assert get_config("tiny-5shot-split2").batch_size == 8
    # the paper's recipe (spec §13) is the default of every released setting
    assert (tiny.lr, tiny.epochs, tiny.warmup_iters, tiny.lr_steps, tiny.heatmap_loss_weight) == (
        1e-5, 200, 1000, (160, 180), 2.0
    )  # fmt: skip
    assert (tiny.val_episodes, tiny.test_episodes, tiny.queries, tiny.seed) == (100, 200, 15, 1)
    assert "synthetic" in CONFIGS


def test_unknown_name_suggests_the_closest() -> None:
    with pytest.raises(ConfigError, match="did you mean 'tiny-1shot-split1'"):
        get_config("tiny-1shot-splt1")


def test_override_file_toml_and_json(tmp_path: Path) -> None:
    toml = tmp_path / "mine.toml"
    toml.write_text('base = "small-1shot-split2"\nepochs = 3\nlr_steps = [1, 2]\nbackbone_weights = "w.pth"\n')
    cfg = get_config(str(toml), ["batch_size=2", "augment=false"])
    assert (cfg.name, cfg.model, cfg.split, cfg.epochs, cfg.lr_steps) == ("mine", "small", 2, 3, (1, 2))
    assert (cfg.batch_size, cfg.augment, cfg.backbone_weights) == (2, False, "w.pth")
    js = tmp_path / "other.json"
    js.write_text('{"base": "synthetic", "lr": 1, "max_steps": 7}')
    cfg = get_config(str(js))
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.max_steps == 7 and cfg.model == "lite0"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("epoch = 3", "unknown config field 'epoch' .*did you mean 'epochs'"),
        ("epochs = 2.5", "field 'epochs' expects int, got 2.5"),
        ("augment = 1", "field 'augment' expects bool"),
        ("split = 9", "invalid split 9"),
        ("betas = [0.9, 0.99, 0.5]", "field 'betas' expects tuple"),
        ('base = "huge"', "base 'huge' is not a known setting"),
        ("epochs = ", "cannot parse"),
    ],
)
def test_override_file_is_strict(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError, match=message):
        get_config(str(path))


def test_set_values_are_typed_without_eval() -> None:
    cfg = get_config("synthetic", ["epochs=4", "lr=0.5", "lr_steps=2,3", "init_checkpoint=none", "out_dir=/tmp/x"])
    assert (cfg.epochs, cfg.lr, cfg.lr_steps, cfg.init_checkpoint, cfg.out_dir) == (4, 0.5, (2, 3), None, "/tmp/x")
    with pytest.raises(ConfigError, match="expected int"):
        get_config("synthetic", ["epochs=__import__('os')"])
    with pytest.raises(ConfigError, match="expected field=value"):
        get_config("synthetic", ["epochs"])
    with pytest.raises(ConfigError, match="unknown config field 'epocs'"):
        get_config("synthetic", ["epocs=3"])


def test_run_dir_defaults_to_runs_name() -> None:
    assert TrainConfig(name="x").run_dir == Path("runs/x")
    assert TrainConfig(name="x", out_dir="/tmp/r").run_dir == Path("/tmp/r")

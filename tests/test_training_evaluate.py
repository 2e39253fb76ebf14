"""training.evaluate / cape-eval: the official protocol end to end on generated data and on official-layout weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from reference_data import VECTORS

import cape_track.training.evaluate as evaluate
from cape_track.model import CapeModel
from cape_track.training.evaluate import evaluate_split, main
from cape_track.training.mp100 import annotation_file, load_split

KEYS = ["PCK@0.05", "PCK@0.1", "PCK@0.15", "PCK@0.2", "PCK@0.25", "mPCK", "NME", "AUC", "EPE"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "test.pt"
    CapeModel.from_preset("test", input_size=64).save(path)
    return path


def test_ground_truth_predictions_score_perfectly(generated_mp100: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Feeding the crop's own keypoints back through the image mapping must give PCK 1 and ~0 error everywhere."""
    monkeypatch.setattr(evaluate, "_predict_episode", lambda model, batch: batch.query_keypoints[0].double().numpy())
    split = load_split(annotation_file(generated_mp100, 1, "train"), generated_mp100 / "images")
    result = evaluate_split(CapeModel.from_preset("test", input_size=64), split, shots=1, episodes=2, queries=3)
    assert result.num_queries == 3 * 2 * 3
    for key in KEYS[:6]:
        assert result.metrics[key] == 1.0, key
    assert result.metrics["NME"] < 1e-5 and result.metrics["EPE"] < 1e-3
    assert list(result.per_category) == [c.name for c in split.categories.values()]


def test_cape_eval_without_config(generated_mp100: Path, checkpoint: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "eval.json"
    ann = annotation_file(generated_mp100, 1, "test")
    argv = ["--data-root", str(generated_mp100 / "images"), "--ann-file", str(ann), "--checkpoint", str(checkpoint),
            "--shots", "1", "--episodes", "2", "--queries", "3", "--json", str(out), "--workers", "0"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert list(report["metrics"]) == KEYS
    assert report["protocol"]["queries_evaluated"] == 6 and report["protocol"]["shots"] == 1
    text = capsys.readouterr().out
    assert "PCK@0.2" in text and "mean" in text and str(out) in text


def test_cape_eval_with_config_and_split(generated_mp100: Path, checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "e.json"
    argv = ["synthetic", "--set", f"data_root={generated_mp100}", "--checkpoint", str(checkpoint), "--split", "2",
            "--shots", "2", "--episodes", "1", "--queries", "2", "--json", str(out), "--workers", "0"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert report["annotation_file"].endswith("mp100_split2_test.json")
    assert report["protocol"]["shots"] == 2 and 0.0 <= report["metrics"]["PCK@0.2"] <= 1.0


def test_cape_eval_errors(generated_mp100: Path, checkpoint: Path, tmp_path: Path, capsys) -> None:
    bad = ["--data-root", str(generated_mp100 / "images"), "--ann-file", str(tmp_path / "x.json"),
           "--checkpoint", str(checkpoint)]  # fmt: skip
    assert main(bad) == 2
    assert main(["synthetic", "--set", f"data_root={generated_mp100}", "--checkpoint", str(tmp_path / "no.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("cape-eval: error: ") for line in err)
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(checkpoint)])  # neither a config nor --data-root/--ann-file


def test_official_layout_state_dict_on_reference_dataset(tmp_path: Path) -> None:
    """A plain official-layout state dict (the mini variant) evaluates directly on the reference MP-100 files."""
    ref = VECTORS / "synthetic_mp100"
    out = tmp_path / "mini.json"
    argv = ["--data-root", str(ref / "images"), "--ann-file", str(ref / "annotations" / "mp100_splitX_test.json"),
            "--checkpoint", str(VECTORS / "state_dict_mini.pt"), "--episodes", "1", "--queries", "2",
            "--json", str(out), "--workers", "0"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert list(report["per_category"]) == ["toy_quad", "toy_chain"]
    assert report["protocol"]["queries_evaluated"] == 4

"""training.episodes: the official test episodes exactly, balanced training episodes, category-disjoint splits."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from reference_data import VECTORS

from cape_track.training.episodes import Episode, check_disjoint, official_test_episodes, training_episodes
from cape_track.training.mp100 import DatasetError, annotation_file, load_split


def test_official_test_episodes_match_reference() -> None:
    v = json.loads((VECTORS / "data_pipeline_vectors.json").read_text())["episode_sampling"]
    by_category = {int(k): tuple(objs) for k, objs in v["cat2obj"].items()}
    episodes = official_test_episodes(by_category, v["num_shots"], v["num_queries"], v["num_episodes"])
    pairs = [list(p) for ep in episodes for p in ep.pairs()]
    assert pairs == v["pairs"]


def test_official_episodes_leave_global_rng_alone() -> None:
    random.seed(123)
    expected = random.random()
    random.seed(123)
    official_test_episodes({1: tuple(range(20))}, 1, 5, 3)
    assert random.random() == expected


def test_episodes_never_mix_categories(generated_mp100: Path) -> None:
    split = load_split(annotation_file(generated_mp100, 1, "train"), generated_mp100 / "images")
    for ep in official_test_episodes(split.by_category, 2, 3, 4) + training_episodes(split.by_category, 2, (1, 0)):
        members = ep.supports + ep.queries
        assert len(set(members)) == len(members)  # distinct objects
        assert {split.instances[i].category_id for i in members} == {ep.category_id}


def test_training_episodes_balanced_shuffled_and_seeded() -> None:
    by_category = {1: tuple(range(10)), 2: tuple(range(10, 13)), 3: tuple(range(13, 20))}
    epoch = training_episodes(by_category, 1, (1, 0))
    counts = {c: sum(ep.category_id == c for ep in epoch) for c in by_category}
    assert counts == {1: 10, 2: 10, 3: 10}  # every category as often as the largest has objects
    assert [ep.category_id for ep in epoch] != sorted(ep.category_id for ep in epoch)  # shuffled
    assert all(len(ep.supports) == 1 and len(ep.queries) == 1 for ep in epoch)
    assert training_episodes(by_category, 1, (1, 0)) == epoch
    assert training_episodes(by_category, 1, (1, 1)) != epoch
    assert len(training_episodes(by_category, 1, (1, 0), per_category=4)) == 12


def test_too_few_objects_is_an_error() -> None:
    with pytest.raises(DatasetError, match="category 2: 3 objects, an episode needs 6"):
        official_test_episodes({1: tuple(range(10)), 2: (10, 11, 12)}, 1, 5, 1)


def test_generated_splits_are_category_disjoint(generated_mp100: Path) -> None:
    for split_id in (1, 2):
        splits = [load_split(annotation_file(generated_mp100, split_id, s), generated_mp100 / "images")
                  for s in ("train", "val", "test")]  # fmt: skip
        check_disjoint(splits)
        names = [{c.name for c in s.categories.values()} for s in splits]
        assert sum(len(n) for n in names) == 5


def test_check_disjoint_rejects_shared_category(generated_mp100: Path) -> None:
    train = load_split(annotation_file(generated_mp100, 1, "train"), generated_mp100 / "images")
    train2 = load_split(annotation_file(generated_mp100, 2, "train"), generated_mp100 / "images")
    with pytest.raises(DatasetError, match="splits must be category-disjoint"):
        check_disjoint([train, train2])


def test_episode_pairs() -> None:
    assert Episode(4, (1, 2), (7, 9)).pairs() == [(1, 2, 7), (1, 2, 9)]

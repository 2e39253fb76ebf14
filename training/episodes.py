"""Episodes: K supports and the queries of one category, drawn the way the official code draws them.

Training (`TransformerPoseDataset.random_paired_samples`, spec §13): every category gets as many episodes as the
largest category has objects, each K+1 distinct objects; all are shuffled. Testing (`make_paired_samples`, spec §15):
`random.seed(1)`, then per category in file order and per episode `random.sample(objects, K + Q)`. A private
`random.Random(1)` gives the same draws as the official global seed without touching the caller's RNG.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .mp100 import DatasetError, Mp100Split

OFFICIAL_TEST_SEED = 1


@dataclass(frozen=True)
class Episode:
    """K support objects and the query objects evaluated against them (instance indices of one split)."""

    category_id: int
    supports: tuple[int, ...]
    queries: tuple[int, ...]

    def pairs(self) -> list[tuple[int, ...]]:
        """The official per-query samples: `supports + (query,)` for each query."""
        return [(*self.supports, q) for q in self.queries]


def official_test_episodes(
    by_category: Mapping[int, Sequence[int]], shots: int, queries: int, episodes: int, seed: int = OFFICIAL_TEST_SEED
) -> list[Episode]:
    """The official evaluation episodes: identical for every model given the same file, shots, episodes, queries.

    `by_category` must be in the file's category order with objects in official order (`Mp100Split.by_category`).
    """
    rng = random.Random(seed)
    out = []
    for cat_id, objects in by_category.items():
        _check_enough(cat_id, objects, shots + queries, f"{shots} supports + {queries} queries")
        for _ in range(episodes):
            drawn = rng.sample(list(objects), shots + queries)
            out.append(Episode(cat_id, tuple(drawn[:shots]), tuple(drawn[shots:])))
    return out


def training_episodes(
    by_category: Mapping[int, Sequence[int]], shots: int, seed: Sequence[int], per_category: int | None = None
) -> list[Episode]:
    """One epoch of balanced, shuffled training episodes with one query each.

    Args:
        seed: the epoch's seed, e.g. `(config seed, epoch)`: the same seed gives the same epoch, which makes
            resuming mid-epoch exact.
        per_category: episodes per category; None = the size of the largest category, as the official code.
    """
    sizes = {cat_id: len(objects) for cat_id, objects in by_category.items() if len(objects) > 0}
    if not sizes:
        raise DatasetError("training split: no annotated objects (check the annotation file and image root)")
    count = max(sizes.values()) if per_category is None else per_category
    rng = random.Random(int(np.random.SeedSequence(list(seed)).generate_state(1)[0]))
    episodes = []
    for cat_id, objects in by_category.items():
        _check_enough(cat_id, objects, shots + 1, f"{shots} supports + 1 query")
        for _ in range(count):
            drawn = rng.sample(list(objects), shots + 1)
            episodes.append(Episode(cat_id, tuple(drawn[:shots]), (drawn[shots],)))
    rng.shuffle(episodes)
    return episodes


def check_disjoint(splits: Sequence[Mp100Split]) -> None:
    """Raise if two splits share a category name: CAPE is only measured on categories never trained on."""
    seen: dict[str, str] = {}
    for split in splits:
        for cat in split.categories.values():
            if cat.name in seen and seen[cat.name] != split.name:
                raise DatasetError(
                    f"{split.name}: category {cat.name!r} also appears in {seen[cat.name]} "
                    "(splits must be category-disjoint)"
                )
            seen[cat.name] = split.name


def _check_enough(cat_id: int, objects: Sequence[int], needed: int, what: str) -> None:
    if len(objects) < needed:
        raise DatasetError(
            f"category {cat_id}: {len(objects)} objects, an episode needs {needed} distinct ones ({what}; "
            "use fewer queries or shots)"
        )

"""Near-duplicate groups (folds.group_by: auto) in bounded memory: the same groups as clustering the whole distance
matrix, without the matrix (pipeline/data/near_duplicates.py)."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import pdist
from sklearn.metrics import adjusted_rand_score

from pipeline.data import near_duplicates
from pipeline.data.near_duplicates import close_pairs, near_duplicate_groups


def _whole_matrix_groups(features: np.ndarray, distance: float) -> np.ndarray:
    """What the folds stage did before: average linkage over every pair at once."""
    return fcluster(linkage(pdist(np.asarray(features, np.float64), "cosine"), method="average"), t=distance,
                    criterion="distance")


def _photos(images: int, dim: int, seed: int, spread: float) -> np.ndarray:
    """Scenes photographed 1 to 12 times, each photo its scene's non-negative features plus a little noise."""
    rng = np.random.default_rng(seed)
    scene = np.repeat(np.arange(images), rng.integers(1, 13, images))[:images]
    centres = np.maximum(rng.normal(size=(scene.max() + 1, dim)), 0)  # ReLU'd, as pooled features are
    return np.maximum(centres[scene] + rng.normal(scale=spread, size=(images, dim)), 0).astype(np.float32)


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = np.unique(np.stack([a, b], 1), axis=0)
    return len(pairs) == len(np.unique(a)) == len(np.unique(b))


@pytest.mark.parametrize("distance", [0.05, 0.1, 0.2])
def test_the_groups_are_the_whole_matrix_clustering_s_component_by_component(distance, monkeypatch):
    features = _photos(1500, 32, seed=1, spread=0.2)
    monkeypatch.setattr(near_duplicates, "EXACT_LIMIT", 100)  # 1,500 photos, component by component (<= 44 each)
    groups = near_duplicate_groups(features, distance)
    assert _same_partition(groups, _whole_matrix_groups(features, distance))
    first_rows = np.unique(groups, return_index=True)[1]
    assert list(np.argsort(first_rows) + 1) == sorted(np.unique(groups))  # numbered by first appearance


def test_close_pairs_are_every_pair_below_the_cut_found_slice_by_slice(monkeypatch):
    features = _photos(700, 16, seed=2, spread=0.2)
    distances = pdist(features.astype(np.float64), "cosine")
    monkeypatch.setattr(near_duplicates, "SLICE_BYTES", 4 * 700 * 50)  # 50 rows at a time
    first, second = close_pairs(features, 0.2)
    n = len(features)
    found = set(zip(first.tolist(), second.tolist()))
    i, j = np.triu_indices(n, 1)
    below = set(zip(i[distances < 0.2].tolist(), j[distances < 0.2].tolist()))
    assert below <= found and all(distances[n * a - a * (a + 1) // 2 + b - a - 1] < 0.2 + 2e-5 for a, b in found)


def test_grouping_stays_under_a_memory_cap_the_whole_matrix_would_exceed(monkeypatch):
    images, cap = 6000, 48 * 2**20
    assert images * (images - 1) // 2 * 8 > 2 * cap  # the condensed matrix alone, before linkage copies it
    features = _photos(images, 32, seed=3, spread=0.1)
    monkeypatch.setattr(near_duplicates, "SLICE_BYTES", 16 * 2**20)
    monkeypatch.setattr(near_duplicates, "EXACT_LIMIT", 1000)  # the whole-matrix limit, scaled to the test's cap
    tracemalloc.start()
    try:
        groups = near_duplicate_groups(features, 0.2)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < cap, f"peak {peak / 2**20:.0f} MiB"
    # ... and the groups are the ones the whole matrix gives (measured after the cap, where memory is no concern).
    assert _same_partition(groups, _whole_matrix_groups(features, 0.2))


def test_a_component_too_large_for_its_matrix_is_clustered_through_a_sample_nearly_alike(monkeypatch):
    features = _photos(3000, 32, seed=4, spread=0.2)  # chains of near pairs: components of up to ~90 photos
    exact = _whole_matrix_groups(features, 0.2)
    monkeypatch.setattr(near_duplicates, "EXACT_LIMIT", 40)
    approximate = near_duplicate_groups(features, 0.2)
    first, second = close_pairs(features, 0.2)
    _, component = connected_components(coo_matrix((np.ones(len(first)), (first, second)), shape=(3000, 3000)))
    assert np.bincount(component).max() > 40  # the sampled clustering ran
    assert adjusted_rand_score(exact, approximate) > 0.9

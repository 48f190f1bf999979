"""Near-duplicate groups for data that names none (Dogs vs. Cats, own data): the same pet or scene photographed
several times is one group, so no fold validates on a photo whose twin it trained on.

The groups are average-linkage clusters of the images' cosine distance, cut at ``distance``: average, not single
linkage ("any pair closer than"), which would chain near pairs into one group of everything. Clustering every image
at once needs the whole distance matrix (25,000 images: 2.3 GiB of distances, copied by the linkage; 100,000:
37 GiB). Two clusters merge below ``distance`` only if some pair across them is closer than ``distance`` (an
average is never below its smallest term), so every cluster lies inside one connected component of the graph of
pairs closer than ``distance``. That graph is found in slices of rows (memory: a slice of similarities and the
pairs found), and the clustering runs component by component: the same groups as the whole-matrix clustering, in
memory that grows with the largest component rather than with the square of the image count (bench/
near_duplicates.py; tests/test_near_duplicates.py checks both agree). A component too large for its own matrix
(near pairs chain through thousands of photos when the photos are alike: the Dogs vs. Cats stand-in at full count
is one component of 24,969 photos at 0.2) is clustered through an evenly spread sample of it: the sample exactly,
then every photo joins its nearest sampled photo's cluster. Memory stays bounded; the groups are not the
whole-matrix ones: on that stand-in they split more pets between groups (docs/results.md compares them).
"""
from __future__ import annotations

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import pdist

SLICE_BYTES = 2**28  # similarities held at once: 256 MiB whatever the image count
# float32 similarities against float64 distances: take pairs a hair beyond the cut too. A pair too many can only
# join two components, never two clusters (the clustering within a component is exact).
MARGIN = 1e-5
# The most rows clustered exactly at once: condensed distances take 8 bytes a pair (8,000 rows: 256 MB, which the
# linkage copies); a larger component is clustered through a sample of this many of its rows.
EXACT_LIMIT = 8_000


def _unit(features: np.ndarray) -> np.ndarray:
    rows = np.asarray(features, np.float32)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def close_pairs(features: np.ndarray, distance: float) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) with i < j for every pair of rows whose cosine distance is below ``distance`` (plus MARGIN)."""
    unit = _unit(features)
    step = max(1, SLICE_BYTES // (4 * len(unit)))
    firsts, seconds = [], []
    for start in range(0, len(unit), step):
        similar = unit[start:start + step] @ unit.T
        i, j = np.nonzero(similar > 1.0 - distance - MARGIN)
        later = j > i + start
        firsts.append((i[later] + start).astype(np.int32))
        seconds.append(j[later].astype(np.int32))
    return np.concatenate(firsts), np.concatenate(seconds)


def _exact(features: np.ndarray, distance: float) -> np.ndarray:
    tree = linkage(pdist(np.asarray(features, np.float64), "cosine"), method="average")
    return fcluster(tree, t=distance, criterion="distance")


def _average_linkage(features: np.ndarray, distance: float) -> np.ndarray:
    """Cluster numbers (1, 2, ...) of one component's rows: average linkage cut at ``distance``. A component above
    EXACT_LIMIT rows: the exact clustering of EXACT_LIMIT rows spread evenly over it, and every row in the cluster
    of its nearest clustered row (a near-duplicate goes where its twin went; joining the cluster closest on
    average split more pets: docs/results.md)."""
    if len(features) == 1:
        return np.ones(1, np.int64)
    if len(features) <= EXACT_LIMIT:
        return _exact(features, distance)
    clustered = np.linspace(0, len(features) - 1, EXACT_LIMIT).round().astype(np.int64)
    labels = _exact(features[clustered], distance)
    unit, anchors = _unit(features), _unit(features[clustered])
    step = max(1, SLICE_BYTES // (4 * len(anchors)))
    nearest = np.concatenate([(unit[start:start + step] @ anchors.T).argmax(1)
                              for start in range(0, len(unit), step)])
    return labels[nearest]


def near_duplicate_groups(features: np.ndarray, distance: float) -> np.ndarray:
    """A group number (1, 2, ...) per row; above EXACT_LIMIT rows, numbered in order of each group's first row."""
    n = len(features)
    if n <= EXACT_LIMIT:  # one matrix fits: cluster everything at once (the groups and numbers as they always were)
        return _average_linkage(np.asarray(features), distance)
    first, second = close_pairs(features, distance)
    graph = coo_matrix((np.ones(len(first), np.int8), (first, second)), shape=(n, n))
    count, component = connected_components(graph, directed=False)
    groups, taken = np.zeros(n, np.int64), 0
    members_of = np.split(np.argsort(component, kind="stable"), np.cumsum(np.bincount(component))[:-1])
    for members in members_of:
        labels = _average_linkage(np.asarray(features[members]), distance)
        groups[members] = labels + taken
        taken += int(labels.max())
    _, first_row, numbered = np.unique(groups, return_index=True, return_inverse=True)
    order = np.empty(len(first_row), np.int64)
    order[np.argsort(first_row)] = np.arange(1, len(first_row) + 1)
    return order[numbered]

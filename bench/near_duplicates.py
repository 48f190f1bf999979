"""Near-duplicate grouping (folds.group_by: auto) at a competition's size: time and peak memory, against the whole
pairwise-distance matrix it replaced.

    python bench/near_duplicates.py                       # 25,000 images (Dogs vs. Cats Redux's train set)
    python bench/near_duplicates.py --images 100000
    python bench/near_duplicates.py --images 8000 --compare   # also the old full-matrix clustering: same groups?

Features are synthetic, shaped like lite0's pooled features of photos (1,280 non-negative numbers; a pet or scene
photographed 1 to 12 times, each photo a small change of its scene's features), so the figures need no images;
docs/results.md has the same grouping on the Dogs vs. Cats stand-in's real features at full count.
Each method runs in a child process of its own and reports its peak RSS, measured by the kernel.
"""
from __future__ import annotations

import argparse
import multiprocessing
import resource
import time

import numpy as np


def synthetic_features(images: int, dim: int, seed: int = 0) -> np.ndarray:
    """``images`` feature vectors in scenes of 1 to 12 near-identical photos."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 13, images)
    scene = np.repeat(np.arange(images), sizes)[:images]
    centres = np.maximum(rng.normal(size=(scene.max() + 1, dim)), 0).astype(np.float32)  # ReLU'd, as pooled
    noise = rng.normal(scale=0.3, size=(images, dim)).astype(np.float32)
    return np.maximum(centres[scene] + noise, 0)


def _run(method: str, images: int, dim: int, distance: float, out) -> None:
    features = synthetic_features(images, dim)
    start = time.perf_counter()
    if method == "none":  # the interpreter, NumPy and the features alone
        groups = np.ones(images, np.int64)
    elif method == "bounded":
        from pipeline.data.near_duplicates import near_duplicate_groups
        groups = near_duplicate_groups(features, distance)
    else:
        from scipy.cluster.hierarchy import fcluster, linkage
        from scipy.spatial.distance import pdist
        groups = fcluster(linkage(pdist(np.asarray(features, np.float64), "cosine"), method="average"), t=distance,
                          criterion="distance")
    seconds = time.perf_counter() - start
    out.send((seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, groups))


def measure(method: str, images: int, dim: int, distance: float) -> tuple[float, int, np.ndarray]:
    receive, send = multiprocessing.Pipe(duplex=False)
    child = multiprocessing.get_context("fork").Process(target=_run, args=(method, images, dim, distance, send))
    child.start()
    result = receive.recv()
    child.join()
    return result


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = np.unique(np.stack([a, b], 1), axis=0)
    return len(pairs) == len(np.unique(a)) == len(np.unique(b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=25_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--distance", type=float, default=0.2)
    parser.add_argument("--compare", action="store_true", help="also run the full-matrix clustering")
    args = parser.parse_args()
    baseline = measure("none", args.images, args.dim, args.distance)[1]
    seconds, peak, groups = measure("bounded", args.images, args.dim, args.distance)
    print(f"{args.images} images x {args.dim}: {len(np.unique(groups))} groups, the largest "
          f"{np.bincount(groups).max()} images")
    print(f"bounded (radius graph, average linkage per component): {seconds:7.1f} s, peak RSS "
          f"{peak / 2**30:5.2f} GiB ({(peak - baseline) / 2**30:.2f} above the features themselves)")
    matrix = args.images * (args.images - 1) // 2 * 8
    print(f"full matrix: the condensed distances alone {matrix / 2**30:.2f} GiB (float64), linkage copies them")
    if args.compare:
        old_seconds, old_peak, old_groups = measure("full", args.images, args.dim, args.distance)
        print(f"full matrix (before):                                {old_seconds:7.1f} s, peak RSS "
              f"{old_peak / 2**30:5.2f} GiB; same groups: {same_partition(groups, old_groups)}")
        print(f"ratios bounded / full matrix: time {seconds / old_seconds:.2f}, peak RSS {peak / old_peak:.2f}")


if __name__ == "__main__":
    main()

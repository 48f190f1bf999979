"""A copy of a local competition folder (the real development set) small enough to travel to a lent GPU machine:
every JPEG re-encoded at half size (State Farm's 640x480 becomes 320x240, the frame cache's own size for 224 px
models, so the frames stage caches the same pixels it would have decoded), the CSVs copied as they are.

    python bench/gpu_photos.py ../shared/data/statefarm-dev .gpu/statefarm-dev    # ~40 MB at quality 75

Real people: the copy goes to an ignored folder (.gpu/), never into a commit; bench/gpu_check.sh --photos reads it.
"""
from __future__ import annotations

import argparse
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image


def shrink(task: tuple[Path, Path, int, int]) -> int:
    source, target, factor, quality = task
    with Image.open(source) as image:
        # The size first: draft() may already shrink the image, and the first GPU check's photos, sized after it,
        # came out at a quarter (160x120), below the frame cache's 224 px.
        size = (image.width // factor, image.height // factor)
        image.draft("RGB", size)  # the JPEG's own DCT scaling, to the nearest scale at least `size`
        image = image.convert("RGB").resize(size, Image.BICUBIC)
    target.parent.mkdir(parents=True, exist_ok=True)
    image.save(target, quality=quality)
    return target.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--factor", type=int, default=2)
    parser.add_argument("--quality", type=int, default=75)
    args = parser.parse_args()
    shutil.rmtree(args.target, ignore_errors=True)
    tasks = []
    for path in sorted(args.source.rglob("*")):
        target = args.target / path.relative_to(args.source)
        if path.suffix.lower() in (".jpg", ".jpeg"):
            tasks.append((path, target, args.factor, args.quality))
        elif path.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    with ProcessPoolExecutor() as pool:
        size = sum(pool.map(shrink, tasks, chunksize=64))
    print(f"{len(tasks)} photos, {size / 2**20:.1f} MB in {args.target}")


if __name__ == "__main__":
    main()

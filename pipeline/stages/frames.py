"""frames stage: decode every image of the run once, in parallel processes, into the frame cache.

Reads params ``competition`` and ``frames`` (``size``: the largest image size any backbone or model asks for;
``workers``: decoding processes), the run's images (pipeline/data/tables.py) and the raw archives. Writes
``data/frames/<competition>/`` in the format pipeline/data/frames.py describes: one memory-mapped uint8 array per
split, filled in place by the workers, so memory stays flat however many images. Features, fine-tuning,
pseudo-labels and every prediction read pixels from it; nothing decodes a JPEG after this stage. A file that
does not decode stops the stage with one line naming it (``imgs.zip:train/c0/img_1.jpg``), and no frame folder
is left.

    python -m pipeline.stages.frames
"""
from __future__ import annotations

import logging
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from pipeline.atomic import atomic_dir
from pipeline.compute.cores import share, stage_command
from pipeline.config import load_params
from pipeline.data.competitions import CompetitionSpec, competition_of
from pipeline.data.frames import array_file, check_room, fit_frame, frames_bytes, new_frames, write_index, write_meta
from pipeline.data.images import CompetitionImages
from pipeline.data.tables import RunImages
from pipeline.errors import PipelineError
from pipeline.paths import frames_dir
from pipeline.progress import progress

log = logging.getLogger(__name__)
CHUNK = 64  # images per task: small enough for a moving bar, large enough that task overhead vanishes
# The archives, opened once per worker process: opening State Farm's imgs.zip reads and checks its 102,340 entries
# (~1.3 s here), which once per task of 64 images is ~2,000 CPU seconds at the full count (1,600 tasks).
_worker_archive: CompetitionImages | None = None


def _open_archive(raw: Path, spec: CompetitionSpec) -> None:
    global _worker_archive
    _worker_archive = CompetitionImages(raw, spec)


def _decode_rows(task: tuple, archive: CompetitionImages | None = None) -> tuple[int, str]:
    """Decode ``members`` into rows ``start...`` of the split's array (opened here, in the worker) from ``archive``
    (the worker's own by default); (count, the first error or "")."""
    folder, split, start, members, size, shape = task
    archive, frames = archive or _worker_archive, np.load(folder / array_file(split), mmap_mode="r+")
    for offset, member in enumerate(members):
        try:
            frames[start + offset] = fit_frame(archive.load_rgb(member, draft_size=(size, size)), shape)
        except PipelineError as error:
            return offset, str(error)
    frames.flush()
    return len(members), ""


def decode_frames(images: RunImages, spec: CompetitionSpec, size: int, workers: int, out: Path,
                  name: Path | None = None) -> dict:
    """Fill ``out`` (empty; ``name`` in messages) with the frames of every train and test image; return frames.json's
    content. A disk without room for them all is refused before anything is written."""
    archive = CompetitionImages(images.raw, spec)
    first = images.train.member.iloc[0] if len(images.train) else images.test.member.iloc[0]
    shape = archive.load_rgb(first, draft_size=(size, size)).shape[:2]
    check_room(out, frames_bytes(len(images.train) + len(images.test), shape), name or out)
    started = time.perf_counter()
    # Spawned processes: a clean interpreter each, no forked OpenCV pool or zip handle. One worker decodes here.
    executor = (ProcessPoolExecutor(workers, multiprocessing.get_context("spawn"), initializer=_open_archive,
                                    initargs=(images.raw, spec)) if workers > 1 else None)
    try:
        for split, table in (("train", images.train), ("test", images.test)):
            new_frames(out, split, len(table), shape).flush()
            write_index(out, split, table)
            members = list(table.member)
            tasks = [(out, split, start, members[start:start + CHUNK], size, shape)
                     for start in range(0, len(members), CHUNK)]
            results = ((_decode_rows(task, archive) for task in tasks) if executor is None
                       else (future.result() for future in as_completed([executor.submit(_decode_rows, task)
                                                                         for task in tasks])))
            with progress(total=len(members), desc=f"decoding {split}") as bar:
                for done, error in results:
                    if error:
                        raise PipelineError(error)
                    bar.update(done)
    finally:
        if executor is not None:  # on an error, tasks not started are dropped; running ones end in a moment
            executor.shutdown(wait=True, cancel_futures=True)
    count = len(images.train) + len(images.test)
    seconds = time.perf_counter() - started
    log.info("frames: %d images decoded once at %dx%d in %.1f s (%.0f img/s, %d processes)", count, shape[1],
             shape[0], seconds, count / max(seconds, 1e-9), workers)
    return {"height": int(shape[0]), "width": int(shape[1]), "size": size, "train": len(images.train),
            "test": len(images.test)}


def resolve_workers(setting: int | str) -> int:
    """``auto``: this stage's share of the cores (all of them when it runs alone)."""
    return share() if setting == "auto" else int(setting)


@stage_command
def main() -> None:
    params = load_params()
    spec = competition_of(params)
    target = frames_dir(spec.slug)
    with atomic_dir(target) as out:
        write_meta(out, decode_frames(RunImages.load(spec.slug), spec, params.frames.size,
                                      resolve_workers(params.frames.workers), out, target))
    log.info("wrote %s", target)


if __name__ == "__main__":
    main()

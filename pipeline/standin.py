"""Generate the synthetic stand-in for State Farm, offline and deterministically from ``standin.seed``.

Writes exactly what Kaggle serves (``imgs.zip`` with ``train/c0..c9/img_<n>.jpg``
and ``test/img_<n>.jpg``, ``driver_imgs_list.csv``, ``sample_submission.csv``)
plus ``solution.csv``, the hidden test labels with a Public/Private split that
only the local scorer reads. Test drivers never appear in train. Every frame
is seeded by (seed, driver, class, frame), so the output is byte-identical for
the same params whatever the number of worker processes.
"""
from __future__ import annotations

import io
import multiprocessing
import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.competitions import CompetitionSpec
from pipeline.config import StandinParams
from pipeline.images import ZIP_DATE
from pipeline.standin_scene import frame_pose, draw_frame, random_look


def _render(task: tuple) -> bytes:
    seed, driver_index, class_index, frame, classname, width, height, quality = task
    look = random_look(np.random.default_rng([seed, driver_index]))
    rng = np.random.default_rng([seed, driver_index, class_index, frame])
    image = draw_frame(look, frame_pose(classname, look, rng), width, height, rng)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def plan_images(spec: CompetitionSpec, params: StandinParams) -> pd.DataFrame:
    """One row per image: img, classname, subject, split, plus what the renderer needs."""
    rng = np.random.default_rng(params.seed)
    n_drivers = params.train_drivers + params.test_drivers
    numbers = rng.choice(np.arange(2, 1000), size=n_drivers, replace=False)
    subjects = [f"p{n:03d}" for n in numbers]
    rows = []
    for driver_index, subject in enumerate(subjects):
        split = "train" if driver_index < params.train_drivers else "test"
        for class_index, classname in enumerate(spec.classes):
            for frame in range(params.frames_per_class):
                rows.append((subject, classname, split, driver_index, class_index, frame))
    table = pd.DataFrame(rows, columns=["subject", "classname", "split", "driver_index", "class_index", "frame"])
    # Kaggle's image numbers say nothing about driver, class or split.
    image_numbers = rng.choice(np.arange(1, 4 * len(table) + 10), size=len(table), replace=False)
    table.insert(0, "img", [f"img_{n}.jpg" for n in image_numbers])
    return table


def _member(spec: CompetitionSpec, row) -> str:
    if row.split == "train":
        return f"{spec.train_prefix}{row.classname}/{row.img}"
    return f"{spec.test_prefix}{row.img}"


def write_standin(out_dir: Path, spec: CompetitionSpec, params: StandinParams, workers: int | None = None) -> None:
    """Render every image and write the competition's files into ``out_dir``."""
    table = plan_images(spec, params)
    table["member"] = [_member(spec, row) for row in table.itertuples()]
    table = table.sort_values("member", ignore_index=True)
    tasks = [(params.seed, r.driver_index, r.class_index, r.frame, r.classname, params.width, params.height,
              params.jpeg_quality) for r in table.itertuples()]
    workers = workers or min(len(os.sched_getaffinity(0)), 8)
    with zipfile.ZipFile(out_dir / spec.image_archive, "w", zipfile.ZIP_STORED) as archive:
        # JPEGs do not deflate; storing them keeps member reads a plain seek.
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for member, jpeg in zip(table["member"], pool.imap(_render, tasks, chunksize=16)):
                archive.writestr(zipfile.ZipInfo(member, date_time=ZIP_DATE), jpeg)

    train = table[table["split"] == "train"].sort_values(["subject", "classname", "img"])
    train[list(spec.labels_columns)].to_csv(out_dir / spec.labels_csv, index=False)

    test = table[table["split"] == "test"].sort_values("img", ignore_index=True)
    sample = pd.DataFrame({spec.id_column: test["img"]})
    for classname in spec.classes:
        sample[classname] = 1.0 / len(spec.classes)
    sample.to_csv(out_dir / spec.sample_submission, index=False)

    usage_rng = np.random.default_rng([params.seed, 1])
    public = usage_rng.random(len(test)) < params.public_fraction
    solution = test[["img", "classname", "subject"]].assign(Usage=np.where(public, "Public", "Private"))
    solution.to_csv(out_dir / spec.solution_csv, index=False)

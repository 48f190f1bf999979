"""Generate a synthetic stand-in for a competition, offline and deterministically from ``standin.seed``.

Every stand-in has exactly the files and layout its competition has:

- State Farm: ``imgs.zip`` (``train/c0..c9/img_<n>.jpg``, ``test/img_<n>.jpg``),
  ``driver_imgs_list.csv``, ``sample_submission.csv``;
- Dogs vs. Cats Redux: ``train.zip`` (``train/cat.<n>.jpg``, ``train/dog.<n>.jpg``),
  ``test.zip`` (``test/<id>.jpg``), ``sample_submission.csv`` (``id,label``),
  images of varying size;
- own data: a folder per class, a groups CSV and a test folder, ingested the
  way a user's own folders are (pipeline/data/own_data.py).

Each adds ``solution.csv``, the hidden test labels with a Public/Private split
that only the local scorer reads. The pictures are pose scenes from
pipeline/data/standin_scene.py: each class is a pose, each "subject" (driver, pet,
person) a fixed look; test subjects never appear in train. Every image is
seeded by (seed, subject, class, frame), so the output is byte-identical for
the same params whatever the number of worker processes.
"""
from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from pipeline.config import OwnDataParams, StandinParams
from pipeline.data.competitions import DESCRIPTIONS, OWN_DATA, CompetitionSpec, load_spec
from pipeline.data.images import ZipWriter
from pipeline.data.own_data import ingest_own_data
from pipeline.data.raw_data import copy_groups
from pipeline.data.solution import solution_table
from pipeline.data.standin_scene import TRANSITIONS, draw_frame, frame_pose, random_look, random_take
from pipeline.errors import PipelineError
from pipeline.progress import progress

@dataclass(frozen=True)
class Style:
    """How a competition's stand-in differs from State Farm's: its description's ``standin`` section."""

    poses: dict[str, str]  # class -> the scene pose that draws it (State Farm's c0..c9 are the poses themselves)
    varying_size: bool = False  # Kaggle's Dogs vs. Cats photos come in every size
    # A driver is filmed in every class; a pet is a cat or a dog: each take is then a subject of its own.
    subject_per_take: bool = False
    transitions: float = TRANSITIONS  # frames caught between poses; a photo of a dog never looks like a cat
    extension: str = ".jpg"  # the image files' format where the ids do not say it (.jpg, .png, .tif)
    # Past the scene's ten poses, classes 10-19 are pose 0-9 in a car of a second colour, and so on.
    shades: dict[str, int] = field(default_factory=dict)


POSES = tuple(f"c{i}" for i in range(10))
# Twelve car colours: 120 classes at most (Dog Breed Identification's breeds).
SHADES = ((0, 0, 0), (150, 40, 40), (40, 130, 60), (40, 60, 150), (150, 130, 30), (120, 40, 130),
          (40, 130, 140), (200, 110, 40), (90, 90, 90), (200, 170, 150), (30, 60, 30), (100, 60, 30))
FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF"}


def style_of(spec: CompetitionSpec) -> Style:
    """The stand-in's style from the description; by default class k is pose k (mod 10)."""
    given = dict(spec.standin)
    poses = given.pop("poses", None) or {c: POSES[k % len(POSES)] for k, c in enumerate(spec.classes)}
    unknown = sorted(set(given) - {"varying_size", "subject_per_take", "transitions", "extension"})
    bad_pose = sorted(set(poses.values()) - set(POSES))
    where = f"{DESCRIPTIONS / spec.slug}.yaml: standin"
    if unknown:
        raise PipelineError(f"{where}: unknown key {unknown[0]!r}")
    if bad_pose:
        raise PipelineError(f"{where}.poses: {bad_pose[0]!r} is not one of {', '.join(POSES)}")
    if (spec.classes and set(poses) != set(spec.classes)) or len(poses) > len(POSES) * len(SHADES):
        raise PipelineError(f"{where}.poses: name each class once ({len(POSES) * len(SHADES)} classes at most)")
    shades = {c: k // len(POSES) for k, c in enumerate(poses)}
    return Style(poses, shades=shades, **given)


def _render(task: tuple) -> bytes:
    seed, driver_index, class_index, frame, frames, pose, shade, width, height, style, quality, fmt = task
    look_seed = [seed, driver_index, class_index] if style.subject_per_take else [seed, driver_index]
    look = random_look(np.random.default_rng(look_seed))
    if shade:
        look = replace(look, interior=SHADES[shade])
    take = random_take(np.random.default_rng([seed, driver_index, class_index]))
    rng = np.random.default_rng([seed, driver_index, class_index, frame])
    if style.varying_size:
        width = int(width * rng.uniform(0.5, 1.0))
        height = int(width * rng.uniform(0.6, 1.3))
    time = frame / max(1, frames - 1)  # frames of a take are consecutive moments of one video
    image = draw_frame(look, frame_pose(pose, look, take, time, rng, style.transitions), take, time, (width, height),
                       rng)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def plan_images(classes, params: StandinParams) -> pd.DataFrame:
    """One row per image: subject, classname, split, an image number and what the renderer needs."""
    rng = np.random.default_rng(params.seed)
    n_drivers = params.train_drivers + params.test_drivers
    numbers = rng.choice(np.arange(2, 1000), size=n_drivers, replace=False)
    subjects = [f"p{n:03d}" for n in numbers]
    rows = []
    for driver_index, subject in enumerate(subjects):
        split = "train" if driver_index < params.train_drivers else "test"
        for class_index, classname in enumerate(classes):
            for frame in range(params.frames_per_class):
                rows.append((subject, classname, split, driver_index, class_index, frame))
    table = pd.DataFrame(rows, columns=["subject", "classname", "split", "driver_index", "class_index", "frame"])
    # Kaggle's image numbers say nothing about subject, class or split.
    table["number"] = rng.choice(np.arange(1, 4 * len(table) + 10), size=len(table), replace=False)
    return table


def _name_images(table: pd.DataFrame, spec: CompetitionSpec, seed: int, style: Style) -> pd.DataFrame:
    """File names, test ids and archive members as the competition has them."""
    train = table.split == "train"
    if spec.labels_from == "file_name":  # Dogs vs. Cats: train/<class>.<n>.jpg; test/<id>.jpg, ids 1..N shuffled
        table["img"] = [f"{c}.{n}.jpg" for c, n in zip(table.classname, table.number)]
        table.loc[~train, "img"] = [str(i + 1) for i in np.random.default_rng([seed, 2]).permutation((~train).sum())]
    elif spec.labels_in_csv_rows:  # hashes, as Aerial Cactus and APTOS name their images; the file's type in the
        # id where the description appends no suffix (Aerial Cactus: 0004be2cfeaba1c0361d39e2b000257b.jpg)
        hashes = np.random.default_rng([seed, 3]).choice(16 ** 8, size=len(table), replace=False)
        table["img"] = [f"{h:08x}{n:05d}" for h, n in zip(hashes, table.number)]
        table.loc[train, "img"] += "" if spec.train_suffix else style.extension
        table.loc[~train, "img"] += "" if spec.test_suffix else style.extension
    else:
        table["img"] = [f"img_{n}{style.extension}" for n in table.number]
    folder = table.classname + "/" if spec.labels_from == "class_folders" else ""
    suffix = spec.train_suffix if spec.labels_in_csv_rows else ""
    table["member"] = (spec.train_prefix + folder + table.img + suffix).where(
        train, spec.test_prefix + table.img + spec.test_suffix)
    return table


def _render_all(table: pd.DataFrame, spec: CompetitionSpec, params: StandinParams, workers: int | None):
    """(member, JPEG bytes) in the table's order."""
    style = style_of(spec)
    tasks = [(params.seed, r.driver_index, r.class_index, r.frame, params.frames_per_class, style.poses[r.classname],
              style.shades[r.classname], params.width, params.height, style, params.jpeg_quality,
              FORMATS.get(PurePosixPath(r.member).suffix.lower(), "JPEG")) for r in table.itertuples()]
    workers = workers or render_workers(len(tasks), params.width * params.height, len(os.sched_getaffinity(0)))
    desc = f"drawing the {spec.slug} stand-in"
    if workers == 1:
        yield from progress(zip(table["member"], map(_render, tasks)), total=len(tasks), desc=desc)
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from progress(zip(table["member"], pool.imap(_render, tasks, chunksize=16)), total=len(tasks), desc=desc)


# A 640x480 frame takes ~26 ms of a core to draw (102k full-count frames: ~1,355 s on 2 cores, ~85 s on 16); a
# spawned worker ~2 s to start (a fresh interpreter importing numpy, pandas, PIL). Below a few seconds of drawing,
# the workers cost more than they save: a tiny stand-in (every test's) is drawn in the stage's own process.
SECONDS_PER_PIXEL = 0.026 / (640 * 480)
SERIAL_SECONDS = 4.0


def render_workers(images: int, pixels_per_image: int, cores: int) -> int:
    """Processes to draw ``images`` frames of ``pixels_per_image`` with: every core, or one where that is quicker."""
    return 1 if images * pixels_per_image * SECONDS_PER_PIXEL < SERIAL_SECONDS else max(1, cores)


def _write_sample(test: pd.DataFrame, spec: CompetitionSpec, classes, out_dir: Path) -> None:
    sample = pd.DataFrame({spec.submission_id: test["img"]})
    if spec.submission_values == "positive":
        sample[spec.submission_column] = 0.5
    elif spec.submission_values == "class":
        sample[spec.submission_column] = classes[0]
    if spec.submission_values == "probabilities":  # all columns at once: 120 breeds one by one fragment the frame
        sample = pd.concat([sample, pd.DataFrame(1.0 / len(classes), index=sample.index, columns=list(classes))],
                           axis=1)
    sample.to_csv(out_dir / spec.sample_submission, index=False)


def _write_solution(test: pd.DataFrame, spec: CompetitionSpec, params: StandinParams, out_dir: Path) -> None:
    usage_rng = np.random.default_rng([params.seed, 1])
    public = usage_rng.random(len(test)) < params.public_fraction
    solution = solution_table(test["img"], test["classname"], spec)  # Kaggle's form: the competition's own columns
    if spec.group_column:
        solution[spec.group_column] = test["subject"]
    solution.assign(Usage=np.where(public, "Public", "Private")).to_csv(out_dir / spec.solution_csv, index=False)


def write_standin(out_dir: Path, spec: CompetitionSpec, params: StandinParams, workers: int | None = None) -> None:
    """Render every image and write the competition's files into ``out_dir``."""
    style = style_of(spec)
    classes = tuple(style.poses)
    table = _name_images(plan_images(classes, params), spec, params.seed, style)
    table = table.sort_values("member", ignore_index=True)
    if spec.ingest_from == "class_folders":
        _write_own_data(out_dir, table, params, workers)
        return
    with contextlib.ExitStack() as stack:
        archives = {name: stack.enter_context(ZipWriter(out_dir / name)) for name in spec.archives}
        for member, jpeg in _render_all(table, spec, params, workers):
            archives[spec.train_archive if member.startswith(spec.train_prefix) else spec.test_archive].add(member, jpeg)
    train = table[table["split"] == "train"]
    if spec.labels_from == "one_hot":
        labels = pd.DataFrame({spec.id_column: train["img"]})
        for classname in classes:
            labels[classname] = (train["classname"] == classname).astype(int)
        labels.sort_values(spec.id_column).to_csv(out_dir / spec.labels_csv, index=False)
    elif spec.labels_in_csv_rows:
        labels = train.rename(columns={"img": spec.id_column, "classname": spec.label_column})
        labels.sort_values(spec.id_column)[list(spec.labels_columns)].to_csv(out_dir / spec.labels_csv, index=False)
    elif spec.labels_csv:
        train = train.sort_values(["subject", "classname", "img"])
        train = train.rename(columns={"img": spec.id_column, "classname": spec.label_column,
                                      "subject": spec.group_column})
        train[list(spec.labels_columns)].to_csv(out_dir / spec.labels_csv, index=False)
    test = table[table["split"] == "test"]
    test = test.iloc[np.argsort(test["img"].map(_sort_key).to_numpy(), kind="stable")]
    _write_sample(test, spec, classes, out_dir)
    _write_solution(test, spec, params, out_dir)


def _sort_key(image_id: str):
    return (0, int(image_id), "") if image_id.isdigit() else (1, 0, image_id)


def _write_own_data(out_dir: Path, table: pd.DataFrame, params: StandinParams, workers: int | None) -> None:
    """A user's folders (train/<class>/, test/, groups.csv), then the same ingest a user's data goes through."""

    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".own-data-") as folder:
        root = Path(folder)
        for member, jpeg in _render_all(table, OWN_DATA, params, workers):
            (root / member).parent.mkdir(parents=True, exist_ok=True)
            (root / member).write_bytes(jpeg)
        train = table[table.split == "train"]
        groups = pd.DataFrame({"img": train.member.str[len(OWN_DATA.train_prefix):], "person": train.subject})
        groups.sort_values("img").to_csv(root / "groups.csv", index=False)  # keyed by own data's ids: <class>/<file>
        ingest_own_data(OwnDataParams(train_dir=str(root / "train"), test_dir=str(root / "test")), out_dir, None)
        copy_groups(root / "groups.csv", "person", out_dir, load_spec(OWN_DATA.slug, out_dir))
    test = table[table["split"] == "test"].sort_values("img")
    _write_solution(test, OWN_DATA, params, out_dir)  # ingest wrote the sample submission, as for a user

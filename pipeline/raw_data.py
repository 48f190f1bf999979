"""Bring a competition's files into one canonical layout and check them before any stage trusts them.

Canonical layout of ``data/raw/<competition>/``: the image archive (``imgs.zip``,
members ``train/<class>/<img>`` and ``test/<img>``), the labels CSV and the
sample submission. ``ingest`` accepts what users actually have: Kaggle's
bundle zip, the same files unzipped into a folder, or the image folders
loose (those are packed into ``imgs.zip`` so DVC tracks one file, not 100k).
"""
from __future__ import annotations

import io
import shutil
import zipfile
from pathlib import Path, PurePosixPath

import pandas as pd

from pipeline.competitions import CompetitionSpec
from pipeline.errors import PipelineError
from pipeline.images import ZIP_DATE, ImageArchive


def _read_csv(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise PipelineError(f"{path}: not a readable CSV ({error})") from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise PipelineError(f"{path}: missing column(s) {missing}; expected columns {list(columns)}")
    return table


def load_labels(raw: Path, spec: CompetitionSpec) -> pd.DataFrame:
    """The training table (State Farm: subject, classname, img), checked for duplicates and unknown classes."""
    path = raw / spec.labels_csv
    table = _read_csv(path, spec.labels_columns)
    duplicated = table[spec.id_column][table[spec.id_column].duplicated()]
    if len(duplicated):
        raise PipelineError(f"{path}: image {duplicated.iloc[0]!r} is listed more than once")
    unknown = sorted(set(table[spec.label_column]) - set(spec.classes))
    if unknown:
        raise PipelineError(f"{path}: unknown class {unknown[0]!r}; expected one of {list(spec.classes)}")
    return table


def load_test_ids(raw: Path, spec: CompetitionSpec) -> list[str]:
    """Test image ids in the sample submission's order, the order every test table keeps."""
    return list(_read_csv(raw / spec.sample_submission, spec.submission_columns)[spec.id_column])


def check_competition_files(raw: Path, spec: CompetitionSpec, max_unpacked_bytes: int,
                            official_counts: bool) -> dict[str, int]:
    """Check that the archive and both CSVs agree image for image; return the train and test counts."""
    for name in spec.required_files:
        if not (raw / name).is_file():
            raise PipelineError(f"{raw}: missing {name}")
    labels = load_labels(raw, spec)
    sample = _read_csv(raw / spec.sample_submission, spec.submission_columns)
    archive = ImageArchive(raw / spec.image_archive, max_unpacked_bytes)

    train_members: dict[str, str] = {}
    for member in archive.names(spec.train_prefix):
        parts = PurePosixPath(member[len(spec.train_prefix):]).parts
        if len(parts) != 2 or parts[0] not in spec.classes:
            raise PipelineError(f"{archive.path}: unexpected member {member!r}; expected "
                                f"{spec.train_prefix}<{'|'.join(spec.classes)}>/<image>.jpg")
        if parts[1] in train_members:
            raise PipelineError(f"{archive.path}: image {parts[1]!r} appears in two class folders")
        train_members[parts[1]] = parts[0]
    listed = dict(zip(labels[spec.id_column], labels[spec.label_column]))
    _same_images(train_members, listed, f"{archive.path}:{spec.train_prefix}", raw / spec.labels_csv)
    for image, classname in listed.items():
        if train_members[image] != classname:
            raise PipelineError(f"{raw / spec.labels_csv}: {image} is labelled {classname} "
                                f"but lies in {spec.train_prefix}{train_members[image]}/")

    test_members = [m[len(spec.test_prefix):] for m in archive.names(spec.test_prefix)]
    nested = [m for m in test_members if "/" in m]
    if nested:
        raise PipelineError(f"{archive.path}: unexpected member {spec.test_prefix + nested[0]!r}")
    ids = sample[spec.id_column]
    if ids.duplicated().any():
        raise PipelineError(f"{raw / spec.sample_submission}: image {ids[ids.duplicated()].iloc[0]!r} listed twice")
    _same_images(set(test_members), set(ids), f"{archive.path}:{spec.test_prefix}", raw / spec.sample_submission)

    counts = {"train": len(train_members), "test": len(test_members)}
    if official_counts and counts != spec.official_counts:
        raise PipelineError(f"{raw}: found {counts['train']} train and {counts['test']} test images; "
                            f"{spec.slug} has {spec.official_counts['train']} and {spec.official_counts['test']}")
    if counts["train"] == 0 or counts["test"] == 0:
        raise PipelineError(f"{archive.path}: no {'train' if counts['train'] == 0 else 'test'} images")
    return counts


def _same_images(in_archive, in_csv, archive_label: str, csv_path: Path) -> None:
    only_archive = sorted(set(in_archive) - set(in_csv))
    if only_archive:
        raise PipelineError(f"{csv_path}: does not list {only_archive[0]} (found in {archive_label}); "
                            f"{len(only_archive)} image(s) missing from the CSV")
    only_csv = sorted(set(in_csv) - set(in_archive))
    if only_csv:
        raise PipelineError(f"{csv_path}: lists {only_csv[0]} but {archive_label} has no such image; "
                            f"{len(only_csv)} listed image(s) missing from the archive")


def _find_root(source: ImageArchive, spec: CompetitionSpec) -> str:
    """The folder inside the source that holds the labels CSV: '' or one level down."""
    for name in source.names():
        path = PurePosixPath(name)
        if path.name in (spec.labels_csv, spec.labels_csv + ".zip") and len(path.parts) <= 2:
            return "" if len(path.parts) == 1 else path.parts[0] + "/"
    raise PipelineError(f"{source.path}: no {spec.labels_csv} found; is this the {spec.slug} data?")


def _copy_member(source: ImageArchive, name: str, target: Path) -> None:
    with source.open(name) as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, length=1 << 20)


def _copy_csv(source: ImageArchive, root: str, name: str, target: Path) -> None:
    if root + name in source.names(root + name):
        _copy_member(source, root + name, target)
        return
    zipped = root + name + ".zip"  # older Kaggle downloads ship each CSV zipped
    if zipped not in source.names(zipped):
        raise PipelineError(f"{source.path}: missing {root + name}")
    with zipfile.ZipFile(io.BytesIO(source.read_bytes(zipped))) as inner:
        names = [n for n in inner.namelist() if not n.endswith("/")]
        if names != [name]:
            raise PipelineError(f"{source.path}:{zipped}: expected the single member {name!r}, found {names[:3]}")
        target.write_bytes(inner.read(name))


def ingest(source_path: Path, out_dir: Path, spec: CompetitionSpec, max_unpacked_bytes: int) -> None:
    """Copy a competition from a Kaggle bundle zip or a folder into the canonical layout in ``out_dir``."""
    source = ImageArchive(source_path, max_unpacked_bytes)
    root = _find_root(source, spec)
    for name in (spec.labels_csv, spec.sample_submission):
        _copy_csv(source, root, name, out_dir / name)
    if source.names(root + spec.image_archive) == [root + spec.image_archive]:
        _copy_member(source, root + spec.image_archive, out_dir / spec.image_archive)
        return
    image_root = root + "imgs/" if source.names(root + "imgs/" + spec.train_prefix) else root
    members = source.names(image_root + spec.train_prefix) + source.names(image_root + spec.test_prefix)
    if not members:
        raise PipelineError(f"{source.path}: no {spec.image_archive} and no {spec.train_prefix} images found")
    with zipfile.ZipFile(out_dir / spec.image_archive, "w", zipfile.ZIP_STORED) as archive:
        for member in members:
            info = zipfile.ZipInfo(member[len(image_root):], date_time=ZIP_DATE)
            with source.open(member) as src, archive.open(info, "w", force_zip64=True) as dst:
                shutil.copyfileobj(src, dst, length=1 << 20)

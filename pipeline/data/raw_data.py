"""Bring a competition's files into one canonical layout, check them, and read them as tables.

Canonical layout of ``data/raw/<competition>/``: the files as Kaggle serves
them. State Farm: ``imgs.zip`` (``train/<class>/<img>``, ``test/<img>``),
``driver_imgs_list.csv``, ``sample_submission.csv``; Dogs vs. Cats: ``train.zip``
(``train/<class>.<n>.jpg``), ``test.zip`` (``test/<id>.jpg``),
``sample_submission.csv``. ``ingest`` accepts what users actually have: Kaggle's
bundle zip, the same files unzipped into a folder, or the image folders loose
(those are packed into the zip so DVC tracks one file, not 100k). Stages read
the training images as one table (``train_table``: img, label, group, member)
and the test ids in sample-submission order (``load_test_ids``).
"""
from __future__ import annotations

import contextlib
import io
import shutil
import zipfile
from pathlib import Path, PurePosixPath
from typing import Iterator

import numpy as np
import pandas as pd

from pipeline.data.competitions import CompetitionSpec
from pipeline.data.images import ImageArchive, ZipWriter
from pipeline.data.solution import read_solution
from pipeline.data.tables import RunImages
from pipeline.errors import PipelineError
from pipeline.progress import progress

TRAIN_COLUMNS = ["img", "label", "group", "member"]
# The user's groups (data.groups_csv) for a competition without groups of its own, copied by the download stage.
GROUPS_CSV = "groups.csv"


def _read_csv(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise PipelineError(f"{path}: not a readable CSV ({error})") from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise PipelineError(f"{path}: missing column(s) {missing}; expected columns {list(columns)}")
    return table


def train_table(raw: Path, spec: CompetitionSpec, max_unpacked_bytes: int | None = None) -> pd.DataFrame:
    """One row per training image, sorted by id: img, label, group ("" when the competition has none), member.

    The archive and the labels (CSV or file names) are checked against each other image for image.
    """
    archive = ImageArchive(raw / spec.train_archive, max_unpacked_bytes)
    if spec.labels_in_csv_rows:
        return _with_user_groups(_listed_images(raw, spec, archive), raw, spec)
    found: dict[str, tuple[str, str]] = {}  # image id -> (class, member)
    expected = (f"{spec.train_prefix}<{'|'.join(spec.classes)}>/<image>" if spec.labels_from == "class_folders"
                else f"{spec.train_prefix}<{'|'.join(spec.classes)}>.<n>.jpg")
    for member in archive.names(spec.train_prefix):
        parts = PurePosixPath(member[len(spec.train_prefix):]).parts
        if spec.labels_from == "class_folders":
            image, label = ("/".join(parts) if spec.train_ids == "path" else parts[-1]), parts[0]
            ok = len(parts) == 2 and label in spec.classes
        else:
            image, label = parts[-1], parts[-1].split(".")[0]
            ok = len(parts) == 1 and label in spec.classes
        if not ok:
            raise PipelineError(f"{archive.path}: unexpected member {member!r}; expected {expected}")
        if image in found:
            raise PipelineError(f"{archive.path}: image {image!r} appears in two class folders")
        found[image] = (label, member)
    if spec.labels_from == "file_name" or not spec.labels_csv:  # the file names or the folders alone label them
        rows = [(image, label, "", member) for image, (label, member) in found.items()]
        table = pd.DataFrame(rows, columns=TRAIN_COLUMNS).sort_values("img", ignore_index=True)
        return _with_user_groups(table, raw, spec)

    path = raw / spec.labels_csv
    labels = _read_csv(path, spec.labels_columns)
    ids = labels[spec.id_column]
    if ids.duplicated().any():
        raise PipelineError(f"{path}: row {_row(ids.duplicated())}: image {ids[ids.duplicated()].iloc[0]!r} is "
                            f"listed more than once")
    unknown = ~labels[spec.label_column].isin(spec.classes)
    if unknown.any():
        raise PipelineError(f"{path}: row {_row(unknown)}: unknown class {labels[spec.label_column][unknown].iloc[0]!r}; "
                            f"expected one of {list(spec.classes)}")
    _same_images(found, set(ids), f"{archive.path}:{spec.train_prefix}", path)
    table = pd.DataFrame({"img": ids, "label": labels[spec.label_column],
                          "group": labels[spec.group_column] if spec.group_column else ""})
    for image, label in zip(table.img, table.label):
        if found[image][0] != label:
            raise PipelineError(f"{path}: {image} is labelled {label} but lies in "
                                f"{spec.train_prefix}{found[image][0]}/")
    _check_groups(table, path, spec)
    table["member"] = [found[image][1] for image in table.img]
    return _with_user_groups(table.sort_values("img", ignore_index=True), raw, spec)


def _row(mask: pd.Series) -> int:
    """The CSV line of the first row where ``mask`` holds (line 1 is the header)."""
    return int(np.argmax(mask.to_numpy())) + 2


def _check_groups(table: pd.DataFrame, path: Path, spec: CompetitionSpec) -> None:
    blank = table.group == ""
    if blank.any() and not blank.all():
        raise PipelineError(f"{path}: row {_row(blank)}: {table.img[blank].iloc[0]} has no {spec.group_column}; "
                            f"give every image one, or none")


def _listed_images(raw: Path, spec: CompetitionSpec, archive: ImageArchive) -> pd.DataFrame:
    """The labels CSV's rows (id_column: id and class; one_hot: id and a 0/1 column per class), each naming an
    image ``<train folder><id><suffix>`` of the archive. The folder may hold images the CSV does not list (Plant
    Pathology keeps its test images beside the train images); every image listed must be there."""
    path = raw / spec.labels_csv
    labels = _read_csv(path, spec.labels_columns)
    ids = labels[spec.id_column]
    if (ids == "").any():
        raise PipelineError(f"{path}: row {_row(ids == '')}: empty {spec.id_column}")
    if ids.duplicated().any():
        raise PipelineError(f"{path}: row {_row(ids.duplicated())}: {spec.id_column} {ids[ids.duplicated()].iloc[0]!r} "
                            f"is listed more than once")
    if spec.labels_from == "one_hot":
        marks = labels[list(spec.classes)]
        not_binary = ~marks.isin(["0", "1", "0.0", "1.0"]).all(axis=1)
        if not_binary.any():
            raise PipelineError(f"{path}: row {_row(not_binary)}: the class columns {list(spec.classes)} hold "
                                f"{marks[not_binary].iloc[0].tolist()}; expected 0 or 1 in each")
        ones = marks.isin(["1", "1.0"])
        not_one = ones.sum(axis=1) != 1
        if not_one.any():
            raise PipelineError(f"{path}: row {_row(not_one)}: {ids[not_one].iloc[0]} has "
                                f"{int(ones[not_one].iloc[0].sum())} classes marked 1; expected exactly one "
                                f"(one label per image)")
        label = ones.to_numpy().argmax(1)
        classes = pd.Series(np.array(spec.classes)[label], index=labels.index)
    else:
        classes = labels[spec.label_column]
        unknown = ~classes.isin(spec.classes)
        if unknown.any():
            raise PipelineError(f"{path}: row {_row(unknown)}: unknown class {classes[unknown].iloc[0]!r} in "
                                f"{spec.label_column}; expected one of {list(spec.classes)}")
    members = ids.map(spec.train_member)
    present = set(archive.names(spec.train_prefix))
    missing = ~members.isin(present)
    if missing.any():
        raise PipelineError(f"{path}: row {_row(missing)}: {spec.id_column} {ids[missing].iloc[0]!r} has no image "
                            f"{members[missing].iloc[0]} in {archive.path}; {int(missing.sum())} listed image(s) "
                            f"missing")
    table = pd.DataFrame({"img": ids, "label": classes,
                          "group": labels[spec.group_column] if spec.group_column else "", "member": members})
    _check_groups(table, path, spec)
    return table.sort_values("img", ignore_index=True)


def _with_user_groups(table: pd.DataFrame, raw: Path, spec: CompetitionSpec) -> pd.DataFrame:
    """Fill ``group`` from ``groups.csv`` where the user gave groups (copy_groups checked it covers every image)."""
    path = raw / GROUPS_CSV
    if spec.group_column or not path.is_file():
        return table
    group_of = _read_csv(path, ("img", "group")).set_index("img").group
    missing = sorted(set(table.img) - set(group_of.index))
    if missing:
        raise PipelineError(f"{path}: does not list {missing[0]}; run the download stage again")
    return table.assign(group=table.img.map(group_of))


def every_image(raw: Path, spec: CompetitionSpec) -> RunImages:
    """Every image of a competition folder as a run's tables (train: img, label, group, member; test: img, member
    in sample-submission order): what the sample stage chooses from, and all that ``data.sample: 1`` keeps."""
    test_ids = load_test_ids(raw, spec)
    test = pd.DataFrame({"img": test_ids, "member": [spec.test_member(i) for i in test_ids]})
    return RunImages(raw, train_table(raw, spec), test)


def copy_groups(source: Path, group_column: str, raw: Path, spec: CompetitionSpec) -> None:
    """Write the user's groups (``data.groups_csv``) into ``raw`` as groups.csv (img, group), one per training
    image: images of a group (a pet, a patient, a camera) then never land in two folds."""
    if not source.is_file():
        raise PipelineError(f"params.yaml: data.groups_csv: {source} is not a file")
    groups = _read_csv(source, ("img", group_column)).drop_duplicates(["img", group_column])
    twice = groups.img[groups.img.duplicated()]
    if len(twice):  # keeping either would let the other group's images share a fold with it
        raise PipelineError(f"{source}: image {twice.iloc[0]} is given two groups "
                            f"({', '.join(groups[group_column][groups.img == twice.iloc[0]])}); give it one")
    images = train_table(raw, spec).img
    group_of = groups.set_index("img")[group_column]
    unlisted = sorted(set(images) - set(group_of.index))
    if unlisted:
        ids = " (own data's ids are paths under own_data.train_dir: <class>/<file>)" if spec.train_ids == "path" else ""
        raise PipelineError(f"{source}: does not list {unlisted[0]}{ids}; {len(unlisted)} training image(s) without "
                            f"a group")
    table = pd.DataFrame({"img": images, "group": images.map(group_of)})
    if (table.group == "").any():
        raise PipelineError(f"{source}: {table.img[table.group == ''].iloc[0]} has an empty {group_column}")
    table.to_csv(raw / GROUPS_CSV, index=False)


def load_test_ids(raw: Path, spec: CompetitionSpec) -> list[str]:
    """Test image ids in the sample submission's order, the order every test table keeps."""
    path = raw / spec.sample_submission
    ids = _read_csv(path, spec.submission_columns)[spec.submission_id]
    if ids.duplicated().any():
        raise PipelineError(f"{path}: image {ids[ids.duplicated()].iloc[0]!r} listed twice")
    return list(ids)


def check_competition_files(raw: Path, spec: CompetitionSpec, max_unpacked_bytes: int) -> dict[str, int]:
    """Check that the archives, the labels, the sample submission and (when there is one) the hidden labels
    agree image for image; return the counts (what they should be is the caller's business)."""
    for name in spec.required_files:
        if not (raw / name).is_file():
            raise PipelineError(f"{raw}: missing {name}")
    train = train_table(raw, spec, max_unpacked_bytes)
    test_ids = load_test_ids(raw, spec)
    archive = ImageArchive(raw / spec.test_archive, max_unpacked_bytes)
    test_files = [m[len(spec.test_prefix):] for m in archive.names(spec.test_prefix)]
    nested = [m for m in test_files if "/" in m]
    if nested:
        raise PipelineError(f"{archive.path}: unexpected member {spec.test_prefix + nested[0]!r}")
    expected = {i + spec.test_suffix for i in test_ids}
    if (spec.train_archive, spec.train_prefix) == (spec.test_archive, spec.test_prefix):
        # one folder for both (Plant Pathology): every test id's image is there; the rest are the train images
        test_files = sorted(expected & set(test_files))
    _same_images(set(test_files), expected, f"{archive.path}:{spec.test_prefix}", raw / spec.sample_submission)
    if (raw / spec.solution_csv).is_file():
        check_solution(raw / spec.solution_csv, spec, test_ids)
    if len(train) == 0:
        raise PipelineError(f"{raw / spec.train_archive}: no train images")
    return {"train": len(train), "test": len(test_ids)}


def check_solution(path: Path, spec: CompetitionSpec, test_ids: list[str]) -> None:
    """Hidden test labels (the stand-ins', or a competitor's own held-out images) in the competition's own columns
    (pipeline/data/solution.py): exactly the test images, each once, with known classes, and optionally Kaggle's
    ``Usage`` (Public/Private; without it the labels are scored as one set)."""
    table = read_solution(path, spec)
    ids = table[spec.submission_id]
    if ids.duplicated().any():
        raise PipelineError(f"{path}: image {ids[ids.duplicated()].iloc[0]!r} listed twice")
    _same_images(set(ids), set(test_ids), "the sample submission", path)
    if "Usage" in table.columns:
        other = ~table.Usage.isin(["Public", "Private"])
        if other.any():
            raise PipelineError(f"{path}: row {_row(other)}: Usage {table.Usage[other].iloc[0]!r}; expected Public or "
                                f"Private (or no Usage column: the labels are then scored as one set)")


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
    """The folder inside the source that holds the sample submission: '' or one level down."""
    for name in source.names():
        path = PurePosixPath(name)
        if path.name in (spec.sample_submission, spec.sample_submission + ".zip") and len(path.parts) <= 2:
            return "" if len(path.parts) == 1 else path.parts[0] + "/"
    raise PipelineError(f"{source.path}: no {spec.sample_submission} found; is this the {spec.slug} data?")


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


def pack_members(source: ImageArchive, members: list[str], strip: str, target: Path) -> None:
    """Store ``members`` of ``source`` in a new zip at ``target``, minus the leading ``strip``: sorted, stored, with
    fixed timestamps (ZipWriter), so that the same images make the same bytes however they arrived."""
    with ZipWriter(target) as archive:
        for member in progress(sorted(members), desc=f"packing {target.name}"):
            with source.open(member) as stream:
                archive.add(member[len(strip):], stream)


def ingest(source_path: Path, out_dir: Path, spec: CompetitionSpec, max_unpacked_bytes: int) -> None:
    """Copy a competition from a Kaggle bundle zip or a folder into the canonical layout in ``out_dir``.

    ``data/raw/<competition>`` is a function of the competition's files, not of how they arrived: every image
    archive is packed anew from the images under the competition's folders (ZipWriter: sorted members, stored, fixed
    timestamps), whether the source holds it as a nested zip (Kaggle's bundle: ``imgs.zip`` inside the download), as
    a zip beside the CSVs, or unzipped (a user's folder, Kaggle's mount under /kaggle/input). One md5 on every side
    is what lets a run trained on Kaggle be imported here (pipeline/kaggle/collect.py compares them)."""
    source = ImageArchive(source_path, max_unpacked_bytes)
    root = _find_root(source, spec)
    for name in (spec.labels_csv, spec.sample_submission):
        if name:
            _copy_csv(source, root, name, out_dir / name)
    if source.names(root + spec.solution_csv) == [root + spec.solution_csv]:  # a competitor's own hold-out
        _copy_member(source, root + spec.solution_csv, out_dir / spec.solution_csv)
    for archive_name in spec.archives:
        prefixes = list(dict.fromkeys(prefix for archive, prefix in ((spec.train_archive, spec.train_prefix),
                                                                     (spec.test_archive, spec.test_prefix))
                                      if archive == archive_name))
        if source.names(root + archive_name) == [root + archive_name]:
            with _nested(source, root + archive_name, out_dir, max_unpacked_bytes) as inner:
                members = [m for prefix in prefixes for m in inner.names(prefix)]
                pack_members(inner, members, "", out_dir / archive_name)
            continue
        image_root = _unzipped_root(source, root, archive_name, prefixes[0])
        members = [m for prefix in prefixes for m in source.names(image_root + prefix)]
        pack_members(source, members, image_root, out_dir / archive_name)


@contextlib.contextmanager
def _nested(source: ImageArchive, member: str, scratch: Path, max_unpacked_bytes: int) -> Iterator[ImageArchive]:
    """The zip ``member`` of ``source`` opened as an archive: in place from a folder, else copied out of the outer
    zip first (a zip inside a zip cannot be read at random) into ``scratch``, and removed after."""
    if not source.is_zip:
        yield ImageArchive(source.path / member, max_unpacked_bytes)
        return
    copied = scratch / f".{PurePosixPath(member).name}.source"
    try:
        _copy_member(source, member, copied)
        yield ImageArchive(copied, max_unpacked_bytes)
    finally:
        copied.unlink(missing_ok=True)


def _unzipped_root(source: ImageArchive, root: str, archive_name: str, prefix: str) -> str:
    """Where an archive's members lie once unzipped (by the user, or by Kaggle under /kaggle/input):
    imgs/train/... (State Farm), train/train/... or train/... (Dogs vs. Cats)."""
    unzipped = root + archive_name.removesuffix(".zip") + "/"
    image_root = unzipped if source.names(unzipped + prefix) else root
    if not source.names(image_root + prefix):
        raise PipelineError(f"{source.path}: no {archive_name} and no {image_root + prefix} images found")
    return image_root


def test_images(source_path: Path, spec: CompetitionSpec) -> ImageArchive:
    """The archive in which the competition's test images lie as ``spec.test_member(id)``, read in place from a
    folder in Kaggle's layout (the test zip, or its unzipped folder): what a notebook finds under
    /kaggle/input/<competition>. Nothing is copied."""
    source = ImageArchive(source_path)
    if source.is_zip:
        raise PipelineError(f"{source_path}: expected the competition's folder, as Kaggle mounts it")
    root = _find_root(source, spec)
    if source.names(root + spec.test_archive) == [root + spec.test_archive]:
        return ImageArchive(source.path / (root + spec.test_archive))
    image_root = _unzipped_root(source, root, spec.test_archive, spec.test_prefix)
    return ImageArchive(source.path / image_root) if image_root else source

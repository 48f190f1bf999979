"""Read competition images by member name, straight from the zip DVC tracks or from a plain folder.

Why a zip: DVC re-walks a 100k-file output directory on every ``dvc status``
(~11 s), while one zip is hashed once and opening it costs ~1 s per process.
The same class serves a user's already-unzipped folder with the same names.
Archives are untrusted: members that are links, absolute or climb out with
``..`` are refused before anything is read or written.
"""
from __future__ import annotations

import os
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from pipeline.data.decoding import decode_rgb
from pipeline.errors import PipelineError

if TYPE_CHECKING:  # only a type: images.py is imported by what competitions.py's users import
    from pipeline.data.competitions import CompetitionSpec

# Fixed member timestamps: archives we write are byte-identical for identical content, so DVC hashes stay put.
ZIP_DATE = (2016, 4, 5, 0, 0, 0)


class ZipWriter:
    """The one writer of the zips we make (stand-ins, packed folders): stored, not deflated (JPEGs do not
    deflate), members in the order added, fixed timestamps."""

    def __init__(self, target: Path):
        self._zip = zipfile.ZipFile(target, "w", zipfile.ZIP_STORED)

    def add(self, member: str, content: bytes | BinaryIO) -> None:
        """One member from bytes, or copied from an open binary stream in 1 MiB pieces."""
        info = zipfile.ZipInfo(member, date_time=ZIP_DATE)
        if isinstance(content, bytes):
            self._zip.writestr(info, content)
            return
        with self._zip.open(info, "w", force_zip64=True) as target:
            shutil.copyfileobj(content, target, length=1 << 20)

    def __enter__(self) -> "ZipWriter":
        return self

    def __exit__(self, *exc) -> None:
        self._zip.close()


def check_member_name(container: Path, name: str) -> None:
    """Refuse a member name that would land outside the folder it is extracted to."""
    path = PurePosixPath(name.replace("\\", "/"))
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in path.parts:
        raise PipelineError(f"{container}: member {name!r} would escape the target folder; refusing the archive")


def _is_link(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


class ImageArchive:
    """A zip file or a folder, addressed by posix member names such as ``train/c0/img_1.jpg``."""

    def __init__(self, path: Path, max_unpacked_bytes: int | None = None):
        self.path = Path(path)
        self._zip: zipfile.ZipFile | None = None
        self._zip_pid = os.getpid()
        if not self.path.exists():
            raise PipelineError(f"{self.path}: not found")
        if self.path.is_dir():
            self._names = self._walk_folder()
        else:
            self._names = self._check_zip(max_unpacked_bytes)

    def _walk_folder(self) -> list[str]:
        names = []
        for root, dirs, files in os.walk(self.path):
            for entry in dirs + files:
                full = Path(root, entry)
                if full.is_symlink():
                    raise PipelineError(f"{full}: is a symbolic link; copy the real file instead")
            names += [Path(root, f).relative_to(self.path).as_posix() for f in files]
        return sorted(names)

    def _check_zip(self, max_unpacked_bytes: int | None) -> list[str]:
        try:
            infos = self._open_zip().infolist()
        except (zipfile.BadZipFile, OSError) as error:
            raise PipelineError(f"{self.path}: not a readable zip archive ({error})") from None
        total = 0
        for info in infos:
            check_member_name(self.path, info.filename)
            if _is_link(info):
                raise PipelineError(f"{self.path}: member {info.filename!r} is a symbolic link; refusing the archive")
            total += info.file_size
        if max_unpacked_bytes is not None and total > max_unpacked_bytes:
            raise PipelineError(
                f"{self.path}: would unpack to {total:,} bytes, over data.max_unpacked_bytes={max_unpacked_bytes:,}"
            )
        return sorted(info.filename for info in infos if not info.is_dir())

    def _open_zip(self) -> zipfile.ZipFile:
        # Opened lazily and per process: a forked DataLoader worker inherits the parent's handle, whose
        # shared file offset would interleave reads between processes (bad CRCs); it opens its own instead.
        if self._zip is None or self._zip_pid != os.getpid():
            self._zip, self._zip_pid = zipfile.ZipFile(self.path), os.getpid()
        return self._zip

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_zip": None}

    @property
    def is_zip(self) -> bool:
        return not self.path.is_dir()

    def names(self, prefix: str = "") -> list[str]:
        """Member names (files only, sorted) under ``prefix``."""
        return [n for n in self._names if n.startswith(prefix)]

    def open(self, name: str) -> BinaryIO:
        """A binary stream of one member; the caller closes it."""
        try:
            if self.is_zip:
                return self._open_zip().open(name)
            check_member_name(self.path, name)
            return open(self.path / name, "rb")
        except (KeyError, FileNotFoundError):
            raise PipelineError(f"{self.path}: no member {name!r}") from None

    def read_bytes(self, name: str) -> bytes:
        try:
            with self.open(name) as stream:
                return stream.read()
        except (zipfile.BadZipFile, EOFError, OSError) as error:
            raise PipelineError(f"{self.path}:{name}: cannot be read ({error})") from None

    def load_rgb(self, name: str, draft_size: tuple[int, int] | None = None) -> np.ndarray:
        """Decode one image to an upright HxWx3 uint8 RGB array (pipeline/data/decoding.py); a JPEG at reduced
        size when ``draft_size`` (width, height) allows: most of the decoding cost is saved before any resize."""
        return decode_rgb(self.read_bytes(name), self.where(name), draft_size)

    def where(self, name: str) -> str:
        """How errors name a member: ``data/raw/<competition>/imgs.zip:train/c0/img_1.jpg``."""
        return f"{self.path}:{name}"


class CompetitionImages:
    """A competition's train and test images by member name (``train/...``, ``test/...``), whether they sit in
    one archive (State Farm's imgs.zip) or two (Dogs vs. Cats' train.zip and test.zip)."""

    def __init__(self, raw: Path, spec: "CompetitionSpec"):
        train = ImageArchive(raw / spec.train_archive)
        test = train if spec.test_archive == spec.train_archive else ImageArchive(raw / spec.test_archive)
        self._by_prefix = {spec.train_prefix: train, spec.test_prefix: test}

    def _archive(self, name: str) -> ImageArchive:
        return next(archive for prefix, archive in self._by_prefix.items() if name.startswith(prefix))

    def load_rgb(self, name: str, draft_size: tuple[int, int] | None = None) -> np.ndarray:
        return self._archive(name).load_rgb(name, draft_size)

    def read_bytes(self, name: str) -> bytes:
        return self._archive(name).read_bytes(name)

    def where(self, name: str) -> str:
        return self._archive(name).where(name)

"""Write outputs under a temporary name and rename at the end, so a killed stage leaves nothing half-written."""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator


def _temporary_sibling(path: Path) -> Path:
    """A fresh temporary name beside ``path``; leftovers of killed runs (SIGKILL skips cleanup) are removed first.

    Same directory, so the final rename never crosses a filesystem. DVC runs one stage per output at a
    time (it locks the repository), so a leftover is never another live run's.
    """
    for leftover in path.parent.glob(f".{path.name}.tmp-*"):
        _remove(leftover)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on failure it is deleted."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        _remove(tmp)


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield an empty temporary directory; on success it replaces ``path`` whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(path)
    tmp.mkdir()
    try:
        yield tmp
        _remove(path)
        os.replace(tmp, path)
    finally:
        _remove(tmp)

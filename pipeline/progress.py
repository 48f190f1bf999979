"""Live progress bars for every loop that can take more than a few seconds, in one style.

A bar redraws only on a terminal: when stderr is a file or a pipe (``dvc repro > log``) or under CI
(``CI`` set), tqdm stays silent and each stage's summary lines keep the log readable.
"""
from __future__ import annotations

import os
import sys
from typing import Iterable

from tqdm import tqdm


def _under_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


def bars_shown() -> bool:
    """Whether bars draw here: stderr is a terminal and this is not CI (for tools with their own bars)."""
    return not _under_ci() and sys.stderr.isatty()


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "img",
             unit_scale: bool = False) -> tqdm:
    """A tqdm bar showing ``unit``/s and the time left; off under CI, automatic (terminal only) elsewhere."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, unit_scale=unit_scale, mininterval=1,
                dynamic_ncols=True, disable=True if _under_ci() else None)

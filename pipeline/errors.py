"""One error type for everything a user can get wrong, and the CLI wrapper that prints it.

A stage that fails on bad input prints exactly one line (``error: <file>: <problem>``)
and exits with status 2; a traceback is reserved for bugs.
"""
from __future__ import annotations

import functools
import logging
import sys
import time
from pathlib import Path
from typing import Callable


class PipelineError(Exception):
    """Bad input, params or environment; the message is the whole story, on one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def cli(main: Callable[[], None] | None = None, *, start: Callable[[], None] | None = None):
    """Run a command's ``main`` with its INFO logging on, turn a PipelineError into a one-line message and exit 2,
    and end with its wall time (``features tf_efficientnet_lite0: done in 41.2 s``). ``start`` runs first, inside
    the same error handling: a stage takes its share of the cores there (pipeline/stages/__init__.py's ``stage``);
    a command that mostly waits (submit, leaderboard) takes none and does not count as a stage running."""
    if main is None:
        return functools.partial(cli, start=start)

    @functools.wraps(main)
    def run() -> None:
        # Our own progress at INFO; libraries (timm, the hub, DVC) only when they warn.
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        for ours in ("pipeline", "__main__"):  # a stage run with `python -m` logs as __main__
            logging.getLogger(ours).setLevel(logging.INFO)
        began = time.perf_counter()
        try:
            if start is not None:
                start()
            main()
        except PipelineError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        stage = " ".join([Path(sys.argv[0]).stem, *sys.argv[1:]])
        logging.getLogger("pipeline").info("%s: done in %.1f s", stage, time.perf_counter() - began)

    return run

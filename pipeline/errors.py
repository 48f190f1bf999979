"""One error type for everything a user can get wrong, and the CLI wrapper that prints it.

A stage that fails on bad input prints exactly one line (``error: <file>: <problem>``)
and exits with status 2; a traceback is reserved for bugs.
"""
from __future__ import annotations

import functools
import logging
import sys
from typing import Callable


class PipelineError(Exception):
    """Bad input, params or environment; the message is the whole story, on one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def cli(main: Callable[[], None]) -> Callable[[], None]:
    """Run a stage's ``main`` with INFO logging, and turn a PipelineError into a one-line message and exit 2."""

    @functools.wraps(main)
    def run() -> None:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        try:
            main()
        except PipelineError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)

    return run

"""Long loops show a live bar with images/s on a terminal, and nothing that redraws under CI or in a log file."""
from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import threading

import pytest

from pipeline.progress import bars_shown, progress
from tests.conftest import GIT_IDENTITY, put_competition

COMMAND = [sys.executable, "-m", "pipeline.stages.features", "tf_efficientnet_lite0"]
BAR = "tf_efficientnet_lite0 train full:"  # the bar's description; the stage's own summary line differs


def _run_on_a_terminal(repo, ci: str | None) -> str:
    """The stage's stderr as a terminal shows it (a pseudo-terminal), with CI set to ``ci`` or unset."""
    env = {key: value for key, value in os.environ.items() if key != "CI"}
    env.update(PATH=f"{os.path.dirname(sys.executable)}:{env['PATH']}", PYTHONPATH=str(repo), **GIT_IDENTITY)
    if ci is not None:
        env["CI"] = ci
    main, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a 120-column terminal
    process = subprocess.Popen(COMMAND, cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=terminal)
    os.close(terminal)
    chunks = []

    def read() -> None:
        while True:
            try:
                data = os.read(main, 4096)
            except OSError:  # the stage closed its end
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read)
    reader.start()
    assert process.wait(timeout=300) == 0
    reader.join(timeout=10)
    os.close(main)
    return b"".join(chunks).decode(errors="replace")


@pytest.fixture(scope="module")
def featured(tmp_path_factory, tiny_competition):
    from tests.conftest import make_repo

    repo = make_repo(tmp_path_factory.mktemp("progress") / "repo")
    put_competition(repo, tiny_competition)
    return repo


@pytest.mark.slow
def test_the_features_stage_draws_a_bar_with_images_per_second_on_a_terminal(featured):
    shown = _run_on_a_terminal(featured, ci=None)
    bar = [line for line in shown.replace("\r\n", "\n").replace("\r", "\n").splitlines() if BAR in line]
    assert bar and "100/100" in bar[-1] and "img/s" in bar[-1], shown


def test_no_bar_under_ci_even_on_a_terminal(monkeypatch):
    main, terminal = pty.openpty()
    with os.fdopen(terminal, "w") as tty:
        monkeypatch.setattr(sys, "stderr", tty)
        monkeypatch.delenv("CI", raising=False)
        assert bars_shown() and not progress(total=3).disable
        monkeypatch.setenv("CI", "true")
        assert not bars_shown() and progress(total=3).disable
    os.close(main)


def test_no_bar_in_a_log_file_or_a_pipe(monkeypatch, tmp_path):
    monkeypatch.delenv("CI", raising=False)
    with open(tmp_path / "stage.log", "w") as log:
        monkeypatch.setattr(sys, "stderr", log)
        bar = progress(range(3), desc="decoding")
        assert not bars_shown() and bar.disable and list(bar) == [0, 1, 2]
    assert (tmp_path / "stage.log").read_text() == ""

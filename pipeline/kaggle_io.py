"""The official ``kaggle`` client, imported lazily and wrapped so failures are one line and never show a key.

Credentials are read where the client reads them: ``KAGGLE_API_TOKEN`` or
``~/.kaggle/access_token``; ``KAGGLE_USERNAME`` + ``KAGGLE_KEY``; or
``kaggle.json`` in ``KAGGLE_CONFIG_DIR``, ``~/.kaggle`` or ``~/.config/kaggle``.
"""
from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.progress import bars_shown

PAGES, PAGE_SIZE = 50, 20  # 1,000 submissions: more than a competition allows in its lifetime
HOW_TO_AUTHENTICATE = (
    "Kaggle credentials not found: set KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN), "
    "or save kaggle.json from https://www.kaggle.com/settings to ~/.kaggle/kaggle.json with chmod 600"
)


def _config_dirs() -> list[Path]:
    home = Path.home()
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
    explicit = os.environ.get("KAGGLE_CONFIG_DIR")
    return [Path(explicit)] if explicit else [home / ".kaggle", xdg / "kaggle"]


def credentials_found() -> bool:
    if os.environ.get("KAGGLE_API_TOKEN") or (os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY")):
        return True
    names = ("kaggle.json", "access_token", "access_token.txt")
    return any((folder / name).is_file() for folder in _config_dirs() for name in names)


def authenticated_api():
    """A logged-in ``KaggleApi``, or a one-line PipelineError saying how to log in."""
    if not credentials_found():
        raise PipelineError(HOW_TO_AUTHENTICATE)
    # Importing the kaggle package authenticates at import time and prints help when that fails.
    with contextlib.redirect_stdout(io.StringIO()):
        from kaggle.api.kaggle_api_extended import KaggleApi

        api = KaggleApi()
        try:
            api.authenticate()
        except SystemExit:
            raise PipelineError(HOW_TO_AUTHENTICATE) from None
    return api


def _explain(error: Exception, competition: str, action: str = "download") -> PipelineError:
    import requests

    status = getattr(getattr(error, "response", None), "status_code", None)
    if status in (401, 403):
        return PipelineError(f"Kaggle refused access to {competition} (HTTP {status}): check your credentials "
                             f"and accept the rules at https://www.kaggle.com/competitions/{competition}/rules")
    if status == 404:
        return PipelineError(f"Kaggle has no competition named {competition!r} (HTTP 404)")
    if isinstance(error, requests.ConnectionError):
        return PipelineError(f"cannot reach Kaggle to {action} {competition}: no network connection")
    return PipelineError(f"Kaggle refused to {action} {competition}: {type(error).__name__} (HTTP {status})")


def download_competition(competition: str, target_dir: Path) -> Path:
    """Download the competition's bundle zip into ``target_dir`` and return its path."""
    import requests

    api = authenticated_api()
    try:
        # The client draws its own bar of bytes on a terminal.
        api.competition_download_files(competition, path=str(target_dir), force=True, quiet=not bars_shown())
    except requests.RequestException as error:
        raise _explain(error, competition) from None
    bundle = target_dir / f"{competition}.zip"
    if not bundle.is_file():
        raise PipelineError(f"{target_dir}: the Kaggle client wrote no {bundle.name}")
    return bundle


def submit_file(competition: str, path: Path, message: str) -> str:
    """Upload a submission CSV (start a blob upload, send the file, create the submission); Kaggle's answer."""
    import requests

    api = authenticated_api()
    try:
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            response = api.competition_submit(str(path), message, competition, quiet=True)
    except requests.RequestException as error:
        raise _explain(error, competition, "submit to") from None
    answer = getattr(response, "message", "") or ""
    if answer == api.COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE:
        detail = " ".join(printed.getvalue().split())[:200]
        raise PipelineError(f"{path}: the upload to Kaggle failed{': ' + detail if detail else ''}")
    return answer


@dataclass(frozen=True)
class Submission:
    """One submission as Kaggle lists it; scores are None until Kaggle has them (private: until the end)."""

    ref: int
    date: str
    file: str
    message: str
    status: str  # pending, complete or error
    public: float | None
    private: float | None
    error: str = ""


def _score(text) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def list_submissions(competition: str) -> list[Submission]:
    """Every submission of the competition (this account's team), newest first."""
    import requests

    api = authenticated_api()
    found = []
    try:
        for page in range(1, PAGES + 1):
            listed = api.competition_submissions(competition, page_number=page, page_size=PAGE_SIZE) or []
            for item in listed:
                found.append(Submission(
                    int(item.ref), item.date.isoformat(timespec="seconds") if item.date else "",
                    item.file_name or "", item.description or "", str(item.status.name).lower(),
                    _score(item.public_score), _score(item.private_score), item.error_description or ""))
            if len(listed) < PAGE_SIZE:
                break
    except requests.RequestException as error:
        raise _explain(error, competition, "list the submissions of") from None
    return found

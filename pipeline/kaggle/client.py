"""The official ``kaggle`` client, imported lazily and wrapped so failures are one line and never show a key.

Credentials are read where the client reads them: ``KAGGLE_API_TOKEN`` or
``~/.kaggle/access_token``; ``KAGGLE_USERNAME`` + ``KAGGLE_KEY``; or
``kaggle.json`` in ``KAGGLE_CONFIG_DIR``, ``~/.kaggle`` or ``~/.config/kaggle``.

A refusal says Kaggle's own reason (from the answer's body, with any URL or token taken out); HTTP 429 (too many
requests) is tried again after Kaggle's ``Retry-After`` or a doubling wait. Calls the client has no method for
(one submission by its reference, a competition's settings) go through its own SDK client, as its methods do.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

from pipeline.errors import PipelineError
from pipeline.progress import bars_shown

log = logging.getLogger(__name__)
PAGES, PAGE_SIZE = 50, 20  # 1,000 submissions: more than a competition allows in its lifetime
TRIES = 6  # on HTTP 429; waits of 2, 4, 8, 16, 32 s between them unless Kaggle says how long (Retry-After)
REASON_CHARS = 200
T = TypeVar("T")
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


def scrubbed(text: str) -> str:
    """``text`` on one line, at most ``REASON_CHARS``, with every URL (a signed storage URL carries its signature)
    and every token-like string taken out: safe to print."""
    text = re.sub(r"\S+://\S+", "<url>", " ".join(str(text).split()))
    for secret in filter(None, (os.environ.get("KAGGLE_KEY"), os.environ.get("KAGGLE_API_TOKEN"))):
        text = text.replace(secret, "<redacted>")
    # A key, a token, a signature: 32 or more such characters with a digit among them (a slug has none).
    return re.sub(r"[A-Za-z0-9_\-+/=]{32,}", lambda m: "<redacted>" if re.search(r"\d", m[0]) else m[0],
                  text)[:REASON_CHARS]


def kaggle_reason(response) -> str:
    """Kaggle's own words for a refusal, from the answer's body (its JSON ``message``, else the text), scrubbed."""
    if response is None:
        return ""
    try:
        body = response.json()
    except ValueError:
        body = response.text or ""
    while isinstance(body, dict):  # {"message": ...}, {"error": {"message": ...}}
        body = body.get("message") or body.get("error") or body.get("detail") or ""
    text = str(body).strip()
    return "" if text.startswith("<") else scrubbed(text)  # an HTML error page says nothing a line can hold


@dataclass(frozen=True)
class Resource:
    """What a call to Kaggle is about, so that its refusal names it: a competition, a dataset or a notebook."""

    kind: str  # "competition", "dataset" or "notebook"
    ref: str  # its slug, or owner/slug

    def __str__(self) -> str:  # a competition by its slug alone, as every line has named it
        return self.ref if self.kind == "competition" else f"the {self.kind} {self.ref}"


def _explain(error: Exception, about: Resource, action: str = "download") -> PipelineError:
    import requests

    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    reason = kaggle_reason(response)
    said = f": Kaggle says {reason!r}" if reason else ""
    if status in (401, 403) and about.kind == "competition":
        return PipelineError(f"Kaggle refused access to {about.ref} (HTTP {status}){said}: check your credentials "
                             f"and accept the rules at https://www.kaggle.com/competitions/{about.ref}/rules")
    if status in (401, 403):
        return PipelineError(f"Kaggle refused access to {about} (HTTP {status}){said}: check your credentials; a "
                             f"private {about.kind} is seen only by its owner's account")
    if status == 404:
        return PipelineError(f"Kaggle has no {about.kind} named {about.ref!r} (HTTP 404){said}")
    if status == 429:
        return PipelineError(f"Kaggle kept answering 'too many requests' (HTTP 429) to {action} {about}, "
                             f"{TRIES} tries{said}: wait a while and run it again")
    if isinstance(error, requests.ConnectionError):
        return PipelineError(f"cannot reach Kaggle to {action} {about}: no network connection")
    return PipelineError(f"Kaggle refused to {action} {about}: {type(error).__name__} (HTTP {status}){said}")


def _retry_after(response, attempt: int) -> float:
    """Seconds before the next try: Kaggle's ``Retry-After`` (in seconds) when it gives one, else 2, 4, 8, ..."""
    value = (getattr(response, "headers", None) or {}).get("Retry-After", "")
    try:
        return max(float(value), 0.0)
    except ValueError:
        return float(2 ** (attempt + 1))


def calling_kaggle(call: Callable[[], T], about: Resource | str, action: str) -> T:
    """``call()``, tried again on HTTP 429 (Kaggle's rate limit) up to ``TRIES`` times; any other failure, or the
    last 429, as one line naming what the call was ``about`` (a plain string: a competition's slug). The client's
    own refusal of a notebook (2.2.5 turns HTTP 401/403 of a notebook's status or output into a ValueError) is
    worded as Kaggle's."""
    import requests

    about = Resource("competition", about) if isinstance(about, str) else about
    tries = 0
    while True:
        try:
            return call()
        except requests.RequestException as error:
            response, tries = getattr(error, "response", None), tries + 1
            if getattr(response, "status_code", None) != 429 or tries == TRIES:
                raise _explain(error, about, action) from None
            wait = _retry_after(response, tries - 1)
            log.info("Kaggle: too many requests (HTTP 429) to %s %s; trying again in %.0f s", action, about, wait)
            time.sleep(wait)
        except ValueError as error:
            if "Permission 'kernels.get' was denied" in str(error):
                raise PipelineError(f"Kaggle refused access to {about} (HTTP 403): check your credentials; a private "
                                    f"notebook is seen only by its owner's account") from None
            raise PipelineError(f"the Kaggle client refused to {action} {about}: {scrubbed(str(error))}") from None


def download_competition(competition: str, target_dir: Path) -> Path:
    """Download the competition's bundle zip into ``target_dir`` and return its path."""
    api = authenticated_api()
    # The client draws its own bar of bytes on a terminal.
    calling_kaggle(lambda: api.competition_download_files(competition, path=str(target_dir), force=True,
                                                          quiet=not bars_shown()), competition, "download")
    bundle = target_dir / f"{competition}.zip"
    if not bundle.is_file():
        raise PipelineError(f"{target_dir}: the Kaggle client wrote no {bundle.name}")
    return bundle


@dataclass(frozen=True)
class Submitted:
    """Kaggle's answer to a new submission: its reference (what to wait on) and its message."""

    ref: int
    message: str


def submit_file(competition: str, path: Path, message: str) -> Submitted:
    """Upload a submission CSV (start a blob upload, send the file, create the submission)."""
    api = authenticated_api()

    def submit():
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            return api.competition_submit(str(path), message, competition, quiet=True), printed.getvalue()

    response, printed = calling_kaggle(submit, competition, "submit to")
    answer = getattr(response, "message", "") or ""
    if answer == api.COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE:
        detail = scrubbed(printed)
        raise PipelineError(f"{path}: the upload to Kaggle failed{': ' + detail if detail else ''}")
    return Submitted(int(getattr(response, "ref", 0) or 0), answer)


def _competition(competition: str):
    """Kaggle's record of the competition (kagglesdk's ApiCompetition): its settings and this account's entry."""
    from kagglesdk.competitions.types.competition_api_service import ApiGetCompetitionRequest

    api = authenticated_api()
    request = ApiGetCompetitionRequest()
    request.competition_name = competition
    with api.build_kaggle_client() as kaggle:
        return calling_kaggle(lambda: kaggle.competitions.competition_api_client.get_competition(request),
                              competition, "look up")


def submits_notebooks_only(competition: str) -> bool:
    """Whether the competition accepts only notebooks (a code competition): a CSV upload cannot enter it."""
    return bool(_competition(competition).is_kernels_submissions_only)


def has_entered(competition: str) -> bool:
    """Whether this account has accepted the competition's rules (a notebook sees its data only then)."""
    return bool(_competition(competition).user_has_entered)


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


def _submission(item) -> Submission:
    return Submission(int(item.ref), item.date.isoformat(timespec="seconds") if item.date else "",
                      item.file_name or "", item.description or "", str(item.status.name).lower(),
                      _score(item.public_score), _score(item.private_score), item.error_description or "")


def list_submissions(competition: str) -> list[Submission]:
    """Every submission of the competition (this account's team), newest first."""
    api = authenticated_api()
    found = []
    for page in range(1, PAGES + 1):
        listed = calling_kaggle(lambda: api.competition_submissions(competition, page_number=page,
                                                                    page_size=PAGE_SIZE),
                                competition, "list the submissions of") or []
        found.extend(_submission(item) for item in listed)
        if len(listed) < PAGE_SIZE:
            break
    return found


def get_submission(competition: str, ref: int) -> Submission:
    """One submission, by the reference its create call returned (a message can repeat; a reference cannot)."""
    from kagglesdk.competitions.types.competition_api_service import ApiGetSubmissionRequest

    api = authenticated_api()
    request = ApiGetSubmissionRequest()
    request.ref = ref
    with api.build_kaggle_client() as kaggle:
        item = calling_kaggle(lambda: kaggle.competitions.competition_api_client.get_submission(request),
                              competition, f"look up submission {ref} of")
    return _submission(item)

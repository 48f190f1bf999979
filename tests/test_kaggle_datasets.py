"""The run's dataset on Kaggle through the real kaggle client, answered locally: a new version waited for until
Kaggle has that version ready (not the one before it), a version whose processing failed ends the wait at once, and
a refusal names the dataset, not the competition."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import responses

from pipeline.errors import PipelineError
from pipeline.kaggle.client import authenticated_api
from pipeline.kaggle.kernels import upload_dataset
from tests.kaggle_http import FAKE_KEY, KAGGLE, UPLOAD

REF = "pipeline-tester/state-farm-train"


@pytest.fixture
def dataset(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KAGGLE_USERNAME", "pipeline-tester")
    monkeypatch.setenv("KAGGLE_KEY", FAKE_KEY)
    folder = tmp_path / "dataset"
    folder.mkdir()
    (folder / "train-run.json").write_text("{}\n")
    (folder / "dataset-metadata.json").write_text(json.dumps(
        {"title": "state-farm pipeline train", "id": REF, "licenses": [{"name": "CC0-1.0"}]}))
    return folder


def _existing_dataset(statuses: list[tuple[str, int]]) -> None:
    """A dataset Kaggle has at version 3; each look after the upload answers the next (status, version)."""
    looks = iter([("ready", 3), *statuses])
    current = [("ready", 3)]

    def status(request):
        current[0] = next(looks, current[0])
        return 200, {}, json.dumps({"status": current[0][0]})

    responses.add_callback(responses.POST, KAGGLE + "datasets.DatasetApiService/GetDatasetStatus", callback=status)
    responses.add_callback(responses.POST, KAGGLE + "datasets.DatasetApiService/GetDataset",
                           callback=lambda request: (200, {}, json.dumps({"currentVersionNumber": current[0][1]})))
    responses.add(responses.POST, KAGGLE + "blobs.BlobApiService/StartBlobUpload",
                  json={"token": "blob-token", "createUrl": UPLOAD})
    responses.add(responses.PUT, UPLOAD, status=200)
    responses.add(responses.POST, KAGGLE + "datasets.DatasetApiService/CreateDatasetVersion",
                  json={"ref": REF, "status": "ok"})


@responses.activate
def test_a_new_version_is_waited_for_until_that_version_is_ready(dataset):
    # still version 3 (ready: the old one), then version 4 processing, then version 4 ready
    _existing_dataset([("ready", 3), ("blobs_received", 4), ("ready", 4)])
    assert upload_dataset(authenticated_api(), dataset, "state-farm", "run r1", poll=0.01, timeout=30) == REF
    assert any(c.request.url.endswith("CreateDatasetVersion") for c in responses.calls)
    assert not any(c.request.url.endswith("/CreateDataset") for c in responses.calls)
    assert sum(c.request.url.endswith("GetDatasetStatus") for c in responses.calls) == 4


@responses.activate
def test_a_version_whose_processing_failed_ends_the_wait_at_once(dataset):
    _existing_dataset([("blobs_received", 4), ("failed", 4)])
    began = time.monotonic()
    with pytest.raises(PipelineError) as failed:
        upload_dataset(authenticated_api(), dataset, "state-farm", "run r1", poll=0.01, timeout=3600)
    assert time.monotonic() - began < 60
    assert str(failed.value) == (f"Kaggle could not process the dataset {REF} (status failed; Kaggle gives no reason: "
                                 f"see https://www.kaggle.com/datasets/{REF}); send again")


@responses.activate
def test_a_refusal_of_the_dataset_names_the_dataset(dataset):
    responses.add(responses.POST, KAGGLE + "datasets.DatasetApiService/GetDatasetStatus", status=500,
                  json={"code": 500, "message": "internal error"})
    with pytest.raises(PipelineError) as refused:
        upload_dataset(authenticated_api(), dataset, "state-farm", "run r1", poll=0.01, timeout=30)
    assert str(refused.value).startswith(f"Kaggle refused to look up the dataset {REF}: HTTPError (HTTP 500)")

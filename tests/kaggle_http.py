"""Kaggle's HTTP as the real kaggle client sees it, answered locally (``responses``): the answers a dataset upload
and a notebook push get, shared by the code competition's push and the training on Kaggle's GPUs."""
from __future__ import annotations

import json

import responses

KAGGLE = "https://api.kaggle.com/v1/"
UPLOAD = "https://www.kaggle.com/api/v1/blobs/upload/resumable?token=xyz"
FAKE_KEY = "0123456789abcdef-fake-kaggle-key"


def answer_upload_and_push(version: int) -> None:
    """A new private dataset created and ready on the third look, its files uploaded, the notebook saved as
    ``version``; the account has entered the competition."""
    statuses = iter([404, 404, 200])  # ours, the client's own look before creating, then ready
    responses.add_callback(responses.POST, KAGGLE + "datasets.DatasetApiService/GetDatasetStatus",
                           callback=lambda request: (s := next(statuses, 200), {}, json.dumps(
                               {"status": "ready"} if s == 200 else {"message": "not found"})))
    versions = [0]  # each dataset or version created is the next version

    def created(request):
        versions[0] += 1
        return 200, {}, json.dumps({"ref": "pipeline-tester/run", "status": "ok"})

    responses.add_callback(responses.POST, KAGGLE + "datasets.DatasetApiService/GetDataset",
                           callback=lambda request: (200, {}, json.dumps({"currentVersionNumber": versions[0]})))
    for call in ("CreateDataset", "CreateDatasetVersion"):
        responses.add_callback(responses.POST, KAGGLE + f"datasets.DatasetApiService/{call}", callback=created)
    responses.add(responses.POST, KAGGLE + "blobs.BlobApiService/StartBlobUpload",
                  json={"token": "blob-token", "createUrl": UPLOAD})
    responses.add(responses.PUT, UPLOAD, status=200)
    responses.add(responses.POST, KAGGLE + "kernels.KernelsApiService/SaveKernel", json={"versionNumber": version})
    responses.add(responses.POST, KAGGLE + "competitions.CompetitionApiService/GetCompetition",
                  json={"userHasEntered": True})

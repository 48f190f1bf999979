"""A trained run as a bundle of files, and its submission predicted from that bundle alone: what the notebook of a
code competition runs offline on Kaggle (pipeline/kaggle/kernels.py builds both and sends them).

The bundle is one flat folder (a Kaggle dataset keeps files, not folders): the run's ``params.yaml``, its
competition's description (``<slug>.yaml``, from competitions/), the
ensemble's ``blend.json``, the frame cache's ``frames.json``, ``run.json`` (where the run came from and the SHA-256
of its own submission), each heads fold's ``heads-<backbone>-fold<k>.pt``, each fine-tuned fold's
``finetune-<model>-fold<k>.pt`` (its ``final.pt``) and the ImageNet weights of each frozen backbone
(``backbone-<name>.pt``: a notebook has no weights package). ``predict_submission`` follows the stages' own code
step for step: the test images decoded into frames of the run's shape (pipeline/data/frames.py), each backbone's
features in the heads' views (pipeline/training/extraction.py; float16, as the feature cache keeps them), each head's
and each fine-tuned fold's probabilities (tables written and read as the stages write them), neighbours in the space
the ensemble chose (float16 embeddings, as the stages keep them), the ensemble's recipe (pipeline/ensemble/blending.py)
and the submission's columns (pipeline/ensemble/submission_format.py). On the machine that trained the run it gives the
run's own submission (tests/test_dvc_pipeline.py); elsewhere the numbers move by what another CPU or GPU computes
differently.
"""
from __future__ import annotations

import json
import logging
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.atomic import atomic_file
from pipeline.compute.cores import share
from pipeline.compute.devices import pick_device
from pipeline.config import Params, load_params
from pipeline.data.competitions import DESCRIPTIONS, CompetitionSpec, competition_of, finetune_views
from pipeline.data.frames import check_room, fit_frame, frames_bytes
from pipeline.data.images import ImageArchive
from pipeline.data.predictions import read_table, unit_length, write_table
from pipeline.data.raw_data import load_test_ids, test_images
from pipeline.data.tables import load_folds
from pipeline.ensemble.blending import BlendRecipe, test_prediction
from pipeline.ensemble.submission_format import FLOAT_FORMAT, to_submission
from pipeline.errors import PipelineError
from pipeline.paths import checkpoint_dir, ensemble_dir, fold_dir, frames_dir, metrics_dir
from pipeline.progress import progress
from pipeline.training.backbones import create_backbone, create_classifier, data_config
from pipeline.training.extraction import extract
from pipeline.training.head_model import make_head, predict
from pipeline.views.device_views import ViewRecipe, view_images
from pipeline.views.image_data import Feed

log = logging.getLogger(__name__)
MANIFEST = "run.json"
HEADS, FINE_TUNED = "heads-", ("finetune-", "pseudo-")  # a pseudo-label student predicts as any fine-tuned net


def head_file(model: str, fold: int) -> str:
    return f"{model}-fold{fold}.pt"


def backbone_file(backbone: str) -> str:
    return f"backbone-{backbone}.pt"


def backbones_needed(recipe: dict) -> list[str]:
    """The frozen backbones whose features the test prediction needs: each blended heads model's, and the
    neighbour space when it is a backbone's."""
    names = [model.removeprefix(HEADS) for model in recipe["models"] if model.startswith(HEADS)]
    space = recipe["neighbour_features"]
    if space is not None and recipe["neighbour_weight"] > 0 and not space.startswith(FINE_TUNED):
        names.append(space)
    return list(dict.fromkeys(names))


def write_bundle(params: Params, out: Path, source: dict) -> dict:
    """The workspace's trained run (its ensemble, the heads and fine-tuned folds it blends) as a bundle in ``out``
    (created; must not exist); ``source`` (commit, experiment, CV) goes into run.json. Returns run.json's content."""
    spec = competition_of(params)
    recipe = json.loads((ensemble_dir(spec.slug) / "blend.json").read_text())
    folds = sorted(int(f) for f in load_folds(spec.slug).fold.unique())
    out.mkdir(parents=True)
    shutil.copyfile("params.yaml", out / "params.yaml")
    shutil.copyfile(DESCRIPTIONS / f"{spec.slug}.yaml", out / f"{spec.slug}.yaml")  # the competition, described
    shutil.copyfile(ensemble_dir(spec.slug) / "blend.json", out / "blend.json")
    shutil.copyfile(frames_dir(spec.slug) / "frames.json", out / "frames.json")
    gpu = False
    for model in recipe["models"]:
        for fold in folds:
            if model.startswith(HEADS):
                source_file = fold_dir(spec.slug, model, fold) / "head.pt"
            else:
                source_file = checkpoint_dir(spec.slug, model, fold) / "final.pt"
                saved = torch.load(source_file, map_location="cpu", weights_only=True)
                gpu = gpu or str(saved.get("machine", {}).get("device", "cpu")).startswith("cuda")
            if not source_file.is_file():
                raise PipelineError(f"{source_file}: missing; run `dvc repro` first")
            shutil.copyfile(source_file, out / head_file(model, fold))
    for backbone in backbones_needed(recipe):
        weights = create_backbone(backbone, num_classes=0, param_key=f"features.backbones.{backbone}").state_dict()
        torch.save(weights, out / backbone_file(backbone))
    made = json.loads((metrics_dir("submission") / "metrics.json").read_text())
    manifest = {**source, "competition": spec.slug, "folds": folds, "models": recipe["models"], "gpu": gpu,
                "submission": made.get("file", ""), "submission_sha256": made.get("sha256", "")}
    # The run's name: what its submission holds and the commit that made it; the notebook finds its bundle by it.
    manifest["run"] = f"{manifest['submission_sha256'][:12]}-{manifest.get('commit', '')}"
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def decode_test_frames(archive: ImageArchive, members: list[str], meta: dict, work: Path) -> np.ndarray:
    """Every test image decoded as the frames stage decodes it (the same libjpeg reduction, the run's frame shape)
    into a uint8 array on disk in ``work``; a disk without room is refused before anything is written."""
    shape, size = (meta["height"], meta["width"]), meta["size"]
    check_room(work, frames_bytes(len(members), shape), work / "test.npy")
    frames = np.lib.format.open_memmap(work / "test.npy", mode="w+", dtype=np.uint8, shape=(len(members), *shape, 3))

    def decode(row: int) -> None:  # OpenCV decodes without the GIL: threads are enough
        frames[row] = fit_frame(archive.load_rgb(members[row], draft_size=(size, size)), shape)

    with ThreadPoolExecutor(share()) as pool, progress(total=len(members), desc="decoding test") as bar:
        for _ in pool.map(decode, range(len(members))):
            bar.update(1)
    frames.flush()
    return np.load(work / "test.npy", mmap_mode="r")


def backbone_features(bundle: Path, params: Params, backbone: str, frames: np.ndarray, device: torch.device,
                      work: Path) -> np.ndarray:
    """[views, n, dim] float16 features of every test frame in ``features.test_views``, as the features stage
    caches them."""
    settings, size = params.features, params.features.backbones[backbone].image_size
    model = create_backbone(backbone, num_classes=0, pretrained=False)
    model.load_state_dict(torch.load(bundle / backbone_file(backbone), map_location="cpu", weights_only=True))
    model = model.eval().to(device, memory_format=torch.channels_last)
    config = data_config(model)
    feed = Feed.on(device, settings.batch_size, settings.workers, config["mean"], config["std"], settings.amp)
    views = np.lib.format.open_memmap(work / f"{backbone}.npy", mode="w+", dtype=np.float16,
                                      shape=(len(settings.test_views), len(frames), model.num_features))
    rows, names = np.arange(len(frames)), [f"test image {i}" for i in range(len(frames))]
    for v, view in enumerate(settings.test_views):
        made = ViewRecipe(settings.views_on, size, config["interpolation"])
        dataset = view_images(made, view, [frames], rows, device)
        extract(model, dataset, views[v], feed, f"{backbone} test {view}", names)
    views.flush()
    return views


def heads_predictions(bundle: Path, params: Params, spec: CompetitionSpec, model: str, folds: list[int],
                      features: np.ndarray) -> list[np.ndarray]:
    """Each fold's head on the features, as the heads stage predicts test images (on the CPU)."""
    found = []
    for fold in folds:
        saved = torch.load(bundle / head_file(model, fold), map_location="cpu", weights_only=True)
        head = make_head(features.shape[2], saved["heads"]["hidden"], len(spec.classes), saved["dropout"])
        head.load_state_dict(saved["state_dict"])
        found.append(predict(head, features))
    return found


def fine_tuned_predictions(bundle: Path, params: Params, spec: CompetitionSpec, model: str, folds: list[int],
                           frames: np.ndarray, device: torch.device) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each fold's fine-tuned net on the test frames in its test-time views (``finetune_views``): (probabilities,
    embeddings) per fold,
    the views made where that net's training batches were (on a GPU only when there is one here)."""
    from pipeline.training.trainer import Trainer  # torch's distributed pieces: only where a fine-tuned net predicts

    name = model.split("-", 1)[1]
    recipe = params.finetune.recipe(name)
    probabilities, embeddings = [], []
    for fold in folds:
        saved = torch.load(bundle / head_file(model, fold), map_location="cpu", weights_only=True)
        net = create_classifier(recipe.backbone, len(recipe.regions), len(spec.classes), params.dropout,
                                pretrained=False)
        net.load_state_dict(saved["model"])
        net = net.to(device, memory_format=torch.channels_last)
        config = data_config(net)
        feed = Feed.on(device, recipe.batch_size, params.finetune.workers, config["mean"], config["std"],
                       params.finetune.amp)
        trainer = Trainer(net, recipe.model_copy(update={"ema_decay": 0.0, "ema_half_life": 0.0}), feed, 1)  # the weights are the EMA's
        trained_on = saved.get("machine", {}).get("augment_on", "cpu")
        on = trained_on if device.type == "cuda" else "cpu"
        proba, embedded = trainer.predict([frames], np.arange(len(frames)), finetune_views(params, spec),
                                          f"{model} fold {fold} test", on)
        probabilities.append(proba)
        embeddings.append(embedded)
    return probabilities, embeddings


def as_stored(proba: np.ndarray, spec: CompetitionSpec, ids: list[str], work: Path) -> np.ndarray:
    """Probabilities as a stage writes and the next one reads them (pipeline/data/predictions.py's table)."""
    path = work / "table.csv"
    write_table(path, spec.classes, ids, proba)
    return read_table(path, spec.classes).to_numpy()


def predict_submission(bundle: Path, competition: Path, out: Path, work: Path) -> pd.DataFrame:
    """The bundle's run predicted on the test images of ``competition`` (a folder in Kaggle's layout), written to
    ``out`` as the competition's submission; ``work`` (created) holds the frames and features meanwhile."""
    params = load_params(bundle / "params.yaml")
    spec = competition_of(params, bundle / "params.yaml", raw=competition)
    manifest = json.loads((bundle / MANIFEST).read_text())
    saved_recipe = json.loads((bundle / "blend.json").read_text())
    recipe = BlendRecipe.from_dict(saved_recipe)
    ids = load_test_ids(test_root(competition, spec), spec)
    archive = test_images(competition, spec)
    members = [spec.test_member(i) for i in ids]
    work.mkdir(parents=True, exist_ok=True)
    device = pick_device()
    log.info("%s: %d test images, run %s, on %s", spec.slug, len(ids), manifest["run"], device)
    frames = decode_test_frames(archive, members, json.loads((bundle / "frames.json").read_text()), work)
    features = {backbone: backbone_features(bundle, params, backbone, frames, device, work)
                for backbone in backbones_needed(saved_recipe)}
    tests, spaces = [], {name: np.asarray(views, np.float32).mean(0) for name, views in features.items()}
    for model in saved_recipe["models"]:
        if model.startswith(HEADS):
            per_fold = heads_predictions(bundle, params, spec, model, manifest["folds"],
                                         features[model.removeprefix(HEADS)])
        else:
            per_fold, embedded = fine_tuned_predictions(bundle, params, spec, model, manifest["folds"], frames,
                                                        device)
            # As the ensemble reads them: float16 on disk, each fold's scaled to unit length, then averaged.
            spaces[model] = np.mean([unit_length(e.astype(np.float16)) for e in embedded], 0)
        tests.append([as_stored(p, spec, ids, work) for p in per_fold])
    proba = as_stored(test_prediction(recipe, tests, spaces.get(recipe.neighbour_space)), spec, ids, work)
    table = to_submission(ids, proba, spec, recipe.thresholds)
    with atomic_file(out) as tmp:
        table.to_csv(tmp, index=False, float_format=FLOAT_FORMAT)
    log.info("wrote %s (%d rows); the run's own submission was %s", out, len(table), manifest["submission"])
    return table


def test_root(competition: Path, spec: CompetitionSpec) -> Path:
    """The folder holding the competition's sample submission (the folder itself, or one level down)."""
    for candidate in (competition, *sorted(p for p in competition.iterdir() if p.is_dir())):
        if (candidate / spec.sample_submission).is_file():
            return candidate
    raise PipelineError(f"{competition}: no {spec.sample_submission}; is this the {spec.slug} data?")

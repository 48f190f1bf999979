"""pseudo stage: a second round of fine-tuning on the labelled images plus pseudo-labelled ones.

For fold k of model M the student trains on the training folds other than k, with their labels, and on
the test images and fold k's images, whose targets are the probabilities of the teacher ``finetune-M``
fold k: the first-round model that was trained on the same folds and never saw fold k (its out-of-fold
predictions are fold k's targets). Teachers train a fixed schedule, so no choice of theirs (an epoch, a
checkpoint) was made on fold k's labels either. The student's out-of-fold predictions for fold k
therefore stay as honest as the teacher's: no label of fold k, and no model or choice that saw one,
reaches it. And fold k is scored in the test's own situation: images the student trained on with its
teacher's labels, of drivers it never saw labelled, so CV measures the gain the test images get (without
fold k's images among the pseudo-labels it measured a gain the test did not see; docs/stages.md,
"Pseudo-labels without a leak"). Soft targets (distillation): the teacher's probabilities, sharpened or
softened by ``pseudo.temperature``; images whose top probability is below ``pseudo.threshold`` are left
out; each pseudo-labelled image weighs ``pseudo.weight`` in the loss against a labelled image's 1. The
teacher's temperature is not fit on fold k's labels: that would leak them.

Reads what the finetune stage reads, params ``pseudo`` and the teacher's fold predictions. Writes, as
model ``pseudo-M``, what the finetune stage writes, plus ``teacher.json`` (which teacher, which images
it held out) beside the predictions.

    python -m pipeline.stages.pseudo net --fold 0
"""
from __future__ import annotations

import hashlib

import numpy as np

from pipeline.compute.cores import stage_command
from pipeline.config import Params
from pipeline.data.competitions import competition_of
from pipeline.data.predictions import read_table
from pipeline.data.tables import RunImages, load_folds
from pipeline.errors import PipelineError
from pipeline.paths import fold_dir
from pipeline.training.fold_training import PseudoLabels, fold_command, train_fold
from pipeline.training.trainer import Distributed, spread_over_devices


def soften(proba: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities ** (1 / temperature), renormalised: above 1 softer, below 1 sharper, 1 unchanged."""
    scaled = np.exp(np.log(np.clip(proba, 1e-12, 1.0)) / temperature)
    return scaled / scaled.sum(1, keepdims=True)


def teacher_labels(params: Params, model: str, fold: int) -> PseudoLabels:
    """The fold-k teacher's soft labels for the run's test images and for fold k's; refused unless the teacher held
    out exactly the student's validation fold."""
    spec, settings = competition_of(params), params.pseudo
    folds, images = load_folds(spec.slug), RunImages.load(spec.slug)
    teacher = fold_dir(spec.slug, f"finetune-{model}", fold)
    held_out = sorted(folds.img[folds.fold == fold])
    oof = read_table(teacher / "oof.csv", spec.classes)
    if sorted(oof.index) != held_out:
        raise PipelineError(f"{teacher}/oof.csv: the teacher did not hold out exactly fold {fold}; a student may only "
                            f"learn from the teacher that never saw its validation fold")
    test = read_table(teacher / "test.csv", spec.classes).loc[images.test.img]
    test_proba, held_out_proba = (soften(table.to_numpy(), settings.temperature) for table in (test, oof.loc[held_out]))
    test_keep, held_out_keep = (proba.max(1) >= settings.threshold for proba in (test_proba, held_out_proba))
    record = {"teacher": str(teacher), "teacher_held_out": len(held_out),
              "teacher_held_out_sha256": hashlib.sha256("\n".join(held_out).encode()).hexdigest(),
              "teacher_oof_sha256": hashlib.sha256((teacher / "oof.csv").read_bytes()).hexdigest(),
              "teacher_test_sha256": hashlib.sha256((teacher / "test.csv").read_bytes()).hexdigest(),
              "temperature": settings.temperature, "threshold": settings.threshold,
              "pseudo_labelled": int(test_keep.sum()), "test_images": len(test_keep),
              "pseudo_labelled_held_out": int(held_out_keep.sum())}
    return PseudoLabels(list(images.test.img.to_numpy()[test_keep]), list(np.array(held_out)[held_out_keep]),
                        np.concatenate([test_proba[test_keep], held_out_proba[held_out_keep]]).astype(np.float32),
                        settings.weight, record)


@stage_command
def main() -> None:
    params, model, fold = fold_command("Train a student on one fold with its teacher's pseudo-labels")
    if spread_over_devices(params.finetune.devices, "pipeline.stages.pseudo", [model, "--fold", str(fold)]):
        return  # its processes did the work
    pseudo = teacher_labels(params, model, fold)
    with Distributed.from_environment() as distributed:
        train_fold(params, model, fold, distributed, f"pseudo-{model}", pseudo)


if __name__ == "__main__":
    main()

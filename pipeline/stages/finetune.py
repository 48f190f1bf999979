"""finetune stage: train one model of ``finetune.models`` on one fold, with augmentation; resumable; CPU, GPU or DDP.

Reads params ``finetune`` (``defaults`` overlaid with ``models.<model>``; ``augment_on``: augmentation in the
workers or on the GPU; ``test_views``), ``augment``, ``dropout``, the folds CSV and the image zip. Trains the
recipe's fixed schedule (no epoch is chosen on the held-out fold, whose predictions become out-of-fold ones) and
writes, for fold k of model M: ``models/<competition>/finetune-M/fold<k>/`` (``last.pt`` every epoch, to resume
an interrupted run; ``final.pt``: the weights that predicted and the resolved config),
``data/predictions/<competition>/finetune-M/fold<k>/`` (``oof.csv``, ``test.csv`` as the heads write them, and
the pooled embeddings ``oof_embeddings.npy``, ``test_embeddings.npy`` for the ensemble's neighbours, and
``trained_on.csv``, the images it trained on) and in ``metrics/finetune-M-fold<k>/`` DVCLive curves,
``fold_log_loss`` and ``threads`` (torch's thread count it trained with, which CPU training's last digits follow).
The work itself: pipeline/training/fold_training.py.

    python -m pipeline.stages.finetune net --fold 0
    torchrun --nproc_per_node=2 -m pipeline.stages.finetune net --fold 0    # DDP over 2 processes; rank 0 writes
"""
from __future__ import annotations

from pipeline.compute.cores import stage_command
from pipeline.training.fold_training import fold_command, train_fold
from pipeline.training.trainer import Distributed, spread_over_devices


@stage_command
def main() -> None:
    params, model, fold = fold_command("Fine-tune one model of finetune.models on one fold")
    if spread_over_devices(params.finetune.devices, "pipeline.stages.finetune", [model, "--fold", str(fold)]):
        return  # its processes did the work
    with Distributed.from_environment() as distributed:
        train_fold(params, model, fold, distributed, f"finetune-{model}")


if __name__ == "__main__":
    main()

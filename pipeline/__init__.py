"""Reproducible Kaggle image-competition pipeline (State Farm first).

A house of wings, each a package by concern, importing only downwards:

    pipeline/stages/      the DVC stages (``python -m pipeline.stages.<stage>``), on top
    submit, kernel, leaderboard, slurm, preset, plan   the user's commands (``python -m pipeline.<command>``)
    pipeline/kaggle/      the client, submissions and scores, the notebook and its offline bundle, training there
    pipeline/ensemble/    blending, the submission format, error analysis
    pipeline/training/    backbones, heads, the fine-tuning loop, folds of a net, features and their cache, costs
    pipeline/views/       augmentation and test-time views (CPU and device), the datasets that feed them
    pipeline/compute/     devices, machine decisions, core sharing, Slurm
    pipeline/data/        competitions and metrics, raw data, stand-ins, decoding, frames, tables
    config, errors, paths, atomic, progress, offline   the shared basics every wing uses

tests/test_house.py fails on an import that runs upward. README.md has the stage list, params.yaml every setting.
"""

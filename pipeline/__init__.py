"""Reproducible Kaggle image-competition pipeline (State Farm first).

Each stage is a module run as ``python -m pipeline.<stage>`` by ``dvc repro``;
see README.md for the stage list and params.yaml for every setting.
"""

"""The modules `dvc.yaml` runs, one per stage (`python -m pipeline.stages.<stage>`); nothing imports them.

Each reads its params, calls into the wings (pipeline/data, views, training, ensemble, kaggle, compute) and writes
its outputs; its ``main`` runs as ``@stage_command`` (pipeline/compute/cores.py): the one-line errors of
``pipeline.errors.cli`` plus the stage's share of this machine's cores, taken once at its start.
"""

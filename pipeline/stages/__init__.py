"""The modules `dvc.yaml` runs, one per stage (`python -m pipeline.stages.<stage>`); nothing imports them."""

"""Nothing calls out unless the user asked for it (download, submit, kernels push, leaderboard).

albumentations asks PyPI for a newer version at every import unless ``NO_ALBUMENTATIONS_UPDATE`` is set: offline
(Kaggle's code competitions, cluster compute nodes) that is a wait and a warning on stderr of every stage and
DataLoader worker, and online an HTTP request from every process. Every module of ours that imports albumentations
imports this module first; the switch is set in the environment, so every process started from ours (DataLoader
workers, torchrun ranks, Slurm tasks, the Kaggle notebook) inherits it. DVC's own calls (analytics, update check)
are off in .dvc/config.
"""
import os

OFF_SWITCHES = {"NO_ALBUMENTATIONS_UPDATE": "1"}

os.environ.update(OFF_SWITCHES)

"""Compute: what this machine is and how a run uses it. Device queries (the only ``torch.cuda`` calls), the
decisions taken from them as pure functions (precision, workers, DDP), each stage's share of the cores, and Slurm.

Imports: the shared basics at the root of ``pipeline`` and pipeline.data (Slurm checks a run's params against its
competition before it sends a job).
"""

"""Training: backbones and heads, the fine-tuning loop (checkpoints, resume, DDP), one fold of a net, pseudo-labels,
feature extraction and its cache, seeding, schedules and the EMA's settings, and what a run's stages cost
(costs.py: per-image seconds measured here, a card's from bench/gpu_costs.csv).

Imports: the shared basics, pipeline.data, pipeline.compute and pipeline.views.
"""

"""Training: backbones and heads, the fine-tuning loop (checkpoints, resume, DDP), one fold of a net, pseudo-labels,
feature extraction and its cache, seeding, schedules and the EMA's settings.

Imports: the shared basics, pipeline.data, pipeline.compute and pipeline.views.
"""

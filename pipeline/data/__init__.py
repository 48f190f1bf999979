"""Data: the competitions and their images. Descriptions (competitions/<slug>.yaml) and their metrics, the raw
archives and the user's own folders, the synthetic stand-ins, decoding, the frame cache, near-duplicate groups,
and the run's tables (images, folds, predictions).

Imports: the shared basics at the root of ``pipeline`` only.
"""

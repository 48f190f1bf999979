"""Data: the competitions and their images. Descriptions (competitions/<slug>.yaml) and their metrics, the raw
archives and the user's own folders, the synthetic stand-ins, decoding, the frame cache, near-duplicate groups,
each image's nearest neighbours, the run's tables (images, folds, predictions), and held-out labels read in each
competition's own columns.

Imports: the shared basics at the root of ``pipeline`` only.
"""

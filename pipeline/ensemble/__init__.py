"""Ensemble: blending the nets' out-of-fold predictions (weights, calibration, test neighbours, clipping) under the
competition's metric, the submission's format, and the analysis of what the ensemble gets wrong.

Imports: the shared basics, pipeline.data and pipeline.compute.
"""

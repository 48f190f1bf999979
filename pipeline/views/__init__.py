"""Views: what a network sees of an image. Training augmentation and test-time views, on the CPU (albumentations)
and on the device (kornia, batched), multi-region crops, and the datasets and loaders that feed them.

Imports: the shared basics, pipeline.data and pipeline.compute.
"""

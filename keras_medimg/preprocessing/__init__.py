"""Pixel-level transforms: intensity, geometry, tiling and augmentation (no Keras models here)."""

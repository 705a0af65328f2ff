"""`medimg xray`: Click commands only."""

from __future__ import annotations

import click


@click.group()
def xray() -> None:
    """Tiled YOLOv5 anomaly (contraband) detection in 16-bit body X-rays (not yet implemented).

    Training uses random positive tiles cut from the full-resolution 16-bit images with augmentation; at test
    time fixed overlapping tiles are detected and their boxes stitched back into image coordinates. Classes
    can be remapped (original, by size, binary, class-agnostic). This app has no modes yet.
    """

"""`medimg roi`: Click commands only."""

from __future__ import annotations

import click


@click.group()
def roi() -> None:
    """ROI-aware benign/malignant mammography classification (not yet implemented).

    DICOM mammograms are windowed and CLAHE-enhanced, then split by whether an ROI mask is present and by
    view (RCC, LCC, RMLO, LMLO); a Swin Transformer or ConvNeXtV2 is trained per group, the per-group
    predictions are merged and compared with one unstratified baseline model. This app has no modes yet.
    """

"""Train a registry-backbone image classifier from the shared `model` and `train` config sections.

Every classification app builds the same network from its `model:` section (`build_classifier` with backbone,
input size, pooling, hidden layer, dropout; a `network:` section sizes a ConvNeXtV2/Swin backbone, see
`models.small.network_backbone`), trains it with `fit_plan` (head phase on a frozen backbone when the weights
are pretrained, then fine-tuning under `model.freeze`) and goes on with the best checkpoint. This module does
that once:

    model, plan = fit_image_classifier(cfg.model, cfg.train, train_ds, val_ds, num_classes=4, run=run)
    model, plan = fit_image_classifier(cfg.model, cfg.train, train_ds, val_ds, num_classes=4, run=run,
                                       network=cfg.network)  # the backbone at network's widths/depths/stem
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from keras_medimg.config import ModelConfig, NetworkConfig, TrainConfig
from keras_medimg.runs import Run

log = logging.getLogger(__name__)


def backbone_normalization(backbone: str, channels: int = 3):
    """The input `Normalization` a registry backbone expects (applied by the data pipeline, saved with a run)."""
    from keras_medimg.models.backbones import get_spec

    return get_spec(backbone).input_normalization(channels)


def known_length(dataset: Any, batches: int) -> Any:
    """`dataset` with a known number of batches per epoch (for schedules that need it).

    A dataset that can drop elements (unreadable files are skipped while streaming) has an unknown length; it is
    repeated and cut at `batches`, so an epoch has exactly that many batches (when files were dropped, the epoch
    starts over its shuffled images to fill them). A dataset of known length is returned as it is.
    """
    if int(dataset.cardinality()) > 0:
        return dataset
    return dataset.repeat().take(batches)


def build_image_classifier(model_cfg: ModelConfig, num_classes: int, *, network: NetworkConfig | None = None,
                           channels: int = 3, multilabel: bool = False) -> Any:
    """The uncompiled classifier `model_cfg` describes on `channels`-channel square inputs of `model.image_size`.

    Args:
        model_cfg: the `model` section (backbone, weights, image_size, pooling, hidden_units, dropout).
        num_classes: outputs of the head.
        network: the `network` section: a ConvNeXtV2/Swin `model.backbone` is built at its widths, depths and stem
            (`models.small.network_backbone`; random weights); None, or empty widths, builds the registry entry.
        channels: input channels (3 for RGB or grey repeated, 1 for grey).
        multilabel: sigmoid outputs instead of one softmax.
    """
    from keras_medimg.models.classifier import build_classifier
    from keras_medimg.models.small import network_backbone

    m = model_cfg
    backbone = m.backbone if network is None else network_backbone(m.backbone, network, image_size=m.image_size,
                                                                    channels=channels, weights=m.weights)
    return build_classifier(backbone, num_classes, input_shape=(m.image_size, m.image_size, channels),
                            multilabel=multilabel, weights=m.weights, pooling=m.pooling, hidden_units=m.hidden_units,
                            dropout=m.dropout)


def fit_image_classifier(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    train_ds: Any,
    val_ds: Any | None,
    *,
    num_classes: int,
    run: Run,
    multilabel: bool = False,
    freeze: str | None = None,
    labels: Sequence[int] | None = None,
    resume: bool = False,
    train_samples: int | None = None,
    network: NetworkConfig | None = None,
    channels: int = 3,
) -> tuple[Any, Any]:
    """Build the classifier `model_cfg` describes, train it phase by phase into `run`, reload its best checkpoint.

    Args:
        model_cfg: the `model` section (backbone, weights, image_size, pooling, hidden_units, dropout, freeze).
        train_cfg: the `train` section. Without a validation set, `monitor` becomes "loss" (there is no
            "val_..." to watch).
        train_ds: the batched training dataset.
        val_ds: the validation dataset, or None.
        num_classes: outputs of the head.
        run: the run folder (weights/best.keras, weights/last.keras, results.csv, state.json).
        multilabel: sigmoid outputs with multi-hot labels instead of softmax.
        freeze: the fine-tuning phase's freeze policy; None uses `model_cfg.freeze`.
        labels: class index of every training sample (for `train.class_weight: balanced`).
        resume: continue `run` from its last completed epoch.
        train_samples: images in `train_ds`; gives a streamed dataset of unknown length (one that drops
            unreadable files) its number of batches, which `train.schedule: cosine` needs (see `known_length`).
        network: the `network` section sizing a ConvNeXtV2/Swin backbone (see `build_image_classifier`).
        channels: input channels of the images in `train_ds`.

    Returns:
        (the model of weights/best.keras, else weights/last.keras; the `PlanResult` of `fit_plan`).
    """
    from keras_medimg.models.classifier import load_model
    from keras_medimg.models.small import sizes_backbone
    from keras_medimg.training.trainer import fit_plan

    m = model_cfg
    config = train_cfg if val_ds is not None else replace(train_cfg, monitor="loss")
    if config.schedule == "cosine" and train_samples:
        train_ds = known_length(train_ds, -(-train_samples // config.batch_size))

    def build():
        return build_image_classifier(m, num_classes, network=network, channels=channels, multilabel=multilabel)

    n = network
    size = f"widths {n.widths}, depths {n.depths}, {n.stem} stem, " if n and sizes_backbone(m.backbone, n) else ""
    log.info(f"Training {m.backbone} ({size}{m.image_size}x{m.image_size}, weights {m.weights}, hidden "
             f"{m.hidden_units}) -> {num_classes} {'sigmoid' if multilabel else 'softmax'} outputs for {config.epochs} "
             "epochs")
    plan = fit_plan(build, train_ds, val_ds, config=config, run=run, weights=m.weights,
                    freeze=m.freeze if freeze is None else freeze, labels=labels, multilabel=multilabel, resume=resume)
    return load_model(plan.best_path or plan.last_path), plan

"""Image classifiers: a registry backbone + global pooling + optional hidden layer + dropout + head.

Layers are named so that every app, the trainer, Grad-CAM and the exporters find them: "backbone", "pool",
"pool_norm" (when pool_norm), "hidden" (when hidden_units > 0), "dropout" (when dropout > 0) and "predictions"
(softmax for one label per image, sigmoid for multi-label; float32 even under mixed precision so that probabilities
stay exact).

Fine-tuning follows the studies: with pretrained weights, first train the head on a frozen backbone, then unfreeze
(by the freeze policy) with a lower learning rate. `finetune_phases` describes those phases;
`training.trainer.fit_plan` runs them.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras

from keras_medimg.errors import ConfigError, InvalidInputError
from keras_medimg.models.backbones import build_backbone

log = logging.getLogger(__name__)

FREEZE_POLICIES = ("none", "backbone", "until:<layer name>", "first:<N>")
POOLINGS = {"avg": keras.layers.GlobalAveragePooling2D, "max": keras.layers.GlobalMaxPooling2D}


def build_classifier(
    backbone: str | keras.Model,
    num_classes: int,
    *,
    input_shape: tuple[int, int, int] | None = None,
    multilabel: bool = False,
    weights: str | Path | None = None,
    pooling: str = "avg",
    pool_norm: bool = False,
    hidden_units: int = 0,
    dropout: float = 0.0,
    freeze: str = "none",
) -> keras.Model:
    """Build a classifier on a registry backbone (by name) or on a headless Keras model.

    Args:
        backbone: a name from `list_backbones()`, or a functional model whose output is a (B, h, w, C) feature
            map (it is renamed "backbone").
        num_classes: number of outputs (classes, or labels when multi-label).
        input_shape: (height, width, channels); required with a backbone name, taken from the model otherwise.
        multilabel: sigmoid outputs (independent labels) instead of one softmax over the classes.
        weights: backbone weights when `backbone` is a name: None, "imagenet" or a local path.
        pooling: "avg" or "max" global pooling of the feature map.
        pool_norm: LayerNorm on the pooled features (ConvNeXt's own head: norm, then the linear layer).
        hidden_units: width of an extra Dense(relu) layer before the head; 0 for none.
        dropout: dropout rate before the head; 0 for none.
        freeze: freezing policy, see `apply_freeze`.

    Example:
    ```python
    model = build_classifier("densenet121", 4, input_shape=(64, 64, 1), dropout=0.2)
    model.predict(np.zeros((2, 64, 64, 1), "float32"))  # (2, 4), rows sum to 1
    ```
    """
    if num_classes < 1 or (num_classes < 2 and not multilabel):
        raise ConfigError(f"A classifier needs at least 2 classes (or multilabel with 1 label); got "
                          f"num_classes={num_classes}.")
    if pooling not in POOLINGS:
        raise ConfigError(f"Unknown pooling '{pooling}'. Choose one of: {', '.join(POOLINGS)}.")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1); got {dropout}.")
    if isinstance(backbone, str):
        if input_shape is None:
            raise ConfigError(f"build_classifier('{backbone}') needs input_shape=(height, width, channels).")
        backbone_name = backbone
        backbone = build_backbone(backbone, input_shape=input_shape, weights=weights)
        # The registry builds each entry under its own name; the classifier's contract is "backbone".
        backbone.name = "backbone"
    else:
        backbone_name = backbone.name
        input_shape = tuple(backbone.input_shape[1:])
        # Renamed in place rather than wrapped: a wrapper would hide the feature layers from Grad-CAM and freezing.
        backbone.name = "backbone"
    if len(backbone.output.shape) != 4:
        raise ConfigError(f"Backbone '{backbone_name}' outputs shape {backbone.output.shape}; a classifier needs "
                          "a (batch, height, width, channels) feature map.")

    inputs = keras.Input(shape=tuple(input_shape), name="images")
    x = backbone(inputs)
    x = POOLINGS[pooling](name="pool")(x)
    if pool_norm:
        x = pool_norm_layer()(x)
    if hidden_units > 0:
        x = keras.layers.Dense(hidden_units, activation="relu", name="hidden")(x)
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(
        num_classes, activation="sigmoid" if multilabel else "softmax", dtype="float32", name="predictions"
    )(x)
    model = keras.Model(inputs, outputs, name=f"{backbone_name}_classifier")
    apply_freeze(model, freeze)
    return model


def pool_norm_layer() -> keras.layers.Layer:
    """ConvNeXt's head LayerNorm on pooled features, layer "pool_norm": the one layer that both a classifier
    (`pool_norm=True`) and the MAM-CLIP image tower put there, so that a pretrained tower's weights mean the same in
    a classifier."""
    return keras.layers.LayerNormalization(epsilon=1e-6, name="pool_norm")


def backbone_of(model: keras.Model) -> keras.Model:
    """The "backbone" layer of a model built by `build_classifier`."""
    try:
        return model.get_layer("backbone")
    except ValueError as exc:
        raise ConfigError(f"Model '{model.name}' has no layer named 'backbone'; build it with "
                          "build_classifier.") from exc


def backbone_layers(backbone: keras.Model) -> list[keras.layers.Layer]:
    """The backbone's layers in order, nested models (such as keras-hub's Swin) opened up."""
    flat: list[keras.layers.Layer] = []
    for layer in backbone.layers:
        if isinstance(layer, keras.Model):
            flat.extend(backbone_layers(layer))
        else:
            flat.append(layer)
    return flat


def _parse_freeze(policy: str) -> tuple[str, str]:
    kind, _, argument = policy.partition(":")
    if kind in ("none", "backbone") and not argument:
        return kind, ""
    if kind in ("until", "first") and argument:
        return kind, argument
    raise ConfigError(f"Unknown freeze policy '{policy}'. Use one of: {', '.join(FREEZE_POLICIES)}.")


def check_freeze(policy: str) -> None:
    """Raise `ConfigError` when `policy` is not a freeze policy (checks the syntax only, not layer names)."""
    kind, argument = _parse_freeze(policy)
    if kind == "first" and not argument.isdigit():
        raise ConfigError(f"Freeze policy '{policy}' needs a whole number of layers, e.g. 'first:100'.")


def apply_freeze(model: keras.Model, policy: str) -> None:
    """Set which backbone layers train; the head always trains. Recompile the model afterwards.

    Policies: "none" (everything trains), "backbone" (the whole backbone is frozen), "until:<layer name>"
    (backbone layers before the named one are frozen, the named one trains), "first:<N>" (the first N backbone
    layers are frozen). Frozen BatchNormalization layers run in inference mode (Keras 3 does so for any
    non-trainable BatchNormalization), so their statistics stay those of the pretrained weights.

    Args:
        model: a model built by `build_classifier`.
        policy: one of the policies above.
    """
    check_freeze(policy)
    kind, argument = _parse_freeze(policy)
    backbone = backbone_of(model)
    # Policies are absolute: undo whatever an earlier phase froze. Each layer is set explicitly because a
    # model's trainable setter does not reach the layers of a nested model on every backend.
    model.trainable = True
    for layer in [backbone, *backbone_layers(backbone)]:
        layer.trainable = True
    if kind == "none":
        return
    if kind == "backbone":
        backbone.trainable = False
        return
    layers = backbone_layers(backbone)
    if kind == "first":
        count = int(argument)
    else:
        names = [layer.name for layer in layers]
        if argument not in names:
            close = difflib.get_close_matches(argument, names, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ConfigError(f"Freeze policy '{policy}': the backbone has no layer '{argument}'.{hint}")
        count = names.index(argument)
    for layer in layers[:count]:
        layer.trainable = False


@dataclass(frozen=True)
class Phase:
    """One `fit` call of a fine-tuning plan (Keras epoch numbering: epochs initial_epoch .. epochs-1).

    Args:
        name: "head" (frozen backbone, head only), "finetune" (after "head") or "train" (single phase).
        freeze: the freeze policy to apply (then recompile) before this phase.
        initial_epoch: first epoch of the phase, for `fit(initial_epoch=...)`.
        epochs: epoch to stop before, for `fit(epochs=...)`.
        learning_rate_factor: multiply the configured learning rate by this in this phase.
    """

    name: str
    freeze: str
    initial_epoch: int
    epochs: int
    learning_rate_factor: float = 1.0


def finetune_phases(
    weights: str | Path | None, head_epochs: int, epochs: int, freeze: str, *, finetune_lr_factor: float = 0.1
) -> list[Phase]:
    """The phases to train: head first on a frozen backbone, then the freeze policy at a lower learning rate.

    With random weights (`weights` None) a frozen backbone only computes random features, so the head phase is
    skipped (and logged) and everything trains in one phase with the freeze policy.

    Args:
        weights: the backbone weights (None, "imagenet" or a path).
        head_epochs: epochs of the head-only phase; 0 for none.
        epochs: total epochs over all phases.
        freeze: freeze policy of the fine-tuning phase.
        finetune_lr_factor: learning-rate factor of the phase after the head phase.
    """
    check_freeze(freeze)
    if epochs < 1:
        raise ConfigError(f"epochs must be at least 1; got {epochs}.")
    if not 0 <= head_epochs <= epochs:
        raise ConfigError(f"head_epochs must be between 0 and epochs ({epochs}); got {head_epochs}.")
    if head_epochs and weights is None:
        log.warning("Skipping the %d head-only epochs: with random weights a frozen backbone gives random "
                    "features, so all %d epochs train with freeze policy '%s'.", head_epochs, epochs, freeze)
        head_epochs = 0
    if head_epochs == 0:
        return [Phase("train", freeze, 0, epochs)]
    phases = [Phase("head", "backbone", 0, head_epochs)]
    if epochs > head_epochs:
        phases.append(Phase("finetune", freeze, head_epochs, epochs, finetune_lr_factor))
    return phases


def model_summary_dict(model: keras.Model) -> dict[str, Any]:
    """Parameter counts (total, trainable, non-trainable) and the layer count, for logs and metadata.json."""
    import math

    trainable = sum(math.prod(w.shape) for w in model.trainable_weights)
    non_trainable = sum(math.prod(w.shape) for w in model.non_trainable_weights)
    return {
        "name": model.name,
        "params": int(trainable + non_trainable),
        "trainable_params": int(trainable),
        "non_trainable_params": int(non_trainable),
        "layers": len(model.layers),
    }


def load_model(path: str | Path, *, compile: bool = False) -> keras.Model:
    """Load a `.keras` model that may contain our layers (ConvNeXt V2) or keras-hub ones (Swin).

    Args:
        path: the `.keras` file.
        compile: also restore the optimizer and loss (to continue training).

    Raises:
        InvalidInputError: the file is missing or is not a loadable Keras model.
    """
    import zipfile

    from keras_medimg.models import convnextv2  # noqa: F401  registers GRN, DropPath, ConvNeXtV2Backbone
    from keras_medimg.models import torch_kernels

    torch_kernels.install()
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(path, "does not exist; pass the path of a .keras model file.")
    try:
        with zipfile.ZipFile(path) as archive:
            config = archive.read("config.json")
        if b'"keras_hub' in config:
            import keras_hub  # noqa: F401  registers keras-hub layers (Swin); slow to import, so only when used
        if b'"TokenInputs"' in config or b'"MamClip"' in config:
            from keras_medimg.models import vlm  # noqa: F401  registers the MAM-CLIP layers (the export child)
        return keras.saving.load_model(path, compile=compile)
    except Exception as exc:
        raise InvalidInputError(path, f"cannot be loaded as a Keras model ({type(exc).__name__}: {exc}); "
                                      "pass a .keras file saved by keras-medimg.") from exc

"""PyTorch checkpoints of ConvNeXt into the registry's Keras ConvNeXt (keras.applications ConvNeXtTiny / Small).

Studies publish their encoders as PyTorch files, not as Keras weights. MAM-CLIP's authors released
`pretrain_convnext_{tiny,small}.ckpt` (a PyTorch Lightning checkpoint of the whole dual encoder, the image
encoder under `VLModel.vision_encoder.`) and `convnext_{tiny,small}_ftune.pth` (the fine-tuned timm model), and the
ImageNet ConvNeXt the study starts from is timm's. `load_convnext` reads any of these into a registry ConvNeXt:

- timm naming (`stem.0`, `stages.S.downsample.1`, `stages.S.blocks.B.conv_dw`, `mlp.fc1`, `gamma`), as in timm's
  `pytorch_model.bin` / `model.safetensors`, the MAM-CLIP files and any model that wraps a timm ConvNeXt;
- the official naming (`downsample_layers.S`, `stages.S.B.dwconv`, `pwconv1`) of facebookresearch/ConvNeXt.

The ConvNeXt is found in the state dict by its stem key, whatever prefix the wrapping model gave it; a file holding
anything else, or a ConvNeXt of another size, is refused with the key or shape that does not fit. The
classification layer (`head.fc`) is not read: the registry backbone is headless. (keras.applications ends it
with the head's LayerNorm, applied at each position of the feature map; it gets `head.norm`.)

`read_state_dict` is the safe reader underneath: `.safetensors`, or a pickled `.pth` / `.pt` / `.bin` / `.ckpt`
read with `torch.load(weights_only=True)`; a Lightning checkpoint whose hyper-parameters hold objects of other
libraries (MAM-CLIP's hold an OmegaConf config) is read by the same restricted unpickler with those objects'
globals bound to an empty placeholder, so nothing outside torch's allow-list is imported or called. `to_keras`
changes a weight's layout; ConvNeXt V2's loader (`convnextv2.load_torch_checkpoint`) uses both.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np

from keras_medimg.errors import InvalidInputError

#: Suffixes `read_state_dict` reads.
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")

# Keras weight path (after the model-name prefix) -> (timm key, official key) templates.
_RULES = [
    (r"stem/\w+_stem_conv/(kernel|bias)", "stem.0.{p}", "downsample_layers.0.0.{p}"),
    (r"stem/\w+_stem_layernorm/(gamma|beta)", "stem.1.{p}", "downsample_layers.0.1.{p}"),
    (r"downsampling_block_(\d+)/\w+_downsampling_layernorm_\d+/(gamma|beta)",
     "stages.{s1}.downsample.0.{p}", "downsample_layers.{s1}.0.{p}"),
    (r"downsampling_block_(\d+)/\w+_downsampling_conv_\d+/(kernel|bias)",
     "stages.{s1}.downsample.1.{p}", "downsample_layers.{s1}.1.{p}"),
    (r"stage_(\d+)_block_(\d+)_depthwise_conv/(kernel|bias)", "stages.{s}.blocks.{b}.conv_dw.{p}",
     "stages.{s}.{b}.dwconv.{p}"),
    (r"stage_(\d+)_block_(\d+)_layernorm/(gamma|beta)", "stages.{s}.blocks.{b}.norm.{p}", "stages.{s}.{b}.norm.{p}"),
    (r"stage_(\d+)_block_(\d+)_pointwise_conv_1/(kernel|bias)", "stages.{s}.blocks.{b}.mlp.fc1.{p}",
     "stages.{s}.{b}.pwconv1.{p}"),
    (r"stage_(\d+)_block_(\d+)_pointwise_conv_2/(kernel|bias)", "stages.{s}.blocks.{b}.mlp.fc2.{p}",
     "stages.{s}.{b}.pwconv2.{p}"),
    (r"stage_(\d+)_block_(\d+)_layer_scale/(variable|gamma)", "stages.{s}.blocks.{b}.gamma",
     "stages.{s}.{b}.gamma"),
    # keras.applications ends a headless ConvNeXt with the head's LayerNorm, applied at every position.
    (r"^layer_normalization(?:_\d+)?/(gamma|beta)", "head.norm.{p}", "norm.{p}"),
]
_TORCH_PARAM = {"kernel": "weight", "gamma": "weight", "beta": "bias", "bias": "bias", "variable": ""}
_STEMS = ("stem.0.weight", "downsample_layers.0.0.weight")  # timm, official


class _Placeholder:
    """Stands in for a pickled object of a class outside PyTorch's tensor types (hyper-parameters, loggers):
    built from nothing, holds nothing."""

    def __init__(self, *args: Any, **kwargs: Any):
        pass

    def __setstate__(self, state: Any) -> None:
        pass


def _load_with_placeholders(path: Path) -> Any:
    """torch.load(weights_only=True) with every global it refuses read as a `_Placeholder`. The unpickler stays
    torch's restricted one: no global outside its allow-list is ever imported or called."""
    import torch
    from torch import serialization

    try:
        unsafe = serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as exc:
        raise InvalidInputError(path, f"holds Python objects besides tensors that cannot be read safely ({exc}); "
                                      "re-save its state_dict() with torch.save and pass that file.") from exc
    try:
        with serialization.safe_globals([(_Placeholder, name) for name in unsafe]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InvalidInputError(path, f"cannot be read as a PyTorch checkpoint ({exc}).") from exc


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The float32 tensors of a PyTorch checkpoint as {key: array}: `.safetensors`, or a pickled file whose
    state dict is the file itself or under "state_dict" (Lightning, timm training), "model" (official releases)
    or "module"."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(path, "does not exist; pass the path of a PyTorch checkpoint file.")
    import torch

    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file  # through torch: bfloat16 files too, which numpy cannot hold

        try:
            return {k: v.float().numpy() for k, v in load_file(str(path)).items()}
        except Exception as exc:
            raise InvalidInputError(path, f"cannot be read as safetensors ({exc}).") from exc

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # Lightning pickles its hyper-parameters with the checkpoint; weights_only refuses their classes.
        checkpoint = _load_with_placeholders(path)
    except Exception as exc:
        raise InvalidInputError(path, f"cannot be read as a PyTorch checkpoint ({exc}).") from exc
    if isinstance(checkpoint, _Placeholder):
        raise InvalidInputError(path, "holds a whole pickled model, not a state dict; save model.state_dict() with "
                                      "torch.save and pass that file.")
    state = checkpoint
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise InvalidInputError(path, f"holds a {type(state).__name__}, not a state dict of tensors.")
    return {k: v.detach().float().numpy() for k, v in state.items() if isinstance(k, str) and torch.is_tensor(v)}


def _convnext_prefix(state: dict[str, np.ndarray], path: Path) -> tuple[str, int]:
    """(prefix, naming) of the ConvNeXt in `state`: naming 0 = timm, 1 = official."""
    found = [(key[:-len(stem)], naming) for key in state for naming, stem in enumerate(_STEMS)
             if key.endswith(stem) and (key == stem or key[-len(stem) - 1] == ".")]
    if not found:
        sample = ", ".join(list(state)[:3])
        raise InvalidInputError(path, f"holds no ConvNeXt (no '{_STEMS[0]}' or '{_STEMS[1]}' weight; its first keys "
                                      f"are {sample}); pass a timm or official ConvNeXt checkpoint, or a model file "
                                      "that contains one.")
    if len(found) > 1:
        raise InvalidInputError(path, f"holds {len(found)} ConvNeXt models (prefixes "
                                      f"{', '.join(repr(p) for p, _ in found)}); save the one to load on its own.")
    return found[0]


def to_keras(array: np.ndarray, keras_shape: tuple[int, ...]) -> np.ndarray:
    """A PyTorch weight in the layout of the Keras weight of shape `keras_shape` it loads into."""
    if len(keras_shape) == 1:
        return array.reshape(-1)  # biases, norms, layer scale, GRN's (1, 1, 1, C)
    if array.ndim == 4 and array.shape[1] == 1 and keras_shape[3] == 1:
        return array.transpose(2, 3, 0, 1)  # (C, 1, kh, kw) -> DepthwiseConv2D's (kh, kw, C, 1)
    if array.ndim == 4:
        return array.transpose(2, 3, 1, 0)  # (out, in/groups, kh, kw) -> Conv2D's (kh, kw, in/groups, out)
    if array.ndim == 2:
        return array.T  # nn.Linear (out, in) -> Dense (in, out)
    return array


def convnext_key(weight_path: str, naming: int) -> str:
    """The state-dict key (without prefix) of a Keras ConvNeXt weight, in timm (0) or official (1) naming."""
    # Keras numbers a repeated variable name within a layer ("variable_1"): the number is not part of the name.
    weight_path = re.sub(r"_\d+$", "", weight_path)
    for pattern, *templates in _RULES:
        match = re.search(pattern + "$", weight_path)
        if match is None:
            continue
        *numbers, param = match.groups()
        stage = int(numbers[0]) if numbers else 0
        fields = {"s": stage, "s1": stage + 1, "b": int(numbers[1]) if len(numbers) > 1 else 0,
                  "p": _TORCH_PARAM[param]}
        return templates[naming].format(**fields)
    raise ValueError(f"'{weight_path}' is not a ConvNeXt weight this loader knows.")


def _missing(key: str, prefix: str, state: dict[str, np.ndarray], name: str, weight_path: str) -> str:
    """Why `key` is not in `state`, and what to do, by the kind of weight it is."""
    if key in (prefix + "head.norm.weight", prefix + "head.norm.bias", prefix + "norm.weight", prefix + "norm.bias"):
        return (f"has no '{key}': the ConvNeXt was saved without its head's LayerNorm, which '{name}' ends with; "
                "save the whole model's state_dict() (the classification layer may be anything).")
    return (f"has no '{key}' weight for '{weight_path}': it is a ConvNeXt of another depth than '{name}'; pick the "
            "checkpoint of this variant.")


def load_convnext(model: Any, path: str | Path) -> None:
    """Load the ConvNeXt of PyTorch checkpoint `path` into the Keras ConvNeXt `model` (keras.applications
    ConvNeXt, built without its preprocessing layers), every weight checked by key and shape first."""
    path = Path(path)
    state = read_state_dict(path)
    prefix, naming = _convnext_prefix(state, path)
    if any(k.startswith(prefix) and ".grn." in k for k in state):
        raise InvalidInputError(path, f"holds a ConvNeXt V2 (GRN layers), not a ConvNeXt like '{model.name}'; use a "
                                      "convnextv2_* backbone (model.backbone) with its official .pt file.")
    values, used = [], set()
    for weight in model.weights:
        key = prefix + convnext_key(weight.path, naming)
        used.add(key)
        if key not in state:
            raise InvalidInputError(path, _missing(key, prefix, state, model.name, weight.path))
        array = to_keras(state[key], tuple(weight.shape))
        if tuple(array.shape) != tuple(weight.shape):
            raise InvalidInputError(path, f"'{key}' has shape {state[key].shape}, but '{model.name}' needs "
                                          f"{tuple(weight.shape)} (after layout change) for '{weight.path}'; pick "
                                          "the checkpoint of this variant (3 input channels).")
        values.append(array)
    # A deeper ConvNeXt (small into tiny) has every weight tiny needs, with the same shapes: its extra blocks show.
    extra = sorted(k for k in state if k.startswith(prefix + "stages.") and k not in used)
    if extra:
        raise InvalidInputError(path, f"holds a deeper ConvNeXt than '{model.name}' ('{extra[0]}' and "
                                      f"{len(extra) - 1} more weights have no place in it); pick the checkpoint of "
                                      "this variant, or the backbone of this checkpoint (model.backbone).")
    model.set_weights(values)

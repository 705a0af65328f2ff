"""Hugging Face BERT folders as keras-hub reads them.

keras-hub's `BertBackbone.from_preset` reads a Hugging Face folder (config.json + weights) only when its weights are
`model.safetensors` (or a sharded `model.safetensors.index.json`) and hold BERT's pooler. Many published BERTs
are neither: PubMedBERT, the MAM-CLIP study's text encoder, is released as `pytorch_model.bin`, and a checkpoint
saved from a masked-language model (`BertForMaskedLM`) has no pooler. `bert_preset_folder` gives keras-hub a
folder it can read without touching the user's: such a folder is converted once into
`<medimg home>/hf_bert/<key>/` (config.json + model.safetensors, float32), keyed by the source files' paths, sizes
and modification times, so a second run reuses it and a changed checkpoint is converted again (the outdated copy
is then deleted). A config.json without `model_type` (BERTs of transformers' first years) is taken as a BERT.

The pickled checkpoints are read with `torch.load(weights_only=True)` (`torch_weights.read_state_dict`), so
nothing in them is executed. A missing pooler is added as zeros: MAM-CLIP reads the [CLS] state or the mean of the
token states, never BERT's pooled output.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np

from keras_medimg.errors import InvalidInputError

log = logging.getLogger(__name__)

SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
TORCH_BIN, TORCH_BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
_OTHER_FORMATS = ("tf_model.h5", "flax_model.msgpack", "model.ckpt.index", "rust_model.ot")
_POOLER = "pooler.dense.weight"
_ANCHOR = "embeddings.word_embeddings.weight"


def bert_preset_folder(folder: str | Path) -> Path:
    """`folder` itself when keras-hub can read it as it is (a keras-hub preset, or a Hugging Face BERT with
    safetensors weights and a pooler); otherwise a converted copy in the medimg home (see the module docstring).

    Raises:
        InvalidInputError: naming the folder or file, when the folder is a Hugging Face model of another type, holds
            no PyTorch/safetensors weights (only TensorFlow or Flax ones, say), or a checkpoint cannot be read.
    """
    folder = Path(folder)
    config_file = folder / "config.json"
    if not config_file.is_file():
        return folder  # keras-hub's own error says what a preset folder needs
    try:
        config = json.loads(config_file.read_text(encoding="utf-8-sig"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInputError(config_file, f"is not valid JSON ({exc}).") from exc
    if not isinstance(config, dict) or "class_name" in config or (folder / "metadata.json").is_file():
        return folder  # a keras-hub preset: its config.json names the Keras class
    model_type = config.get("model_type", "bert")  # BERT configs of transformers' first years have none
    if model_type != "bert":
        raise InvalidInputError(config_file, f"describes a Hugging Face '{model_type}' model; the text encoder "
                                             "must be a BERT (model_type 'bert'), such as PubMedBERT.")
    shards = _weight_files(folder)
    if "model_type" in config and shards[0].suffix == ".safetensors" and _has_pooler(shards):
        return folder
    from keras_medimg.backend import medimg_home

    home = medimg_home() / "hf_bert"
    target = home / _key(folder, [config_file, *shards])
    if (target / SAFETENSORS).is_file() and (target / "config.json").is_file():
        return target
    try:  # before reading hundreds of megabytes
        home.mkdir(parents=True, exist_ok=True)
        if not os.access(home, os.W_OK):
            raise PermissionError(f"no write permission on {home}")
    except OSError as exc:
        raise InvalidInputError(folder, f"needs a converted copy of its weights for keras-hub, which cannot be "
                                        f"written ({exc}). Set MEDIMG_HOME to a writable folder, or save the model "
                                        "with safetensors (model.safetensors) and BERT's pooler.") from exc
    from keras_medimg.models.torch_weights import read_state_dict

    state: dict[str, np.ndarray] = {}
    for shard in shards:
        state.update(read_state_dict(shard))
    anchors = [k for k in state if k.endswith(_ANCHOR)]
    if not anchors:
        raise InvalidInputError(shards[0], f"holds no BERT weights (no '{_ANCHOR}'); pass the folder of a BERT model.")
    prefix = anchors[0][: -len(_ANCHOR)]
    added = ""
    if not any(k.endswith(_POOLER) for k in state):
        hidden = state[anchors[0]].shape[1]
        state[prefix + _POOLER] = np.zeros((hidden, hidden), np.float32)
        state[prefix + "pooler.dense.bias"] = np.zeros((hidden,), np.float32)
        added = " (the checkpoint has no pooler, so a zero one was added: MAM-CLIP does not use BERT's pooled output)"
    _write(target, {**config, "model_type": "bert"}, state, source=folder)
    log.info("Converted the BERT weights of %s to %s for keras-hub%s.", folder, target, added)
    _remove_stale(home, folder, keep=target)
    return target


def _weight_files(folder: Path) -> list[Path]:
    """The weight files of a Hugging Face folder, preferring safetensors; the shards of an index file."""
    for single, index in ((SAFETENSORS, SAFETENSORS_INDEX), (TORCH_BIN, TORCH_BIN_INDEX)):
        if (folder / single).is_file():
            return [folder / single]
        if (folder / index).is_file():
            try:
                weight_map = json.loads((folder / index).read_text(encoding="utf-8-sig"))["weight_map"]
                names = sorted(set(weight_map.values()))
            except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
                raise InvalidInputError(folder / index, f"is not a weight index ({type(exc).__name__}: {exc}); it "
                                                        "needs a 'weight_map' of tensor name -> shard file.") from exc
            missing = [name for name in names if not (folder / name).is_file()]
            if missing:
                raise InvalidInputError(folder / index, f"names shard(s) that are not in the folder: {missing[:3]}. "
                                                        "Download every shard of the model.")
            return [folder / name for name in names]
    others = [name for name in _OTHER_FORMATS if (folder / name).exists()]
    found = f" It holds {', '.join(others)}, which keras-hub cannot read." if others else ""
    raise InvalidInputError(folder, f"holds no PyTorch weights ({SAFETENSORS} or {TORCH_BIN}, or their sharded "
                                    f".index.json).{found} Download the PyTorch weights of the model.")


def _has_pooler(shards: list[Path]) -> bool:
    from safetensors import safe_open

    for shard in shards:
        try:
            with safe_open(str(shard), framework="np") as fh:
                if any(k.endswith(_POOLER) for k in fh.keys()):
                    return True
        except Exception as exc:  # safetensors raises its own SafetensorError for a damaged header
            raise InvalidInputError(shard, f"cannot be read as safetensors ({exc}); download it again.") from exc
    return False


def _key(folder: Path, files: list[Path]) -> str:
    """Folder path + each file's name, size and modification time: a changed checkpoint gets a new copy."""
    parts = [str(folder.resolve())] + [f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _write(target: Path, config: dict, state: dict[str, np.ndarray], *, source: Path) -> None:
    """config.json + model.safetensors (+ source.json, the folder it came from) into `target`, whole or not at all
    (`runs.staged_folder`)."""
    from safetensors.numpy import save_file

    from keras_medimg.runs import staged_folder

    with staged_folder(target) as work:
        (work / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
        (work / "source.json").write_text(json.dumps({"folder": str(source.resolve())}), encoding="utf-8")
        save_file({k: np.ascontiguousarray(v, np.float32) for k, v in state.items()}, str(work / SAFETENSORS),
                  metadata={"format": "pt"})


def _remove_stale(home: Path, folder: Path, *, keep: Path, max_age_s: float = 86400.0) -> None:
    """Delete the older copies of `folder` (its checkpoint changed since) and temporary folders a killed conversion
    left more than `max_age_s` ago: each is a whole float32 model."""
    source = str(folder.resolve())
    for path in home.iterdir():
        if path == keep or not path.is_dir():
            continue
        try:
            if path.name.startswith("."):
                stale = time.time() - path.stat().st_mtime > max_age_s
            else:
                stale = json.loads((path / "source.json").read_text(encoding="utf-8")).get("folder") == source
        except (OSError, ValueError):
            continue
        if stale:
            shutil.rmtree(path, ignore_errors=True)
            log.info("Removed the outdated converted copy %s.", path)

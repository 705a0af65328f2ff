"""Segment Anything (SAM) prompted with boxes, and fine-tuning of its mask decoder.

The study outlines each detected tumour with SAM from the detector's box, after fine-tuning SAM on the
ground-truth masks. Here:

- `load_sam` builds `vit_b | vit_l | vit_h` and loads a local checkpoint (never downloaded); a checkpoint of another
  size is recognised from its tensors and refused with an error that names both.
- `segment_boxes` returns one mask per box.
- `finetune_decoder` trains only the mask decoder (image encoder and prompt encoder frozen, as in the study) with
  Dice + BCE on box prompts, and reports Dice before and after.

SAM is a PyTorch model; this module imports torch and segment_anything lazily, inside functions.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from keras_medimg.errors import ConfigError, InvalidInputError, WeightsUnavailableError, require
from keras_medimg.io.annotations import Box
from keras_medimg.io.images import to_rgb_uint8

FALLBACK_NAMES = {"grabcut": "OpenCV GrabCut", "otsu": "an Otsu threshold + the largest connected component"}
CHECKPOINT_URL = "https://github.com/facebookresearch/segment-anything#model-checkpoints"


@dataclass(frozen=True)
class SamArch:
    """The size of a SAM image encoder (the prompt encoder and mask decoder are the same for every size).

    Args:
        embed_dim: ViT width.
        depth: number of ViT blocks.
        num_heads: attention heads per block.
        global_attn_indexes: blocks with global (not windowed) attention.
        image_size: square input size of the encoder (1024 for the published models).
        checkpoint_file: the file name Meta publishes the weights under.
    """

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    image_size: int = 1024
    checkpoint_file: str = ""


SAM_ARCHS: dict[str, SamArch] = {
    "vit_b": SamArch(768, 12, 12, (2, 5, 8, 11), checkpoint_file="sam_vit_b_01ec64.pth"),
    "vit_l": SamArch(1024, 24, 16, (5, 11, 17, 23), checkpoint_file="sam_vit_l_0b3195.pth"),
    "vit_h": SamArch(1280, 32, 16, (7, 15, 23, 31), checkpoint_file="sam_vit_h_4b8939.pth"),
}


def build_sam(arch: str | SamArch):
    """A SAM model with random weights (`arch` is a name of `SAM_ARCHS` or a custom, e.g. tiny, `SamArch`)."""
    torch = require("torch", extra="detect", feature="SAM segmentation")
    modeling = require("segment_anything.modeling", package="segment-anything", extra="detect",
                       feature="SAM segmentation")
    spec = SAM_ARCHS[arch] if isinstance(arch, str) else arch
    prompt_dim, patch = 256, 16
    embedding_size = spec.image_size // patch
    sam = modeling.Sam(
        image_encoder=modeling.ImageEncoderViT(
            depth=spec.depth,
            embed_dim=spec.embed_dim,
            img_size=spec.image_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=spec.num_heads,
            patch_size=patch,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=list(spec.global_attn_indexes),
            window_size=14,
            out_chans=prompt_dim,
        ),
        prompt_encoder=modeling.PromptEncoder(
            embed_dim=prompt_dim,
            image_embedding_size=(embedding_size, embedding_size),
            input_image_size=(spec.image_size, spec.image_size),
            mask_in_chans=16,
        ),
        mask_decoder=modeling.MaskDecoder(
            num_multimask_outputs=3,
            transformer=modeling.TwoWayTransformer(depth=2, embedding_dim=prompt_dim, mlp_dim=2048, num_heads=8),
            transformer_dim=prompt_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


def checkpoint_model_type(state_dict: dict[str, Any]) -> str | None:
    """Which of `SAM_ARCHS` a SAM state dict belongs to, from its encoder width and depth (None if none)."""
    proj = state_dict.get("image_encoder.patch_embed.proj.weight")
    if proj is None:
        return None
    depth = len({key.split(".")[2] for key in state_dict if key.startswith("image_encoder.blocks.")})
    for name, spec in SAM_ARCHS.items():
        if int(proj.shape[0]) == spec.embed_dim and depth == spec.depth:
            return name
    return None


def _read_state_dict(path: Path) -> dict[str, Any]:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a file that is not a checkpoint
        raise InvalidInputError(path, f"this is not a readable PyTorch checkpoint ({type(exc).__name__}).") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise InvalidInputError(path, "the checkpoint does not hold a state dict of model weights.")
    return state


def load_sam(model_type: str, checkpoint: str | Path | None, *, decoder: str | Path | None = None,
             arch: SamArch | None = None):
    """Build SAM and load its weights from local files.

    Args:
        model_type: "vit_b", "vit_l" or "vit_h".
        checkpoint: Meta's checkpoint file (e.g. `sam_vit_b_01ec64.pth`), or None for random weights (tests only).
        decoder: a fine-tuned mask-decoder state (from `finetune_decoder`) loaded over the checkpoint's decoder.
        arch: a custom architecture instead of `SAM_ARCHS[model_type]` (tests use a tiny one).

    Returns:
        The SAM model (torch.nn.Module) in eval mode on the CPU.
    """
    if model_type not in SAM_ARCHS:
        raise InvalidInputError(model_type, f"unknown SAM model type; choose one of {', '.join(SAM_ARCHS)}.")
    state = None
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            raise WeightsUnavailableError(
                f"SAM checkpoint '{path}' does not exist. Download {SAM_ARCHS[model_type].checkpoint_file} "
                f"({CHECKPOINT_URL}) and pass it with --set segment.checkpoint=PATH, or leave segment.checkpoint "
                "null to use segment.fallback."
            )
        state = _read_state_dict(path)
        found = checkpoint_model_type(state)
        if arch is None and found != model_type:
            what = f"a SAM {found} checkpoint" if found else "not a SAM checkpoint"
            raise InvalidInputError(
                path, f"this is {what}, but segment.model_type is {model_type} "
                f"(expected {SAM_ARCHS[model_type].checkpoint_file}); set segment.model_type to match the file "
                "or pass the matching checkpoint."
            )
    sam = build_sam(arch or model_type)
    if state is not None:
        _load_into(sam, state, Path(checkpoint))
    if decoder is not None:
        path = Path(decoder)
        if not path.is_file():
            raise WeightsUnavailableError(f"Fine-tuned SAM decoder '{path}' does not exist. Pass the "
                                          "weights/sam_decoder.pth of a `medimg brats train --stage segment` run.")
        _load_into(sam.mask_decoder, _read_state_dict(path), path)
    return sam.eval()


def _load_into(module: Any, state: dict[str, Any], path: Path) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise InvalidInputError(path, f"the weights do not fit the chosen SAM model ({first}).") from None


# === Inference ===


def load_predictor(model_type: str, checkpoint: str | Path | None, *, decoder: str | Path | None = None,
                   fallback: str = "box", setting: str = "segment") -> tuple[Any, dict[str, Any]]:
    """SAM's box-prompted predictor from local files, or None and the fallback, stated in a record.

    Args:
        model_type: "vit_b", "vit_l" or "vit_h".
        checkpoint: Meta's checkpoint file; None means no SAM (see `fallback`).
        decoder: a fine-tuned mask decoder (from `finetune_decoder`) loaded over the checkpoint's.
        fallback: without a checkpoint, "grabcut" or "otsu" (a weight-free mask inside the box, see
            `detection.segment_fallback`), "box" (crop the detector's box unmasked) or "error" (raise).
        setting: the config section that holds these keys, named in the messages (`<setting>.checkpoint`).

    Returns:
        (predictor or None, record for metrics.json: `{"mode": "sam", "model_type", "checkpoint", "decoder"}` or
        `{"mode": "<fallback>_fallback", "reason": ...}`).

    Raises:
        ConfigError: no checkpoint and `fallback` is "error", or an unknown fallback.
    """
    from keras_medimg.detection.segment_fallback import METHODS

    if checkpoint is None:
        if fallback == "error":
            raise ConfigError(f"{setting}.checkpoint is not set and {setting}.fallback is 'error'. Pass a SAM checkpoint "
                              f"with --set {setting}.checkpoint=PATH (e.g. {SAM_ARCHS['vit_b'].checkpoint_file}) or set "
                              f"{setting}.fallback=grabcut|otsu|box.")
        if fallback not in (*METHODS, "box"):
            raise ConfigError(f"Unknown {setting}.fallback '{fallback}'. Choose one of {', '.join((*METHODS, 'box', 'error'))}.")
        what = ("the detector's box is cropped without masking the background" if fallback == "box" else
                f"the lesion is outlined inside the detector's box with {FALLBACK_NAMES[fallback]}, no weights needed")
        reason = (f"SAM is not used: {setting}.checkpoint is not set, so the segment stage falls back to "
                  f"{setting}.fallback={fallback} ({what}). Pass --set {setting}.checkpoint=PATH to a local "
                  f"{SAM_ARCHS['vit_b'].checkpoint_file} to segment with SAM.")
        return None, {"mode": f"{fallback}_fallback", "reason": reason}
    sam = load_sam(model_type, checkpoint, decoder=decoder)
    record = {"mode": "sam", "model_type": model_type, "checkpoint": str(checkpoint),
              "decoder": str(decoder) if decoder else None}
    return make_predictor(sam), record


def mask_box(mask: np.ndarray | None, label: str = "lesion") -> Box | None:
    """The bounding box of a mask's non-zero pixels (pixel edges, score 1.0), or None for an empty mask."""
    if mask is None:
        return None
    ys, xs = np.nonzero(np.asarray(mask))
    if len(xs) == 0:
        return None
    return Box(float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1), label, 1.0)


def finetune_triples(pairs: Sequence[tuple[str | Path, str | Path]], *,
                     denoise_median: int = 0) -> list[tuple[np.ndarray, list[Box], np.ndarray]]:
    """The (image, [box], mask) training triples of `finetune_decoder` from (image file, mask file) pairs.

    Each image is read at its own bit depth (and median-filtered with `denoise_median`, 0 = off), each mask as
    non-zero = lesion, and the prompt is the mask's bounding box; a pair whose mask is empty has nothing to
    prompt for and is left out.
    """
    from keras_medimg.detection.lesions import median_filter, read_grey

    triples = []
    for image_path, mask_path in pairs:
        mask = read_grey(mask_path) > 0
        box = mask_box(mask)
        if box is not None:
            triples.append((median_filter(read_grey(image_path), denoise_median), [box], mask))
    return triples


def finetune_on_masks(predictor: Any, pairs: Sequence[tuple[str | Path, str | Path]], out: str | Path, *,
                      epochs: int = 5, learning_rate: float = 1e-4, seed: int = 0, holdout: float = 0.2,
                      denoise_median: int = 0, log: Any = print) -> dict[str, Any]:
    """Fine-tune a predictor's mask decoder on (image file, mask file) pairs, measuring Dice on held-out pairs.

    The first `holdout` share of the usable pairs (at least one) measures Dice before and after; the rest train
    (images median-filtered with `denoise_median` first, 0 = off)
    (`finetune_decoder`), prompted with each mask's bounding box. A lone usable pair does both. The fine-tuned decoder is saved to `out`.

    Returns:
        A record for metrics.json: finetune, dice_before, dice_after, decoder, losses, seconds, images, held_out.

    Raises:
        InvalidInputError: no pair has a non-empty mask.
    """
    triples = finetune_triples(pairs, denoise_median=denoise_median)
    if not triples:
        raise InvalidInputError(Path(pairs[0][1]).parent if pairs else Path(out),
                                "no ground-truth mask has a lesion in it; SAM fine-tuning needs non-empty masks.")
    # One usable pair cannot be split: it then both trains and measures.
    held = max(1, int(len(triples) * holdout + 1e-9)) if len(triples) > 1 else 0
    log(f"[segment] fine-tuning the SAM mask decoder on {len(triples) - held} images (Dice measured on "
        f"{held or len(triples)} {'held-out ' if held else 'training '}images)")
    result = finetune_decoder(predictor.model, triples[held:], out, epochs=epochs, learning_rate=learning_rate,
                              seed=seed, eval_samples=triples[:held] or None, log=log)
    log(f"[segment] Dice before {result.dice_before:.4f} -> after {result.dice_after:.4f}")
    return {"finetune": True, "dice_before": result.dice_before, "dice_after": result.dice_after,
            "decoder": str(result.decoder_path), "losses": result.losses, "seconds": result.seconds,
            "images": len(triples) - held, "held_out": held}


def make_predictor(sam: Any):
    """A `segment_anything.SamPredictor` for `sam` (it caches one image's embedding at a time)."""
    segment_anything = require("segment_anything", package="segment-anything", extra="detect",
                               feature="SAM segmentation")
    return segment_anything.SamPredictor(sam)


def _prompt_logits(sam: Any, predictor: Any, boxes: np.ndarray):
    """Full-resolution mask logits (N, H, W) for the image set on `predictor`, one per box (decoder gradients kept)."""
    import torch

    box_tensor = predictor.transform.apply_boxes_torch(torch.as_tensor(boxes, dtype=torch.float32),
                                                       predictor.original_size)
    with torch.no_grad():
        sparse, dense = sam.prompt_encoder(points=None, boxes=box_tensor, masks=None)
    low_res, _ = sam.mask_decoder(
        image_embeddings=predictor.features,
        image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=False,
    )
    return sam.postprocess_masks(low_res, predictor.input_size, predictor.original_size)[:, 0]


def segment_boxes(predictor: Any, image: np.ndarray, boxes: Sequence[Box]) -> np.ndarray:
    """One SAM mask per box prompt.

    Args:
        predictor: from `make_predictor`.
        image: (H, W) grey or (H, W, 3) RGB, uint8/uint16 or float in [0, 1].
        boxes: prompts in pixels of `image`.

    Returns:
        Boolean masks of shape (len(boxes), H, W).
    """
    import torch

    height, width = np.asarray(image).shape[:2]
    if not boxes:
        return np.zeros((0, height, width), bool)
    predictor.set_image(to_rgb_uint8(image))
    with torch.no_grad():
        logits = _prompt_logits(predictor.model, predictor, np.array([b[:4] for b in boxes], np.float32))
    return (logits > 0).cpu().numpy()


# === Fine-tuning ===


@dataclass
class FinetuneResult:
    """Outcome of `finetune_decoder`.

    Args:
        dice_before: mean Dice of the masks against ground truth before training.
        dice_after: the same after training.
        decoder_path: the saved mask-decoder state dict.
        losses: mean training loss per epoch.
        seconds: wall-clock time.
    """

    dice_before: float
    dice_after: float
    decoder_path: Path
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def dice_score(pred: np.ndarray, target: np.ndarray) -> float:
    """Dice of two boolean masks (1.0 when both are empty)."""
    pred, target = np.asarray(pred, bool), np.asarray(target, bool)
    total = pred.sum() + target.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(pred, target).sum() / total)


def _box_target(mask: np.ndarray, box: Sequence[float]) -> np.ndarray:
    """The ground-truth lesion a box prompts for: mask pixels inside the box (other lesions excluded)."""
    target = np.zeros(mask.shape, bool)
    x1, y1 = max(int(np.floor(box[0])), 0), max(int(np.floor(box[1])), 0)
    x2, y2 = int(np.ceil(box[2])), int(np.ceil(box[3]))
    target[y1:y2, x1:x2] = mask[y1:y2, x1:x2] > 0
    return target


def finetune_decoder(
    sam: Any,
    samples: Sequence[tuple[np.ndarray, Sequence[Box], np.ndarray]],
    out: str | Path,
    *,
    epochs: int = 5,
    learning_rate: float = 1e-4,
    seed: int = 0,
    eval_samples: Sequence[tuple[np.ndarray, Sequence[Box], np.ndarray]] | None = None,
    log: Any = print,
) -> FinetuneResult:
    """Fine-tune SAM's mask decoder on box prompts with Dice + BCE; image and prompt encoders stay frozen.

    Args:
        sam: a model from `load_sam`.
        samples: (image, ground-truth boxes, ground-truth mask with non-zero = lesion) triples.
        out: file to save the decoder's state dict to (`torch.save`, written atomically).
        epochs: passes over `samples`.
        learning_rate: AdamW learning rate.
        seed: torch seed (shuffling order).
        eval_samples: where Dice before/after is measured (default: `samples`).
        log: function receiving one progress line per epoch.

    Returns:
        A `FinetuneResult` with Dice before and after.
    """
    import torch

    from keras_medimg.runs import atomic_path

    started = time.perf_counter()
    torch.manual_seed(seed)
    predictor = make_predictor(sam)
    train_set = _embed(predictor, samples)
    eval_set = train_set if eval_samples is None else _embed(predictor, eval_samples)
    for module in (sam.image_encoder, sam.prompt_encoder):
        module.requires_grad_(False)
    dice_before = _mean_dice(sam, predictor, eval_set)
    optimizer = torch.optim.AdamW(sam.mask_decoder.parameters(), lr=learning_rate, foreach=True)
    losses = []
    for epoch in range(epochs):
        sam.mask_decoder.train()
        epoch_losses = []
        for index in torch.randperm(len(train_set)).tolist():
            item = train_set[index]
            _restore(predictor, item)
            logits = _prompt_logits(sam, predictor, item["boxes"])
            loss = _dice_bce(logits, torch.as_tensor(item["targets"], dtype=torch.float32))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            epoch_losses.append(float(loss.detach()))
        losses.append(float(np.mean(epoch_losses)))
        log(f"SAM decoder epoch {epoch + 1}/{epochs}: loss {losses[-1]:.4f}")
    sam.mask_decoder.eval()
    dice_after = _mean_dice(sam, predictor, eval_set)
    with atomic_path(out) as tmp:
        torch.save(sam.mask_decoder.state_dict(), tmp)
    return FinetuneResult(dice_before, dice_after, Path(out), losses, time.perf_counter() - started)


def _embed(predictor: Any, samples: Sequence[tuple[np.ndarray, Sequence[Box], np.ndarray]]) -> list[dict[str, Any]]:
    """Run the frozen image encoder once per image; fine-tuning then only runs the decoder."""
    embedded = []
    for image, boxes, mask in samples:
        if not boxes:
            continue
        predictor.set_image(to_rgb_uint8(image))
        box_array = np.array([b[:4] for b in boxes], np.float32)
        embedded.append({
            "features": predictor.features.detach(),
            "input_size": predictor.input_size,
            "original_size": predictor.original_size,
            "boxes": box_array,
            "targets": np.stack([_box_target(np.asarray(mask), b) for b in box_array]),
        })
    if not embedded:
        raise InvalidInputError("segment", "no image with both a box and a ground-truth mask was given, so SAM "
                                "cannot be fine-tuned; check the dataset's masks/ folder.")
    return embedded


def _restore(predictor: Any, item: dict[str, Any]) -> None:
    predictor.features = item["features"]
    predictor.input_size = item["input_size"]
    predictor.original_size = item["original_size"]
    predictor.is_image_set = True


def _mean_dice(sam: Any, predictor: Any, items: list[dict[str, Any]]) -> float:
    import torch

    scores = []
    with torch.no_grad():
        for item in items:
            _restore(predictor, item)
            masks = (_prompt_logits(sam, predictor, item["boxes"]) > 0).cpu().numpy()
            scores += [dice_score(m, t) for m, t in zip(masks, item["targets"])]
    return float(np.mean(scores))


def _dice_bce(logits: Any, targets: Any) -> Any:
    import torch

    probs = torch.sigmoid(logits)
    dims = (-2, -1)
    dice = 1 - (2 * (probs * targets).sum(dims) + 1) / (probs.sum(dims) + targets.sum(dims) + 1)
    return dice.mean() + torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)

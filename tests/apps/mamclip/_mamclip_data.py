"""Tiny MAM-CLIP inputs shared by the mamclip tests and their child processes: pairs whose caption names what the
image shows, and a config small enough to pretrain in seconds."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from keras_medimg.apps.mamclip.config import MamclipConfig
from keras_medimg.io.images import write_image


def write_pairs(tmp_path: Path, n=24, missing=0, long_captions=0):
    """Pairs whose caption names what the image shows: a bright block on the left, on the right, or none."""
    rng = np.random.default_rng(0)
    kinds = [("left", "A bright mass on the left side."), ("right", "A bright mass on the right side."),
             ("none", "No mass; fatty tissue only.")]
    rows = []
    for i in range(n):
        kind, caption = kinds[i % 3]
        image = rng.uniform(0, 0.2, size=(32, 32)).astype("float32")
        if kind == "left":
            image[8:24, 2:14] = 1.0
        elif kind == "right":
            image[8:24, 18:30] = 1.0
        write_image(tmp_path / "img" / f"{i}.png", (image * 255).astype("uint8"))
        if i < long_captions:
            caption = caption + " More words." * 20
        rows.append({"image": f"img/{i}.png", "caption": caption, "page": i, "source": "book.pdf"})
    for i in range(missing):
        rows.append({"image": f"img/missing{i}.png", "caption": "A lost picture.", "page": 1000 + i})
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# At 1e-3 the tiny dual encoder's embeddings sometimes collapsed to one direction (recall@1 0.06 in one run of four);
# the app's default is 2e-4 for the same reason.
LEARNING_RATE = 5e-4


def tiny_config(cfg: MamclipConfig, pairs, epochs=1) -> MamclipConfig:
    return replace(
        cfg, data=replace(cfg.data, pairs=str(pairs), val_fraction=0.34),
        model=replace(cfg.model, image_size=32, embed_dim=32, text_layers=1, text_width=32, text_intermediate=64,
                      text_length=16, fusion_heads=4),
        # No flips: the captions say left or right.
        pretrain=replace(cfg.pretrain, epochs=epochs, batch_size=8, learning_rate=LEARNING_RATE, verbose=0,
                         augment=replace(cfg.pretrain.augment, hflip=False)),
    )

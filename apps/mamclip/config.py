"""The config tree of `medimg mamclip` (defaults here; `configs/mamclip.yaml` is the same tree, commented).

Demo defaults are sized so that `medimg mamclip train` (demo data -> atlas extraction -> pretraining -> the
label-count curve) finishes within 20 minutes on a 2-core CPU: 64-pixel images, a ConvNeXt V2 atto image encoder,
a 2-layer BERT of width 64. The study's values are given in the YAML comments and can be set with `--set`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from keras_medimg.apps.mamclip.atlas_config import AtlasConfig
from keras_medimg.config import ExportConfig, image_hw
from keras_medimg.datasets.mammo_labels import TaskConfig
from keras_medimg.preprocessing.augment import GridAugment

BIRADS5 = {"0": "BI-RADS 0", "1": "BI-RADS 1", "2": "BI-RADS 2", "4": "BI-RADS 4", "5": "BI-RADS 5", "6": "BI-RADS 5"}
BIRADS3 = {"1": "BI-RADS 1-2", "2": "BI-RADS 1-2", "0": "BI-RADS 0", "4": "BI-RADS 4-5", "5": "BI-RADS 4-5",
           "6": "BI-RADS 4-5"}
DENSITY = {"A": "density A", "B": "density B", "C": "density C", "D": "density D"}


def _tasks() -> dict[str, TaskConfig]:
    return {
        "birads5": TaskConfig(field="birads", classes=dict(BIRADS5), exclude=["3"]),
        "birads3": TaskConfig(field="birads", classes=dict(BIRADS3), exclude=["3"]),
        "density": TaskConfig(field="density", classes=dict(DENSITY), exclude=[]),
    }


def _prompts() -> dict[str, dict[str, list[str]]]:
    return {
        "birads3": {
            "BI-RADS 1-2": ["No mass, suspicious calcifications or architectural distortion. BI-RADS 1: negative.",
                            "A round mass with circumscribed margins. BI-RADS 2: benign."],
            "BI-RADS 0": ["Architectural distortion without a central mass. BI-RADS 0: incomplete, needs "
                          "additional imaging evaluation."],
            "BI-RADS 4-5": ["An irregular mass with obscured margins. BI-RADS 4: suspicious.",
                            "An irregular mass with spiculated margins. BI-RADS 5: highly suggestive of malignancy."],
        },
        "birads5": {
            "BI-RADS 0": ["Architectural distortion without a central mass. BI-RADS 0: incomplete."],
            "BI-RADS 1": ["No mass, suspicious calcifications or architectural distortion. BI-RADS 1: negative."],
            "BI-RADS 2": ["A round mass with circumscribed margins. BI-RADS 2: benign."],
            "BI-RADS 4": ["An irregular mass with obscured margins. BI-RADS 4: suspicious."],
            "BI-RADS 5": ["An irregular mass with spiculated margins. BI-RADS 5: highly suggestive of malignancy."],
        },
        "density": {
            "density A": ["The breasts are almost entirely fatty."],
            "density B": ["There are scattered areas of fibroglandular density."],
            "density C": ["The breasts are heterogeneously dense, which may obscure small masses."],
            "density D": ["The breasts are extremely dense, which lowers the sensitivity of mammography."],
        },
    }


@dataclass
class DataConfig:
    """The pairs for pretraining and the labelled images for fine-tuning."""

    pairs: str | None = None  # pairs.jsonl / JSON / CSV (image, caption); null = the demo atlases, extracted
    image_root: str | None = None  # folder the pairs' image paths are relative to; null = the pairs file's folder
    val_fraction: float = 0.2  # share of pairs held out (by book page and figure) for validation loss and retrieval recall
    dataset: Literal["teknofest", "vindr", "embed", "csv"] = "teknofest"  # layout of the classification data
    root: str | None = None  # classification data folder; null = the demo set (TEKNOFEST layout)
    demo_pairs: int = 1500  # demo: pairs in the text-layer atlas (the study pretrained on 2,313)
    demo_ocr_pairs: int = 48  # demo: pairs in the burned-in-caption atlas (read by OCR, the slow part of extraction)
    demo_patients: int = 128  # demo: patients (x 4 views) in the classification set
    demo_height: int = 128  # demo: classification image height (width 3/4 of it); the atlas mammograms are taken at it too


#: `--study`: the paper's setup. ImageNet ConvNeXt (small; tiny is the other released size), PubMedBERT (its folder
#: with --text-encoder, read from its [CLS] state), 1024x768 images, 768-wide embeddings, captions of 100 tokens,
#: batch 8 x 8 accumulation = 64, AdamW 1e-4 with the code's weight decay 1e-6, 25 epochs, flips + mild downscale +
#: grid distortion; fine-tuning at the label counts of Fig. 3, VLM against ImageNet, 4 folds. Mixed precision stays
#: `auto` (float16 on a GPU, as the study). Options given beside --study, and --set, override these.
STUDY = {
    "model.backbone": "convnext_small", "model.weights": "imagenet", "model.image_size": [1024, 768],
    "model.embed_dim": 768, "model.text_pooling": "cls", "model.text_length": 100,
    "pretrain.epochs": 25, "pretrain.batch_size": 8, "pretrain.accumulation_steps": 8, "pretrain.learning_rate": 1e-4,
    "pretrain.weight_decay": 1e-6, "pretrain.augment.hflip": True, "pretrain.augment.zoom_min": 0.9,
    "pretrain.augment.grid_distortion": 0.3,
    "finetune.train_samples": ["1000", "3000", "5000", "10000", "20000", "30000", "all"],
    "finetune.inits": ["vlm", "imagenet"], "finetune.folds": 4,
}


@dataclass
class VlmConfig:
    """The dual encoder (`keras_medimg.models.vlm`)."""

    backbone: str = "convnextv2_atto"  # image encoder from the registry (study: convnext_small / convnext_tiny)
    weights: str | None = None  # image backbone: null (random) | imagenet | a local weights file
    image_size: int | list[int] = 64  # input side, or [height, width] (study: [1024, 768])
    embed_dim: int = 64  # shared embedding width (study: 768)
    text_encoder: str | None = None  # BERT folder: keras-hub preset or Hugging Face (PubMedBERT); null = tiny BERT
    text_layers: int = 2  # tiny BERT only: transformer layers
    text_heads: int = 2  # tiny BERT only: attention heads
    text_width: int = 64  # tiny BERT only: hidden width (the fusion transformer's width too)
    text_intermediate: int = 128  # tiny BERT only: feed-forward width
    text_dropout: float = 0.1  # tiny BERT only: dropout
    text_pooling: Literal["cls", "mean"] = "mean"  # text embedding: cls (study, pretrained BERT) | mean (tiny BERT from scratch)
    text_length: int = 64  # tokens per caption, [CLS] and [SEP] included; longer captions are cut and counted
    vocabulary_min_count: int = 1  # tiny BERT only: words seen this often in the captions get their own token
    fusion_layers: int = 1  # fusion transformer layers (study: 1)
    fusion_heads: int = 8  # fusion attention heads (study: 8)
    fusion_mlp_ratio: int = 4  # fusion MLP width / model width (study: 4)

    def __post_init__(self) -> None:
        image_hw(self.image_size)  # a side or [height, width], else a ConfigError naming the key


@dataclass
class PretrainConfig:
    """`medimg mamclip pretrain`: InfoNCE + lambda * MLM on image-caption pairs."""

    epochs: int = 20  # demo: 20 x 1,548 pairs (study: 25 in the paper, 75 in the code)
    batch_size: int = 8  # pairs per step, the contrastive negatives (study: 8 per step)
    accumulation_steps: int = 1  # steps whose gradients are summed before one update (study: 8, batch 64)
    learning_rate: float = 0.0002  # AdamW (study: 1e-4; from scratch at 1e-3 the image embeddings collapse)
    weight_decay: float = 0.000001  # AdamW weight decay (study code: 1e-6)
    mlm_weight: float = 0.5  # lambda of the MLM loss (study: 0.5)
    mask_rate: float = 0.15  # share of words masked (whole words)
    mask_token_share: float = 0.8  # of the masked word pieces: share set to [MASK]
    random_token_share: float = 0.1  # ... share set to a random token (the rest stay unchanged)
    logit_scale_init: float = 2.6592600369327779  # log(1/0.07), as CLIP
    augment: GridAugment = field(default_factory=lambda: GridAugment(probability=0.5, hflip=False, zoom_min=0.9, zoom_max=1.0))
    recall_at: list[int] = field(default_factory=lambda: [1, 5, 10])  # K of retrieval recall@K on validation pairs
    jit_compile: bool = False  # XLA (faster on GPU; slower to start on CPU)
    # float16 compute, float32 weights and losses, loss scaling (study: mixed precision); "auto" = on only with a
    # GPU (float16 compute is slow on CPUs). A resumed run keeps the policy its weights/last.keras was saved with.
    mixed_precision: Literal["auto", True, False] = "auto"
    # none | mirrored (this process's devices) | multiworker (JAX worker processes); batch_size = global batch
    distribution: Literal["none", "mirrored", "multiworker"] = "none"
    verbose: int = 2  # Keras progress: 0 silent, 1 bar, 2 one line per epoch


@dataclass
class FinetuneConfig:
    """`medimg mamclip finetune`: the vision encoder fine-tuned with k-fold CV, and the label-count curve."""

    task: Literal["birads5", "birads3", "density"] = "birads3"
    init: str = "none"  # vlm:RUN (a pretrain run folder or its .keras) | imagenet | none
    inits: list[str] = field(default_factory=lambda: ["vlm", "none"])  # `train`: inits compared ("vlm" = this run)
    folds: int = 4  # patient-grouped, stratified folds (study: 4)
    train_samples: list[str] = field(default_factory=lambda: ["24", "all"])  # label counts or fractions ("0.25"), "all"
    epochs: int = 10  # epochs per fold
    batch_size: int = 16
    learning_rate: float = 0.0005  # AdamW
    weight_decay: float = 0.0001
    class_weight: Literal["none", "balanced"] = "balanced"  # balanced = inverse class frequency in each subset
    pool_norm: bool = True  # LayerNorm before the head, as ConvNeXt's head; a vlm init starts from its pretrained one
    augment: GridAugment = field(default_factory=lambda: GridAugment(probability=0.5, hflip=True))
    # the classifiers fine-tuned, whatever the pretraining used: "auto" = mixed float16 only with a GPU | true | false
    mixed_precision: Literal["auto", True, False] = "auto"
    # none | mirrored (this process's devices) | multiworker (JAX worker processes); batch_size = global batch
    distribution: Literal["none", "mirrored", "multiworker"] = "none"
    verbose: int = 0  # Keras progress per fold


@dataclass
class ProbeConfig:
    """`medimg mamclip probe`: logistic regression on frozen image embeddings, with the same folds."""

    c: float = 1.0  # inverse regularisation strength
    max_iter: int = 2000
    class_weight: Literal["none", "balanced"] = "balanced"


@dataclass
class MamclipConfig:
    """The whole `medimg mamclip` config."""

    seed: int = 0
    strict: bool = False  # stop at the first bad file or record instead of skipping it (listed in skipped.csv)
    data: DataConfig = field(default_factory=DataConfig)
    model: VlmConfig = field(default_factory=VlmConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    tasks: dict[str, TaskConfig] = field(default_factory=_tasks)
    prompts: dict[str, dict[str, list[str]]] = field(default_factory=_prompts)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    atlas: AtlasConfig = field(default_factory=AtlasConfig)
    export: ExportConfig = field(default_factory=lambda: ExportConfig(formats=["savedmodel", "onnx"]))

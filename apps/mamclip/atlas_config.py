"""The `atlas` config section of `medimg mamclip` (the atlas stage), and how it is read.

The keys live under `atlas:` in the mamclip YAML (configs/mamclip.yaml, or a file given with --config); a YAML
without that section, or without the file, gives the defaults below. `--set atlas.KEY=VALUE` overrides one key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keras_medimg.config import bounds, defaults_path, from_dict, read_yaml, set_key, parse_set
from keras_medimg.errors import ConfigError
from keras_medimg.io.pdf_atlas import CAPTION_PATTERN, CONTINUED_PATTERN, PANEL_PATTERN, AtlasSettings


@dataclass
class AtlasConfig:
    """Settings of `medimg mamclip atlas extract` and `merge` (see configs/mamclip.yaml, section `atlas`)."""

    pairing: str = "layout"
    pages: str | None = None
    caption_pattern: str = CAPTION_PATTERN
    continued_pattern: str = CONTINUED_PATTERN
    panel_pattern: str = PANEL_PATTERN
    max_caption_gap: float = 60.0
    min_overlap: float = field(default=0.3, metadata=bounds(0.0, 1.0))
    figure_gap: float = field(default=12.0, metadata=bounds(0.0))
    min_image_side: float = 40.0
    min_image_pixels: int = 32
    repeat_pages: int = field(default=3, metadata=bounds(2))
    header_fraction: float = field(default=0.08, metadata=bounds(0.0, 0.5))
    ocr: str = "auto"
    ocr_lang: str = "eng"
    ocr_separators: list[str] = field(default_factory=lambda: list(AtlasSettings().ocr_separators))
    min_ocr_confidence: float = field(default=60.0, metadata=bounds(0.0, 100.0))
    scan_dpi: int = field(default=200, metadata=bounds(50, 1200))
    caption_keywords: list[str] = field(default_factory=lambda: ["IMPRESSION", "MAMMOGRAPHY"])
    workers: int = 0
    contact_sheet: bool = True
    contact_sheet_per_page: int = field(default=12, metadata=bounds(1, 60))
    val_fraction: float = 0.1
    split_seed: int = 0

    def __post_init__(self) -> None:
        if self.pairing not in ("layout", "positional"):
            raise ConfigError(f"Config key 'atlas.pairing' must be layout or positional, got {self.pairing!r}.")
        if self.ocr not in ("auto", "always", "never"):
            raise ConfigError(f"Config key 'atlas.ocr' must be auto, always or never, got {self.ocr!r}.")

    def settings(self) -> AtlasSettings:
        """The reading and pairing settings of `keras_medimg.io.pdf_atlas`."""
        return AtlasSettings(
            pairing=self.pairing, caption_pattern=self.caption_pattern, continued_pattern=self.continued_pattern,
            panel_pattern=self.panel_pattern, max_caption_gap=self.max_caption_gap, min_overlap=self.min_overlap,
            figure_gap=self.figure_gap, min_image_side=self.min_image_side, min_image_pixels=self.min_image_pixels,
            repeat_pages=self.repeat_pages, header_fraction=self.header_fraction, ocr=self.ocr, ocr_lang=self.ocr_lang,
            ocr_separators=tuple(self.ocr_separators), min_ocr_confidence=self.min_ocr_confidence,
            scan_dpi=self.scan_dpi, caption_keywords=tuple(self.caption_keywords),
        )


@dataclass
class _AtlasSection:
    atlas: AtlasConfig = field(default_factory=AtlasConfig)


def load_atlas_config(config_file: str | Path | None = None, overrides: tuple[str, ...] = (), options: dict[str, Any] | None = None) -> AtlasConfig:
    """The `atlas` section from `config_file` (else the packaged mamclip.yaml, when there is one), then typed
    `options` ("atlas.KEY" -> value; None = not given), then `--set atlas.KEY=VALUE` overrides."""
    if config_file is not None:
        data = read_yaml(config_file)
    else:
        packaged = defaults_path("mamclip")
        data = read_yaml(packaged) if packaged.is_file() else {}
    section = {"atlas": dict(data.get("atlas") or {})}
    for dotted, value in (options or {}).items():
        if value is not None:
            set_key(section, _AtlasSection, dotted, value)
    for text in overrides:
        dotted, value = parse_set(text)
        if not dotted.startswith("atlas."):
            raise ConfigError(f"The atlas commands read only the 'atlas' section; --set {dotted} is not one of its keys (use atlas.KEY).")
        set_key(section, _AtlasSection, dotted, value)
    return from_dict(_AtlasSection, section).atlas

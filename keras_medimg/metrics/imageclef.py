"""The ImageCLEFmedical concept-detection scores, computed as the official evaluator computes them.

A run file (submission) holds one row per test image: the image ID (no file extension), a comma, and its
concepts (UMLS CUIs) joined by `;`. The official evaluator first validates the file, then scores it:

- **primary F1**: for every ground-truth image, the F1 between its true and its predicted CUI sets (CUIs
  stripped and upper-cased; F1 = 2|T & P| / (|T| + |P|), which is what scikit-learn's binary `f1_score` gives on
  the two sets binarised over their union, and 0 when nothing predicted is true); the mean over the images,
  where images whose ground truth is empty do not count;
- **secondary F1**: the same against the manually validated concepts (`concepts_manual.csv`), after keeping
  on both sides only the CUIs of the edition's allow-list (`secondary_cuis(edition)`: image modality and body
  region; the 2024 evaluator keeps 14 CUIs, 2025 added optical coherence tomography) and leaving out images
  whose filtered ground truth is empty.

Two details are this module's reading of the task description rather than a copy of the official script:
empty CUI fields (`ID,` or `C1;;C2`) hold no concept (the script would count an empty string as a concept,
which makes an image with empty truth count as a perfect 1 instead of not counting), and a header row is
recognised only as the first row with the ID `ID` (the script skips every row whose ID contains "ID").
When no image counts (every ground truth empty) a score is undefined and returned as NaN.

Per-concept precision / recall / F1 and micro / macro F1 are not official scores; they say which concepts a
model gets wrong.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from keras_medimg.datasets.imageclef import csv_rows, delimiter_of, parse_cuis, problems_error
from keras_medimg.errors import ConfigError

#: The CUIs the secondary score keeps in the 2024 edition (the study's): modalities, then body regions.
_SECONDARY_2024 = frozenset(
    {
        "C0002978",  # angiogram
        "C0040405",  # X-Ray Computed Tomography
        "C0024485",  # Magnetic Resonance Imaging
        "C0032743",  # Positron-Emission Tomography
        "C0041618",  # Ultrasonography
        "C1306645",  # Plain x-ray
        "C1140618",  # Upper Extremity
        "C0037949",  # Vertebral column
        "C0030797",  # Pelvis
        "C0023216",  # Lower Extremity
        "C0037303",  # Bone structure of cranium
        "C0817096",  # Chest
        "C0006141",  # Breast
        "C0000726",  # Abdomen
    }
)

#: The official secondary allow-list of each edition's evaluator; 2025 added optical coherence tomography.
SECONDARY_CUIS_BY_EDITION: Mapping[int, frozenset[str]] = MappingProxyType(
    {
        2024: _SECONDARY_2024,
        2025: _SECONDARY_2024 | {"C0920367"},  # Tomography, Optical Coherence
    }
)

#: The edition scored when none is given: the study's year.
DEFAULT_EDITION = 2024

#: Every CUI some edition's secondary score keeps (what a demo data set may use as modality or body region).
SECONDARY_CUIS = frozenset().union(*SECONDARY_CUIS_BY_EDITION.values())


def secondary_cuis(edition: int = DEFAULT_EDITION) -> frozenset[str]:
    """The CUIs the secondary score of one ImageCLEFmedical edition keeps.

    Args:
        edition: the year of the challenge whose evaluator to follow.

    Raises:
        ConfigError: an edition whose list is not known here, naming the known ones.
    """
    # bool is an int: True must not quietly select edition 1.
    if isinstance(edition, bool) or edition not in SECONDARY_CUIS_BY_EDITION:
        known = ", ".join(str(year) for year in sorted(SECONDARY_CUIS_BY_EDITION))
        raise ConfigError(
            f"The ImageCLEFmedical edition {edition!r} has no secondary concept list here; the known editions are "
            f"{known}. Set the edition to one of them (the list of the year your ground truth comes from)."
        )
    return SECONDARY_CUIS_BY_EDITION[edition]


#: The official limit of concepts per image in a run file.
MAX_CONCEPTS = 100

Concepts = Mapping[str, Sequence[str]]


def _is_header(row: list[str]) -> bool:
    return bool(row) and row[0].strip().lower() == "id"


def _rows(path: Path) -> list[tuple[int, list[str]]]:
    """The rows of a truth or run file, comma-, tab- (ImageCLEFmedical 2022/2023) or '|'-separated by its first line."""
    return csv_rows(path, delimiter=delimiter_of(path))


def read_truth(path: str | Path) -> dict[str, tuple[str, ...]]:
    """Read a ground-truth `concepts.csv` / `concepts_manual.csv` (`ID,CUIs`, header optional) into ID -> CUIs.

    Args:
        path: the ground-truth file.

    Raises:
        InvalidInputError: rows without an ID, with more than two fields, or an ID given twice.
    """
    path = Path(path)
    truth: dict[str, tuple[str, ...]] = {}
    problems: list[tuple[int | None, str]] = []
    for index, (line, row) in enumerate(_rows(path)):
        if index == 0 and _is_header(row):
            continue
        if not row or not row[0].strip():
            problems.append((line, "the row has no image ID"))
        elif len(row) > 2:
            problems.append((line, f"the row has {len(row)} fields; expected ID and one ';'-separated CUI field"))
        elif row[0].strip() in truth:
            problems.append((line, f"image ID '{row[0].strip()}' is given twice"))
        else:
            truth[row[0].strip()] = parse_cuis(row[1]) if len(row) > 1 else ()
    if problems:
        raise problems_error(path, problems, "Fix the ground-truth file; each row must read ID,CUI;CUI;...")
    return truth


def read_submission(path: str | Path, truth_ids: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Read and validate a run file the way the official evaluator does.

    Each row holds an image ID and optionally one CUI field; every ID must be a ground-truth ID, given once,
    with at most `MAX_CONCEPTS` concepts and no concept twice; the file must have one row per ground-truth
    image. An `ID,CUIs` header row is allowed.

    Args:
        path: the submission CSV.
        truth_ids: the image IDs of the ground truth.

    Returns:
        ID -> predicted CUIs (stripped, upper-cased).

    Raises:
        InvalidInputError: naming the line of the first problem and listing the first few of them.
    """
    path = Path(path)
    known = set(truth_ids)
    predictions: dict[str, tuple[str, ...]] = {}
    problems: list[tuple[int | None, str]] = []
    for index, (line, row) in enumerate(_rows(path)):
        if index == 0 and _is_header(row):
            continue
        if not row or not row[0].strip():
            problems.append((line, "the row has no image ID; each row must read ID,CUI;CUI;..."))
            continue
        if len(row) > 2:
            problems.append((line, f"the row has {len(row)} fields; expected an ID and at most one CUI field"))
            continue
        image_id = row[0].strip()
        if image_id not in known:
            problems.append((line, f"image ID '{image_id}' is not in the ground truth"))
            continue
        if image_id in predictions:
            problems.append((line, f"image ID '{image_id}' was given more than once"))
            continue
        cuis = tuple(cui for cui in (part.strip() for part in row[1].split(";")) if cui) if len(row) > 1 else ()
        if len(cuis) > MAX_CONCEPTS:
            problems.append((line, f"image ID '{image_id}' has {len(cuis)} concepts; at most {MAX_CONCEPTS} are allowed"))
        if len(set(cuis)) != len(cuis):
            repeated = sorted({cui for cui in cuis if cuis.count(cui) > 1})
            problems.append((line, f"image ID '{image_id}' repeats the concept(s) {', '.join(repeated)}"))
        predictions[image_id] = tuple(cui.upper() for cui in cuis)
    if not problems and len(predictions) != len(known):
        missing = sorted(known - set(predictions))
        problems.append(
            (
                None,
                f"the file has {len(predictions)} images but the ground truth has {len(known)}; "
                f"missing for example: {', '.join(missing[:3])}",
            )
        )
    if problems:
        raise problems_error(path, problems, "Fix the submission: one row per test image, ID,CUI;CUI;...")
    return predictions


def image_f1(truth: Iterable[str], predicted: Iterable[str]) -> float:
    """F1 between a true and a predicted CUI set: 2|T & P| / (|T| + |P|), 0 when both are empty.

    Args:
        truth: the image's true CUIs.
        predicted: its predicted CUIs.
    """
    true_set, predicted_set = set(truth), set(predicted)
    total = len(true_set) + len(predicted_set)
    return 2.0 * len(true_set & predicted_set) / total if total else 0.0


def _cui_set(cuis: Iterable[str]) -> set[str]:
    return {cui.strip().upper() for cui in cuis} - {""}


def _mean_f1(truth: Concepts, predictions: Concepts, keep: frozenset[str] | None) -> tuple[float, int]:
    scores = []
    for image_id, true_cuis in truth.items():
        true_set = _cui_set(true_cuis)
        predicted_set = _cui_set(predictions.get(image_id, ()))
        if keep is not None:
            true_set &= keep
            predicted_set &= keep
        if true_set:
            scores.append(image_f1(true_set, predicted_set))
    return (math.fsum(scores) / len(scores) if scores else math.nan), len(scores)


def primary_f1(truth: Concepts, predictions: Concepts) -> float:
    """The official primary score: mean per-image F1 over the ground-truth images with at least one concept.

    Args:
        truth: image ID -> true CUIs (from `concepts.csv`).
        predictions: image ID -> predicted CUIs; an image missing here counts as an empty prediction (F1 0).

    Returns:
        The score in [0, 1], or NaN when no ground-truth image has a concept.
    """
    return _mean_f1(truth, predictions, None)[0]


def secondary_f1(manual_truth: Concepts, predictions: Concepts, *, edition: int = DEFAULT_EDITION) -> float:
    """The official secondary score: the primary F1 on the edition's allow-listed CUIs, against the manual truth.

    Args:
        manual_truth: image ID -> manually validated CUIs (from `concepts_manual.csv`).
        predictions: image ID -> predicted CUIs.
        edition: the challenge year whose allow-list counts (`secondary_cuis`).

    Returns:
        The score in [0, 1], or NaN when no image has a kept CUI in its manual ground truth.

    Raises:
        ConfigError: an unknown edition.
    """
    return _mean_f1(manual_truth, predictions, secondary_cuis(edition))[0]


def concept_table(
    truth: Concepts, predictions: Concepts, *, names: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """Per-concept precision, recall and F1 over the ground-truth images, most frequent concept first.

    Concepts that are only predicted appear with support 0 (and F1 0), as in scikit-learn's multi-label report.

    Args:
        truth: image ID -> true CUIs.
        predictions: image ID -> predicted CUIs (images not in `truth` are ignored).
        names: CUI -> canonical name, for the `name` column.

    Returns:
        Rows with `cui, name, support, predicted, tp, fp, fn, precision, recall, f1`.
    """
    counts: dict[str, list[int]] = {}
    for image_id, true_cuis in truth.items():
        true_set = _cui_set(true_cuis)
        predicted_set = _cui_set(predictions.get(image_id, ()))
        for cui in true_set | predicted_set:
            tp_fp_fn = counts.setdefault(cui, [0, 0, 0])
            tp_fp_fn[0] += cui in true_set and cui in predicted_set
            tp_fp_fn[1] += cui in predicted_set and cui not in true_set
            tp_fp_fn[2] += cui in true_set and cui not in predicted_set
    rows = []
    for cui, (tp, fp, fn) in counts.items():
        rows.append(
            {
                "cui": cui,
                "name": (names or {}).get(cui, ""),
                "support": tp + fn,
                "predicted": tp + fp,
                "tp": tp,
                "fp": fp,
                "fn": fn,
                "precision": tp / (tp + fp) if tp + fp else 0.0,
                "recall": tp / (tp + fn) if tp + fn else 0.0,
                "f1": 2 * tp / (2 * tp + fp + fn) if tp else 0.0,
            }
        )
    return sorted(rows, key=lambda row: (-row["support"], row["cui"]))


def micro_macro_f1(table: Sequence[Mapping[str, Any]]) -> tuple[float, float]:
    """Micro F1 (pooled counts) and macro F1 (mean of per-concept F1) of a `concept_table`.

    Args:
        table: rows of `concept_table`.
    """
    tp = sum(row["tp"] for row in table)
    fp = sum(row["fp"] for row in table)
    fn = sum(row["fn"] for row in table)
    micro = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    macro = math.fsum(row["f1"] for row in table) / len(table) if table else 0.0
    return micro, macro


def frequency_baseline(train_truth: Concepts, k: int) -> tuple[str, ...]:
    """The `k` most frequent CUIs of a ground truth (ties by CUI), the prediction of the frequency baseline.

    Args:
        train_truth: image ID -> CUIs to count.
        k: how many concepts every image gets.
    """
    counts: dict[str, int] = {}
    for cuis in train_truth.values():
        for cui in _cui_set(cuis):
            counts[cui] = counts.get(cui, 0) + 1
    return tuple(sorted(counts, key=lambda cui: (-counts[cui], cui))[:k])


def best_frequency_baseline(train_truth: Concepts, truth: Concepts, *, max_k: int = 10) -> tuple[float, int]:
    """Primary F1 of predicting the k most frequent training concepts for every image, for the best k.

    The baseline a concept detector must beat: it knows the label distribution and nothing about the image.
    Choosing k on `truth` makes it an optimistic baseline.

    Args:
        train_truth: the ground truth the concept frequencies come from.
        truth: the ground truth the baseline is scored on.
        max_k: the largest k tried.

    Returns:
        (primary F1, k).
    """
    best = (0.0, 1)
    for k in range(1, max_k + 1):
        constant = frequency_baseline(train_truth, k)
        score = primary_f1(truth, {image_id: constant for image_id in truth})
        if score > best[0]:
            best = (score, k)
    return best


@dataclass
class ConceptScores:
    """Everything `score` computes for one submission.

    Args:
        primary_f1: the official primary score.
        secondary_f1: the official secondary score (NaN without a manual ground truth).
        micro_f1: F1 of the pooled per-concept counts (not official).
        macro_f1: mean per-concept F1 (not official).
        images: ground-truth images counted by the primary score.
        secondary_images: manual ground-truth images counted by the secondary score.
        table: the per-concept rows of `concept_table`.
        edition: the challenge year whose secondary allow-list was used.
    """

    primary_f1: float
    secondary_f1: float
    micro_f1: float
    macro_f1: float
    images: int
    secondary_images: int
    table: list[dict[str, Any]] = field(default_factory=list)
    edition: int = DEFAULT_EDITION

    def summary(self) -> dict[str, Any]:
        """The scalar scores, for metrics.json."""
        return {
            "primary_f1": self.primary_f1,
            "secondary_f1": self.secondary_f1,
            "micro_f1": self.micro_f1,
            "macro_f1": self.macro_f1,
            "images": self.images,
            "secondary_images": self.secondary_images,
            "edition": self.edition,
        }


def score(
    truth: Concepts,
    predictions: Concepts,
    *,
    manual_truth: Concepts | None = None,
    names: Mapping[str, str] | None = None,
    edition: int = DEFAULT_EDITION,
) -> ConceptScores:
    """All scores of a set of predictions (already validated, e.g. by `read_submission`).

    Args:
        truth: image ID -> true CUIs.
        predictions: image ID -> predicted CUIs.
        manual_truth: image ID -> manually validated CUIs, for the secondary score.
        names: CUI -> canonical name, for the per-concept table.
        edition: the challenge year whose secondary allow-list counts (checked even without `manual_truth`, so
            a wrong setting fails at once rather than on the run that has a manual ground truth).

    Raises:
        ConfigError: an unknown edition.
    """
    keep = secondary_cuis(edition)
    primary, images = _mean_f1(truth, predictions, None)
    secondary, secondary_images = math.nan, 0
    if manual_truth is not None:
        secondary, secondary_images = _mean_f1(manual_truth, predictions, keep)
    table = concept_table(truth, predictions, names=names)
    micro, macro = micro_macro_f1(table)
    return ConceptScores(primary, secondary, micro, macro, images, secondary_images, table, edition)


def format_concept_table(table: Sequence[Mapping[str, Any]], limit: int = 15) -> str:
    """The per-concept table as text, most frequent concepts first."""
    lines = [f"{'CUI':<9} {'name':<30} {'support':>7} {'precision':>9} {'recall':>7} {'F1':>6}"]
    for row in table[:limit]:
        lines.append(f"{row['cui']:<9} {row['name'][:30]:<30} {row['support']:>7} {row['precision']:>9.3f} {row['recall']:>7.3f} {row['f1']:>6.3f}")
    if len(table) > limit:
        lines.append(f"... {len(table) - limit} more in concepts.csv")
    return "\n".join(lines)

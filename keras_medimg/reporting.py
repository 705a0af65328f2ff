"""Plots (confusion matrix, training curves, bar charts) as PNG files, and Markdown tables.

Figures are drawn on `matplotlib.figure.Figure` objects, never through pyplot: no global figure state, no GUI
backend, safe in worker processes. Every file is written atomically.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from keras_medimg.errors import InvalidInputError
from keras_medimg.runs import atomic_path


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return path


def plot_confusion_matrix(
    cm: Sequence[Sequence[int]] | np.ndarray,
    class_names: Sequence[str],
    path: str | Path,
    *,
    normalize: bool = False,
    title: str | None = None,
) -> Path:
    """Draw a confusion matrix (rows true, columns predicted) with the value in every cell.

    Args:
        cm: (C, C) counts, as `classification_report(...)["confusion_matrix"]`.
        class_names: the C class names.
        path: the PNG file to write.
        normalize: divide each row by its total, so cells are recall fractions (empty rows stay 0).
        title: figure title (default "Confusion matrix", "(normalised)" added when normalising).

    Returns:
        `path`.
    """
    counts = np.asarray(cm, dtype="float64")
    values = counts
    if normalize:
        totals = counts.sum(axis=1, keepdims=True)
        values = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    size = 1.6 + 0.7 * len(class_names)
    fig = Figure(figsize=(size + 1.2, size))
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalize else max(values.max(), 1))
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, labels=list(class_names), rotation=45, ha="right")
    ax.set_yticks(ticks, labels=list(class_names))
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    ax.set_title(title or ("Confusion matrix (normalised)" if normalize else "Confusion matrix"))
    threshold = (1 if normalize else values.max()) / 2
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            text = f"{values[i, j]:.2f}" if normalize else f"{int(values[i, j])}"
            ax.text(j, i, text, ha="center", va="center", color="white" if values[i, j] > threshold else "black")
    return _save(fig, path)


def read_results(results_csv: str | Path) -> dict[str, list[Any]]:
    """Columns of a run's results.csv: numbers as floats, other columns (phase) as text."""
    results_csv = Path(results_csv)
    if not results_csv.is_file():
        raise InvalidInputError(results_csv, "The results file does not exist; pass a run folder's results.csv.")
    with open(results_csv, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "epoch" not in rows[0]:
        raise InvalidInputError(results_csv, "The results file has no epoch rows; train at least one epoch first.")
    columns: dict[str, list[Any]] = {}
    for name in rows[0]:
        values = [row[name] for row in rows]
        try:
            columns[name] = [float(v) for v in values]
        except ValueError:
            columns[name] = values
    return columns


def plot_training_curves(results_csv: str | Path, path: str | Path) -> Path:
    """Plot loss and every metric of results.csv against the epoch, train and validation in one panel each.

    Phase changes (head-only, then fine-tuning) are marked with a dashed vertical line.

    Args:
        results_csv: a run's results.csv.
        path: the PNG file to write.

    Returns:
        `path`.
    """
    columns = read_results(results_csv)
    epochs = np.asarray(columns["epoch"]) + 1
    names = [n for n in columns if n not in ("epoch", "phase", "learning_rate") and not n.startswith("val_")]
    names = sorted(names, key=lambda n: (n != "loss", n))
    fig = Figure(figsize=(4.5 * len(names), 3.6))
    phases = columns.get("phase")
    for k, name in enumerate(names):
        ax = fig.add_subplot(1, len(names), k + 1)
        ax.plot(epochs, columns[name], marker="o", label="train")
        if f"val_{name}" in columns:
            ax.plot(epochs, columns[f"val_{name}"], marker="o", label="validation")
        if phases:
            for i in range(1, len(phases)):
                if phases[i] != phases[i - 1]:
                    ax.axvline(epochs[i] - 0.5, color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def bar_chart(
    values: Mapping[str, float],
    path: str | Path,
    *,
    title: str = "",
    ylabel: str = "",
    errors: Mapping[str, float] | None = None,
) -> Path:
    """One bar per name, with its value on top and optional error bars (e.g. std over folds).

    Args:
        values: name -> value, drawn in the given order.
        path: the PNG file to write.
        title: figure title.
        ylabel: y-axis label.
        errors: name -> half-height of the error bar.

    Returns:
        `path`.
    """
    names = list(values)
    heights = [float(values[n]) for n in names]
    fig = Figure(figsize=(max(4.0, 0.9 * len(names) + 1.5), 3.6))
    ax = fig.add_subplot()
    yerr = [float(errors.get(n, 0.0)) for n in names] if errors else None
    bars = ax.bar(names, heights, yerr=yerr, capsize=4 if errors else 0, color="tab:blue")
    ax.bar_label(bars, labels=[f"{h:.3f}" for h in heights], padding=2)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return _save(fig, path)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A GitHub-flavoured Markdown table; floats get 4 decimals, missing cells stay empty.

    Args:
        rows: one mapping per row.
        columns: the keys to show, in order (also the header).
    """

    def cell(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, float):
            return f"{value:.4f}"
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"

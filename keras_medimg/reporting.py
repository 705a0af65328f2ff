"""What a run shows: plots (confusion matrix, training curves, bar charts) as PNG files, tables as CSV and Markdown.

Numbers come from `keras_medimg.metrics`; this module turns them into the files of a run folder:
`write_classification_outputs` (predictions.csv, plots/confusion_matrix.png), `plot_training_curves`
(plots/training_curves.png from results.csv), `write_comparison` (<name>.csv, <name>.md, plots/<name>.png for
backbone comparisons, baselines and ablations). `read_results` is the one reader of results.csv.

Figures are drawn on `matplotlib.figure.Figure` objects, never through pyplot: no global figure state, no GUI
backend, safe in worker processes. Every file is written atomically.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.figure import Figure

from keras_medimg.errors import InvalidInputError, MedImgError
from keras_medimg.runs import atomic_path, atomic_write_text, write_csv

if TYPE_CHECKING:
    from keras_medimg.datasets.records import Sample
    from keras_medimg.runs import Run

#: The file the trainer writes one row per epoch into, inside a run folder.
RESULTS_FILE = "results.csv"

#: Cells CSVLogger writes for a metric an epoch did not log.
_MISSING = {"", "NA"}


def _folder(out: Run | str | Path) -> Path:
    """The folder of a Run, or the given folder."""
    return Path(out) if isinstance(out, (str, Path)) else Path(out.dir)


def _target(out: Run | str | Path, *parts: str) -> Path:
    """A file path inside a run folder (or plain folder), its parent folders created."""
    path = _folder(out).joinpath(*parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


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


@dataclass(frozen=True)
class Results:
    """A run's results.csv: one row per epoch, numbers parsed.

    Args:
        path: the file read.
        fields: the column names, in file order (empty when there is no file yet).
        rows: one dict per epoch: `epoch` as int, numeric columns as float (NaN where CSVLogger wrote "NA" or
            nothing), other columns (`phase`) as text.
    """

    path: Path
    fields: tuple[str, ...]
    rows: tuple[dict[str, Any], ...]

    def __len__(self) -> int:
        return len(self.rows)

    def phases(self) -> list[str]:
        """The phase names in the order they were trained (empty without a `phase` column)."""
        seen: dict[str, None] = {}
        for row in self.rows:
            if "phase" in row:
                seen.setdefault(row["phase"], None)
        return list(seen)

    def columns(self, *, phase: str | None = None) -> dict[str, list[Any]]:
        """Column name -> values, of every row or only the rows of one phase (`phase` column left out then)."""
        rows = [row for row in self.rows if phase is None or row.get("phase") == phase]
        names = [name for name in self.fields if phase is None or name != "phase"]
        return {name: [row.get(name) for row in rows] for name in names}


def _parse_column(name: str, values: list[str]) -> list[Any]:
    """A whole column as int (epoch), float (every cell a number or missing) or text, never mixed."""
    if name == "epoch":
        return [int(float(v)) for v in values]
    try:
        return [math.nan if v.strip() in _MISSING else float(v) for v in values]
    except ValueError:
        return values


def read_results(source: Run | str | Path) -> Results:
    """Read a run's results.csv (the one reader of that file: trainer, plots and apps all use it).

    Args:
        source: a Run, a run folder, or the results.csv file itself.

    Returns:
        Results; with no rows and no fields when the file does not exist yet (no epoch finished).

    Raises:
        InvalidInputError: the file exists but has no `epoch` column, or an epoch that is not a number.
    """
    path = _folder(source)
    if path.suffix.lower() != ".csv":
        path = path / RESULTS_FILE
    if not path.is_file():
        return Results(path, (), ())
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields = tuple(reader.fieldnames or ())
        raw = list(reader)
    if fields and "epoch" not in fields:
        raise InvalidInputError(path, f"The results file has no 'epoch' column (it has {', '.join(fields)}); "
                                      "it should be a results.csv written by training.")
    try:
        columns = {name: _parse_column(name, [row.get(name) or "" for row in raw]) for name in fields}
    except ValueError:
        raise InvalidInputError(path, "An 'epoch' cell is not a number, so the file is damaged; delete it and "
                                      "train again.") from None
    rows = tuple({name: columns[name][i] for name in fields} for i in range(len(raw)))
    return Results(path, fields, rows)


def plot_training_curves(source: Run | str | Path, path: str | Path | None = None) -> Path | None:
    """Plot loss and every metric of results.csv against the epoch, train and validation in one panel each.

    Phase changes (head-only, then fine-tuning) are marked with a dashed vertical line.

    Args:
        source: a Run (or run folder): its results.csv is drawn into its plots/training_curves.png, and nothing
            happens when no epoch has been logged; or a results.csv file, which must exist.
        path: the PNG file to write (default: plots/training_curves.png of the run folder).

    Returns:
        The PNG written, or None when a run has no results.csv yet.

    Raises:
        InvalidInputError: a results.csv file given by name that does not exist or has no rows.
    """
    results = read_results(source)
    named_file = isinstance(source, (str, Path)) and Path(source).suffix.lower() == ".csv"
    if not results.rows:
        if named_file:
            reason = "does not exist" if not results.path.is_file() else "has no epoch rows"
            raise InvalidInputError(results.path, f"The results file {reason}; pass a run folder's results.csv "
                                                  "after at least one epoch of training.")
        return None
    if path is None:
        path = results.path.parent / "plots" / "training_curves.png"
    columns = results.columns()
    epochs = np.asarray(columns["epoch"]) + 1
    names = [n for n in columns if n not in ("epoch", "phase", "learning_rate") and not n.startswith("val_")
             and all(isinstance(v, float) for v in columns[n])]
    names = sorted(names, key=lambda n: (n != "loss", n))
    fig = Figure(figsize=(4.5 * max(len(names), 1), 3.6))
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


def _draw_bars(
    categories: Sequence[str],
    series: Mapping[str, Sequence[float]],
    path: str | Path,
    *,
    yerr: Mapping[str, np.ndarray] | None = None,
    title: str = "",
    ylabel: str = "",
) -> Path:
    """Bars for every category, one bar per series side by side; values on top, optional (2, n) error bars."""
    n_series = len(series)
    x = np.arange(len(categories))
    width = 0.8 / n_series
    fig = Figure(figsize=(max(4.0, (0.6 + 0.35 * n_series) * len(categories) + 1.5), 3.6))
    ax = fig.add_subplot()
    for k, (name, values) in enumerate(series.items()):
        heights = np.asarray(values, dtype="float64")
        shown = ~np.isnan(heights)  # a category without a value in this series gets no bar at all
        err = None if yerr is None or name not in yerr else np.asarray(yerr[name])[:, shown]
        bars = ax.bar((x + (k - (n_series - 1) / 2) * width)[shown], heights[shown], width, yerr=err,
                      capsize=4 if err is not None else 0, label=name if n_series > 1 else None)
        # With error bars a value on top would collide with them; it goes inside the bar instead.
        ax.bar_label(bars, labels=[f"{h:.3f}" for h in heights[shown]], fontsize=8,
                     label_type="center" if err is not None else "edge", padding=0 if err is not None else 2)
    ax.margins(y=0.12)
    ax.set_xticks(x, labels=list(categories), rotation=30, ha="right")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    if n_series > 1:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
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
    yerr = None
    if errors:
        half = np.asarray([float(errors.get(n, 0.0)) for n in names])
        yerr = {"": np.stack([half, half])}
    return _draw_bars(names, {"": [float(values[n]) for n in names]}, path, yerr=yerr, title=title, ylabel=ylabel)


def _number(value: Any) -> float:
    """A table cell as a float for the chart; NaN for an empty cell."""
    return math.nan if value is None or value == "" else float(value)


def _error_bars(rows: Sequence[Mapping[str, Any]], metric: str, error: str | tuple[str, str]) -> np.ndarray:
    """(2, n) distances below and above each bar: from a symmetric column (std) or (low, high) bound columns."""
    heights = np.asarray([_number(row.get(metric)) for row in rows])
    if isinstance(error, str):
        half = np.asarray([_number(row.get(error)) for row in rows])
        below, above = half, half
    else:
        low_name, high_name = error
        below = heights - np.asarray([_number(row.get(low_name)) for row in rows])
        above = np.asarray([_number(row.get(high_name)) for row in rows]) - heights
    # A missing error draws no bar; matplotlib rejects negative lengths, which a bound on the wrong side would give.
    return np.clip(np.nan_to_num(np.stack([below, above])), 0.0, None)


def write_comparison(
    out: Run | str | Path,
    name: str,
    rows: Sequence[Mapping[str, Any]],
    *,
    columns: Sequence[str],
    metric: str,
    label: str | None = None,
    group: str | None = None,
    error: str | tuple[str, str] | None = None,
    title: str = "",
    ylabel: str = "",
) -> dict[str, Path]:
    """A comparison table as `<name>.csv`, `<name>.md` and a bar chart `plots/<name>.png` in a run folder.

    One row per compared thing (backbone, seed-averaged ablation setting, model per dataset); the rows keep
    their order in every output. The chart shows one column (`metric`) as bars labelled by `label`; with `group`,
    rows sharing a label are drawn side by side, one colour per group value (e.g. baseline vs ROI-aware for each
    dataset). Error bars come from a symmetric column (std over seeds or folds) or from a (low, high) pair of
    bound columns (a bootstrap confidence interval).

    Args:
        out: the Run or folder to write into.
        name: file stem of the outputs (e.g. "comparison", "ablation").
        rows: one mapping per row.
        columns: the columns of the CSV and Markdown tables, in order.
        metric: the column the chart shows.
        label: the column naming each bar or bar group (default: the first of `columns`).
        group: the column whose values become side-by-side bars of one label (default: one bar per row).
        error: a column of half-heights (std), or (low column, high column) of absolute bounds (CI).
        title: chart title.
        ylabel: chart y-axis label (default: `metric`).

    Returns:
        {"csv": path, "md": path, "png": path}.

    Raises:
        ValueError: no rows, a `metric`, `label`, `group` or `error` column that no row has, or two rows with
            the same label (and group).
    """
    if not rows:
        raise ValueError(f"write_comparison('{name}') needs at least one row.")
    label = label or columns[0]
    errors = () if error is None else ((error,) if isinstance(error, str) else tuple(error))
    for key in (metric, label, *((group,) if group else ()), *errors):
        if not any(key in row for row in rows):
            raise ValueError(f"write_comparison('{name}'): no row has the column '{key}'.")
    keys = [(str(row.get(label)), str(row.get(group)) if group else "") for row in rows]
    if len(set(keys)) != len(keys):
        what = f"{label} and {group}" if group else label
        raise ValueError(f"write_comparison('{name}'): two rows have the same {what}; give each row its own.")

    table = [{column: row.get(column) for column in columns} for row in rows]  # other keys stay out of the file
    paths = {"csv": write_csv(_target(out, f"{name}.csv"), table, list(columns))}
    paths["md"] = atomic_write_text(_target(out, f"{name}.md"), markdown_table(rows, columns))

    categories = list(dict.fromkeys(k[0] for k in keys))
    series_names = list(dict.fromkeys(k[1] for k in keys))
    position = {key: i for i, key in enumerate(keys)}
    bars = None if error is None else _error_bars(rows, metric, error)
    series: dict[str, list[float]] = {}
    yerr: dict[str, np.ndarray] = {}
    for series_name in series_names:
        # A label without a row in this group gets no bar (NaN), so the groups stay aligned.
        index = [position.get((category, series_name)) for category in categories]
        series[series_name] = [math.nan if i is None else _number(rows[i].get(metric)) for i in index]
        if bars is not None:
            yerr[series_name] = np.array([[0.0 if i is None else bars[side, i] for i in index] for side in (0, 1)])
    paths["png"] = _draw_bars(categories, series, _target(out, "plots", f"{name}.png"), yerr=yerr or None,
                              title=title, ylabel=ylabel or metric)
    return paths


def write_classification_outputs(
    out: Run | str | Path,
    samples: Sequence[Sample] | Sequence[str],
    y_true: Sequence[int] | np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    *,
    title: str | None = None,
    relative_to: str | Path | None = None,
) -> tuple[dict[str, Any], str]:
    """Judge single-label predictions and write what shows them: predictions.csv and plots/confusion_matrix.png.

    The report is returned, not written: the app puts it into metrics.json with its other numbers.

    Args:
        out: the Run or folder to write into.
        samples: the evaluated Samples (id and path columns), or their ids only (id column), row-aligned with
            `probs`.
        y_true: (n,) true class indices.
        probs: (n, C) class probabilities; the prediction is the most probable class.
        class_names: the C class names, in the order of the probability columns.
        title: title of the confusion-matrix plot.
        relative_to: write each path relative to this folder (a dataset root) where it lies inside it, so the
            file does not depend on where the data was mounted.

    Returns:
        (report of `classification_report`, its fixed-width table for the terminal).

    Raises:
        MedImgError: there is nothing to evaluate (every test file skipped, or an empty split).
        ValueError: `samples`, `y_true` and `probs` do not have the same length, or `probs` not C columns.
    """
    from keras_medimg.metrics.classification import classification_report, format_table

    probs = np.asarray(probs, dtype="float64")
    y_true = np.asarray(y_true, dtype="int64")
    if len(samples) == 0:
        raise MedImgError("There is nothing to evaluate: the test split is empty or every file in it was skipped. "
                          "Check the test data, and skipped.csv in the run folder for the reasons.")
    if not len(samples) == len(y_true) == len(probs) or probs.ndim != 2 or probs.shape[1] != len(class_names):
        raise ValueError(f"write_classification_outputs needs {len(samples)} samples, labels and probability rows "
                         f"of {len(class_names)} columns; got {len(y_true)} labels and probs of shape {probs.shape}.")
    y_pred = probs.argmax(axis=1)
    report = classification_report(y_true, y_pred, class_names=class_names, y_prob=probs)
    plot_confusion_matrix(report["confusion_matrix"], class_names, _target(out, "plots", "confusion_matrix.png"),
                          title=title)

    with_paths = not isinstance(samples[0], str)
    fields = ["id", *(["path"] if with_paths else []), "label", "predicted", "probability",
              *(f"prob_{c}" for c in class_names)]
    rows = []
    for sample, truth, predicted, row in zip(samples, y_true, y_pred, probs):
        record: dict[str, Any] = {"id": sample if isinstance(sample, str) else sample.id}
        if with_paths:
            record["path"] = _shown_path(Path(sample.path), relative_to)
        # Six decimals: a float32 model output printed in full (0.699999988...) only hides the number.
        record.update(label=class_names[truth], predicted=class_names[predicted],
                      probability=round(float(row[predicted]), 6))
        record.update({f"prob_{c}": round(float(p), 6) for c, p in zip(class_names, row)})
        rows.append(record)
    write_csv(_target(out, "predictions.csv"), rows, fields)
    return report, format_table(report)


def _shown_path(path: Path, root: str | Path | None) -> str:
    """`path` relative to `root` when it lies inside it (POSIX separators), else as given."""
    if root is not None:
        try:
            return path.resolve().relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            pass
    return str(path)


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


def draw_overlay(image: np.ndarray, boxes: Sequence[Any], mask: np.ndarray | None, text: str = "") -> np.ndarray:
    """An 8-bit RGB picture of a grey image with its boxes (red), a mask outline (green) and a caption (yellow).

    Args:
        image: (H, W) grey pixels, 8- or 16-bit (16-bit is scaled by its own maximum).
        boxes: `io.annotations.Box` records in pixels of `image`.
        mask: a boolean (H, W) mask, or None.
        text: the caption written in the top-left corner.
    """
    import cv2

    grey = image if image.dtype == np.uint8 else (image.astype(np.float64) / max(float(image.max()), 1.0) * 255).astype(np.uint8)
    rgb = cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB) if grey.ndim == 2 else grey.copy()
    if mask is not None and mask.any():
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(rgb, contours, -1, (0, 255, 0), 1)
    for b in boxes:
        cv2.rectangle(rgb, (int(b.x1), int(b.y1)), (int(b.x2) - 1, int(b.y2) - 1), (255, 0, 0), 1)
    if text:
        scale = max(0.3, rgb.shape[1] / 400)
        cv2.putText(rgb, text, (2, int(14 * scale) + 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 0), 1, cv2.LINE_AA)
    return rgb

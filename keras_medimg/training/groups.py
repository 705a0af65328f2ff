"""One model per group of images, with stated rules for groups that cannot be trained, and merged predictions.

A *scheme* splits the images into named groups (e.g. one group per view); schemes form a hierarchy through a
`parent_of(scheme, group) -> (scheme, group) | None` function (e.g. ROI x view -> view -> all). `plan_groups`
decides, per group, whether it gets its own model or follows a rule:

- a group with fewer than `min_images` training images follows `fallback`;
- a group with one class only follows `one_class`;
- rule "parent": the group's images are predicted by its parent group (when it has one);
- rule "constant": the group's training share of positives (the training prevalence for an empty group).

`fit_groups` trains the "model" groups (`fit_group_classifier`: one Keras classifier per group with the library's
`fit_plan`); `routing_table` turns the plans into a JSON-ready routing table (the one a run saves and an export
ships); `GroupRouter` predicts images from it, each with the rule or model that actually owns its group
(`classifier_predictor` for Keras classifiers; `predict_by_scheme` when each image has its own scheme);
`scores_by_group` scores each group's images; `export_group_models` exports every trained group model.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from keras_medimg.datasets.records import Sample, Skipped

ParentOf = Callable[[str, str], "tuple[str, str] | None"]
RULES = ("model", "parent", "constant")


@dataclass
class GroupPlan:
    """One group of one scheme: its training images and the rule that predicts it."""

    scheme: str
    group: str
    train: list[Sample]
    rule: str  # "model" | "parent" | "constant"
    positives: int = 0
    reason: str = ""
    probability: float | None = None  # the constant rule's positive-class probability
    model: str | None = None  # the trained model, relative to the run folder

    @property
    def counts(self) -> tuple[int, int]:
        return len(self.train), self.positives


def plan_groups(train: Sequence[Sample], schemes: Mapping[str, Sequence[str]], group_of: Callable[[Sample, str], str],
                label_of: Callable[[Sample], int], parent_of: ParentOf, *, min_images: int, fallback: str = "parent",
                one_class: str = "constant", class_names: Sequence[str] = ("negative", "positive")
                ) -> dict[str, dict[str, GroupPlan]]:
    """Every group of every scheme (`schemes`: scheme -> all its group names), with the rule that will predict it.

    Trainable groups (at least `min_images` images, both classes) get rule "model"; the others follow `fallback`
    (too small) or `one_class`, falling back to "constant" where the rule is "parent" but the group has none."""
    for name, rule in (("fallback", fallback), ("one_class", one_class)):
        if rule not in ("parent", "constant"):
            raise ValueError(f"{name} rule '{rule}' is not one of parent, constant.")
    labels = [int(label_of(s)) for s in train]
    prevalence = float(np.mean(labels)) if labels else 0.5
    plans: dict[str, dict[str, GroupPlan]] = {}
    for scheme, groups in schemes.items():
        members: dict[str, list[tuple[Sample, int]]] = defaultdict(list)
        for sample, label in zip(train, labels):
            members[group_of(sample, scheme)].append((sample, label))
        plans[scheme] = {}
        for group in groups:
            images = [s for s, _ in members.get(group, [])]
            n, positives = len(images), sum(y for _, y in members.get(group, []))
            if n >= min_images and 0 < positives < n:
                plans[scheme][group] = GroupPlan(scheme, group, images, "model", positives)
                continue
            small = n < min_images
            reason = (f"{n} training image(s), fewer than groups.min_images={min_images}" if small
                      else f"one class only ({class_names[1] if positives else class_names[0]})")
            rule = fallback if small else one_class
            if rule == "parent" and parent_of(scheme, group) is not None:
                plans[scheme][group] = GroupPlan(scheme, group, images, "parent", positives, reason)
            else:
                probability = positives / n if n else prevalence
                plans[scheme][group] = GroupPlan(scheme, group, images, "constant", positives, reason, probability)
    return plans


def group_table(plans: Mapping[str, Mapping[str, GroupPlan]], parent_of: ParentOf, *, positive: str = "positive"
                ) -> list[dict[str, Any]]:
    """One row per group: scheme, group, train_images, train_<positive>, rule (with parent/probability), reason."""
    rows = []
    for scheme, groups in plans.items():
        for group, plan in groups.items():
            n, positives = plan.counts
            rule = plan.rule if plan.rule != "constant" else f"constant p={plan.probability:.2f}"
            if plan.rule == "parent":
                rule = "parent " + "/".join(parent_of(scheme, group))
            rows.append({"scheme": scheme, "group": group, "train_images": n, f"train_{positive}": positives,
                         "rule": rule, "reason": plan.reason})
    return rows


def routing_table(plans: Mapping[str, Mapping[str, GroupPlan]], parent_of: ParentOf, *, positive: str = "positive"
                  ) -> dict[str, dict[str, Any]]:
    """scheme -> group -> {rule, model, probability, parent, train_images, train_<positive>, reason} (JSON-ready)."""
    table: dict[str, dict[str, Any]] = {}
    for scheme, groups in plans.items():
        table[scheme] = {}
        for group, plan in groups.items():
            n, positives = plan.counts
            table[scheme][group] = {"rule": plan.rule, "model": plan.model, "probability": plan.probability,
                                    "parent": "/".join(parent_of(scheme, group) or ()) or None,
                                    "train_images": n, f"train_{positive}": positives, "reason": plan.reason}
    return table


class GroupRouter:
    """Predicts images from a routing table: each image by the model or constant that owns its group.

    `predict_model(model, samples, skipped) -> (probabilities, kept samples)` runs one loaded model; models are
    loaded once, by `load(path)`, from paths relative to `folder`."""

    def __init__(self, table: Mapping[str, Mapping[str, Mapping[str, Any]]], folder: str | Path, parent_of: ParentOf,
                 predict_model: Callable[[Any, list[Sample], Skipped], tuple[np.ndarray, list[Sample]]],
                 load: Callable[[Path], Any] | None = None):
        self.table, self.folder, self.parent_of = table, Path(folder), parent_of
        self.predict_model, self._load = predict_model, load
        self._models: dict[str, Any] = {}

    def resolve(self, scheme: str, group: str) -> tuple[str, str, Any]:
        """(scheme, group, model path or constant probability) that actually predicts `group`."""
        entry = self.table[scheme][group]
        if entry["rule"] == "model":
            return scheme, group, self.folder / entry["model"]
        if entry["rule"] == "constant":
            return scheme, group, float(entry["probability"])
        parent = self.parent_of(scheme, group)
        if parent is None:
            raise ValueError(f"group {scheme}/{group} has rule 'parent' but no parent group.")
        return self.resolve(*parent)

    def model(self, path: Path):
        """The model at `path`, loaded once."""
        if str(path) not in self._models:
            if self._load is None:
                from keras_medimg.models.classifier import load_model

                self._load = load_model
            self._models[str(path)] = self._load(path)
        return self._models[str(path)]

    def model_of(self, owner: str):
        """The loaded model of an owner 'scheme/group' (as `predict` names it), or None when a constant predicts."""
        scheme, group = owner.split("/", 1)
        entry = self.table[scheme][group]
        return self.model(self.folder / entry["model"]) if entry["rule"] == "model" else None

    def predict(self, samples: Sequence[Sample], scheme: str, groups: Sequence[str], skipped: Skipped
                ) -> tuple[np.ndarray, list[str], list[Sample]]:
        """Probabilities of `samples` (in `groups` of `scheme`, one name per sample), the 'scheme/group' that
        predicted each ('baseline/RCC' when a parent did) and the samples kept (unreadable ones are left out by
        `predict_model`, which names them in `skipped`); input order is kept."""
        targets: dict[tuple[str, str, Any], list[int]] = defaultdict(list)
        for i, group in enumerate(groups):
            targets[self.resolve(scheme, group)].append(i)
        probs: dict[int, float] = {}
        used: dict[int, str] = {}
        for (owner_scheme, owner_group, how), indices in targets.items():
            if isinstance(how, float):
                values, kept_idx = [how] * len(indices), indices
            else:
                out, kept = self.predict_model(self.model(how), [samples[i] for i in indices], skipped)
                kept_ids = {id(s) for s in kept}
                kept_idx = [i for i in indices if id(samples[i]) in kept_ids]
                values = list(out)
            for i, value in zip(kept_idx, values):
                probs[i], used[i] = float(value), f"{owner_scheme}/{owner_group}"
        order = sorted(probs)
        return np.array([probs[i] for i in order]), [used[i] for i in order], [samples[i] for i in order]


def classifier_predictor(positive: int = 1, **predict_kwargs: Any
                         ) -> Callable[[Any, list[Sample], Skipped], tuple[np.ndarray, list[Sample]]]:
    """A `GroupRouter` `predict_model` for Keras classifiers: `datasets.pipeline.predict_samples(model, samples,
    skipped=skipped, **predict_kwargs)` (batch_size, image_size, channels, normalization, strict), returning
    the probability of class index `positive`."""
    from keras_medimg.datasets.pipeline import predict_samples

    def predict_model(model, samples: list[Sample], skipped: Skipped) -> tuple[np.ndarray, list[Sample]]:
        out, kept = predict_samples(model, samples, skipped=skipped, **predict_kwargs)
        return out[:, positive], kept

    return predict_model


def fit_groups(plans: Mapping[str, Mapping[str, GroupPlan]], fit: Callable[[GroupPlan], str],
               log: logging.Logger | None = None) -> None:
    """Train every group whose rule is "model" with `fit(plan) -> model path` (set as `plan.model`), logging each
    group trained or the rule that replaces it."""
    log = log or logging.getLogger(__name__)
    for scheme, groups in plans.items():
        for group, plan in groups.items():
            if plan.rule == "model":
                log.info("[train] %s %s: %d images (%d positive)", scheme, group, *plan.counts)
                plan.model = fit(plan)
            else:
                log.info("[train] %s %s: not trained (%s); rule: %s", scheme, group, plan.reason, plan.rule)


def scores_by_group(groups: Sequence[str], used: Sequence[str], truth: np.ndarray, probs: np.ndarray,
                    score: Callable[[np.ndarray, np.ndarray], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """`score(truth, probs)` of each group's images (the group an image belongs to, `groups[i]`, not the one whose
    model predicted it), with `predicted_by`: the 'scheme/group' owners that predicted them."""
    by_group: dict[str, list[int]] = defaultdict(list)
    for i, group in enumerate(groups):
        by_group[group].append(i)
    return {group: {"predicted_by": sorted({used[i] for i in idx}), **score(truth[idx], probs[idx])}
            for group, idx in sorted(by_group.items())}


def export_group_models(table: Mapping[str, Mapping[str, Mapping[str, Any]]], folder: str | Path, out: str | Path, *,
                        keys: Sequence[str], export: Callable[[Path, Path, dict[str, Any]], Any],
                        metadata: Mapping[str, Any]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Export every trained group model of a routing table into `out/<scheme>/<group>/` with
    `export(model_path, folder, metadata)` (an `export.export_model` call; metadata gets scheme and group) and
    return (the routing table for the export: each entry's `keys` plus `files` and `max_abs_diff` of its export,
    {"scheme/group": files})."""
    folder, out = Path(folder), Path(out)
    exported: dict[str, dict[str, Any]] = {}
    models: dict[str, Any] = {}
    for scheme, groups in table.items():
        exported[scheme] = {}
        for group, entry in groups.items():
            row = {k: entry.get(k) for k in keys}
            if entry["rule"] == "model":
                result = export(folder / entry["model"], out / scheme / group,
                                {**metadata, "scheme": scheme, "group": group})
                row["files"] = {fmt: str(Path(p).relative_to(out)) for fmt, p in result.paths.items()}
                row["max_abs_diff"] = result.max_abs_diff
                models[f"{scheme}/{group}"] = row["files"]
            exported[scheme][group] = row
    return exported, models


def predict_by_scheme(predict: Callable[[list[Sample], str], tuple[np.ndarray, list[str], list[Sample]]],
                      samples: Sequence[Sample], schemes: Sequence[str]) -> tuple[np.ndarray, list[str], list[Sample]]:
    """Predict each sample with its own scheme (e.g. the most specific one its known attributes allow):
    `predict(subset, scheme) -> (probabilities, owners, kept)` once per scheme; results in input order."""
    position = {id(s): i for i, s in enumerate(samples)}
    results: list[tuple[int, float, str, Sample]] = []
    for scheme in dict.fromkeys(schemes):
        subset = [s for s, name in zip(samples, schemes) if name == scheme]
        probs, owners, kept = predict(subset, scheme)
        results += [(position[id(s)], float(p), o, s) for p, o, s in zip(probs, owners, kept)]
    results.sort(key=lambda item: item[0])
    return np.array([r[1] for r in results]), [r[2] for r in results], [r[3] for r in results]


def fit_group_classifier(plan: GroupPlan, run: Any, build: Callable[[], Any], *, class_names: Sequence[str],
                         label_of: Callable[[Sample], int], train_config: Any, skipped: Skipped, weights: str | None = None,
                         freeze: str = "none", resume: bool = False, seed: int = 0, strict: bool = False,
                         augment: Any = None, **dataset: Any) -> Path:
    """Fit `build()` on one group's training images (no validation set) with the library's `fit_plan` into
    `<run folder>/groups/<scheme>/<group>/` (a `runs.Run` of `run`'s app); returns the best (else last) checkpoint. `dataset`: `make_dataset`'s
    image keywords (image_size, channels, normalization); `label_of` gives the class-weight labels of the
    images that could be read."""
    from keras_medimg.datasets.pipeline import make_dataset
    from keras_medimg.runs import Run
    from keras_medimg.training.trainer import fit_plan, set_seed

    set_seed(seed)
    sub = Run(dir=run.subdir(f"groups/{plan.scheme}/{plan.group}"), app=run.app, mode="train")
    train_ds = make_dataset(plan.train, training=True, batch_size=train_config.batch_size, class_names=list(class_names),
                            augment=augment, seed=seed, skipped=skipped, strict=strict, **dataset)
    kept = [s for s in plan.train if str(s.path) not in skipped.paths()]
    result = fit_plan(build, train_ds, None, config=train_config, run=sub, weights=weights, freeze=freeze,
                      labels=[label_of(s) for s in kept], resume=resume)
    return Path(result.best_path or result.last_path)

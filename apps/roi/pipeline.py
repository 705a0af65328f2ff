"""ROI-aware benign/malignant mammography (Yoshitsugu et al. 2025) as plain functions.

The study's method: split the images by whether an ROI annotation exists and by view (RCC, LCC, RMLO, LMLO),
train one classifier per group, predict each test image with its group's model and merge the predictions. It is
compared with the view-only baseline (4 models); we add a single pooled model and the ROI-only rule
("malignant if an ROI exists", no image model), which shows how much of the gain the grouping alone gives.

Groups that cannot be trained are not: a group with fewer than `groups.min_images` training images follows
`groups.fallback` (parent: its images go to the parent model, ROI group -> its view's baseline model -> the pooled
model; constant: the group's training share of malignant images), a group with one class only follows
`groups.one_class` (constant, the default: that class, which is all a model trained on it could learn; or parent).
The rule applied to each group is in `routing.json`, `groups.csv` and the printed group table.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from keras_medimg.apps.roi.config import FORMATS, SCHEMES, RoiAppConfig
from keras_medimg.datasets.mammography import CLASSES, STANDARD_VIEWS, composition, has_roi, label_of, standard_view
from keras_medimg.datasets.records import Sample, Skipped
from keras_medimg.errors import ConfigError, InvalidInputError
from keras_medimg.runs import Run, RunPlace, RunResult, finish_run, open_trained, start_run, write_json

log = logging.getLogger(__name__)
APP = "roi"
ROUTING_FILE = "routing.json"
DETECTOR_FILE = "detector.pt"
METHODS = ("baseline", "roi_aware", "pooled", "roi_only_rule")
METHOD_NAMES = {"baseline": "baseline (view only, 4 models)", "roi_aware": "ROI-aware (ROI x view, 8 models)",
                "pooled": "pooled (1 model)", "roi_only_rule": "ROI-only rule (no image model)",
                "roi_aware_detected": "ROI-aware, detected ROI", "roi_only_rule_detected": "ROI-only rule, detected ROI"}
SCORES = ("sensitivity", "specificity", "f1", "accuracy", "roc_auc")


# === Data ===


def demo_data(out_dir: str | Path | None, cfg: RoiAppConfig, fmt: str | None = None) -> Path:
    """Write (or, without `out_dir`, find or make the cached) demo set of `fmt` (default `data.format`)."""
    from keras_medimg.datasets.synthetic.roi import generate_cdd_cesm, generate_vindr

    fmt = fmt or cfg.data.format
    if fmt == "vindr":
        generate, params = generate_vindr, {"n_studies": cfg.data.demo_studies}
    elif fmt == "cddcesm":
        generate, params = generate_cdd_cesm, {"n_patients": cfg.data.demo_patients}
    else:
        raise ConfigError(f"There is no demo data in the '{fmt}' format; use vindr or cddcesm, or give a manifest CSV "
                          "with --data.")
    params.update(height=cfg.data.demo_height, width=cfg.data.demo_width, seed=cfg.seed)
    if out_dir is not None:
        out = Path(out_dir)
        if out.exists() and any(out.iterdir()):
            raise ConfigError(f"{out} is not empty; demo-data writes only into a new or empty folder.")
        return generate(out, **params)
    from keras_medimg.datasets.synthetic import ensure_demo_data

    return ensure_demo_data(f"roi-{fmt}", generate, **params)


def data_root(cfg: RoiAppConfig) -> Path:
    if cfg.data.format not in FORMATS:
        raise ConfigError(f"data.format '{cfg.data.format}' is not one of {', '.join(FORMATS)}.")
    if cfg.data.root:
        return Path(cfg.data.root)
    if cfg.data.format == "csv":
        raise ConfigError("data.format csv needs a manifest: pass it with --data manifest.csv.")
    return demo_data(None, cfg)


def load_samples(cfg: RoiAppConfig, skipped: Skipped) -> list[Sample]:
    """Every labelled image of the dataset, each with `meta["split"]` set (official or patient-grouped seeded)."""
    from keras_medimg.datasets.cdd_cesm import grouped_split, read_cdd_cesm
    from keras_medimg.datasets.mammography import read_manifest
    from keras_medimg.datasets.vindr import read_vindr

    root = data_root(cfg)
    if cfg.data.format == "vindr":
        samples = read_vindr(root, skipped=skipped, strict=cfg.strict)
    elif cfg.data.format == "cddcesm":
        samples = read_cdd_cesm(root, image_type=cfg.data.image_type, skipped=skipped, strict=cfg.strict,
                                point_radius=cfg.data.point_radius)
    else:
        samples = read_manifest(root, skipped=skipped, strict=cfg.strict)
    return grouped_split(samples, test_ratio=cfg.data.test_ratio, seed=cfg.seed)


def prepared_dir(cfg: RoiAppConfig) -> Path:
    if cfg.data.prepared:
        return Path(cfg.data.prepared)
    from keras_medimg.backend import medimg_home

    key = json.dumps({"root": str(data_root(cfg).resolve()), "format": cfg.data.format, "type": cfg.data.image_type,
                      "settings": asdict(cfg.prepare)}, sort_keys=True)
    return medimg_home() / "prepared" / f"roi-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def prepare_samples(samples: Sequence[Sample], cfg: RoiAppConfig, out_dir: Path, skipped: Skipped) -> list[Sample]:
    """Window (DICOM VOI, MONOCHROME1), breast-crop, CLAHE and resize every image once, through the library's
    `prepare` (parallel, resumable: outputs newer than their source are kept); returns the samples pointing at the
    prepared 16-bit PNGs (the originals in `meta["source"]`, crop and scale in `meta["prepared"]`)."""
    import csv
    import tempfile

    from keras_medimg.datasets.prepare import prepare_images

    out_dir.mkdir(parents=True, exist_ok=True)
    p = cfg.prepare
    # The input listing goes to a temporary folder: prepare refuses a manifest inside its output folder, and a
    # file beside it could be the user's.
    with tempfile.TemporaryDirectory(prefix="medimg-roi-") as scratch:
        listing = Path(scratch) / "inputs.csv"
        with open(listing, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["id", "path"])
            writer.writerows([[s.id, str(Path(s.path).resolve())] for s in samples])
        result = prepare_images(listing, out_dir, window=p.dicom_window(), crop=p.crop, margin=p.margin, clahe=p.clahe,
                                clip_limit=p.clip_limit, size=p.size, workers=cfg.data.workers, strict=cfg.strict)
    for item in result.skipped:
        skipped.add(item.path, item.reason, line=item.line)
    rows = {row["id"]: row for row in result.rows}
    prepared = []
    for sample in samples:
        row = rows.get(sample.id)
        if row is None:
            continue
        prepared.append(replace(sample, path=out_dir / row["output"], meta={**sample.meta, "source": str(sample.path),
                                                                            "prepared": _geometry(row)}))
    log.info("[prepare] %d images ready in %s (%d converted, %d reused)", len(prepared), out_dir, result.converted,
             result.reused)
    return prepared


def _geometry(row: dict[str, Any]) -> dict[str, float]:
    return {k: float(row[k]) for k in ("crop_y0", "crop_x0", "scale") if str(row.get(k, "")) != ""}


def prepare(cfg: RoiAppConfig, out_dir: str | Path | None = None) -> tuple[Path, list[Sample], Skipped]:
    """`medimg roi prepare`: the dataset's images, prepared into `out_dir` (default `prepared_dir(cfg)`)."""
    skipped = Skipped()
    samples = load_samples(cfg, skipped)
    out = Path(out_dir) if out_dir else prepared_dir(cfg)
    return out, prepare_samples(samples, cfg, out, skipped), skipped


# === Groups ===


def group_of(sample: Sample, scheme: str, roi: bool | None = None) -> str:
    """The sample's group in a scheme: 'all' (pooled), 'RCC' (baseline), 'roi-RCC' / 'noroi-RCC' (ROI-aware)."""
    if scheme == "pooled":
        return "all"
    view = standard_view(sample)
    if scheme == "baseline":
        return view
    return f"{'roi' if (has_roi(sample) if roi is None else roi) else 'noroi'}-{view}"


def parent_of(scheme: str, group: str) -> tuple[str, str] | None:
    if scheme == "roi_aware":
        return "baseline", group.split("-", 1)[1]
    if scheme == "baseline":
        return "pooled", "all"
    return None


def all_groups(scheme: str) -> list[str]:
    if scheme == "pooled":
        return ["all"]
    if scheme == "baseline":
        return list(STANDARD_VIEWS)
    return [f"{flag}-{view}" for flag in ("roi", "noroi") for view in STANDARD_VIEWS]


@dataclass
class GroupPlan:
    """One group of one scheme: its training images and the rule that predicts it."""

    scheme: str
    group: str
    train: list[Sample]
    rule: str  # "model" | "parent" | "constant"
    reason: str = ""
    probability: float | None = None  # the constant rule's malignancy probability
    model: str | None = None  # the trained model, relative to the run folder

    @property
    def counts(self) -> tuple[int, int]:
        return len(self.train), sum(label_of(s) for s in self.train)


def plan_groups(train: Sequence[Sample], cfg: RoiAppConfig) -> dict[str, dict[str, GroupPlan]]:
    """Every group of every scheme, with the rule that will predict it (trainable groups: "model")."""
    prevalence = float(np.mean([label_of(s) for s in train])) if train else 0.5
    plans: dict[str, dict[str, GroupPlan]] = {}
    for scheme in SCHEMES:
        members: dict[str, list[Sample]] = defaultdict(list)
        for sample in train:
            members[group_of(sample, scheme)].append(sample)
        plans[scheme] = {}
        for group in all_groups(scheme):
            images = members.get(group, [])
            n, positives = len(images), sum(label_of(s) for s in images)
            if n >= cfg.groups.min_images and 0 < positives < n:
                plans[scheme][group] = GroupPlan(scheme, group, images, "model")
                continue
            small = n < cfg.groups.min_images
            reason = (f"{n} training image(s), fewer than groups.min_images={cfg.groups.min_images}" if small
                      else f"one class only ({'malignant' if positives else 'benign'})")
            rule = cfg.groups.fallback if small else cfg.groups.one_class
            if rule == "parent" and parent_of(scheme, group) is not None:
                plans[scheme][group] = GroupPlan(scheme, group, images, "parent", reason)
            else:
                probability = positives / n if n else prevalence
                plans[scheme][group] = GroupPlan(scheme, group, images, "constant", reason, probability=probability)
    return plans


def group_table(plans: dict[str, dict[str, GroupPlan]]) -> list[dict[str, Any]]:
    rows = []
    for scheme, groups in plans.items():
        for group, plan in groups.items():
            n, positives = plan.counts
            rule = plan.rule if plan.rule != "constant" else f"constant p={plan.probability:.2f}"
            if plan.rule == "parent":
                rule = "parent " + "/".join(parent_of(scheme, group))
            rows.append({"scheme": scheme, "group": group, "train_images": n, "train_malignant": positives,
                         "rule": rule, "reason": plan.reason})
    return rows


# === Models ===


def backbone_model(cfg: RoiAppConfig):
    """The feature extractor: the registry entry `model.backbone`, or its family at `network.widths`."""
    from keras_medimg.models.backbones import get_spec

    spec = get_spec(cfg.model.backbone)
    widths, depths = cfg.network.widths, cfg.network.depths
    if not widths:
        return cfg.model.backbone
    if cfg.model.weights:
        raise ConfigError("Pretrained weights fit only the registry's sizes: set network.widths=[] to use "
                          f"model.weights={cfg.model.weights}.")
    if len(widths) != len(depths):
        raise ConfigError(f"network.widths {widths} and network.depths {depths} need one entry per stage each.")
    shape = (cfg.model.image_size, cfg.model.image_size, 1)
    if spec.family == "convnextv2":
        from keras_medimg.models.convnextv2 import ConvNeXtV2Backbone

        return ConvNeXtV2Backbone(depths=tuple(depths), dims=tuple(widths), image_shape=shape, name="convnextv2_small_widths")
    if cfg.model.backbone.startswith("swin"):
        return _small_swin(shape, widths, depths)
    raise ConfigError(f"network.widths applies to the ConvNeXtV2 and Swin backbones, not {cfg.model.backbone}; "
                      "set network.widths=[] for it.")


def _small_swin(shape: tuple[int, int, int], widths: list[int], depths: list[int]):
    """keras-hub's Swin Transformer at `widths[0]` embedding width (each stage doubles it), as a feature map."""
    import keras
    import keras_hub

    if shape[0] % 32:
        raise ConfigError(f"Swin needs model.image_size divisible by 32, not {shape[0]}.")
    heads = tuple(max(1, w // 16) for w in (widths[0] * 2**i for i in range(len(depths))))
    window = max(1, min(7, shape[0] // 32))
    hub = keras_hub.models.SwinTransformerBackbone(image_shape=shape, window_size=window, drop_path=0.0, embed_dim=widths[0],
                                                    depths=tuple(depths), num_heads=heads, name="swin_transformer")
    inputs = keras.Input(shape=shape, name="images")
    tokens = hub(inputs)
    side = shape[0] // 2 ** (len(depths) + 1)
    feature_map = keras.layers.Reshape((side, side, tokens.shape[-1]), name="feature_map")(tokens)
    return keras.Model(inputs, feature_map, name="swin_small_widths")


def _normalization(cfg: RoiAppConfig):
    from keras_medimg.models.backbones import get_spec

    return get_spec(cfg.model.backbone).input_normalization(1)


def _input(cfg: RoiAppConfig) -> dict[str, Any]:
    return {"image_size": cfg.model.image_size, "channels": 1, "normalization": _normalization(cfg)}


def train_group(plan: GroupPlan, cfg: RoiAppConfig, run: Run, skipped: Skipped, *, resume: bool = False) -> str:
    """Fit one group's classifier into `run/groups/<scheme>/<group>/`; returns the model path relative to `run`."""
    from keras_medimg.datasets.pipeline import make_dataset
    from keras_medimg.models.classifier import build_classifier
    from keras_medimg.training.trainer import fit_plan, set_seed

    set_seed(cfg.seed)
    sub = Run(dir=run.subdir(f"groups/{plan.scheme}/{plan.group}"), app=APP, mode="train")
    train_ds = make_dataset(plan.train, training=True, batch_size=cfg.train.batch_size, class_names=list(CLASSES),
                            augment=cfg.augment,
                            seed=cfg.seed, skipped=skipped, strict=cfg.strict, **_input(cfg))
    kept = [s for s in plan.train if str(s.path) not in skipped.paths()]
    m = cfg.model

    def build():
        return build_classifier(backbone_model(cfg), len(CLASSES), input_shape=(m.image_size, m.image_size, 1),
                                weights=m.weights, pooling=m.pooling, hidden_units=m.hidden_units, dropout=m.dropout)

    result = fit_plan(build, train_ds, None, config=cfg.train, run=sub, weights=m.weights, freeze=m.freeze,
                      labels=[label_of(s) for s in kept], resume=resume)
    return str(Path(result.best_path or result.last_path).relative_to(run.dir))


class Router:
    """Predicts a scheme's malignancy probabilities by routing every image to its group's rule."""

    def __init__(self, routing: dict[str, Any], folder: Path, cfg: RoiAppConfig):
        self.routing, self.folder, self.cfg = routing, folder, cfg
        self._models: dict[str, Any] = {}

    def resolve(self, scheme: str, group: str) -> tuple[str, str, Any]:
        """(scheme, group, model path or constant probability) that actually predicts `group`."""
        entry = self.routing["schemes"][scheme][group]
        if entry["rule"] == "model":
            return scheme, group, self.folder / entry["model"]
        if entry["rule"] == "constant":
            return scheme, group, float(entry["probability"])
        return self.resolve(*parent_of(scheme, group))

    def model(self, path: Path):
        from keras_medimg.models.classifier import load_model

        if str(path) not in self._models:
            self._models[str(path)] = load_model(path)
        return self._models[str(path)]

    def predict(self, samples: Sequence[Sample], scheme: str, skipped: Skipped, roi: Sequence[bool] | None = None
                ) -> tuple[np.ndarray, list[str], list[Sample]]:
        """Probabilities, the group that predicted each image ('baseline/RCC' when a parent did) and the samples
        kept (unreadable images are left out and named in `skipped`)."""
        from keras_medimg.datasets.pipeline import predict_samples

        if scheme == "roi_only_rule":
            flags = [has_roi(s) if roi is None else r for s, r in zip(samples, roi or [None] * len(samples))]
            return np.array(flags, float), ["roi" if f else "noroi" for f in flags], list(samples)
        targets: dict[tuple[str, str, Any], list[int]] = defaultdict(list)
        for i, sample in enumerate(samples):
            flag = None if roi is None else roi[i]
            targets[self.resolve(scheme, group_of(sample, scheme, flag))].append(i)
        probs: dict[int, float] = {}
        used: dict[int, str] = {}
        for (owner_scheme, owner_group, how), indices in targets.items():
            chosen = [samples[i] for i in indices]
            if isinstance(how, float):
                values, kept_idx = [how] * len(indices), indices
            else:
                out, kept = predict_samples(self.model(how), chosen, batch_size=self.cfg.train.batch_size,
                                            skipped=skipped, strict=self.cfg.strict, **_input(self.cfg))
                kept_ids = {id(s) for s in kept}
                kept_idx = [i for i in indices if id(samples[i]) in kept_ids]
                values = list(out[:, 1])
            for i, value in zip(kept_idx, values):
                probs[i], used[i] = float(value), f"{owner_scheme}/{owner_group}"
        order = sorted(probs)
        return np.array([probs[i] for i in order]), [used[i] for i in order], [samples[i] for i in order]


# === Train ===


def _check(cfg: RoiAppConfig) -> None:
    from keras_medimg.models.backbones import get_spec

    get_spec(cfg.model.backbone)
    if not 0 < cfg.data.test_ratio < 1:
        raise ConfigError(f"data.test_ratio {cfg.data.test_ratio} must be between 0 and 1.")


def train(cfg: RoiAppConfig, *, run: Run | RunPlace | None = None, resume: bool = False) -> RunResult:
    """Prepare the data, train the pooled, the 4 baseline and the 8 ROI-aware models on one split, evaluate all."""
    _check(cfg)
    skipped = Skipped()
    samples = load_samples(cfg, skipped)
    train_set = [s for s in samples if s.meta["split"] == "train"]
    test_set = [s for s in samples if s.meta["split"] == "test"]
    if not train_set or not test_set:
        raise InvalidInputError(data_root(cfg), f"the split leaves {len(train_set)} training and {len(test_set)} test "
                                "images; both sides need images (check the split column or data.test_ratio).")
    run = start_run(APP, "train", cfg, run)
    prepared = prepare_samples(samples, cfg, prepared_dir(cfg), skipped)
    train_set = [s for s in prepared if s.meta["split"] == "train"]
    test_set = [s for s in prepared if s.meta["split"] == "test"]
    plans = plan_groups(train_set, cfg)
    started = time.perf_counter()
    routing = {"schemes": {}, "classes": list(CLASSES), "threshold": cfg.evaluate.threshold,
               "input": {"image_size": cfg.model.image_size, "channels": 1, "normalization": _normalization(cfg).to_dict()},
               "preprocessing": asdict(cfg.prepare), "backbone": cfg.model.backbone, "network": asdict(cfg.network),
               "fallback": cfg.groups.fallback, "one_class": cfg.groups.one_class}
    for scheme in SCHEMES:
        routing["schemes"][scheme] = {}
        for group, plan in plans[scheme].items():
            if plan.rule == "model":
                log.info("[train] %s %s: %d images (%d malignant)", scheme, group, *plan.counts)
                plan.model = train_group(plan, cfg, run, skipped, resume=resume)
            else:
                log.info("[train] %s %s: not trained (%s); rule: %s", scheme, group, plan.reason, plan.rule)
            n, positives = plan.counts
            routing["schemes"][scheme][group] = {"rule": plan.rule, "model": plan.model, "probability": plan.probability,
                                                 "parent": "/".join(parent_of(scheme, group) or ()) or None,
                                                 "train_images": n, "train_malignant": positives, "reason": plan.reason}
    write_json(run.path(ROUTING_FILE), routing)
    seconds = time.perf_counter() - started
    detector = None
    if cfg.roi.source == "detector":
        detector = train_roi_detector(cfg, run, train_set, test_set)
    metrics, table = evaluate_split(cfg, run, test_set, routing, run.dir, skipped, detector=detector)
    metrics.update({"data": str(data_root(cfg)), "format": cfg.data.format, "train_images": len(train_set),
                    "test_images": len(test_set), "composition": {"train": composition(train_set), "test": composition(test_set)},
                    "groups": group_table(plans), "train_seconds": round(seconds, 1)})
    run.write_csv("groups.csv", group_table(plans))
    return finish_run(run, metrics, skipped, table)


# === Evaluate ===


def evaluate_split(cfg: RoiAppConfig, run: Run, test: Sequence[Sample], routing: dict[str, Any], folder: Path,
                   skipped: Skipped, *, detector: Path | None = None) -> tuple[dict[str, Any], str]:
    """Every method on the test images (merged and per group), intervals, predictions.csv and the comparison."""
    from keras_medimg.metrics.classification import binary_report

    router = Router(routing, folder, cfg)
    results, predictions = {}, {s.id: _prediction_base(s) for s in test}
    evaluations = [(method, method, None) for method in METHODS]
    if cfg.roi.source == "detector":
        detected = detect_roi(cfg, detector, test)
        for sample, flag in zip(test, detected):
            predictions[sample.id]["roi_detected"] = int(flag)
        evaluations += [("roi_aware_detected", "roi_aware", detected), ("roi_only_rule_detected", "roi_only_rule", detected)]
    for name, scheme, roi in evaluations:
        probs, groups, kept = router.predict(test, scheme, skipped, roi)
        truth = np.array([label_of(s) for s in kept])
        report = binary_report(truth, probs, cfg.evaluate.threshold, bootstrap=cfg.evaluate.bootstrap, seed=cfg.seed)
        results[name] = {"merged": report, "groups": _routed_groups(kept, groups, truth, probs, scheme, roi, test, cfg)}
        for sample, prob, group in zip(kept, probs, groups):
            predictions[sample.id][f"{name}_group"] = group
            predictions[sample.id][f"{name}_probability"] = round(float(prob), 6)
    run.write_csv("predictions.csv", list(predictions.values()))
    rows = comparison_rows(results)
    table = write_tables(run, rows, cfg)
    return {"methods": results, "roi_source": cfg.roi.source, "threshold": cfg.evaluate.threshold}, table


def _routed_groups(kept, groups, truth, probs, method, roi, test, cfg) -> dict[str, Any]:
    """Per-group scores of a method, grouped by the group the image belongs to (not the model that predicted)."""
    from keras_medimg.metrics.classification import binary_report

    if method == "roi_only_rule":
        return {}
    index = {id(s): i for i, s in enumerate(test)}
    by_group: dict[str, list[int]] = defaultdict(list)
    for i, sample in enumerate(kept):
        flag = None if roi is None else roi[index[id(sample)]]
        by_group[group_of(sample, method, flag)].append(i)
    return {group: {"predicted_by": sorted({groups[i] for i in idx}),
                    **binary_report(truth[idx], probs[idx], cfg.evaluate.threshold, bootstrap=cfg.evaluate.bootstrap,
                                    seed=cfg.seed)}
            for group, idx in sorted(by_group.items())}


def _prediction_base(sample: Sample) -> dict[str, Any]:
    return {"id": sample.id, "view": sample.view, "laterality": sample.laterality, "roi": int(has_roi(sample)),
            "label": sample.label}


def comparison_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for method in results:
        report = results[method]["merged"]
        row = {"method": METHOD_NAMES[method]}
        for score in SCORES:
            row[score] = report.get(score)
            low, high = (report.get("ci") or {}).get(score) or (None, None)
            row[f"{score}_low"], row[f"{score}_high"] = low, high
        row["images"] = report["support"]
        rows.append(row)
    return rows


def _cell(value: Any, low: Any, high: Any) -> str:
    if value is None:
        return "n/a"
    if low is None or high is None:
        return f"{value:.2f}"
    return f"{value:.2f} [{low:.2f}, {high:.2f}]"


def write_tables(run: Run, rows: list[dict[str, Any]], cfg: RoiAppConfig) -> str:
    """comparison.csv/.md/plot (one row per method) and study_table.md (the study's Tables 5-8 layout: scores as
    rows, methods as columns, 95% bootstrap intervals in brackets); returns the latter."""
    from keras_medimg.reporting import markdown_table, write_comparison

    columns = ["method", *[c for s in SCORES for c in (s, f"{s}_low", f"{s}_high")], "images"]
    write_comparison(run, "comparison", rows, columns=columns, metric="f1", label="method", error=("f1_low", "f1_high"),
                     title=f"F-score on the test images ({cfg.model.backbone}, {cfg.data.format})", ylabel="F-score")
    names = {"sensitivity": "Sensitivity", "specificity": "Specificity", "f1": "F-score", "accuracy": "Accuracy",
             "roc_auc": "ROC AUC"}
    layout = [{"": names[s], **{r["method"]: _cell(r[s], r[f"{s}_low"], r[f"{s}_high"]) for r in rows}} for s in SCORES]
    table = markdown_table(layout, ["", *[r["method"] for r in rows]])
    caveat = ("\nROI presence is itself tied to the label, so part of the ROI-aware gain can come from the grouping "
              "rather than the images (compare the ROI-only rule row); and a new image has no radiologist's ROI yet "
              "(roi.source: detector shows the method with detected ROIs).\n")
    run.path("study_table.md").write_text(table + "\n" + caveat, encoding="utf-8")
    return table + "\n" + caveat


def evaluate(cfg: RoiAppConfig, *, run: Run | RunPlace | None = None) -> RunResult:
    """Re-evaluate a train run on the test split of its data (or `data.root` given now)."""
    trained = open_trained(cfg.predict.weights, APP, RoiAppConfig)
    config = trained.config
    if cfg.data.root:
        config = replace(config, data=replace(config.data, root=cfg.data.root, format=cfg.data.format))
    config = replace(config, evaluate=cfg.evaluate, roi=replace(config.roi, source=cfg.roi.source), strict=cfg.strict)
    routing = json.loads(trained.require(ROUTING_FILE, how="Train it with `medimg roi train`.").read_text())
    detector = None
    if config.roi.source == "detector":
        detector = trained.require("weights", DETECTOR_FILE, how="Train with --set roi.source=detector to get a detector.")
    skipped = Skipped()
    samples = load_samples(config, skipped)
    test = [s for s in samples if s.meta["split"] == "test"]
    if not test:
        raise InvalidInputError(data_root(config), "the data has no test images to evaluate on.")
    run = start_run(APP, "evaluate", cfg, run)
    test = prepare_samples(test, config, prepared_dir(config), skipped)
    metrics, table = evaluate_split(config, run, test, routing, trained.dir, skipped, detector=detector)
    metrics["weights"] = str(trained.dir)
    return finish_run(run, metrics, skipped, table)


# === ROI detector (roi.source: detector) ===


def train_roi_detector(cfg: RoiAppConfig, run: Run, train: Sequence[Sample], test: Sequence[Sample]) -> Path:
    """Train the library's YOLO stage on the ROI boxes (mapped into the prepared images) -> weights/detector.pt."""
    from keras_medimg.detection.yolo import train_detector

    data_yaml = _yolo_set(run.subdir("detector_data"), train, test)
    result = train_detector(data_yaml, run.subdir("detector"), model=cfg.roi.detector_model, epochs=cfg.roi.detector_epochs,
                            imgsz=cfg.roi.detector_imgsz, seed=cfg.seed)
    target = run.path("weights", DETECTOR_FILE)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(Path(result.best if Path(result.best).is_file() else result.last).read_bytes())
    log.info("[detector] trained on %d images with ROI boxes: %s", sum(bool(s.boxes) for s in train), result.metrics)
    return target


def prepared_boxes(sample: Sample) -> list[tuple[float, float, float, float]]:
    """The sample's ROI boxes in the pixels of its prepared image (crop offset, then scale)."""
    geometry = sample.meta.get("prepared") or {}
    y0, x0, scale = geometry.get("crop_y0", 0.0), geometry.get("crop_x0", 0.0), geometry.get("scale", 1.0)
    return [((b.x1 - x0) * scale, (b.y1 - y0) * scale, (b.x2 - x0) * scale, (b.y2 - y0) * scale) for b in sample.boxes]


def _yolo_set(folder: Path, train: Sequence[Sample], test: Sequence[Sample]) -> Path:
    """A one-class ("lesion") YOLO set of the prepared images: train = training split, val = test split."""
    from keras_medimg.io.annotations import Box, write_yolo, write_yolo_data_yaml
    from keras_medimg.io.images import read_image, to_float, write_image

    for split, samples in (("train", train), ("val", test)):
        for sample in samples:
            image = to_float(read_image(sample.path))
            height, width = image.shape[:2]
            write_image(folder / "images" / split / f"{sample.id}.png", image, bits=8)
            boxes = [Box(max(0.0, x1), max(0.0, y1), min(width, x2), min(height, y2), label=0)
                     for x1, y1, x2, y2 in prepared_boxes(sample)]
            write_yolo(folder / "labels" / split / f"{sample.id}.txt", [b for b in boxes if b.x2 > b.x1 and b.y2 > b.y1],
                       (width, height), ["lesion"])
    return write_yolo_data_yaml(folder / "data.yaml", folder, "images/train", "images/val", ["lesion"])


def detect_roi(cfg: RoiAppConfig, detector: Path | None, samples: Sequence[Sample]) -> list[bool]:
    """ROI present = the detector finds a lesion at `roi.detector_conf` or above on the prepared image."""
    from keras_medimg.detection.yolo import detect, load_detector
    from keras_medimg.io.images import read_image

    if detector is None:
        raise ConfigError("roi.source is detector but the run has no detector; train with --roi-source detector.")
    model = load_detector(detector)
    flags = []
    for sample in samples:
        [found] = detect(model, [read_image(sample.path)], conf=cfg.roi.detector_conf, imgsz=cfg.roi.detector_imgsz)
        flags.append(bool(found))
    return flags


# === Predict and export ===


def _routing(trained) -> dict[str, Any]:
    return json.loads(trained.require(ROUTING_FILE, how="Train it with `medimg roi train`.").read_text(encoding="utf-8"))


def read_predict_csv(path: Path) -> dict[str, dict[str, Any]]:
    """The predict CSV: path (or id), view, laterality, roi (each optional but path/id) -> {key: values}; keys are
    the resolved path, the path as written, and the id, so an image is found by any of them."""
    import csv

    from keras_medimg.datasets.mammography import check_optional, normalise_laterality, normalise_view, parse_flag

    out: dict[str, dict[str, Any]] = {}
    problems = []
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        cols = check_optional(reader.fieldnames, ("path", "id", "view", "laterality", "roi"))
        if "path" not in cols and "id" not in cols:
            raise InvalidInputError(path, "the predict CSV needs a 'path' or 'id' column naming each image, plus any of "
                                    "view, laterality, roi.")
        for row in reader:
            values: dict[str, Any] = {}
            try:
                if (text := (row.get(cols.get("view", "")) or "").strip()):
                    values["view"] = normalise_view(text)
                if (text := (row.get(cols.get("laterality", "")) or "").strip()):
                    values["laterality"] = normalise_laterality(text)
                if (text := (row.get(cols.get("roi", "")) or "").strip()):
                    values["roi"] = parse_flag(text)
            except ValueError as exc:
                problems.append((reader.line_num, f"{exc}"))
                continue
            for key in ("path", "id"):
                if (text := (row.get(cols.get(key, "")) or "").strip()):
                    out[text] = values
                    if key == "path":
                        out[str((path.parent / text).resolve())] = values
    if problems:
        from keras_medimg.errors import problems_error

        raise problems_error(path, problems, what="Fix these rows of the predict CSV.")
    return out


def _describe(samples: list[Sample], extra: dict[str, dict[str, Any]], skipped: Skipped) -> None:
    """Fill view, laterality and ROI presence from the CSV, else from the DICOM header (never patient data)."""
    from keras_medimg.io.dicom import is_dicom, read_dicom_meta

    for sample in samples:
        given = extra.get(str(Path(sample.path).resolve())) or extra.get(sample.id) or extra.get(Path(sample.path).name) or {}
        sample.view, sample.laterality = given.get("view"), given.get("laterality")
        if (sample.view is None or sample.laterality is None) and is_dicom(sample.path):
            try:
                meta = read_dicom_meta(sample.path)
            except InvalidInputError as exc:
                skipped.add_error(exc)
                continue
            from keras_medimg.datasets.mammography import normalise_laterality, normalise_view

            try:
                sample.view = sample.view or (normalise_view(meta.view_position) if meta.view_position else None)
                sample.laterality = sample.laterality or (normalise_laterality(meta.image_laterality)
                                                          if meta.image_laterality else None)
            except ValueError:
                pass  # a header view such as "LM" for another body part: routed to the pooled model
        if "roi" in given:
            sample.meta["roi"] = given["roi"]


def predict(cfg: RoiAppConfig, *, run: Run | RunPlace | None = None) -> RunResult:
    """Route every image to its group: ROI-aware group when view, laterality and ROI presence are known, the view
    baseline when ROI presence is unknown, the pooled model when the view is unknown; write predictions.csv."""
    from keras_medimg.datasets.sources import list_images

    trained = open_trained(cfg.predict.weights, APP, RoiAppConfig)
    config = replace(trained.config, strict=cfg.strict, roi=replace(trained.config.roi, source=cfg.roi.source),
                     evaluate=replace(trained.config.evaluate, threshold=cfg.evaluate.threshold))
    routing = _routing(trained)
    if cfg.predict.source is None:
        raise ConfigError("No images given: medimg roi predict SOURCE --weights RUN.")
    skipped = Skipped()
    samples = list_images(cfg.predict.source, skipped=skipped)
    extra = read_predict_csv(Path(cfg.predict.csv)) if cfg.predict.csv else {}
    detector = trained.require("weights", DETECTOR_FILE, how="Train with --roi-source detector.") if config.roi.source == "detector" else None
    run = start_run(APP, "predict", cfg, run)
    _describe(samples, extra, skipped)
    prepared = prepare_samples(samples, config, run.subdir("prepared"), skipped)
    if detector is not None:
        for sample, flag in zip(prepared, detect_roi(config, detector, prepared)):
            sample.meta["roi"] = flag
    router = Router(routing, trained.dir, config)
    rows = []
    chosen = cfg.predict.scheme
    for scheme in (chosen, "baseline", "pooled"):
        todo = [s for s in prepared if _scheme_for(s, chosen) == scheme and not any(r["id"] == s.id for r in rows)]
        if not todo:
            continue
        probs, groups, kept = router.predict(todo, scheme, skipped)
        for sample, prob, group in zip(kept, probs, groups):
            rows.append({"id": sample.id, "view": sample.view or "", "laterality": sample.laterality or "",
                         "roi": "" if "roi" not in sample.meta else int(bool(sample.meta["roi"])),
                         "roi_source": config.roi.source if "roi" in sample.meta else "",
                         "group": group, "probability": round(float(prob), 6),
                         "label": CLASSES[int(prob >= config.evaluate.threshold)]})
            if cfg.predict.gradcam:
                rows[-1]["gradcam"] = _gradcam(router, routing, group, sample, config, run)
    run.write_csv("predictions.csv", rows)
    counts = Counter(r["label"] for r in rows)
    return finish_run(run, {"weights": str(trained.dir), "images": len(rows), "malignant": counts["malignant"],
                            "benign": counts["benign"], "scheme": chosen}, skipped)


def _scheme_for(sample: Sample, chosen: str) -> str:
    if sample.view is None or sample.laterality is None:
        return "pooled"
    if chosen == "roi_aware" and "roi" not in sample.meta:
        return "baseline"
    return chosen


def _gradcam(router: Router, routing: dict[str, Any], group: str, sample: Sample, cfg: RoiAppConfig, run: Run) -> str:
    """Grad-CAM of the model that predicted the image ('' when a constant rule did)."""
    from keras_medimg.models.saliency import grad_cam_file

    scheme, name = group.split("/")
    entry = routing["schemes"][scheme][name]
    if entry["rule"] != "model":
        return ""
    out = run.path("gradcam", f"{sample.id.replace('/', '_')}.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    grad_cam_file(router.model(router.folder / entry["model"]), sample.path, out, image_size=cfg.model.image_size,
                  normalization=_normalization(cfg), channels=1)
    return str(out.relative_to(run.dir))


def export(cfg: RoiAppConfig, *, run: Run | RunPlace | None = None) -> RunResult:
    """Every trained group model as SavedModel + ONNX (verified), and metadata.json with the routing table."""
    from keras_medimg.export import export_model

    trained = open_trained(cfg.predict.weights, APP, RoiAppConfig)
    routing = _routing(trained)
    run = start_run(APP, "export", cfg, run)
    out = run.subdir("export")
    table: dict[str, dict[str, Any]] = {}
    models = {}
    config = trained.config
    for scheme, groups in routing["schemes"].items():
        table[scheme] = {}
        for group, entry in groups.items():
            row = {k: entry[k] for k in ("rule", "probability", "parent", "train_images", "train_malignant")}
            if entry["rule"] == "model":
                folder = out / scheme / group
                result = export_model(trained.dir / entry["model"], folder, formats=cfg.export.formats, atol=cfg.export.atol,
                                      metadata={"app": APP, "scheme": scheme, "group": group, "classes": list(CLASSES),
                                                "image_size": config.model.image_size, "channels": 1,
                                                "normalization": routing["input"]["normalization"],
                                                "threshold": routing["threshold"]})
                row["files"] = {fmt: str(Path(p).relative_to(out)) for fmt, p in result.paths.items()}
                row["max_abs_diff"] = result.max_abs_diff
                models[f"{scheme}/{group}"] = row["files"]
            table[scheme][group] = row
    metadata = {"app": APP, "classes": list(CLASSES), "positive": "malignant", "threshold": routing["threshold"],
                "backbone": routing["backbone"], "network": routing.get("network"), "input": routing["input"], "preprocessing": routing["preprocessing"],
                "routing": table,
                "how_to_route": ("group = '<roi|noroi>-<L|R><CC|MLO>' in roi_aware when ROI presence is known, else "
                                 "'<L|R><CC|MLO>' in baseline, else 'all' in pooled; rule 'parent' = use the parent "
                                 "group's entry, 'constant' = use 'probability'.")}
    if (detector := trained.file("weights", DETECTOR_FILE)) is not None:
        from keras_medimg.detection.yolo import export_detector_onnx

        metadata["detector"] = {"file": str(export_detector_onnx(detector, out / "detector.onnx",
                                                                 imgsz=config.roi.detector_imgsz).relative_to(out)),
                                "conf": config.roi.detector_conf, "imgsz": config.roi.detector_imgsz}
    write_json(out / "metadata.json", metadata)
    return finish_run(run, {"weights": str(trained.dir), "models": models})

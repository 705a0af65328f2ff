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

import json
import logging
import time
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from keras_medimg.apps.roi.config import SCHEMES, RoiAppConfig
from keras_medimg.datasets.mammography import (CLASSES, STANDARD_VIEWS, composition, describe_views, has_roi,
                                                label_of, read_view_csv, sample_row, split_of, standard_view)
from keras_medimg.datasets.records import Sample, Skipped
from keras_medimg.errors import ConfigError, InvalidInputError
from keras_medimg.training import groups as groups_lib
from keras_medimg.training.groups import GroupPlan
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
    from keras_medimg.datasets.synthetic.roi import demo_set

    fmt = fmt or cfg.data.format
    size = cfg.data.demo_studies if fmt == "vindr" else cfg.data.demo_patients
    return demo_set(fmt, out_dir, size=size, height=cfg.data.demo_height, width=cfg.data.demo_width, seed=cfg.seed)


def data_root(cfg: RoiAppConfig) -> Path:
    """`data.root`, else the demo set of `data.format` (there is none for csv: it needs a manifest)."""
    return Path(cfg.data.root) if cfg.data.root else demo_data(None, cfg)


def load_samples(cfg: RoiAppConfig, skipped: Skipped) -> list[Sample]:
    """Every labelled image of the dataset, each with `meta["split"]` set (official or patient-grouped seeded)."""
    from keras_medimg.datasets.cdd_cesm import grouped_split
    from keras_medimg.datasets.mammography import read_dataset

    samples = read_dataset(cfg.data.format, data_root(cfg), skipped=skipped, strict=cfg.strict,
                           image_type=cfg.data.image_type, point_radius=cfg.data.point_radius)
    return grouped_split(samples, test_ratio=cfg.data.test_ratio, seed=cfg.seed)


def prepared_dir(cfg: RoiAppConfig) -> Path:
    from keras_medimg.datasets.prepared import cache_folder

    if cfg.data.prepared:
        return Path(cfg.data.prepared)
    return cache_folder("roi", {"root": str(data_root(cfg).resolve()), "format": cfg.data.format,
                                "type": cfg.data.image_type, "settings": asdict(cfg.prepare)})


def prepare_samples(samples: Sequence[Sample], cfg: RoiAppConfig, out_dir: Path, skipped: Skipped) -> list[Sample]:
    """Window (DICOM VOI, MONOCHROME1), breast-crop, CLAHE and resize every image once, through the library's
    `prepare` (parallel, resumable: outputs newer than their source are kept); returns the samples pointing at the
    prepared 16-bit PNGs (the originals in `meta["source"]`, crop and scale in `meta["prepared"]`)."""
    from keras_medimg.datasets.prepared import prepare_samples as prepare_images

    p = cfg.prepare
    return prepare_images(samples, out_dir, skipped, window=p.dicom_window(), crop=p.crop, margin=p.margin,
                          clahe=p.clahe, clip_limit=p.clip_limit, size=p.size, workers=cfg.data.workers,
                          strict=cfg.strict)


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


def plan_groups(train: Sequence[Sample], cfg: RoiAppConfig) -> dict[str, dict[str, GroupPlan]]:
    """Every group of every scheme, with the rule that will predict it (trainable groups: "model")."""
    return groups_lib.plan_groups(train, {scheme: all_groups(scheme) for scheme in SCHEMES}, group_of, label_of,
                                  parent_of, min_images=cfg.groups.min_images, fallback=cfg.groups.fallback,
                                  one_class=cfg.groups.one_class, class_names=CLASSES)


# === Models ===


def backbone_model(cfg: RoiAppConfig):
    """The feature extractor of `models.small.network_backbone`: the registry entry `model.backbone`, or its family
    at `network` (ConvNeXtV2 with the convolutional stem when `network.stem` is "conv")."""
    from keras_medimg.models.small import network_backbone

    m = cfg.model
    return network_backbone(m.backbone, cfg.network, image_size=m.image_size, channels=1, weights=m.weights)


def _normalization(cfg: RoiAppConfig):
    from keras_medimg.models.backbones import get_spec

    return get_spec(cfg.model.backbone).input_normalization(1)


def _input(cfg: RoiAppConfig) -> dict[str, Any]:
    return {"image_size": cfg.model.image_size, "channels": 1, "normalization": _normalization(cfg)}


def train_group(plan: GroupPlan, cfg: RoiAppConfig, run: Run, skipped: Skipped, *, resume: bool = False) -> str:
    """Fit one group's classifier into `run/groups/<scheme>/<group>/`; returns the model path relative to `run`."""
    from keras_medimg.models.classifier import build_classifier

    m = cfg.model

    def build():
        return build_classifier(backbone_model(cfg), len(CLASSES), input_shape=(m.image_size, m.image_size, 1),
                                weights=m.weights, pooling=m.pooling, hidden_units=m.hidden_units, dropout=m.dropout)

    path = groups_lib.fit_group_classifier(plan, run, build, class_names=CLASSES, label_of=label_of,
                                           train_config=cfg.train, skipped=skipped, weights=m.weights, freeze=m.freeze,
                                           resume=resume, seed=cfg.seed, strict=cfg.strict, augment=cfg.augment,
                                           **_input(cfg))
    return str(path.relative_to(run.dir))


class Router(groups_lib.GroupRouter):
    """Predicts a scheme's malignancy probabilities by routing every image to its group's rule."""

    def __init__(self, routing: dict[str, Any], folder: Path, cfg: RoiAppConfig):
        predictor = groups_lib.classifier_predictor(1, batch_size=cfg.train.batch_size, strict=cfg.strict, **_input(cfg))
        super().__init__(routing["schemes"], folder, parent_of, predictor)

    def predict(self, samples: Sequence[Sample], scheme: str, skipped: Skipped, roi: Sequence[bool] | None = None
                ) -> tuple[np.ndarray, list[str], list[Sample]]:
        """Probabilities, the group that predicted each image ('baseline/RCC' when a parent did) and the samples
        kept (unreadable images are left out and named in `skipped`); `roi`: ROI flags replacing the annotation's."""
        flags = [has_roi(s) if roi is None else bool(r) for s, r in zip(samples, roi or [None] * len(samples))]
        if scheme == "roi_only_rule":
            return np.array(flags, float), ["roi" if f else "noroi" for f in flags], list(samples)
        groups = [group_of(s, scheme, f) for s, f in zip(samples, flags)]
        return super().predict(samples, scheme, groups, skipped)


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
    train_set, test_set = split_of(samples, "train"), split_of(samples, "test")
    if not train_set or not test_set:
        raise InvalidInputError(data_root(cfg), f"the split leaves {len(train_set)} training and {len(test_set)} test "
                                "images; both sides need images (check the split column or data.test_ratio).")
    run = start_run(APP, "train", cfg, run)
    prepared = prepare_samples(samples, cfg, prepared_dir(cfg), skipped)
    train_set, test_set = split_of(prepared, "train"), split_of(prepared, "test")
    plans = plan_groups(train_set, cfg)
    started = time.perf_counter()
    routing = {"classes": list(CLASSES), "threshold": cfg.evaluate.threshold,
               "input": {"image_size": cfg.model.image_size, "channels": 1, "normalization": _normalization(cfg).to_dict()},
               "preprocessing": asdict(cfg.prepare), "backbone": cfg.model.backbone, "network": asdict(cfg.network),
               "fallback": cfg.groups.fallback, "one_class": cfg.groups.one_class}
    groups_lib.fit_groups(plans, lambda plan: train_group(plan, cfg, run, skipped, resume=resume), log)
    routing["schemes"] = groups_lib.routing_table(plans, parent_of, positive="malignant")
    write_json(run.path(ROUTING_FILE), routing)
    seconds = time.perf_counter() - started
    detector = None
    if cfg.roi.source == "detector":
        detector = train_roi_detector(cfg, run, train_set, test_set)
    metrics, table = evaluate_split(cfg, run, test_set, routing, run.dir, skipped, detector=detector)
    group_rows = groups_lib.group_table(plans, parent_of, positive="malignant")
    metrics.update({"data": str(data_root(cfg)), "format": cfg.data.format, "train_images": len(train_set),
                    "test_images": len(test_set), "composition": {"train": composition(train_set), "test": composition(test_set)},
                    "groups": group_rows, "train_seconds": round(seconds, 1)})
    run.write_csv("groups.csv", group_rows)
    return finish_run(run, metrics, skipped, table)


# === Evaluate ===


def evaluate_split(cfg: RoiAppConfig, run: Run, test: Sequence[Sample], routing: dict[str, Any], folder: Path,
                   skipped: Skipped, *, detector: Path | None = None) -> tuple[dict[str, Any], str]:
    """Every method on the test images (merged and per group), intervals, predictions.csv and the comparison."""
    from keras_medimg.metrics.classification import binary_report
    from keras_medimg.metrics.comparison import comparison_rows

    router = Router(routing, folder, cfg)
    results, predictions = {}, {s.id: sample_row(s) for s in test}
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
    rows = comparison_rows({method: result["merged"] for method, result in results.items()}, METHOD_NAMES, SCORES)
    table = write_tables(run, rows, cfg)
    return {"methods": results, "roi_source": cfg.roi.source, "threshold": cfg.evaluate.threshold}, table


def _routed_groups(kept, groups, truth, probs, method, roi, test, cfg) -> dict[str, Any]:
    """Per-group scores of a method, grouped by the group the image belongs to (not the model that predicted)."""
    from keras_medimg.metrics.classification import binary_report

    if method == "roi_only_rule":
        return {}
    index = {id(s): i for i, s in enumerate(test)}
    belongs = [group_of(s, method, None if roi is None else roi[index[id(s)]]) for s in kept]
    return groups_lib.scores_by_group(belongs, groups, truth, probs, lambda y, p: binary_report(
        y, p, cfg.evaluate.threshold, bootstrap=cfg.evaluate.bootstrap, seed=cfg.seed))




def write_tables(run: Run, rows: list[dict[str, Any]], cfg: RoiAppConfig) -> str:
    """comparison.csv/.md/plot (one row per method) and study_table.md (the study's Tables 5-8 layout: scores as
    rows, methods as columns, 95% bootstrap intervals in brackets); returns the latter."""
    from keras_medimg.metrics.comparison import comparison_columns, scores_by_method
    from keras_medimg.reporting import write_comparison

    write_comparison(run, "comparison", rows, columns=comparison_columns(SCORES), metric="f1", label="method",
                     error=("f1_low", "f1_high"), ylabel="F-score",
                     title=f"F-score on the test images ({cfg.model.backbone}, {cfg.data.format})")
    table = scores_by_method(rows, SCORES)
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
    routing, detector = _routing(trained), _detector(trained, config)
    skipped = Skipped()
    samples = load_samples(config, skipped)
    test = split_of(samples, "test")
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
    from keras_medimg.detection.presence import train_presence_detector

    return train_presence_detector(run.subdir("detector"), train, test, run.path("weights", DETECTOR_FILE),
                                   model=cfg.roi.detector_model, epochs=cfg.roi.detector_epochs,
                                   imgsz=cfg.roi.detector_imgsz, seed=cfg.seed, class_name="lesion")


def detect_roi(cfg: RoiAppConfig, detector: Path | None, samples: Sequence[Sample]) -> list[bool]:
    """ROI present = the detector finds a lesion at `roi.detector_conf` or above on the prepared image."""
    from keras_medimg.detection.presence import detect_presence

    if detector is None:
        raise ConfigError("roi.source is detector but the run has no detector; train with --roi-source detector.")
    return detect_presence(detector, samples, conf=cfg.roi.detector_conf, imgsz=cfg.roi.detector_imgsz)


# === Predict and export ===


def _routing(trained) -> dict[str, Any]:
    return json.loads(trained.require(ROUTING_FILE, how="Train it with `medimg roi train`.").read_text(encoding="utf-8"))


def _detector(trained, config: RoiAppConfig) -> Path | None:
    """The run's ROI detector when `roi.source` is detector (an error naming the fix when the run has none)."""
    if config.roi.source != "detector":
        return None
    return trained.require("weights", DETECTOR_FILE, how="Train with --roi-source detector to get a detector.")


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
    extra = read_view_csv(cfg.predict.csv) if cfg.predict.csv else {}
    detector = _detector(trained, config)
    run = start_run(APP, "predict", cfg, run)
    describe_views(samples, extra, skipped)
    prepared = prepare_samples(samples, config, run.subdir("prepared"), skipped)
    if detector is not None:
        for sample, flag in zip(prepared, detect_roi(config, detector, prepared)):
            sample.meta["roi"] = flag
    router = Router(routing, trained.dir, config)
    rows = []
    chosen = cfg.predict.scheme
    probs, groups, kept = groups_lib.predict_by_scheme(lambda todo, scheme: router.predict(todo, scheme, skipped),
                                                       prepared, [_scheme_for(s, chosen) for s in prepared])
    for sample, prob, group in zip(kept, probs, groups):
        rows.append({"id": sample.id, "view": sample.view or "", "laterality": sample.laterality or "",
                     "roi": "" if "roi" not in sample.meta else int(bool(sample.meta["roi"])),
                     "roi_source": config.roi.source if "roi" in sample.meta else "",
                     "group": group, "probability": round(float(prob), 6),
                     "label": CLASSES[int(prob >= config.evaluate.threshold)]})
        if cfg.predict.gradcam:
            rows[-1]["gradcam"] = _gradcam(router, group, sample, config, run)
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


def _gradcam(router: Router, group: str, sample: Sample, cfg: RoiAppConfig, run: Run) -> str:
    """Grad-CAM of the model that predicted the image ('' when a constant rule did)."""
    from keras_medimg.models.saliency import grad_cam_file

    if (model := router.model_of(group)) is None:
        return ""
    out = run.path("gradcam", f"{sample.id.replace('/', '_')}.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    grad_cam_file(model, sample.path, out, image_size=cfg.model.image_size, normalization=_normalization(cfg), channels=1)
    return str(out.relative_to(run.dir))


def export(cfg: RoiAppConfig, *, run: Run | RunPlace | None = None) -> RunResult:
    """Every trained group model as SavedModel + ONNX (verified), and metadata.json with the routing table."""
    from keras_medimg.export import export_model

    trained = open_trained(cfg.predict.weights, APP, RoiAppConfig)
    routing = _routing(trained)
    run = start_run(APP, "export", cfg, run)
    out = run.subdir("export")
    config = trained.config

    def export_one(model_path: Path, folder: Path, metadata: dict[str, Any]):
        return export_model(model_path, folder, formats=cfg.export.formats, atol=cfg.export.atol, metadata=metadata)

    table, models = groups_lib.export_group_models(
        routing["schemes"], trained.dir, out, keys=("rule", "probability", "parent", "train_images", "train_malignant"),
        export=export_one, metadata={"app": APP, "classes": list(CLASSES), "image_size": config.model.image_size,
                                     "channels": 1, "normalization": routing["input"]["normalization"],
                                     "threshold": routing["threshold"]})
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

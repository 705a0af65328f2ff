"""Per-group models: the rules for small / one-class / empty groups, routing to parents, scores and export."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from keras_medimg.datasets.records import Sample, Skipped
from keras_medimg.training import groups as g

SCHEMES = {"all": ["all"], "site": ["a", "b", "c"]}


def _parent(scheme, group):
    return ("all", "all") if scheme == "site" else None


def _group(sample, scheme):
    return "all" if scheme == "all" else sample.meta["site"]


def _samples(spec):
    return [Sample(id=f"{site}{i}", path=Path(f"/none/{site}{i}.png"), label=label, meta={"site": site})
            for i, (site, label) in enumerate(spec)]


def _label(sample):
    return int(sample.label == "pos")


def test_rules_for_small_one_class_and_empty_groups():
    train = _samples([("a", "pos"), ("a", "neg"), ("a", "neg"), ("b", "pos"), ("b", "pos"), ("b", "pos"), ("c", "neg")])
    plans = g.plan_groups(train, SCHEMES, _group, _label, _parent, min_images=3)
    assert plans["all"]["all"].rule == "model" and plans["all"]["all"].counts == (7, 4)
    assert plans["site"]["a"].rule == "model"
    assert plans["site"]["b"].rule == "constant" and plans["site"]["b"].probability == 1.0  # one class
    assert plans["site"]["c"].rule == "parent" and "fewer than" in plans["site"]["c"].reason
    swapped = g.plan_groups(train, SCHEMES, _group, _label, _parent, min_images=3, fallback="constant",
                            one_class="parent", class_names=("benign", "malignant"))
    assert swapped["site"]["b"].rule == "parent" and "malignant" in swapped["site"]["b"].reason
    assert swapped["site"]["c"].rule == "constant" and swapped["site"]["c"].probability == 0.0
    # no parent for the top group: "parent" falls back to constant (training prevalence when empty)
    empty = g.plan_groups([], SCHEMES, _group, _label, _parent, min_images=3)
    assert empty["all"]["all"].rule == "constant" and empty["all"]["all"].probability == 0.5
    with pytest.raises(ValueError, match="fallback"):
        g.plan_groups(train, SCHEMES, _group, _label, _parent, min_images=3, fallback="drop")
    table = g.routing_table(plans, _parent, positive="malignant")
    assert table["site"]["c"]["parent"] == "all/all" and table["site"]["a"]["train_malignant"] == 1
    rows = g.group_table(plans, _parent)
    assert [r["rule"] for r in rows] == ["model", "model", "constant p=1.00", "parent all/all"]


def test_router_uses_owner_models_once_and_keeps_order(tmp_path):
    table = {"all": {"all": {"rule": "model", "model": "m_all"}},
             "site": {"a": {"rule": "model", "model": "m_a"}, "b": {"rule": "constant", "probability": 0.25},
                      "c": {"rule": "parent"}}}
    loads = []
    samples = _samples([("c", "neg"), ("a", "pos"), ("b", "neg"), ("a", "neg")])

    def predict_model(model, batch, skipped):
        kept = [s for s in batch if s.id != "a3"]  # one unreadable image
        skipped.add(Path("a3"), "unreadable")
        return np.array([model[1] for _ in kept]), kept

    router = g.GroupRouter(table, tmp_path, _parent, predict_model,
                           load=lambda path: loads.append(path) or (path, {"m_all": 0.9, "m_a": 0.7}[path.name]))
    assert router.resolve("site", "c") == ("all", "all", tmp_path / "m_all")
    skipped = Skipped()
    probs, used, kept = router.predict(samples, "site", [s.meta["site"] for s in samples], skipped)
    assert [s.id for s in kept] == ["c0", "a1", "b2"] and list(probs) == [0.9, 0.7, 0.25]
    assert used == ["all/all", "site/a", "site/b"]
    router.predict(samples, "site", [s.meta["site"] for s in samples], skipped)
    assert len(loads) == 2  # each model loaded once
    scores = g.scores_by_group(["c", "a", "b"], used, np.array([0, 1, 0]), probs,
                               lambda y, p: {"n": len(y), "mean": float(p.mean())})
    assert scores["c"] == {"predicted_by": ["all/all"], "n": 1, "mean": 0.9}


def test_export_group_models_exports_trained_groups_only(tmp_path):
    table = {"site": {"a": {"rule": "model", "model": "m_a.keras", "train_images": 5},
                      "b": {"rule": "constant", "probability": 0.25, "train_images": 1}}}
    calls = []

    def export(model_path, folder, metadata):
        calls.append((model_path, folder, metadata))
        return SimpleNamespace(paths={"onnx": folder / "model.onnx"}, max_abs_diff=1e-6)

    exported, models = g.export_group_models(table, tmp_path / "run", tmp_path / "out", keys=("rule", "probability"),
                                             export=export, metadata={"app": "x"})
    assert calls == [(tmp_path / "run/m_a.keras", tmp_path / "out/site/a", {"app": "x", "scheme": "site", "group": "a"})]
    assert exported["site"]["a"]["files"] == {"onnx": "site/a/model.onnx"} and models == {"site/a": {"onnx": "site/a/model.onnx"}}
    assert exported["site"]["b"] == {"rule": "constant", "probability": 0.25}


def test_fit_groups_trains_model_groups_only_and_predict_by_scheme_keeps_order():
    train = _samples([("a", "pos"), ("a", "neg"), ("a", "neg"), ("c", "neg")])
    plans = g.plan_groups(train, SCHEMES, _group, _label, _parent, min_images=3)
    fitted = []
    g.fit_groups(plans, lambda plan: fitted.append(plan.group) or f"m_{plan.group}")
    assert fitted == ["all", "a"] and plans["site"]["a"].model == "m_a" and plans["site"]["c"].model is None
    samples = _samples([("a", "pos"), ("b", "neg"), ("c", "neg")])

    def predict(subset, scheme):
        kept = [s for s in subset if s.id != "b1"]  # one image dropped
        return np.array([0.1 if scheme == "all" else 0.9] * len(kept)), [f"{scheme}/x"] * len(kept), kept

    probs, owners, kept = g.predict_by_scheme(predict, samples, ["site", "all", "all"])
    assert [s.id for s in kept] == ["a0", "c2"] and list(probs) == [0.9, 0.1] and owners == ["site/x", "all/x"]

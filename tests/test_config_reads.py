"""The recorder behind the apps' "every config key is read" tests catches a key that nothing reads."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from keras_medimg.config import dump_yaml

from .config_reads import leaf_keys, record_reads, unread


@dataclass
class _Inner:
    used: int = 1
    forgotten: int = 2


@dataclass
class _Root:
    seed: int = 0
    inner: _Inner = field(default_factory=_Inner)


def _run(cfg: _Root) -> int:
    shifted = replace(cfg.inner, used=cfg.inner.used + 1)  # replace copies every field: not a use
    dump_yaml(cfg)  # saving the config reads every key: not a use
    return cfg.seed + shifted.used


def test_a_key_nothing_reads_is_reported():
    with record_reads(_Root) as reads:
        assert _run(_Root()) == 2
    assert leaf_keys(_Root) == {"seed", "inner.used", "inner.forgotten"}
    assert unread(_Root, reads) == ["inner.forgotten"]


def test_the_hooks_are_removed_afterwards():
    with record_reads(_Root) as reads:
        pass
    _Root().inner.forgotten  # noqa: B018 - a read after the block must not be recorded
    assert reads == set()
    assert "__getattribute__" not in _Inner.__dict__


# === Every key of every app's config is read by a tiny run of its modes ===
#
# A new app joins by adding one entry to APP_RUNS: its config class and a function that, given a scratch folder,
# returns the `medimg` commands (tiny settings) that together run every mode. Keys read only under a setting
# (a SAM checkpoint, an optimizer) are covered by giving some command that setting.

import dataclasses  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

_BRATS_TINY = ["--set", "detect.epochs=1", "--set", "detect.imgsz=64", "--set", "detect.batch=8",
               "--set", "detect.conf=0.01", "--set", "model.backbone=vgg16", "--set", "model.image_size=32",
               "--set", "train.epochs=1", "--set", "train.batch_size=8", "--set", "train.verbose=0"]
_CONCEPTS_TINY = ["--set", "model.backbone=vgg16", "--set", "model.image_size=32", "--set", "model.hidden_units=16",
                  "--set", "train.epochs=1", "--set", "train.batch_size=8", "--set", "train.verbose=0"]


def _tiny_sam(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any segment.checkpoint loads the same tiny random SAM (plus a fine-tuned decoder when one is given)."""
    import torch

    from keras_medimg.detection import sam as sam_lib

    tiny = sam_lib.SamArch(embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,), image_size=64)
    real = sam_lib.load_sam

    def load_sam(model_type, checkpoint, *, decoder=None, arch=None):
        torch.manual_seed(0)
        return real(model_type, None, decoder=decoder, arch=tiny)

    monkeypatch.setattr(sam_lib, "load_sam", load_sam)


def _brats_commands(tmp: Path) -> list[list[str]]:
    data, runs = tmp / "data", str(tmp / "runs")
    trained = str(tmp / "runs" / "brats" / "train")
    sam = ["--set", f"segment.checkpoint={tmp / 'sam.pth'}", "--set", "segment.finetune=true",
           "--set", "segment.finetune_epochs=1", "--set", "segment.finetune_learning_rate=0.001",
           "--set", "segment.max_images=6"]
    return [
        ["brats", "demo-data", str(data), "--set", "data.demo_n_per_class=4", "--set", "data.demo_size=64",
         "--set", "data.demo_test_fraction=0.5"],
        ["brats", "train", "--data", str(data), "--project", runs, "--name", "train", *_BRATS_TINY, *sam,
         # No compare_sources classifiers: they rerun the main classifier's code on other crops (a third of train).
         "--set", "classify.compare_sources=[]", "--set", "train.class_weight=balanced", "--set", "train.optimizer=adamw",
         "--set", "train.schedule=cosine"],
        ["brats", "predict", str(data / "Testing"), "--weights", trained, "--gradcam", "--project", runs,
         "--name", "predict"],
        ["brats", "evaluate", "--weights", trained, "--project", runs, "--name", "evaluate"],
        ["brats", "compare", "--data", str(data), "--backbones", "vgg16", "--project", runs, "--name", "compare",
         *_BRATS_TINY, "--set", f"classify.detector={trained}", "--set", "train.optimizer=sgd",
         "--set", "train.schedule=exponential", "--set", "train.loss=focal",
         # Local weights (the train run's model): a head phase, then fine-tuning.
         "--set", f"model.weights={trained}/weights/best.keras", "--set", "train.epochs=2",
         "--set", "train.head_epochs=1"],
        ["brats", "export", "--weights", trained, "--set", "export.formats=[keras]", "--project", runs,
         "--name", "export"],
    ]


def _concepts_commands(tmp: Path) -> list[list[str]]:
    data, runs = tmp / "data", str(tmp / "runs")
    trained = str(tmp / "runs" / "concepts" / "train")
    return [
        ["concepts", "demo-data", str(data), "--set", "data.demo_n_train=24", "--set", "data.demo_n_valid=10",
         "--set", "data.demo_n_test=6", "--set", "data.demo_size=32"],
        ["concepts", "train", "--data", str(data), "--project", runs, "--name", "train", *_CONCEPTS_TINY,
         "--set", "train.optimizer=sgd", "--set", "train.schedule=exponential"],
        # Fine-tuning from local weights (the first run's model): head phase, then the freeze policy.
        ["concepts", "train", "--data", str(data), "--project", runs, "--name", "finetune", *_CONCEPTS_TINY,
         "--weights", f"{trained}/weights/best.keras", "--set", "train.epochs=2", "--set", "train.head_epochs=1",
         "--set", "model.freeze=first:2", "--set", "train.loss=focal", "--set", "train.schedule=cosine"],
        ["concepts", "predict", "--weights", trained, "--images", str(data / "test"), "--project", runs,
         "--name", "predict"],
        ["concepts", "evaluate", "--submission", str(tmp / "runs" / "concepts" / "predict" / "submission.csv"),
         "--truth", str(data / "test_concepts.csv"), "--project", runs, "--name", "evaluate"],
        ["concepts", "export", "--weights", trained, "--set", "export.formats=[keras]", "--project", runs,
         "--name", "export"],
    ]


@dataclasses.dataclass(frozen=True)
class AppRun:
    """How to run every mode of one app: its config class and its tiny commands."""

    config: str  # "package.module:ClassName"
    commands: Callable[[Path], list[list[str]]]
    setup: Callable[[pytest.MonkeyPatch], None] = lambda monkeypatch: None


APP_RUNS = {
    "brats": AppRun("keras_medimg.apps.brats.config:BratsConfig", _brats_commands, _tiny_sam),
    "concepts": AppRun("keras_medimg.apps.concepts.config:ConceptsConfig", _concepts_commands),
}


@pytest.mark.slow  # every mode of an app, tiny: 1-3 minutes each on a busy 2-core CPU
@pytest.mark.parametrize("app", sorted(APP_RUNS))
def test_every_config_key_is_read_by_some_mode(app, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from keras_medimg.apps.cli import cli
    from keras_medimg.apps.options import import_named

    spec = APP_RUNS[app]
    spec.setup(monkeypatch)
    monkeypatch.setenv("MEDIMG_HOME", str(tmp_path / "home"))
    root = import_named(spec.config)
    with record_reads(root) as reads:
        for command in spec.commands(tmp_path):
            result = CliRunner().invoke(cli, command, catch_exceptions=False)
            assert result.exit_code == 0, (command, result.output)
    missing = unread(root, reads)
    assert not missing, f"keys of configs/{app}.yaml that no mode of `medimg {app}` reads: {missing}"

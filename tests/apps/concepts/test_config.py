"""configs/concepts.yaml is the dataclass tree, commented; bad keys fail with exit code 2 and a suggestion."""

import re

from keras_medimg.apps.concepts.config import STUDIES, ConceptsConfig
from keras_medimg.config import all_keys, defaults_path, load_config, read_yaml


def test_yaml_equals_the_dataclass_defaults():
    assert load_config(ConceptsConfig, app="concepts") == ConceptsConfig()


def test_yaml_has_every_key_and_a_comment_on_each():
    text = defaults_path("concepts").read_text(encoding="utf-8")
    keys = [line for line in text.splitlines() if re.match(r"^\s*[a-z_0-9]+:", line)]
    sections = {line.strip() for line in keys if line.rstrip().endswith(":")}
    for line in keys:
        if line.strip() not in sections:
            assert "#" in line, f"no comment on: {line}"
    leaves = {k.rsplit(".", 1)[-1] for k in all_keys(ConceptsConfig)}
    written = {line.strip().split(":")[0] for line in keys}
    assert leaves == written
    assert read_yaml(defaults_path("concepts"))["model"]["backbone"] == "densenet121"


def test_the_study_settings_are_valid_keys():
    model1 = load_config(ConceptsConfig, app="concepts", options=STUDIES["model1"])
    assert (model1.model.image_size, model1.train.batch_size, model1.model.freeze) == (255, 32, "first:276")
    assert (model1.labels.head, model1.train.loss, model1.train.schedule) == ("softmax", "crossentropy", "exponential")
    model2 = load_config(ConceptsConfig, app="concepts", options=STUDIES["model2"])
    assert (model2.model.image_size, model2.train.batch_size, model2.labels.head) == (224, 32, "sigmoid")
    assert model1.thresholds.fixed == model2.thresholds.fixed == [0.3, 0.5]


def test_unknown_key_fails_with_exit_code_2_and_did_you_mean(medimg):
    result = medimg("concepts", "train", "--set", "train.nonexistent=1")
    assert result.exit_code == 2
    assert "error: Unknown config key 'train.nonexistent'" in result.output
    close = medimg("concepts", "train", "--set", "train.epoch=1")
    assert close.exit_code == 2 and "Did you mean 'train.epochs'" in close.output


def test_wrong_type_fails_with_exit_code_2(medimg):
    result = medimg("concepts", "train", "--set", "thresholds.top1=maybe")
    assert result.exit_code == 2 and "thresholds.top1" in result.output

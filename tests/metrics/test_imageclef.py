"""The official ImageCLEFmedical concept-detection scores and run-file validation, checked by hand."""

import math
import random

import numpy as np
import pytest
from sklearn.metrics import f1_score
from sklearn.preprocessing import MultiLabelBinarizer

from keras_medimg.errors import ConfigError, InvalidInputError
from keras_medimg.metrics.imageclef import (
    MAX_CONCEPTS,
    SECONDARY_CUIS,
    SECONDARY_CUIS_BY_EDITION,
    best_frequency_baseline,
    concept_table,
    frequency_baseline,
    image_f1,
    micro_macro_f1,
    primary_f1,
    read_submission,
    read_truth,
    score,
    secondary_cuis,
    secondary_f1,
)

CT, MRI, CHEST, ABDOMEN, MASS, FRACTURE = "C0040405", "C0024485", "C0817096", "C0000726", "C0027651", "C0016658"
OCT = "C0920367"


def official_image_f1(truth, predicted):
    """The official evaluator's per-image F1: sklearn binary f1_score over the sorted union."""
    everything = sorted(set(truth) | set(predicted))
    y_true = [int(c in truth) for c in everything]
    y_pred = [int(c in predicted) for c in everything]
    return f1_score(y_true, y_pred, average="binary", zero_division=0)


def test_image_f1_by_hand():
    assert image_f1({CT, CHEST}, {CT}) == pytest.approx(2 / 3)  # 2*1 / (2 + 1)
    assert image_f1({CT, CHEST}, {CT, CHEST}) == 1.0
    assert image_f1({CT}, {MRI, CHEST}) == 0.0
    assert image_f1({CT}, set()) == 0.0  # an empty prediction scores 0
    assert image_f1({CT, CHEST, MASS}, {CT, MRI}) == pytest.approx(2 * 1 / (3 + 2))


def test_image_f1_equals_the_official_sklearn_formula():
    rng = random.Random(0)
    pool = [f"C{i:07d}" for i in range(8)]
    for _ in range(300):
        truth = set(rng.sample(pool, rng.randint(1, 5)))
        predicted = set(rng.sample(pool, rng.randint(0, 6)))
        assert image_f1(truth, predicted) == pytest.approx(official_image_f1(truth, predicted))


def test_primary_f1_skips_images_with_empty_truth_and_scores_empty_predictions_zero():
    truth = {"a": [CT, CHEST], "b": [], "c": [MRI]}
    predictions = {"a": [CT], "b": [ABDOMEN], "c": []}
    # a: 2/3, b: not counted, c: 0 -> (2/3 + 0) / 2
    assert primary_f1(truth, predictions) == pytest.approx(1 / 3)


def test_primary_f1_upper_cases_and_strips_and_ignores_order():
    assert primary_f1({"a": [" c0040405 ", "C0817096"]}, {"a": ["C0817096", "C0040405"]}) == 1.0


def test_primary_f1_counts_a_missing_prediction_as_empty():
    assert primary_f1({"a": [CT], "b": [MRI]}, {"a": [CT]}) == pytest.approx(0.5)


def test_primary_f1_is_nan_when_no_image_counts():
    assert math.isnan(primary_f1({"a": [], "b": []}, {"a": [CT], "b": []}))


def test_secondary_f1_keeps_only_the_official_cuis_on_both_sides():
    manual = {"a": [CT, CHEST], "b": [MASS], "c": [MRI, FRACTURE]}
    predictions = {"a": [CT, MASS], "b": [MASS], "c": [MRI]}
    # a: predicted {CT} (MASS dropped) vs {CT, CHEST} -> 2/3; b: truth filtered empty -> not counted;
    # c: truth {MRI} (FRACTURE dropped) vs {MRI} -> 1
    assert secondary_f1(manual, predictions) == pytest.approx((2 / 3 + 1) / 2)


OFFICIAL_2024 = {
    "C0002978", "C0040405", "C0024485", "C0032743", "C0041618", "C1306645",  # modalities
    "C1140618", "C0037949", "C0030797", "C0023216", "C0037303", "C0817096", "C0006141", "C0000726",  # regions
}


def test_secondary_lists_by_edition_are_the_official_ones():
    assert secondary_cuis(2024) == OFFICIAL_2024  # the 2024 evaluator's 14
    assert secondary_cuis(2025) == OFFICIAL_2024 | {OCT}  # 2025 added optical coherence tomography
    assert secondary_cuis() == secondary_cuis(2024)  # the study's year is the default
    assert SECONDARY_CUIS == secondary_cuis(2025)  # every CUI some edition keeps


@pytest.mark.parametrize("edition", [2023, 2026, "2024", True])
def test_unknown_edition_is_a_config_error_naming_the_known_ones(edition):
    with pytest.raises(ConfigError, match="known editions are 2024, 2025"):
        secondary_cuis(edition)
    with pytest.raises(ConfigError):
        secondary_f1({"a": [CT]}, {"a": [CT]}, edition=edition)
    with pytest.raises(ConfigError):
        score({"a": [CT]}, {"a": [CT]}, edition=edition)  # fails without a manual truth too


def test_an_oct_image_counts_in_2025_but_not_in_2024():
    manual = {"oct": [OCT], "ct": [CT, CHEST]}
    predictions = {"oct": [OCT, MASS], "ct": [CT]}
    # 2024: OCT is filtered away, so "oct" has an empty truth and does not count; "ct" scores 2/3.
    assert secondary_f1(manual, predictions, edition=2024) == pytest.approx(2 / 3)
    # 2025: "oct" counts and scores 1 (MASS is filtered from the prediction): (1 + 2/3) / 2.
    assert secondary_f1(manual, predictions, edition=2025) == pytest.approx(5 / 6)
    # A model that misses OCT loses in 2025 only.
    missed = {"oct": [MASS], "ct": [CT]}
    assert secondary_f1(manual, missed, edition=2024) == pytest.approx(2 / 3)
    assert secondary_f1(manual, missed, edition=2025) == pytest.approx(1 / 3)
    assert secondary_f1(manual, predictions) == secondary_f1(manual, predictions, edition=2024)


def test_score_uses_and_records_the_edition():
    truth = {"oct": [OCT, MASS], "ct": [CT, CHEST]}
    manual = {"oct": [OCT], "ct": [CT, CHEST]}
    predictions = {"oct": [MASS], "ct": [CT, CHEST]}
    old, new = (score(truth, predictions, manual_truth=manual, edition=e) for e in (2024, 2025))
    assert (old.secondary_f1, old.secondary_images) == (1.0, 1)
    assert (new.secondary_f1, new.secondary_images) == (0.5, 2)
    assert old.primary_f1 == new.primary_f1  # the primary score does not depend on the edition
    assert (old.summary()["edition"], new.summary()["edition"]) == (2024, 2025)
    assert set(SECONDARY_CUIS_BY_EDITION) == {2024, 2025}


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def truth_ids():
    return ["img_1", "img_2", "img_3"]


def test_read_submission_accepts_header_empty_fields_and_lower_case(tmp_path, truth_ids):
    path = write(tmp_path, "run.csv", "ID,CUIs\nimg_1,c0040405;C0817096\nimg_2,\nimg_3\n")
    assert read_submission(path, truth_ids) == {"img_1": (CT, CHEST), "img_2": (), "img_3": ()}


@pytest.mark.parametrize(
    "text, line, words",
    [
        ("img_1,C1\nimg_9,C1\nimg_3,C1\n", 2, "'img_9' is not in the ground truth"),
        ("img_1,C1\nimg_1,C2\nimg_3,C1\n", 2, "more than once"),
        ("img_1,C1;C2;C1\nimg_2,C1\nimg_3,C1\n", 1, "repeats the concept(s) C1"),
        ("img_1,C1\nimg_2,C1,C2\nimg_3,C1\n", 2, "3 fields"),
        ("img_1,C1\n,C1\nimg_3,C1\n", 2, "no image ID"),
        ("img_1,C1\nimg_2,C1\n", None, "has 2 images but the ground truth has 3"),
    ],
)
def test_read_submission_rejects_each_rule_with_its_line(tmp_path, truth_ids, text, line, words):
    path = write(tmp_path, "run.csv", text)
    with pytest.raises(InvalidInputError) as info:
        read_submission(path, truth_ids)
    assert info.value.line == line
    assert words in str(info.value)
    assert str(path) in str(info.value)


def test_read_submission_limits_concepts_per_image(tmp_path, truth_ids):
    many = ";".join(f"C{i:07d}" for i in range(MAX_CONCEPTS + 1))
    exactly = ";".join(f"C{i:07d}" for i in range(MAX_CONCEPTS))
    path = write(tmp_path, "run.csv", f"img_1,{many}\nimg_2,{exactly}\nimg_3,\n")
    with pytest.raises(InvalidInputError, match="101 concepts; at most 100"):
        read_submission(path, truth_ids)
    ok = write(tmp_path, "ok.csv", f"img_1,{exactly}\nimg_2,{exactly}\nimg_3,\n")
    assert len(read_submission(ok, truth_ids)["img_1"]) == MAX_CONCEPTS


def test_read_submission_lists_every_problem_with_a_count(tmp_path, truth_ids):
    path = write(tmp_path, "run.csv", "x1,C1\nx2,C1\nx3,C1\nx4,C1\nx5,C1\nx6,C1\nx7,C1\n")
    with pytest.raises(InvalidInputError, match=r"7 problems: line 1: .*and 2 more") as info:
        read_submission(path, truth_ids)
    assert info.value.line == 1


def test_read_truth_allows_header_and_empty_concepts(tmp_path):
    path = write(tmp_path, "valid_concepts.csv", "ID,CUIs\nimg_1,C0040405;c0817096\nimg_2,\n")
    assert read_truth(path) == {"img_1": (CT, CHEST), "img_2": ()}


def test_concept_table_and_micro_macro_match_sklearn():
    truth = {"a": [CT, CHEST], "b": [MRI, CHEST], "c": [CT, ABDOMEN, MASS]}
    predictions = {"a": [CT], "b": [MRI, ABDOMEN], "c": [CT, ABDOMEN, FRACTURE]}
    table = concept_table(truth, predictions, names={CT: "X-Ray Computed Tomography"})
    rows = {row["cui"]: row for row in table}
    assert (rows[CT]["tp"], rows[CT]["fp"], rows[CT]["fn"]) == (2, 0, 0)
    assert rows[CT]["name"] == "X-Ray Computed Tomography"
    assert (rows[CHEST]["tp"], rows[CHEST]["fn"], rows[CHEST]["recall"]) == (0, 2, 0.0)
    assert (rows[ABDOMEN]["tp"], rows[ABDOMEN]["fp"], rows[ABDOMEN]["precision"]) == (1, 1, 0.5)
    assert rows[FRACTURE]["support"] == 0 and rows[FRACTURE]["f1"] == 0.0
    assert table[0]["support"] >= table[-1]["support"]
    micro, macro = micro_macro_f1(table)
    ids = sorted(truth)
    binarizer = MultiLabelBinarizer().fit([truth[i] for i in ids] + [predictions[i] for i in ids])
    y_true = binarizer.transform([truth[i] for i in ids])
    y_pred = binarizer.transform([predictions[i] for i in ids])
    assert micro == pytest.approx(f1_score(y_true, y_pred, average="micro", zero_division=0))
    assert macro == pytest.approx(f1_score(y_true, y_pred, average="macro", zero_division=0))
    # by hand: tp 4 (CT in a and c, MRI, ABDOMEN in c), fp 2 (ABDOMEN in b, FRACTURE), fn 3 (CHEST x2, MASS)
    assert micro == pytest.approx(2 * 4 / (2 * 4 + 2 + 3))


def test_score_collects_everything():
    truth = {"a": [CT, CHEST], "b": [MASS]}
    manual = {"a": [CT, CHEST], "b": []}
    result = score(truth, {"a": [CT, CHEST], "b": []}, manual_truth=manual)
    assert result.primary_f1 == pytest.approx(0.5)
    assert result.secondary_f1 == 1.0
    assert (result.images, result.secondary_images) == (2, 1)
    assert set(result.summary()) >= {"primary_f1", "secondary_f1", "micro_f1", "macro_f1"}
    assert math.isnan(score(truth, {"a": [], "b": []}).secondary_f1)


def test_frequency_baseline_predicts_the_most_frequent_concepts():
    train = {"a": [CT, CHEST], "b": [CT, ABDOMEN], "c": [MRI, CHEST], "d": [CT]}
    assert frequency_baseline(train, 2) == (CT, CHEST)
    truth = {"x": [CT, CHEST], "y": [CT]}
    f1, k = best_frequency_baseline(train, truth, max_k=3)
    # k=1: (2/3 + 1)/2 = 0.833; k=2: (1 + 2/3)/2 = 0.833 (no better, k=1 kept); k=3: (0.8 + 0.5)/2
    assert (f1, k) == (pytest.approx(5 / 6), 1)


def test_primary_f1_on_random_files_equals_the_official_procedure():
    rng = np.random.default_rng(1)
    pool = [f"C{i:07d}" for i in range(12)]
    truth = {f"i{n}": list(rng.choice(pool, rng.integers(0, 5), replace=False)) for n in range(200)}
    predictions = {key: list(rng.choice(pool, rng.integers(0, 6), replace=False)) for key in truth}
    counted = [official_image_f1(set(t), set(predictions[k])) for k, t in truth.items() if t]
    assert primary_f1(truth, predictions) == pytest.approx(sum(counted) / len(counted))


def test_truth_and_run_files_in_the_2022_2023_tab_separated_format(tmp_path):
    truth = tmp_path / "valid_concepts.csv"
    truth.write_text("ID\tcuis\nimg_1\tC1;C2\nimg_2\tC3\n")
    assert read_truth(truth) == {"img_1": ("C1", "C2"), "img_2": ("C3",)}
    run = tmp_path / "run.csv"
    run.write_text("img_1|C1;C2\nimg_2|C4\n")  # the '|' the 2023 evaluator also takes
    assert read_submission(run, ["img_1", "img_2"]) == {"img_1": ("C1", "C2"), "img_2": ("C4",)}

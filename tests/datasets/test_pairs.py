"""Pair files: pairs.jsonl, the study's JSON/JSONL, CSV; missing images by line; merge and page-grouped split."""

from __future__ import annotations

import json

import numpy as np
import pytest

from keras_medimg.datasets.pairs import (
    PairRecord,
    merge_pairs,
    pixel_hash,
    read_pairs,
    split_groups,
    split_pairs,
    write_pairs,
)
from keras_medimg.datasets.records import Skipped
from keras_medimg.errors import InvalidInputError
from keras_medimg.io.images import write_image


def image(path, seed):
    pixels = (np.random.default_rng(seed).random((8, 8)) * 255).astype(np.uint8)
    write_image(path, pixels)
    return pixels


def test_study_json_list_and_jsonl_resolve_images_relative_to_the_file_or_root(tmp_path):
    image(tmp_path / "a.png", 0)
    (tmp_path / "imgs").mkdir()
    image(tmp_path / "imgs" / "b.png", 1)
    (tmp_path / "pairs.json").write_text(json.dumps([{"image": "a.png", "caption": "Oval  mass."}]))
    (records,) = [read_pairs(tmp_path / "pairs.json")]
    assert records[0].image == tmp_path / "a.png" and records[0].caption == "Oval mass."
    assert records[0].page is None and records[0].source is None
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"image": "b.png", "caption": "Round mass."}) + "\n")
    (rec,) = read_pairs(tmp_path / "pairs.jsonl", image_root=tmp_path / "imgs")
    assert rec.image == tmp_path / "imgs" / "b.png"


def test_csv_keeps_extra_columns_and_known_fields(tmp_path):
    image(tmp_path / "a.png", 0)
    (tmp_path / "p.csv").write_text("image,caption,page,figure,birads\na.png,Spiculated mass.,12,3-1,5\n")
    (rec,) = read_pairs(tmp_path / "p.csv")
    assert (rec.page, rec.figure, rec.meta) == (12, "3-1", {"birads": "5"})


def test_missing_images_are_reported_by_file_and_line(tmp_path):
    image(tmp_path / "a.png", 0)
    lines = [{"image": "a.png", "caption": "ok"}, {"image": "gone.png", "caption": "x"}, {"image": "a.png", "caption": ""}]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(InvalidInputError) as err:
        read_pairs(path)
    assert err.value.line == 2 and "2 problems" in str(err.value) and "gone.png" in str(err.value)
    assert "line 3" in str(err.value)
    skipped = Skipped()
    assert len(read_pairs(path, skipped=skipped)) == 1
    assert [(f.path, f.line) for f in skipped] == [(str(path), 2), (str(path), 3)]


def test_pairs_jsonl_round_trip_with_relative_paths(tmp_path):
    image(tmp_path / "images" / "a.png", 0)
    record = PairRecord(tmp_path / "images" / "a.png", "Oval mass.", source="book.pdf", page=3, figure="2", panel="a",
                        bbox=[1.0, 2.0, 3.0, 4.0], method="layout", source_sha256="ab", image_sha256="cd", width=8, height=8)
    write_pairs(tmp_path / "out" / "pairs.jsonl", [record])
    row = json.loads((tmp_path / "out" / "pairs.jsonl").read_text())
    assert row["image"] == "../images/a.png"
    (back,) = read_pairs(tmp_path / "out" / "pairs.jsonl")
    assert back.image.resolve() == record.image.resolve()
    assert (back.page, back.figure, back.panel, back.bbox, back.method) == (3, "2", "a", [1.0, 2.0, 3.0, 4.0], "layout")


def test_merge_drops_repeated_images_by_pixels_not_by_name(tmp_path):
    pixels = image(tmp_path / "a.png", 0)
    write_image(tmp_path / "copy.png", pixels)
    image(tmp_path / "b.png", 1)
    book1 = [PairRecord(tmp_path / "a.png", "one"), PairRecord(tmp_path / "b.png", "two")]
    book2 = [PairRecord(tmp_path / "copy.png", "one again")]
    kept, dropped = merge_pairs([book1, book2])
    assert [r.caption for r in kept] == ["one", "two"] and [r.caption for r in dropped] == ["one again"]
    assert kept[0].image_sha256 == pixel_hash(pixels)


def test_split_never_puts_one_page_or_figure_on_both_sides(tmp_path):
    records = []
    for page in range(1, 41):
        for panel in "ab":
            records.append(PairRecord(tmp_path / f"{page}{panel}.png", f"c{page}{panel}", source="book.pdf", page=page,
                                      figure=str(page)))
    # a figure continued from page 40 on page 41
    records.append(PairRecord(tmp_path / "41.png", "c41", source="book.pdf", page=41, figure="40"))
    train, val = split_pairs(records, val_fraction=0.25, seed=3)
    assert len(train) + len(val) == len(records) and 15 <= len(val) <= 25
    train_pages = {r.page for r in train}
    assert not train_pages & {r.page for r in val}
    assert not {r.figure for r in train} & {r.figure for r in val}
    groups = split_groups(records)
    assert groups[-1] == groups[-2] == groups[-3]  # figure 40 spans pages 40 and 41
    assert split_pairs(records, val_fraction=0.25, seed=3) == (train, val)


def test_split_groups_the_study_json_by_the_page_in_its_image_names(tmp_path):
    # MAM-CLIP's extract_mam.py writes {"image": "page_<i>_img_<j>.jpg", "caption": ...} with no page field and gives
    # every image of a page one of the page's captions: each record its own group would leak captions into validation.
    rows = [{"image": f"page_{page}_img_{j}.jpg", "caption": f"Caption {page}{'ab'[j % 2]}."}
            for page in range(10) for j in range(4)]
    (tmp_path / "pairs.json").write_text(json.dumps(rows))
    records = read_pairs(tmp_path / "pairs.json", check_images=False)
    groups = split_groups(records)
    assert len(set(groups)) == 10
    train, val = split_pairs(records, val_fraction=0.2, seed=0)
    assert val and not {r.caption for r in train} & {r.caption for r in val}
    # two books extracted into two folders, one JSON: page 1 of one is not page 1 of the other
    other = [PairRecord(tmp_path / "book2" / "page_1_img_0.jpg", "Other book, page 1.")]
    assert len(set(split_groups(records + other))) == 11
    # templated captions repeated across pages are not grouped: validation keeps several captions to retrieve
    templated = [PairRecord(tmp_path / f"{i}.png", ("Left mass.", "Right mass.", "No mass.")[i % 3]) for i in range(48)]
    train, val = split_pairs(templated, val_fraction=0.25, seed=0)
    assert len(val) == 12 and len({r.caption for r in val}) == 3


def test_a_byte_order_mark_is_not_part_of_the_json(tmp_path):
    image(tmp_path / "a.png", 0)
    for name, text in (("pairs.json", json.dumps([{"image": "a.png", "caption": "Oval mass."}])),
                       ("pairs.jsonl", json.dumps({"image": "a.png", "caption": "Oval mass."}) + "\n")):
        (tmp_path / name).write_text("\ufeff" + text, encoding="utf-8")
        assert [r.caption for r in read_pairs(tmp_path / name)] == ["Oval mass."], name


def test_a_page_that_would_overfill_validation_is_passed_over(tmp_path):
    records = [PairRecord(tmp_path / f"n{i}.png", f"Plate {i}.", source="b.pdf", page=1) for i in range(60)]
    records += [PairRecord(tmp_path / f"f{i}.png", f"Finding {i}.", source="b.pdf", page=2 + i) for i in range(40)]
    for seed in range(5):
        train, val = split_pairs(records, val_fraction=0.1, seed=seed)
        assert 8 <= len(val) <= 15 and all(r.page != 1 for r in val), seed
    # only large groups: the smallest one still makes a validation split
    others = [PairRecord(tmp_path / f"o{i}.png", f"Other {i}.", source="b.pdf", page=2) for i in range(30)]
    train, val = split_pairs(records[:60] + others, val_fraction=0.1)
    assert {r.page for r in val} == {2} and len(val) == 30

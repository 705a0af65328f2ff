"""The MAM-CLIP demo generator: how many pairs each atlas gets, and the classification set beside them."""

import json

import pytest

pytest.importorskip("pymupdf")


def test_the_two_atlases_get_the_pairs_asked_for(tmp_path):
    from keras_medimg.datasets.synthetic.mamclip import generate_mamclip, mamclip_demo_paths
    from keras_medimg.datasets.teknofest import METADATA

    generate_mamclip(tmp_path, seed=0, pairs=5, ocr_pairs=3, patients=2, height=64)
    truth = [json.loads(line) for line in (tmp_path / "atlas" / "truth.jsonl").read_text().splitlines()]
    by_pdf = {name: sum(row["pdf"] == name for row in truth) for name in ("atlas_text.pdf", "atlas_ocr.pdf")}
    assert by_pdf == {"atlas_text.pdf": 5, "atlas_ocr.pdf": 3}
    paths = mamclip_demo_paths(tmp_path)
    assert paths["atlas_text"].is_file() and paths["atlas_ocr"].is_file()
    assert len(json.loads((paths["classification"] / METADATA).read_text())) == 2 * 4
    # Without ocr_pairs the burned-in atlas gets a third of the text-layer pairs (at least 3).
    generate_mamclip(tmp_path / "default", seed=0, pairs=12, patients=1, height=64)
    truth = (tmp_path / "default" / "atlas" / "truth.jsonl").read_text().splitlines()
    assert sum(json.loads(line)["pdf"] == "atlas_ocr.pdf" for line in truth) == 4

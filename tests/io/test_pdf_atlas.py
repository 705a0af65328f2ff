"""Layout pairing of atlas PDFs built here with PyMuPDF: panels, caption above, continued figures, logos, scans."""

from __future__ import annotations

import json

import numpy as np
import pytest

pymupdf = pytest.importorskip("pymupdf")

from keras_medimg.errors import InvalidInputError, MedImgError  # noqa: E402
from keras_medimg.io import ocr  # noqa: E402
from keras_medimg.io.pdf_atlas import (  # noqa: E402
    AtlasSettings,
    PlacedImage,
    clean_caption,
    extract_atlas,
    find_captions,
    image_pixels,
    open_atlas,
    parse_pages,
    read_layout,
    split_panels,
)

needs_tesseract = pytest.mark.skipif(not ocr.tesseract_available(), reason="the tesseract program is not installed")
HEADER = "Atlas of Test Mammography"


def picture(seed: int, height: int = 120, width: int = 90) -> np.ndarray:
    return (np.random.default_rng(seed).random((height, width)) * 200 + 20).astype(np.uint8)


def pixmap(gray: np.ndarray):
    return pymupdf.Pixmap(pymupdf.csGRAY, gray.shape[1], gray.shape[0], np.ascontiguousarray(gray).tobytes(), False)


LOGO = np.where(np.add.outer(np.arange(40), np.arange(40)) % 7 < 3, 30, 220).astype(np.uint8)


def new_page(doc, number: int):
    page = doc.new_page()
    page.insert_text((72, 30), HEADER, fontsize=8)
    page.insert_text((300, 820), str(number), fontsize=8)
    page.insert_image(pymupdf.Rect(500, 18, 530, 48), pixmap=pixmap(LOGO))
    return page


def text(page, rect, body, size=9):
    assert page.insert_textbox(pymupdf.Rect(*rect), body, fontsize=size) >= 0


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    """Five pages: a two-panel figure; caption above; two stacked figures; a continued figure; a caption whose
    image is at the top of the next page. A logo and a running header on every page."""
    doc = pymupdf.open()
    page = new_page(doc, 1)
    page.insert_image(pymupdf.Rect(72, 100, 252, 340), pixmap=pixmap(picture(1)))
    page.insert_image(pymupdf.Rect(258, 100, 438, 340), pixmap=pixmap(picture(2)))
    text(page, (72, 346, 438, 420), "Figure 1. Two views of one mass. (a) Craniocaudal view: an oval circum-\n"
         "scribed mass. (b) Mediolateral oblique view: the same mass.")
    text(page, (72, 440, 520, 520), "Masses are described by shape and margin. This paragraph is body text.", 10)
    page = new_page(doc, 2)
    text(page, (72, 80, 400, 120), "FIGURE 2-1 Fine pleomorphic calcifications, BI-RADS 4.")
    page.insert_image(pymupdf.Rect(72, 125, 252, 365), pixmap=pixmap(picture(3)))
    page = new_page(doc, 3)
    page.insert_image(pymupdf.Rect(72, 80, 252, 300), pixmap=pixmap(picture(4)))
    text(page, (72, 306, 400, 340), "Fig. 3 Round mass, BI-RADS 2.")
    page.insert_image(pymupdf.Rect(72, 350, 252, 570), pixmap=pixmap(picture(5)))
    text(page, (72, 576, 400, 610), "Fig. 4 Spiculated mass, BI-RADS 5.")
    page = new_page(doc, 4)
    page.insert_image(pymupdf.Rect(72, 80, 252, 300), pixmap=pixmap(picture(6)))
    text(page, (72, 306, 400, 340), "Fig. 4 (continued) Magnification view.")
    text(page, (72, 700, 400, 740), "Figure 5. Architectural distortion, BI-RADS 4.")
    page = new_page(doc, 5)
    page.insert_image(pymupdf.Rect(72, 80, 252, 300), pixmap=pixmap(picture(7)))
    text(page, (72, 500, 400, 540), "Unrelated body text at the foot of the page.", 10)
    path = tmp_path_factory.mktemp("atlas") / "book.pdf"
    doc.save(path)
    return path


@pytest.fixture(scope="module")
def extracted(book):
    return extract_atlas(book, AtlasSettings(ocr="never"))


def pairs_on(extracted, page):
    return sorted((p for p in extracted.pairs if p.page == page), key=lambda p: p.image.bbox[0] + p.image.bbox[1])


def test_two_panel_figure_gives_one_pair_per_panel_with_shared_and_own_sentence(extracted):
    left, right = pairs_on(extracted, 1)
    assert (left.panel, right.panel) == ("a", "b")
    assert left.figure == right.figure == "1"
    assert left.caption == "Two views of one mass. Craniocaudal view: an oval circumscribed mass."
    assert right.caption == "Two views of one mass. Mediolateral oblique view: the same mass."


def test_caption_above_its_image(extracted):
    (pair,) = pairs_on(extracted, 2)
    assert pair.figure == "2-1" and pair.caption == "Fine pleomorphic calcifications, BI-RADS 4."
    assert pair.image.bbox[1] == pytest.approx(125)


def test_stacked_figures_take_their_own_captions(extracted):
    top, bottom = pairs_on(extracted, 3)
    assert (top.figure, top.caption) == ("3", "Round mass, BI-RADS 2.")
    assert (bottom.figure, bottom.caption) == ("4", "Spiculated mass, BI-RADS 5.")


def test_continued_figure_keeps_the_first_caption(extracted):
    (pair,) = pairs_on(extracted, 4)
    assert pair.method == "layout-continued" and pair.figure == "4"
    assert pair.caption == "Spiculated mass, BI-RADS 5. Magnification view."


def test_caption_at_page_foot_takes_the_image_at_the_top_of_the_next_page(extracted):
    (pair,) = pairs_on(extracted, 5)
    assert pair.method == "layout-next-page" and pair.figure == "5"
    assert pair.caption == "Architectural distortion, BI-RADS 4."
    assert not extracted.captions_without_images and not extracted.images_without_captions


def test_repeated_logo_is_dropped_never_paired(extracted):
    assert len(extracted.decorations) == 5
    assert all(d.decoration == "repeated on 5 pages" for d in extracted.decorations)
    assert all(p.image.bbox[0] < 500 for p in extracted.pairs)
    assert len(extracted.pairs) == 7


def test_running_header_is_not_a_caption_and_body_text_is_ignored(book):
    doc = open_atlas(book)
    layouts = read_layout(doc, [1])
    captions = find_captions(layouts[0], AtlasSettings())
    assert [c.figure for c in captions] == ["1"]


def test_placed_images_carry_page_rect_resolution_and_native_pixels(book):
    doc = open_atlas(book)
    (layout,) = read_layout(doc, [2])
    image = next(im for im in layout.images if not im.decoration)
    assert (image.page, image.width, image.height) == (2, 90, 120)
    assert image.bbox == pytest.approx((72, 125, 252, 365))
    assert image.dpi == pytest.approx(90 / 180 * 72, abs=0.1)
    pixels = image_pixels(doc, image)
    assert pixels.ndim == 2 and np.array_equal(pixels, picture(3))  # grey, native resolution, exact


def test_positional_pairing_is_the_study_rule(tmp_path):
    doc = pymupdf.open()
    page = doc.new_page()
    for i in range(3):
        page.insert_image(pymupdf.Rect(72 + 150 * i, 100, 212 + 150 * i, 280), pixmap=pixmap(picture(10 + i)))
    text(page, (72, 300, 520, 340), "Figure 7 HISTORY: screening. IMPRESSION: benign.")
    text(page, (72, 350, 520, 390), "Figure 8 MAMMOGRAPHY: mass.")
    doc.new_page().insert_text((72, 72), "A page of text with no Figure keyword pair.")
    path = tmp_path / "study.pdf"
    doc.save(path)
    result = extract_atlas(path, AtlasSettings(pairing="positional", ocr="never"))
    figures = [p.figure for p in sorted(result.pairs, key=lambda p: p.image.index)]
    assert figures == ["7", "7", "8"]  # (3 + 1) // 2 images to the first caption, as the authors' script
    assert {p.method for p in result.pairs} == {"positional"}


def test_clean_caption_hyphens_ligatures_whitespace_headers():
    headers = {"atlasofmammography"}
    raw = "An oval mass with circum-\nscribed margins,  \ufb01ne\nlinear calci\ufb01cations.\nAtlas of Mammography 12\nBI-\nRADS 3."
    assert clean_caption(raw, headers) == (
        "An oval mass with circumscribed margins, fine linear calcifications. BI-RADS 3."
    )


def test_split_panels_needs_as_many_panels_as_images():
    caption = "Shared. (a) First view. (b) Second view."
    assert split_panels(caption, 2) == [("a", "Shared. First view."), ("b", "Shared. Second view.")]
    assert split_panels(caption, 3) is None
    assert split_panels("No panels named.", 2) is None
    assert split_panels("Spot (a) and magnification (b) views.", 2) is None


def test_parse_pages():
    assert parse_pages("35-", 40) == [35, 36, 37, 38, 39, 40]
    assert parse_pages("1-3,5", 10) == [1, 2, 3, 5]
    assert parse_pages(None, 2) == [1, 2]
    with pytest.raises(MedImgError, match="page range"):
        parse_pages("x", 3)


def test_encrypted_damaged_and_imageless_pdfs_are_clear_errors(tmp_path):
    damaged = tmp_path / "damaged.pdf"
    damaged.write_bytes(b"%PDF-1.7\n garbage that is not a pdf")
    with pytest.raises(InvalidInputError, match="damaged"):
        open_atlas(damaged)
    doc = pymupdf.open()
    doc.new_page().insert_text((72, 72), "Figure 1. Text only.")
    locked = tmp_path / "locked.pdf"
    doc.save(locked, encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="secret", owner_pw="owner")
    with pytest.raises(InvalidInputError, match="encrypted"):
        open_atlas(locked)
    assert open_atlas(locked, password="secret").page_count == 1
    textonly = tmp_path / "text.pdf"
    doc.save(textonly)
    with pytest.raises(InvalidInputError, match="no images"):
        extract_atlas(textonly, AtlasSettings(ocr="never"))


def test_caption_band_is_found_from_its_text_rows_not_a_darkness_ratio():
    from keras_medimg.datasets.synthetic.atlas import burn_caption

    photo = np.full((200, 240), 10, np.uint8)
    photo[40:160, 60:200] = 150  # a grey picture on a black background
    burned = burn_caption(pymupdf, photo, "Figure 3 ~ An oval mass with circumscribed margins, BI-RADS 3.")
    band = ocr.find_caption_band(burned)
    assert band is not None and band.side == "bottom"
    assert band.picture == (0, 200) or abs(band.picture[1] - 200) <= 4  # cut at the picture's lower edge
    assert ocr.find_caption_band(photo) is None  # no text rows: no band
    light = np.full((200, 240), 240, np.uint8)
    assert ocr.find_caption_band(light) is None  # a plain light image is not all caption band
    top = np.vstack([burned[200:][::-1], photo])  # the band on top (text mirrored still has text rows)
    found = ocr.find_caption_band(top)
    assert found is not None and found.side == "top" and abs(found.picture[0] - (burned.shape[0] - 200)) <= 4


def test_caption_after_separator():
    assert ocr.caption_after_separator("Figure 12 ~ Oval mass.") == ("Oval mass.", True)
    assert ocr.caption_after_separator("12 - Oval BI-RADS 3 mass.") == ("Oval BI-RADS 3 mass.", True)
    assert ocr.caption_after_separator("Figure 4. Round mass.", [r"\bfig(?:ure)?\.?\s*\d+[.:]?"]) == ("Round mass.", True)
    assert ocr.caption_after_separator("no separator", ["~"]) == ("no separator", False)
    # a dash inside the caption is not where it starts: the figure label comes first in the text
    assert ocr.caption_after_separator("Figure 1.1: Medical CT scanner - www.example.com") == (
        "Medical CT scanner - www.example.com", True)


@needs_tesseract
def test_scanned_page_is_read_with_ocr(tmp_path):
    draft = pymupdf.open()
    page = draft.new_page()
    page.insert_image(pymupdf.Rect(72, 100, 252, 340), pixmap=pixmap(picture(20)))
    text(page, (72, 350, 480, 420), "Figure 9. Oval mass with circumscribed margins, BI-RADS 3.", size=12)
    scan = page.get_pixmap(matrix=pymupdf.Matrix(2.5, 2.5), colorspace=pymupdf.csGRAY, alpha=False)
    doc = pymupdf.open()
    doc.new_page().insert_image(pymupdf.Rect(0, 0, 595, 842), pixmap=scan)
    path = tmp_path / "scan.pdf"
    doc.save(path)
    result = extract_atlas(path, AtlasSettings(ocr="auto"), workers=1)
    assert result.scanned_pages == [1]
    (pair,) = result.pairs
    assert pair.method == "scan-ocr" and pair.figure == "9"
    assert pair.caption == "Oval mass with circumscribed margins, BI-RADS 3."
    assert pair.ocr_confidence > 80
    assert pair.image.bbox == pytest.approx((72, 100, 252, 340), abs=3)
    with pytest.raises(InvalidInputError, match="scanned"):
        extract_atlas(path, AtlasSettings(ocr="never"))


@needs_tesseract
def test_low_confidence_ocr_pairs_are_listed_not_kept(tmp_path):
    from keras_medimg.datasets.synthetic.atlas import burn_caption

    doc = pymupdf.open()
    page = doc.new_page()
    page.insert_text((72, 30), "header", fontsize=8)
    burned = burn_caption(pymupdf, picture(30, 200, 240), "Figure 2 ~ Spiculated mass, BI-RADS 5.")
    page.insert_image(pymupdf.Rect(72, 100, 312, 100 + burned.shape[0]), pixmap=pixmap(burned))
    path = tmp_path / "burned.pdf"
    doc.save(path)
    kept = extract_atlas(path, AtlasSettings(ocr="auto"), workers=1)
    (pair,) = kept.pairs
    assert pair.method == "burned-ocr" and pair.caption == "Spiculated mass, BI-RADS 5." and pair.figure == "2"
    assert pair.crop is not None and abs(pair.crop[1] - 200) <= 4
    strict = extract_atlas(path, AtlasSettings(ocr="auto", min_ocr_confidence=99.9), workers=1)
    assert not strict.pairs and [p.caption for p in strict.low_confidence] == ["Spiculated mass, BI-RADS 5."]


def test_side_caption_and_a_picture_stored_as_strips(tmp_path):
    doc = pymupdf.open()
    page = doc.new_page()
    page.insert_image(pymupdf.Rect(72, 420, 252, 660), pixmap=pixmap(picture(40)))
    text(page, (262, 420, 520, 470), "Figure 7. Side caption: spiculated mass.")
    sliced = picture(41, 200, 160)
    for k in range(4):  # one picture stored as four abutting strips
        page.insert_image(pymupdf.Rect(300, 80 + 50 * k, 460, 130 + 50 * k), pixmap=pixmap(sliced[50 * k : 50 * (k + 1)]))
    text(page, (300, 286, 520, 330), "Figure 8. Sliced picture.")
    path = tmp_path / "side.pdf"
    doc.save(path)
    result = extract_atlas(path, AtlasSettings(ocr="never"))
    by_figure = {p.figure: p for p in result.pairs}
    assert set(by_figure) == {"7", "8"} and not result.images_without_captions
    assert by_figure["7"].caption == "Side caption: spiculated mass."
    strips = by_figure["8"].image
    assert strips.bbox == pytest.approx((300, 80, 460, 280)) and (strips.width, strips.height) == (160, 200)
    with open_atlas(path) as reopened:
        assert np.array_equal(image_pixels(reopened, strips), sliced)


def test_caption_split_over_blocks_is_joined():
    from keras_medimg.io.pdf_atlas import PageLayout, TextBlock

    layout = PageLayout(1, 595, 842, blocks=[
        TextBlock(1, (72, 300, 120, 311), "Figure 6."),
        TextBlock(1, (126, 300, 400, 311), "Oval mass with"),
        TextBlock(1, (72, 313, 400, 324), "circumscribed margins."),
        TextBlock(1, (72, 360, 400, 371), "Body text further down."),
        TextBlock(1, (72, 400, 400, 411), "Fig. 7 Next caption."),
    ])
    captions = find_captions(layout, AtlasSettings())
    assert [(c.figure, c.text) for c in captions] == [("6", "Oval mass with circumscribed margins."), ("7", "Next caption.")]
    assert captions[0].bbox == (72, 300, 400, 324)


def test_scanned_page_with_an_ocr_text_layer_needs_no_tesseract(tmp_path):
    draft = pymupdf.open()
    page = draft.new_page()
    page.insert_image(pymupdf.Rect(72, 100, 252, 340), pixmap=pixmap(picture(50)))
    caption = "Figure 3. Coarse benign calcifications, BI-RADS 2."
    text(page, (72, 350, 480, 400), caption, size=12)
    scan = page.get_pixmap(matrix=pymupdf.Matrix(2, 2), colorspace=pymupdf.csGRAY, alpha=False)
    doc = pymupdf.open()
    out = doc.new_page()
    out.insert_image(out.rect, pixmap=scan)
    out.insert_textbox(pymupdf.Rect(72, 350, 480, 400), caption, fontsize=12, render_mode=3)  # invisible OCR text
    path = tmp_path / "ocred.pdf"
    doc.save(path)
    result = extract_atlas(path, AtlasSettings(ocr="never"))
    assert result.page_scans == [1] and result.scanned_pages == []
    (pair,) = result.pairs
    assert (pair.method, pair.figure, pair.caption) == ("scan-text", "3", "Coarse benign calcifications, BI-RADS 2.")
    assert pair.image.bbox == pytest.approx((72, 100, 252, 340), abs=3)


WORDS = "mass margin oval round spiculated calcifications density dense breast view craniocaudal oblique lesion".split()


def random_book(seed: int, pages: int = 5):
    """A book of random layouts: one or two columns, captions under (or, for a third of books, above) figures
    of one to three panels, grey and colour pictures, body paragraphs (some starting "Figure N shows"), a
    running header, page numbers and a footer logo. Returns the PDF and the truth (page, x0, y0, figure, caption)."""
    rng = np.random.default_rng(seed)
    doc, truth, fig = pymupdf.open(), [], 0
    above, two_col = rng.random() < 0.3, rng.random() < 0.5

    def sentence(n=8):
        return " ".join(rng.choice(WORDS, n)).capitalize() + "."

    for number in range(1, pages + 1):
        page = new_page(doc, number)
        for x0, x1 in [(60, 290), (305, 535)] if two_col else [(60, 535)]:
            y = 60
            while y < 700:
                if rng.random() < 0.35:
                    opening = f"Figure {fig + 1} shows " if fig and rng.random() < 0.3 else ""
                    if y + 60 > 780:
                        break
                    text(page, (x0, y, x1, y + 60), opening + " ".join(sentence() for _ in range(2)), size=8)
                    y += 70
                    continue
                n = int(rng.integers(1, 4 if x1 - x0 > 300 else 3))
                w = min(150, (x1 - x0 - 6 * (n - 1)) / n)
                h = w * 4 / 3
                if y + h + 50 > 790:
                    break
                fig += 1
                shared, panels = sentence(), [sentence(4) for _ in range(n)]
                label = rng.choice([f"Figure {fig}.", f"Fig. {fig}", f"FIGURE {fig}"])
                body = f"{label} {shared}" + ("".join(f" ({'abc'[i]}) {panels[i]}" for i in range(n)) if n > 1 else "")
                caption_y, image_y = (y, y + 44) if above else (y + h + 6, y)
                for i in range(n):
                    rect = (x0 + i * (w + 6), image_y, x0 + i * (w + 6) + w, image_y + h)
                    gray = (rng.random((int(h), int(w))) * 255).astype(np.uint8)
                    if rng.random() < 0.3:
                        colour = np.ascontiguousarray(np.stack([gray, gray[:, ::-1], gray // 2], -1))
                        pix = pymupdf.Pixmap(pymupdf.csRGB, gray.shape[1], gray.shape[0], colour.tobytes(), False)
                    else:
                        pix = pixmap(gray)
                    page.insert_image(pymupdf.Rect(*rect), pixmap=pix)
                    truth.append((number, rect[0], rect[1], str(fig), shared + (f" {panels[i]}" if n > 1 else "")))
                text(page, (x0, caption_y, x1, caption_y + 40), body, size=8)
                y += h + 60
    return doc, truth


def test_random_layouts_are_paired_as_a_person_would(tmp_path):
    right = total = 0
    for seed in range(6):
        doc, truth = random_book(seed)
        path = tmp_path / f"book{seed}.pdf"
        doc.save(path)
        result = extract_atlas(path, AtlasSettings(ocr="never"))
        assert len(result.pairs) == len(truth)  # no logo, no body paragraph made a pair
        for page, x0, y0, figure, caption in truth:
            found = [p for p in result.pairs if p.page == page and abs(p.image.bbox[0] - x0) < 3 and abs(p.image.bbox[1] - y0) < 3]
            right += len(found) == 1 and (found[0].figure, found[0].caption) == (figure, caption)
            total += 1
    assert total > 100 and right / total >= 0.98, f"{right}/{total}"


@needs_tesseract
@pytest.mark.parametrize("variant", ["light band under", "dark band under", "band on top", "jpeg"])
def test_burned_caption_variants_are_read_and_cut(variant):
    import cv2

    from keras_medimg.datasets.synthetic.atlas import burn_caption, case_image, random_case

    rng = np.random.default_rng(7)
    picture_rows = 300
    photo = case_image(rng, random_case(rng), height=picture_rows, width=240)
    caption = "An irregular mass with spiculated margins in the middle third of the breast. BI-RADS 5."
    burned = burn_caption(pymupdf, photo, f"Figure 11 ~ {caption}", size=10)
    band = burned[picture_rows:]
    if variant == "dark band under":
        burned = np.vstack([photo, 255 - band])  # white type on black, like the picture's own background
    elif variant == "band on top":
        burned = np.vstack([band, photo])
    elif variant == "jpeg":
        burned = cv2.imdecode(cv2.imencode(".jpg", burned, [cv2.IMWRITE_JPEG_QUALITY, 70])[1], cv2.IMREAD_GRAYSCALE)
    found = ocr.read_burned_caption(burned)
    assert found is not None and found.figure == "11"
    assert found.caption == caption
    picture = found.band.picture
    if variant == "band on top":
        assert abs(picture[0] - band.shape[0]) <= 2 and picture[1] == burned.shape[0]
    else:
        # cut at the picture's lower edge; a dark band on the picture's dark background is cut within a text line
        # of it, in rows of that background
        assert picture[0] == 0 and -10 <= picture[1] - picture_rows <= (8 if variant == "dark band under" else 2)


@needs_tesseract
def test_ocr_always_cuts_a_burned_band_from_an_image_that_has_a_text_caption(tmp_path):
    from keras_medimg.datasets.synthetic.atlas import burn_caption

    doc = pymupdf.open()
    page = doc.new_page()
    burned = burn_caption(pymupdf, picture(60, 200, 240), "Figure 5 ~ Round mass, BI-RADS 2.")
    page.insert_image(pymupdf.Rect(72, 100, 312, 100 + burned.shape[0]), pixmap=pixmap(burned))
    text(page, (72, 106 + burned.shape[0], 400, 150 + burned.shape[0]), "Figure 5. Round mass with circumscribed margins.")
    path = tmp_path / "both.pdf"
    doc.save(path)
    (auto,) = extract_atlas(path, AtlasSettings(ocr="auto"), workers=1).pairs
    assert (auto.method, auto.crop) == ("layout", None)  # captioned by the text layer: not read by OCR
    (always,) = extract_atlas(path, AtlasSettings(ocr="always"), workers=1).pairs
    assert always.method == "layout" and always.caption == "Round mass with circumscribed margins."
    assert always.crop is not None and abs(always.crop[1] - 200) <= 2


def test_pixels_are_grey_when_grey_and_rgb_otherwise(tmp_path):
    import cv2

    gray = picture(70, 60, 50)
    colour = np.ascontiguousarray(np.stack([gray, gray[::-1], 255 - gray], -1))
    doc = pymupdf.open()
    page = doc.new_page()
    rgb_of_grey = np.ascontiguousarray(np.dstack([gray] * 3))
    page.insert_image(pymupdf.Rect(50, 50, 150, 170), pixmap=pymupdf.Pixmap(pymupdf.csRGB, 50, 60, rgb_of_grey.tobytes(), False))
    page.insert_image(pymupdf.Rect(200, 50, 300, 170), pixmap=pymupdf.Pixmap(pymupdf.csRGB, 50, 60, colour.tobytes(), False))
    rgba = cv2.cvtColor(np.dstack([colour, np.full((60, 50), 128, np.uint8)]), cv2.COLOR_RGBA2BGRA)
    page.insert_image(pymupdf.Rect(50, 200, 150, 320), stream=cv2.imencode(".png", rgba)[1].tobytes())
    cmyk = np.ascontiguousarray(np.dstack([gray, gray // 2, gray // 3, gray // 4]))
    page.insert_image(pymupdf.Rect(200, 200, 300, 320), pixmap=pymupdf.Pixmap(pymupdf.csCMYK, 50, 60, cmyk.tobytes(), False))
    path = tmp_path / "colours.pdf"
    doc.save(path)
    with open_atlas(path) as reopened:
        (layout,) = read_layout(reopened, [1])
        pixels = [image_pixels(reopened, im) for im in sorted(layout.images, key=lambda im: (im.bbox[1], im.bbox[0]))]
    assert np.array_equal(pixels[0], gray)  # RGB with equal channels is written grey
    assert np.array_equal(pixels[1], colour)
    assert pixels[2].shape == colour.shape  # alpha dropped (PyMuPDF's PNG import may round a level)
    assert np.abs(pixels[2].astype(int) - colour).max() <= 1
    assert pixels[3].shape == (60, 50, 3)  # CMYK converted to RGB


def test_a_drawn_frame_holds_one_figure(tmp_path):
    doc = pymupdf.open()
    page = doc.new_page()
    page.draw_rect(pymupdf.Rect(60, 60, 300, 560), color=(0, 0, 0), width=0.5)
    page.insert_image(pymupdf.Rect(80, 80, 240, 280), pixmap=pixmap(picture(80)))
    page.insert_image(pymupdf.Rect(80, 320, 240, 520), pixmap=pixmap(picture(81)))  # 40 pt apart: not one figure by gap
    text(page, (80, 524, 290, 556), "Figure 12. Spot compression (a) and magnification (b) views.")
    path = tmp_path / "framed.pdf"
    doc.save(path)
    result = extract_atlas(path, AtlasSettings(ocr="never"))
    assert [(p.figure, round(p.image.bbox[1])) for p in result.pairs] == [("12", 80), ("12", 320)]
    # the panel markers sit inside one sentence: both panels keep the whole caption
    assert {p.caption for p in result.pairs} == {"Spot compression (a) and magnification (b) views."}
    assert not result.images_without_captions


@needs_tesseract
def test_positional_ocr_is_the_study_acr_rule(tmp_path):
    from keras_medimg.datasets.synthetic.atlas import burn_caption

    doc = pymupdf.open()
    page = doc.new_page()
    page.insert_text((72, 30), "header", fontsize=8)
    photo = np.full((200, 240), 30, np.uint8)
    photo[40:160, 40:200] = 120
    burned = burn_caption(pymupdf, photo, "Figure 2 ~ Spiculated mass, BI-RADS 5.")
    page.insert_image(pymupdf.Rect(72, 100, 312, 100 + burned.shape[0]), pixmap=pixmap(burned))
    page.insert_image(pymupdf.Rect(72, 400, 312, 600), pixmap=pixmap(photo))  # no "~" or "-" in it: dropped
    path = tmp_path / "acr.pdf"
    doc.save(path)
    result = extract_atlas(path, AtlasSettings(pairing="positional", ocr="auto"), workers=1)
    (pair,) = result.pairs
    assert pair.method == "positional-ocr" and pair.caption.startswith("Spiculated")  # whole-image OCR, as theirs
    assert pair.crop == (0, 200)  # the first row 20 times darker than the next: the picture's lower edge
    assert len(result.images_without_captions) == 1


def test_ocr_auto_without_tesseract_lists_what_it_could_not_read(tmp_path, monkeypatch, caplog):
    doc = pymupdf.open()
    page = doc.new_page()
    page.insert_image(pymupdf.Rect(72, 100, 252, 340), pixmap=pixmap(picture(90)))
    text(page, (72, 346, 400, 380), "Figure 1. Oval mass.")
    page.insert_image(pymupdf.Rect(72, 450, 252, 690), pixmap=pixmap(picture(91)))  # no caption
    path = tmp_path / "mixed.pdf"
    doc.save(path)
    monkeypatch.setattr(ocr, "tesseract_available", lambda: False)
    with caplog.at_level("WARNING"):
        result = extract_atlas(path, AtlasSettings(ocr="auto"))
    assert [p.caption for p in result.pairs] == ["Oval mass."]
    assert [im.bbox[1] for im in result.images_without_captions] == [450]
    assert "tesseract" in caplog.text and "1 uncaptioned image" in caplog.text


def test_next_page_takes_only_the_top_row(tmp_path):
    doc = pymupdf.open()
    page = doc.new_page()
    page.insert_image(pymupdf.Rect(72, 100, 252, 340), pixmap=pixmap(picture(100)))
    text(page, (72, 346, 400, 380), "Figure 3. Round mass.")
    text(page, (72, 700, 400, 740), "Figure 4. Oval mass, set on the next page.")
    page = doc.new_page()
    page.insert_image(pymupdf.Rect(72, 80, 252, 320), pixmap=pixmap(picture(101)))
    page.insert_image(pymupdf.Rect(300, 500, 480, 740), pixmap=pixmap(picture(102)))  # lower down: not Figure 4
    path = tmp_path / "next.pdf"
    doc.save(path)
    result = extract_atlas(path, AtlasSettings(ocr="never"))
    assert [(p.page, p.figure, p.method) for p in result.pairs] == [(1, "3", "layout"), (2, "4", "layout-next-page")]
    assert [(im.page, round(im.bbox[1])) for im in result.images_without_captions] == [(2, 500)]


# --- Layouts met in real books (benchmarks/data/atlas_real_truth.json) -------------------------------------------


def test_rows_and_columns_of_labelled_panels_are_one_figure(tmp_path):
    # As in the InVesalius guide (figure 5.24) and the elastix manual (2.5): panels 24 pt apart in a row, a label
    # under each, rows 40 pt apart; the caption under the last row only.
    doc = pymupdf.open()
    page = doc.new_page()
    lefts, tops = (128, 249, 370), (140, 276)
    for r, top in enumerate(tops):
        for c, left in enumerate(lefts):
            page.insert_image(pymupdf.Rect(left, top, left + 97, top + 96), pixmap=pixmap(picture(110 + 3 * r + c, 96, 97)))
            text(page, (left + 10, top + 101, left + 97, top + 116), f"({'abcdef'[3 * r + c]}) view {3 * r + c}", 8)
    text(page, (72, 400, 520, 430), "Figure 5.24: Some different types of pseudo-colour.")
    text(page, (72, 480, 520, 560), "Body text under the figure, unrelated to it, in a paragraph of its own.", 10)
    path = tmp_path / "panels.pdf"
    doc.save(path)
    result = extract_atlas(path, AtlasSettings(ocr="never"))
    assert [p.figure for p in result.pairs] == ["5.24"] * 6
    assert not result.images_without_captions


def test_panels_of_two_figures_stay_apart_when_a_caption_is_between(tmp_path):
    doc = pymupdf.open()
    page = doc.new_page()
    for k, top in enumerate((100, 330)):
        for c, left in enumerate((72, 190)):
            page.insert_image(pymupdf.Rect(left, top, left + 100, top + 100), pixmap=pixmap(picture(120 + 2 * k + c, 100, 100)))
            text(page, (left + 20, top + 104, left + 100, top + 118), f"({'ab'[c]}) side {c}", 8)
        text(page, (72, top + 126, 400, top + 150), f"Figure {k + 1}. Two views of mass {k + 1}.")
    path = tmp_path / "two.pdf"
    doc.save(path)
    result = extract_atlas(path, AtlasSettings(ocr="never"))
    assert [(p.figure, round(p.image.bbox[1])) for p in result.pairs] == [("1", 100), ("1", 100), ("2", 330), ("2", 330)]


def test_running_text_that_names_a_figure_is_not_its_caption(tmp_path):
    # "Figure 4.2 shows ..." opening a paragraph at the foot of a page must not take the next page's picture.
    doc = pymupdf.open()
    page = doc.new_page()
    page.insert_image(pymupdf.Rect(72, 100, 252, 300), pixmap=pixmap(picture(130)))
    text(page, (72, 306, 400, 330), "Figure 4.1: Menu to activate the flip tool.")
    text(page, (72, 700, 520, 760), "Figure 4.2 shows a comparison between the input image and the flipped image. "
         "All other orientations are also modified.", 10)
    page = doc.new_page()
    page.insert_image(pymupdf.Rect(72, 80, 252, 280), pixmap=pixmap(picture(131)))  # its caption is elsewhere
    text(page, (72, 400, 520, 440), "Figure 4.3 (continued) The same tool, second step.")
    text(page, (72, 500, 520, 540), "Figure6.17 shows the image from Figure 6.14 after the noise was removed.", 10)
    text(page, (72, 600, 520, 640), "Figure 7.15.b shows the selected region in a new mask.", 10)
    path = tmp_path / "refs.pdf"
    doc.save(path)
    result = extract_atlas(path, AtlasSettings(ocr="never"))
    assert [(p.page, p.figure, p.method) for p in result.pairs] == [(1, "4.1", "layout")]
    assert [(im.page, round(im.bbox[1])) for im in result.images_without_captions] == [(2, 80)]
    # the continued caption is still a caption (it found no image: it is listed)
    assert [(c.figure, c.continued) for c in result.captions_without_images] == [("4.3", True)]


def test_caption_under_a_drawn_frame_is_measured_from_the_frame(tmp_path):
    # As in the AASTeX sample (figure 5): a plot far inside a large frame, the caption under the frame.
    doc = pymupdf.open()
    page = doc.new_page()
    page.draw_rect(pymupdf.Rect(55, 72, 558, 658), color=(0.4, 0.7, 0.8), width=2)
    page.insert_image(pymupdf.Rect(97, 258, 519, 472), pixmap=pixmap(picture(140, 200, 400)))
    text(page, (51, 668, 562, 720), "Figure 5. Cumulative observing time as a function of spectral type.")
    path = tmp_path / "frame.pdf"
    doc.save(path)
    (pair,) = extract_atlas(path, AtlasSettings(ocr="never")).pairs
    assert (pair.figure, pair.method) == ("5", "layout")


@needs_tesseract
def test_text_rows_without_a_separator_are_the_pictures_own_not_a_caption():
    # A plot whose top rows are its panel titles: a band of type, but no "Figure 3.", "~" or " - " in it.
    from keras_medimg.datasets.synthetic.atlas import burn_caption

    photo = picture(150, 300, 360)
    burned = burn_caption(pymupdf, photo, "Cumulative observing time in nights for early stars", size=11)
    titles_on_top = np.vstack([burned[300:], photo])
    found = ocr.read_burned_caption(titles_on_top)
    assert found is not None and "observing" in found.text  # read, so the text is there to see
    assert found.caption == "" and found.band is None  # but it is not a caption and nothing is cut
    labelled = np.vstack([burn_caption(pymupdf, photo, "Figure 3. Cumulative observing time", size=11)[300:], photo])
    assert ocr.read_burned_caption(labelled).caption == "Cumulative observing time"


def _typeset(lines: list[str], width: int, px: int, dark: bool = False) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=px)
    band = Image.new("L", (width, 2 * (px // 2) + round(px * 1.25) * len(lines)), 0 if dark else 255)
    for k, line in enumerate(lines):
        ImageDraw.Draw(band).text((px // 2, px // 2 + k * round(px * 1.25)), line, font=font, fill=255 if dark else 0)
    return np.asarray(band)


def test_caption_band_of_large_type_is_found_and_cut_at_the_picture():
    # 40-pixel type (9 pt on a 320 dpi image): the tops of its capitals are too sparse in strokes to look like text;
    # they still belong to the band, and the cut is at the picture's edge (as on the InVesalius CT figure 4.2).
    photo = np.zeros((500, 1000), np.uint8)
    photo[100:450, 300:700] = 150
    band = _typeset(["Figure 4.2: Example of a right-left flipped image."], 1000, 40)
    found = ocr.find_caption_band(np.vstack([band, photo]))
    assert found is not None and found.side == "top" and found.picture == (band.shape[0], band.shape[0] + 500)


def test_faint_edge_of_a_picture_on_the_bands_colour_stays_with_the_picture():
    # A photo on white whose lowest rows are a thin grey edge (a scanner's base): the cut keeps that edge.
    photo = np.full((300, 500), 255, np.uint8)
    photo[40:290, 60:440] = 120
    photo[290:292, 100:140] = 90  # two rows with a little ink: the picture's edge, not a dot of type
    band = _typeset(["Figure 1.1: Medical CT scanner - www.example.com"], 500, 22)
    found = ocr.find_caption_band(np.vstack([photo, band]))
    assert found is not None and found.side == "bottom"
    assert found.picture[0] == 0 and 292 <= found.picture[1] <= 300 + 11  # kept the edge, cut above the type


@needs_tesseract
def test_the_other_edge_is_read_when_the_likelier_band_has_no_separator():
    # A screenshot with two lines of title-bar type at its top and a one-line burned caption under it: the title
    # bar has more lines, holds no separator, and is not the caption.
    shot = np.full((260, 420), 200, np.uint8)
    shot[60:240, 20:400] = 90
    title = _typeset(["Skip images", "Import options"], 420, 14)
    caption = _typeset(["Figure 3.6: Skip images option"], 420, 15)
    found = ocr.read_burned_caption(np.vstack([title, shot, caption]))
    assert found is not None and found.figure == "3.6" and found.caption == "Skip images option"
    assert found.band.side == "bottom"


# === Publisher PDFs: caption labels, columns, placement, colour spaces, damage ===================================


def two_images_and(doc, captions, panels=1):
    """A page with `panels` images per caption, side by side in the caption's column, the caption under them."""
    page = doc.new_page(width=612, height=792)
    columns = [(60, 290), (322, 552)] if len(captions) == 2 else [(60, 552)]
    for k, ((x0, x1), caption) in enumerate(zip(columns, captions)):
        step = (x1 - x0) / panels
        for i in range(panels):
            page.insert_image(pymupdf.Rect(x0 + i * step, 80, x0 + (i + 1) * step - 6, 330),
                              pixmap=pixmap(picture(10 * k + i + 30)), keep_proportion=False)
        text(page, (x0, 336, x1, 380), caption)
    return page


def test_numbers_after_the_figure_label_and_panel_lists_are_not_the_figure_number(tmp_path):
    doc = pymupdf.open()
    two_images_and(doc, ["Figure 4. 52-year-old woman with a palpable lump.", "Figure 10. 3 cm irregular mass."])
    two_images_and(doc, ["Fig. 3.4a,b Craniocaudal and oblique views.", "Figure 2. 2D synthesized mammogram."])
    doc.save(tmp_path / "numbers.pdf")
    result = extract_atlas(tmp_path / "numbers.pdf", AtlasSettings(ocr="never"), workers=1)
    found = sorted({(p.page, p.figure, p.caption) for p in result.pairs})
    assert found == [
        (1, "10", "3 cm irregular mass."), (1, "4", "52-year-old woman with a palpable lump."),
        (2, "2", "2D synthesized mammogram."), (2, "3.4", "Craniocaudal and oblique views."),
    ]


def test_springer_captions_with_panel_letters_after_the_number_are_captions(tmp_path):
    doc = pymupdf.open()
    two_images_and(doc, ["Fig. 3.2 a, b Craniocaudal (a) and mediolateral oblique (b) views of a mass."], panels=2)
    two_images_and(doc, ["Fig. 3.3 a-d Four views of a spiculated carcinoma."], panels=2)
    doc.save(tmp_path / "springer.pdf")
    result = extract_atlas(tmp_path / "springer.pdf", AtlasSettings(ocr="never"), workers=1)
    got = [(p.page, p.figure, p.panel, p.caption) for p in sorted(result.pairs, key=lambda p: (p.page, p.image.bbox[0]))]
    assert got == [
        (1, "3.2", "a", "Craniocaudal (a) and mediolateral oblique (b) views of a mass."),
        (1, "3.2", "b", "Craniocaudal (a) and mediolateral oblique (b) views of a mass."),
        (2, "3.3", None, "Four views of a spiculated carcinoma."),  # four panels named, two images: no letters
        (2, "3.3", None, "Four views of a spiculated carcinoma."),
    ]
    assert not result.images_without_captions and not result.captions_without_images


def test_captions_of_two_columns_on_one_baseline_stay_apart(tmp_path):
    doc = pymupdf.open()
    two_images_and(doc, ["Figure 1. Round mass, left.", "Figure 2. Oval mass, right."])
    doc.save(tmp_path / "columns.pdf")
    assert len(pymupdf.open(tmp_path / "columns.pdf")[0].get_text("dict", flags=0)["blocks"][-1]["lines"]) == 2  # one block
    result = extract_atlas(tmp_path / "columns.pdf", AtlasSettings(ocr="never"), workers=1)
    got = sorted((round(p.image.bbox[0]), p.figure, p.caption) for p in result.pairs)
    assert got == [(60, "1", "Round mass, left."), (322, "2", "Oval mass, right.")]


def test_soft_hyphen_and_unicode_hyphen_at_a_line_end_join_the_word(tmp_path):
    assert clean_caption("An oval mass with calcifica\u00ad\ntions.") == "An oval mass with calcifications."
    assert clean_caption("An oval mass with calcifica\u2010\ntions.") == "An oval mass with calcifications."
    assert clean_caption("BI\u2010\nRADS 4, circum\u00ad scribed.") == "BI-RADS 4, circumscribed."


def _placed(tmp_path, name, cm, rotate=0, colour=None):
    """A page with one 90x120 picture drawn by the content stream `q <cm> cm /Im Do Q` (PDF coordinates)."""
    doc = pymupdf.open()
    page = doc.new_page(width=612, height=792)
    gray = picture(7)
    gray[:20, :30] = 255  # a bright corner at the top left shows how the picture is turned
    xref = page.insert_image(pymupdf.Rect(0, 0, 10, 10), pixmap=pixmap(gray))
    if colour is not None:  # stored as ink of a Separation (black plate): 255 is full black
        function = doc.get_new_xref()
        doc.update_object(function, "<</FunctionType 2/Domain[0 1]/C0[0 0 0 0]/C1[0 0 0 1]/N 1>>")
        doc.update_object(xref, f"<</Type/XObject/Subtype/Image/Width 90/Height 120/BitsPerComponent 8"
                                f"/ColorSpace[/Separation/Black/DeviceCMYK {function} 0 R]>>")
        doc.update_stream(xref, (255 - gray).tobytes())
    resource = page.get_images(full=True)[0][7]
    doc.update_stream(page.get_contents()[0], f"q {cm} cm /{resource} Do Q".encode())
    text(page, (72, 340, 400, 380), "Figure 1. Mass.")
    if rotate:
        page.set_rotation(rotate)
    doc.save(tmp_path / name)
    return tmp_path / name, gray


@pytest.mark.parametrize("cm, rotate, turn", [
    ("180 0 0 240 72 480", 0, lambda a: a),
    ("-180 0 0 240 252 480", 0, lambda a: a[:, ::-1]),  # mirrored left-right
    ("180 0 0 -240 72 720", 0, lambda a: a[::-1]),  # upside down
    ("0 180 -240 0 312 480", 0, lambda a: np.rot90(a, 1)),  # a quarter turn counter-clockwise
    ("-180 0 0 -240 252 720", 0, lambda a: np.rot90(a, 2)),
    ("0 -180 240 0 72 660", 0, lambda a: np.rot90(a, -1)),
    ("180 0 0 240 72 480", 90, lambda a: np.rot90(a, -1)),  # page /Rotate 90: shown turned clockwise
    ("180 0 1 240 72 480", 0, lambda a: a),  # skewed: left as stored
])
def test_pixels_are_turned_as_the_page_shows_them(tmp_path, cm, rotate, turn):
    path, gray = _placed(tmp_path, "turned.pdf", cm, rotate)
    doc = pymupdf.open(path)
    (image,) = read_layout(doc, [1])[0].images
    np.testing.assert_array_equal(image_pixels(doc, image), turn(gray))
    if rotate == 0 and "1 240" not in cm:  # the page as rendered agrees
        pix = doc[0].get_pixmap(dpi=72, colorspace=pymupdf.csGRAY, clip=pymupdf.Rect(image.bbox))
        shown = np.frombuffer(pix.samples, np.uint8).reshape(pix.height, pix.stride)[:, : pix.width]
        top_left_bright = shown[: shown.shape[0] // 4, : shown.shape[1] // 4].mean() > 200
        assert top_left_bright == (turn(gray)[:10, :10].mean() > 200)


def test_separation_colour_is_converted_as_shown_not_returned_as_ink(tmp_path):
    path, gray = _placed(tmp_path, "separation.pdf", "180 0 0 240 72 480", colour="separation")
    doc = pymupdf.open(path)
    (image,) = read_layout(doc, [1])[0].images
    pixels = image_pixels(doc, image)
    assert pixels.shape == gray.shape and np.corrcoef(pixels.ravel(), gray.ravel())[0, 1] > 0.95


def test_a_damaged_image_is_skipped_and_reported_with_file_and_page(tmp_path, caplog):
    doc = pymupdf.open()
    for number in (1, 2):
        page = doc.new_page(width=612, height=792)
        page.insert_image(pymupdf.Rect(72, 72, 252, 312), pixmap=pixmap(picture(40 + number)))
        text(page, (72, 318, 400, 360), f"Figure {number}. Mass number {number}.")
    broken = doc.get_new_xref()
    doc.update_object(broken, "<</Garbage true>>")
    image = doc[0].get_images()[0][0]
    doc.xref_set_key(image, "ColorSpace", f"{broken} 0 R")
    doc.save(tmp_path / "damaged.pdf")
    with caplog.at_level("WARNING"):
        result = extract_atlas(tmp_path / "damaged.pdf", AtlasSettings(ocr="never"), workers=1)
    assert [(p.page, p.figure) for p in result.pairs] == [(2, "2")]
    assert len(result.warnings) == 1 and "damaged.pdf, page 1" in result.warnings[0] and "skipped" in result.warnings[0]
    assert "damaged.pdf, page 1" in caplog.text
    doc = pymupdf.open(tmp_path / "damaged.pdf")
    bad = PlacedImage(page=1, index=0, xref=image, bbox=(72, 72, 252, 312), width=90, height=120, dpi=36, digest="")
    with pytest.raises(InvalidInputError, match="page 1: image"):
        image_pixels(doc, bad)


def test_a_truncated_pdf_is_repaired_with_a_warning(tmp_path, caplog):
    doc = pymupdf.open()
    for number in (1, 2, 3):
        page = doc.new_page(width=612, height=792)
        page.insert_image(pymupdf.Rect(72, 72, 252, 312), pixmap=pixmap(picture(50 + number)))
        text(page, (72, 318, 400, 360), f"Figure {number}. Mass number {number}.")
    data = doc.tobytes()
    (tmp_path / "cut.pdf").write_bytes(data[: int(len(data) * 0.9)])
    with caplog.at_level("WARNING"):
        result = extract_atlas(tmp_path / "cut.pdf", AtlasSettings(ocr="never"), workers=1)
    assert any("cut.pdf" in note and "repaired" in note for note in result.warnings)
    assert "cut.pdf" in caplog.text and "damaged" in caplog.text
    # and the book's report says so, where a person reads why pages are missing
    from keras_medimg.datasets.pairs import extract_books, write_outputs

    written = write_outputs(extract_books([tmp_path / "cut.pdf"], tmp_path / "out", AtlasSettings(ocr="never"), workers=1),
                            tmp_path / "out", contact_sheet=False)
    assert "repaired" in json.loads(written["report"].read_text())["books"][0]["warnings"][0]
    assert "Problems reading the PDF (1)" in written["report_md"].read_text()


def test_scanned_pages_and_pictures_are_decoded_a_few_per_worker_at_a_time(tmp_path, monkeypatch):
    """A scanned atlas of hundreds of pages (about 4 MB of pixels each at 200 dpi) is never rendered whole before
    OCR, nor are an atlas's pictures decoded all at once for the burned-caption search: jobs go to the workers in
    groups of JOBS_AHEAD_PER_WORKER per worker, and every page is read."""
    from keras_medimg.io import pdf_atlas

    doc = pymupdf.open()
    for i in range(10):
        doc.new_page().insert_image(pymupdf.Rect(0, 0, 595, 842), pixmap=pixmap(picture(i, 200, 150)))
    path = tmp_path / "scans.pdf"
    doc.save(path)
    groups, read = [], []

    def fake_map(self, func, items):
        items = list(items)
        groups.append((func.__name__, len(items)))
        return [func(item) for item in items]

    def _scan_job(job):
        pixels, layout, _ = job
        read.append(layout.number)
        assert pixels.ndim == 2 and pixels.shape[0] > 1000  # the page rendered at scan_dpi
        return layout

    def _burned_job(job):
        return None

    monkeypatch.setattr(pdf_atlas.ocr.OcrPool, "map", fake_map)
    monkeypatch.setattr(pdf_atlas, "_scan_job", _scan_job)
    monkeypatch.setattr(pdf_atlas, "_burned_job", _burned_job)
    monkeypatch.setattr(pdf_atlas.ocr, "require_tesseract", lambda: None)
    monkeypatch.setattr(pdf_atlas.ocr, "tesseract_available", lambda: True)
    monkeypatch.setattr(pdf_atlas, "JOBS_AHEAD_PER_WORKER", 2)
    result = extract_atlas(path, AtlasSettings(ocr="auto"), workers=2)
    assert read == list(range(1, 11)) and result.scanned_pages == list(range(1, 11))
    assert groups == [("_scan_job", 4), ("_scan_job", 4), ("_scan_job", 2),
                      ("_burned_job", 4), ("_burned_job", 4), ("_burned_job", 2)]


def _turned_page(doc, rotate: int):
    """A page stored sideways with /Rotate `rotate`, so that it is shown upright, portrait (612 x 792 as shown)."""
    page = doc.new_page(width=792, height=612)
    page.set_rotation(rotate)
    return page


@pytest.mark.parametrize("rotate", [90, 270])
def test_a_page_shown_turned_is_read_as_it_is_shown(tmp_path, rotate):
    """A landscape-stored page with /Rotate: the figure and its caption sit one above the other as the reader sees
    them (PyMuPDF reports them in the page's unrotated space, where the caption is beside the picture)."""
    doc = pymupdf.open()
    page = _turned_page(doc, rotate)
    gray = picture(3)
    gray[:20, :30] = 255  # a bright top-left corner shows how the picture is turned
    shown = pymupdf.Rect(72, 100, 252, 340)
    page.insert_image(shown * page.derotation_matrix, pixmap=pixmap(gray), rotate=rotate)
    page.insert_textbox(pymupdf.Rect(72, 346, 400, 380) * page.derotation_matrix, "Figure 1. An oval mass.",
                        fontsize=9, rotate=rotate)
    doc.save(tmp_path / "turned.pdf")
    result = extract_atlas(tmp_path / "turned.pdf", AtlasSettings(ocr="never"), workers=1)
    (pair,) = result.pairs
    assert pair.caption == "An oval mass."
    assert np.allclose(pair.image.bbox, tuple(shown), atol=1.0)
    np.testing.assert_array_equal(image_pixels(pymupdf.open(tmp_path / "turned.pdf"), pair.image), gray)


@pytest.mark.parametrize("rotate", [90, 270])
def test_a_scan_stored_sideways_with_an_ocr_text_layer_gives_its_figure(tmp_path, rotate):
    """A scanned page kept sideways with /Rotate and an invisible OCR text layer (as OCR software writes it):
    the figure is cut from the page as shown, above its caption."""
    scan = np.full((1100, 850), 250, np.uint8)
    scan[150:550, 200:650] = picture(5, 400, 450)
    doc = pymupdf.open()
    page = _turned_page(doc, rotate)
    page.insert_image(page.rect * page.derotation_matrix, pixmap=pixmap(scan), rotate=rotate)
    scale = 612 / 850
    where = pymupdf.Point(120 * scale, 620 * scale) * page.derotation_matrix
    page.insert_text(where, "Figure 1. An irregular mass with spiculated margins.", fontsize=10, render_mode=3,
                     rotate=rotate)
    doc.save(tmp_path / "scan.pdf")
    result = extract_atlas(tmp_path / "scan.pdf", AtlasSettings(ocr="never"), workers=1)
    (pair,) = result.pairs
    assert pair.caption == "An irregular mass with spiculated margins."
    x0, y0, x1, y1 = (v / scale for v in pair.image.bbox)  # page points -> scan pixels
    assert abs(x0 - 200) < 12 and abs(y0 - 150) < 12 and abs(x1 - 650) < 12 and abs(y1 - 550) < 12


@pytest.mark.parametrize("label, figure", [("Figure A1.", "A1"), ("Figure B.2", "B.2"), ("Fig. S3", "S3"),
                                           ("FIGURE C-4", "C-4"), ("Figure 12.4a", "12.4a")])
def test_appendix_and_supplement_figure_numbers_are_captions(tmp_path, label, figure):
    doc = pymupdf.open()
    page = doc.new_page()
    page.insert_image(pymupdf.Rect(72, 100, 252, 340), pixmap=pixmap(picture(11)))
    text(page, (72, 346, 400, 380), f"{label} A round mass with circumscribed margins.")
    text(page, (72, 420, 540, 480), "Figures 2 and 3 show the same case; see Figure 2 for the other view.")
    doc.save(tmp_path / "appendix.pdf")
    (pair,) = extract_atlas(tmp_path / "appendix.pdf", AtlasSettings(ocr="never"), workers=1).pairs
    assert (pair.figure, pair.caption) == (figure, "A round mass with circumscribed margins.")

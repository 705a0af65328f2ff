"""8/16-bit image round trips, colour order and errors of io.images."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest
import tensorflow as tf

from keras_medimg.errors import InvalidInputError
from keras_medimg.io.images import decode_png_rows, image_shape, read_image, read_pixels, to_float, write_image


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_round_trip_is_exact(tmp_path, suffix):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 65536, size=(40, 48), dtype=np.uint16)
    path = write_image(tmp_path / f"a{suffix}", pixels, bits=16)
    back = read_image(path)
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, pixels)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_colour_round_trip_keeps_rgb_order(tmp_path, suffix):
    pixels = np.zeros((8, 8, 3), np.uint8)
    pixels[..., 0] = 200  # pure red: a BGR mix-up would come back blue
    back = read_image(write_image(tmp_path / f"rgb{suffix}", pixels))
    assert back.shape == (8, 8, 3)
    np.testing.assert_array_equal(back, pixels)


def test_float_input_is_scaled_to_bit_depth(tmp_path):
    ramp = np.linspace(0.0, 1.0, 64, dtype=np.float32).reshape(8, 8)
    back16 = read_image(write_image(tmp_path / "f16.png", ramp, bits=16))
    back8 = read_image(write_image(tmp_path / "f8.png", ramp, bits=8))
    assert back16.dtype == np.uint16 and back16.max() == 65535 and back16.min() == 0
    assert back8.dtype == np.uint8 and back8.max() == 255
    np.testing.assert_allclose(to_float(back16), ramp, atol=1 / 65535)
    np.testing.assert_allclose(to_float(back8), ramp, atol=1 / 255)


def test_jpeg_is_8_bit_and_close(tmp_path):
    pixels = np.full((16, 16), 120, np.uint8)
    back = read_image(write_image(tmp_path / "a.jpg", pixels))
    assert back.dtype == np.uint8 and np.abs(back.astype(int) - 120).max() <= 2
    with pytest.raises(InvalidInputError, match="8 bits"):
        write_image(tmp_path / "b.jpg", pixels, bits=16)


def test_to_float_uses_dtype_max():
    assert to_float(np.array([0, 65535], np.uint16)).tolist() == [0.0, 1.0]
    assert to_float(np.array([0, 255], np.uint8)).tolist() == [0.0, 1.0]
    assert to_float(np.array([-0.5, 2.0])).dtype == np.float32


def test_integer_values_that_do_not_fit_are_refused(tmp_path):
    with pytest.raises(ValueError, match="do not fit"):
        write_image(tmp_path / "a.png", np.array([[0, 300]], np.uint16), bits=8)


def test_missing_and_unreadable_files_name_the_file(tmp_path):
    with pytest.raises(InvalidInputError, match="does not exist") as info:
        read_image(tmp_path / "nope.png")
    assert info.value.path.name == "nope.png"
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(InvalidInputError, match="bad.png"):
        read_image(bad)


def test_failed_write_leaves_no_file(tmp_path):
    with pytest.raises(ValueError):
        write_image(tmp_path / "a.png", np.zeros((4, 4, 2)))
    assert list(tmp_path.iterdir()) == []


def test_to_rgb_uint8_for_8_bit_models():
    import numpy as np

    from keras_medimg.io.images import to_rgb_uint8

    grey16 = np.array([[0, 2048], [4095, 1024]], np.uint16)  # a 12-bit scan in uint16 fills 0-255
    out = to_rgb_uint8(grey16)
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8 and out[1, 0].tolist() == [255, 255, 255]
    assert to_rgb_uint8(np.array([[0.0, 1.0]], np.float32))[0, 1, 0] == 255
    rgb = np.zeros((1, 1, 3), np.uint8)
    rgb[..., 0] = 7
    assert to_rgb_uint8(rgb)[0, 0].tolist() == [7, 0, 0]


def _png_row_filters(path) -> set[int]:
    """The filter type byte of every row of a non-interlaced PNG."""
    import struct
    import zlib

    data = path.read_bytes()
    offset, idat, header = 8, b"", None
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind, body = data[offset + 4 : offset + 8], data[offset + 8 : offset + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        offset += 12 + length
    width, height, depth, colour = header[:4]
    row = 1 + width * (depth // 8) * {0: 1, 2: 3}[colour]
    raw = zlib.decompress(idat)
    assert len(raw) == row * height
    return {raw[i * row] for i in range(height)}


@pytest.mark.parametrize("bits,shape", [(16, (40, 30)), (8, (40, 30, 3))])
def test_png_rows_use_the_fast_decoding_up_filter(tmp_path, bits, shape):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 2**bits, shape).astype(np.uint16 if bits == 16 else np.uint8)
    path = write_image(tmp_path / "noisy.png", pixels, bits=bits)
    assert _png_row_filters(path) == {2}  # "up": decodes 1.5x faster than the Paeth rows libpng would pick
    np.testing.assert_array_equal(read_image(path), pixels)


def _png(pixels: np.ndarray, filters: list[int], *, extra: bytes = b"") -> bytes:
    """A PNG written by hand: one filter type per row (only "none" 0 and "up" 2 are encoded here), so the
    decoder meets row mixes libpng's writer never makes."""
    height, width = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    colour = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = pixels.astype(">u2" if pixels.dtype == np.uint16 else np.uint8).reshape(height, -1).view(np.uint8)
    raw = bytearray()
    for y, kind in enumerate(filters):
        above = rows[y - 1] if y else np.zeros_like(rows[0])
        raw += bytes([kind]) + (rows[y] if kind == 0 else rows[y] - above).tobytes()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, pixels.dtype.itemsize * 8, colour, 0, 0, 0)
    data = zlib.compress(bytes(raw))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + extra + chunk(b"IDAT", data[:50]) + chunk(b"IDAT", data[50:]) + chunk(b"IEND", b"")


@pytest.mark.parametrize("dtype,channels", [(np.uint16, 1), (np.uint8, 1), (np.uint8, 3), (np.uint16, 3), (np.uint8, 4), (np.uint16, 2)])
@pytest.mark.parametrize("filters", ["up", "none", "mixed"])
def test_fast_png_decoder_gives_libpngs_pixels(dtype, channels, filters):
    rng = np.random.default_rng(channels)
    shape = (23, 17) if channels == 1 else (23, 17, channels)
    pixels = rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)
    kinds = {"up": [2] * 23, "none": [0] * 23, "mixed": [2, 2, 0, 2, 2, 2, 0, 0, 2] + [2] * 13 + [0]}[filters]
    data = _png(pixels, kinds)
    decoded = decode_png_rows(data)
    reference = tf.io.decode_png(data, channels=0, dtype=tf.as_dtype(dtype)).numpy()  # libpng
    assert decoded.dtype == dtype
    np.testing.assert_array_equal(decoded, reference)
    np.testing.assert_array_equal(decoded.reshape(shape), pixels)


def test_fast_png_decoder_leaves_other_pngs_to_libpng(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 65536, (32, 32), dtype=np.uint16)
    paeth = cv2.imencode(".png", pixels, [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_PAETH])[1].tobytes()
    assert decode_png_rows(paeth) is None
    assert decode_png_rows(_png(pixels, [2] * 32, extra=b"\x00\x00\x00\x02tRNS\x00\x00\x00\x00\x00\x00")) is None
    good = _png(pixels, [2] * 32)
    assert decode_png_rows(good) is not None
    damaged = bytearray(good)
    damaged[len(good) // 2 : len(good) // 2 + 16] = bytes(16)  # inside the compressed data
    assert decode_png_rows(bytes(damaged)) is None  # libpng then reports the damage
    assert decode_png_rows(good[: len(good) // 2]) is None  # truncated: no IEND
    assert decode_png_rows(b"GIF89a" + good[6:]) is None


def _png_claiming(width: int, height: int) -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))  # fmt: skip


def test_a_tiny_png_claiming_ten_billion_pixels_is_refused_before_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_claiming(100000, 100000))
    with pytest.raises(InvalidInputError, match="100000 x 100000 pixels, more than the 268,435,456"):
        read_image(bomb)
    small = write_image(tmp_path / "small.png", np.zeros((10, 20), np.uint8))
    with pytest.raises(InvalidInputError, match="20 x 10 pixels"):
        read_image(small, max_pixels=199)
    assert read_image(small, max_pixels=200).shape == (10, 20)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif", ".bmp"])
def test_image_shape_reads_the_header_of_every_raster_format(tmp_path, suffix):
    path = write_image(tmp_path / f"a{suffix}", np.zeros((13, 17, 3), np.uint8))
    assert image_shape(path.read_bytes()) == (13, 17)
    np.testing.assert_array_equal(read_image(path), np.zeros((13, 17, 3), np.uint8))


def _tiff_with_directory_at_the_end(path):
    """A 16-bit TIFF as OpenCV/libtiff write it: the pixels first, the image file directory (the size) after
    them, beyond the first 64 KiB. Returns the path and the directory's offset."""
    pixels = np.random.default_rng(0).integers(0, 65536, size=(200, 300), dtype=np.uint16)  # noise: no compression
    path = write_image(path, pixels, bits=16)
    (offset,) = struct.unpack("<I", path.read_bytes()[4:8])
    assert path.read_bytes()[:4] == b"II*\x00" and offset > 65536  # the case under test
    return path, offset


def test_image_shape_finds_a_tiffs_size_written_after_its_pixels(tmp_path):
    path, _ = _tiff_with_directory_at_the_end(tmp_path / "a.tif")
    assert image_shape(path) == image_shape(str(path)) == (200, 300)  # from the path: header and directory only
    assert image_shape(path.read_bytes()) == (200, 300)
    assert image_shape(path.read_bytes()[:65536]) is None  # the first bytes do not hold it
    for suffix in (".png", ".jpg", ".bmp"):
        assert image_shape(write_image(tmp_path / f"b{suffix}", np.zeros((13, 17), np.uint8))) == (13, 17)
    (tmp_path / "c.txt").write_bytes(b"II*\x00\xff\xff\xff\x7f")  # a directory past the end of the file
    assert image_shape(tmp_path / "c.txt") is None


def test_a_tiff_whose_late_directory_claims_too_much_is_refused(tmp_path):
    path, offset = _tiff_with_directory_at_the_end(tmp_path / "a.tif")
    data = bytearray(path.read_bytes())
    (count,) = struct.unpack("<H", data[offset : offset + 2])
    for entry in range(offset + 2, offset + 2 + 12 * count, 12):
        tag, kind = struct.unpack("<HH", data[entry : entry + 4])
        if tag in (256, 257):  # ImageWidth, ImageLength
            data[entry + 2 : entry + 12] = struct.pack("<HII", 4, 1, 100000)
    (tmp_path / "big.tif").write_bytes(bytes(data))
    with pytest.raises(InvalidInputError, match="100000 x 100000"):
        read_image(tmp_path / "big.tif")


def test_a_jpeg_whose_frame_header_claims_too_much_is_refused(tmp_path):
    data = bytearray(write_image(tmp_path / "a.jpg", np.zeros((8, 8), np.uint8)).read_bytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 65000, 65000)
    (tmp_path / "big.jpg").write_bytes(bytes(data))
    with pytest.raises(InvalidInputError, match="65000 x 65000"):
        read_image(tmp_path / "big.jpg")


def test_read_pixels_reads_dicom_through_the_dicom_reader_and_rasters_as_floats(tmp_path):
    import shutil

    import pydicom.data

    from keras_medimg.io.dicom import read_dicom

    source = pydicom.data.get_testdata_file("MR_small.dcm")
    unnamed = shutil.copy(source, tmp_path / "IM000001")
    np.testing.assert_array_equal(read_pixels(unnamed), read_dicom(source).pixels)
    png = write_image(tmp_path / "a.png", np.full((4, 4), 1000, np.uint16), bits=16)
    np.testing.assert_allclose(read_pixels(png), 1000 / 65535)


def test_bmp_is_eight_bit_only(tmp_path):
    with pytest.raises(InvalidInputError, match="8 bits per pixel only"):
        write_image(tmp_path / "a.bmp", np.zeros((4, 4), np.uint16), bits=16)


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.float32])
def test_tiffs_of_other_depths_keep_their_grey_levels(tmp_path, dtype):
    # A CT slice in HU as int16/int32/float32: by the dtype's maximum it came out nearly black (int32: 2.9e-5 at
    # most), clipped to [0, 1] two-valued; min-max keeps every level in order.
    hu = (np.arange(64).reshape(8, 8) * 100 - 1000).astype(dtype)
    path = tmp_path / "ct.tif"
    assert cv2.imwrite(str(path), hu)
    pixels = read_pixels(path)
    np.testing.assert_allclose(pixels, (hu.astype(np.float64) + 1000) / 6300, atol=1e-6)
    # integers that fit 16 bits (a 12-bit scan in a 32-bit TIFF) are read as uint16, scaled as every 16-bit file
    assert cv2.imwrite(str(path), (np.arange(64).reshape(8, 8) * 64).astype(np.uint32))
    image = read_image(path)
    assert image.dtype == np.uint16 and image.max() == 63 * 64


def test_a_bigtiff_is_read_and_its_size_checked(tmp_path):
    from PIL import Image

    path = tmp_path / "big.tif"
    Image.fromarray((np.arange(48).reshape(6, 8) * 5).astype(np.uint8)).save(path, big_tiff=True)
    assert path.read_bytes()[:4] == b"II+\x00"
    assert read_image(path).shape == (6, 8)
    with pytest.raises(InvalidInputError, match="claims 8 x 6 pixels"):
        read_image(path, max_pixels=40)

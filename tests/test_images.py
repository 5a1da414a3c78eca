"""decode_image and read_image_header; every input is built here with Pillow/numpy, in tmp_path."""

from __future__ import annotations

import io
import logging
import struct
import threading
import time
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, JpegImagePlugin, PngImagePlugin

from imgclass.data.images import (
    BACKGROUND,
    REASON_CORRUPT,
    REASON_EMPTY,
    REASON_NOT_AN_IMAGE,
    REASON_TOO_MANY_PIXELS,
    REASON_UNDECODABLE,
    REASON_UNREADABLE,
    ImageDecodeError,
    decode_image,
    read_image_header,
)

# No Pillow warning may escape decode_image as an exception or as noise.
pytestmark = pytest.mark.filterwarnings("error")

ORANGE = (200, 60, 30)
RED, GREEN, BLUE, YELLOW = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)


def save(img: Image.Image, path: Path, fmt: str, **params) -> Path:
    img.save(path, fmt, **params)
    return path


def assert_colour(pixels: np.ndarray, colour: tuple[int, ...], tolerance: int) -> None:
    diff = np.abs(pixels.reshape(-1, 3).astype(int) - np.array(colour[:3]))
    assert diff.max() <= tolerance, f"{pixels.reshape(-1, 3)[diff.argmax() // 3]} != {colour}"


def jpeg_bytes(img: Image.Image, **params) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", **params)
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG claiming a size, with one tiny IDAT chunk (enough for Pillow to open the header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 8))


def test_jpeg_colour(tmp_path):
    path = save(Image.new("RGB", (80, 60), ORANGE), tmp_path / "a.jpg", "JPEG", quality=95)
    out = decode_image(path, (32, 24))
    assert out.shape == (32, 24, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    assert_colour(out, ORANGE, 6)


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "WEBP", "BMP", "TIFF"])
def test_format_read_by_content_not_extension(tmp_path, fmt):
    path = save(Image.new("RGB", (40, 30), ORANGE), tmp_path / "wrong-name.jpg", fmt)
    assert read_image_header(path) == (fmt, 40, 30)
    assert_colour(decode_image(path, (16, 16)), ORANGE, 8)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animated_image_gives_first_frame(tmp_path, fmt):
    frames = [Image.new("RGB", (20, 20), colour) for colour in (RED, GREEN, BLUE)]
    path = save(
        frames[0],
        tmp_path / f"anim.{fmt.lower()}",
        fmt,
        save_all=True,
        append_images=frames[1:],
        duration=100,
        loop=0,
    )
    with Image.open(path) as img:
        assert img.n_frames == 3
    assert_colour(decode_image(path, (8, 8)), RED, 10)


def test_cmyk_jpeg_keeps_colour(tmp_path):
    cmyk = Image.new("RGB", (32, 32), ORANGE).convert("CMYK")
    path = save(cmyk, tmp_path / "cmyk.jpg", "JPEG", quality=95)
    with Image.open(path) as img:
        assert img.mode == "CMYK"
    assert_colour(decode_image(path, (16, 16)), ORANGE, 8)


def p_image(transparent: bool) -> Image.Image:
    """A palette image: left half index 0 (red, or transparent), right half index 1 (blue)."""
    img = Image.new("P", (20, 10), 0)
    img.putpalette([*RED, *BLUE] + [0] * 762)
    img.paste(1, (10, 0, 20, 10))
    if transparent:
        img.info["transparency"] = 0
    return img


def la_image() -> Image.Image:
    """Grey 50 everywhere, fully transparent on the left half, opaque on the right."""
    alpha = Image.new("L", (20, 10), 0)
    alpha.paste(255, (10, 0, 20, 10))
    return Image.merge("LA", (Image.new("L", (20, 10), 50), alpha))


def one_bit_image() -> Image.Image:
    img = Image.new("1", (20, 10), 0)
    img.paste(1, (10, 0, 20, 10))
    return img


@pytest.mark.parametrize(
    ("name", "make", "left", "right"),
    [
        ("grey.png", lambda: Image.new("L", (20, 10), 100), (100,) * 3, (100,) * 3),
        ("la.png", la_image, BACKGROUND, (50,) * 3),
        ("p.png", lambda: p_image(False), RED, BLUE),
        ("p-transparent.png", lambda: p_image(True), BACKGROUND, BLUE),
        ("p-transparent.gif", lambda: p_image(True), BACKGROUND, BLUE),
        ("one-bit.png", one_bit_image, (0, 0, 0), (255, 255, 255)),
    ],
)
def test_grey_palette_and_bilevel_modes(tmp_path, name, make, left, right):
    path = tmp_path / name
    make().save(path)
    out = decode_image(path, (10, 20))  # the stored size: no resampling blur
    assert_colour(out[:, :8], left, 1)
    assert_colour(out[:, 12:], right, 1)


def test_rgba_composited_on_white(tmp_path):
    pixels = np.zeros((10, 30, 4), np.uint8)
    pixels[..., :3] = ORANGE
    pixels[:, :10, 3], pixels[:, 10:20, 3], pixels[:, 20:, 3] = 0, 128, 255
    path = save(Image.fromarray(pixels), tmp_path / "rgba.png", "PNG")
    out = decode_image(path, (10, 30))
    half = tuple(round((c * 128 + 255 * 127) / 255) for c in ORANGE)
    assert_colour(out[:, :9], BACKGROUND, 0)
    assert_colour(out[:, 11:19], half, 1)
    assert_colour(out[:, 21:], ORANGE, 0)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_scaled_not_clipped(tmp_path, fmt):
    values = np.repeat(np.array([[0, 32768, 65535]], np.uint16), 10, axis=1).repeat(5, axis=0)
    path = save(Image.fromarray(values), tmp_path / f"deep.{fmt.lower()}", fmt)
    with Image.open(path) as img:
        assert img.mode.startswith("I;16")
    out = decode_image(path, (5, 30)).astype(int)
    assert (out[:, :10] == 0).all()
    assert (abs(out[:, 10:20] - 128) <= 1).all()
    assert (out[:, 20:] == 255).all()


def test_float_tiff_in_unit_range(tmp_path):
    path = save(Image.fromarray(np.full((4, 4), 0.5, np.float32)), tmp_path / "f.tif", "TIFF")
    assert_colour(decode_image(path, (4, 4)), (128,) * 3, 1)


def quadrants(width: int = 48, height: int = 32) -> np.ndarray:
    pixels = np.zeros((height, width, 3), np.uint8)
    h, w = height // 2, width // 2
    pixels[:h, :w], pixels[:h, w:], pixels[h:, :w], pixels[h:, w:] = RED, GREEN, BLUE, YELLOW
    return pixels


# How a viewer shows the stored pixels for each EXIF orientation (from the EXIF definition).
DISPLAYED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


@pytest.mark.parametrize("orientation", sorted(DISPLAYED))
def test_exif_orientation(tmp_path, orientation):
    stored = quadrants()
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "turned.jpg"
    Image.fromarray(stored).save(path, "JPEG", quality=95, exif=exif.tobytes())
    expected = DISPLAYED[orientation](stored)
    out = decode_image(path, expected.shape[:2])
    h, w = expected.shape[0] // 4, expected.shape[1] // 4
    for row in (h, 3 * h):
        for col in (w, 3 * w):
            assert_colour(out[row, col], tuple(expected[row, col]), 40)


def test_broken_exif_is_ignored(tmp_path):
    path = tmp_path / "bad-exif.jpg"
    Image.new("RGB", (20, 20), ORANGE).save(path, "JPEG", exif=b"Exif\x00\x00garbage")
    assert_colour(decode_image(path, (8, 8)), ORANGE, 8)


@pytest.mark.parametrize(("width", "height"), [(1, 1), (1000, 10), (10, 1000)])
def test_tiny_and_extreme_aspect(tmp_path, width, height):
    path = save(Image.new("RGB", (width, height), ORANGE), tmp_path / "odd.png", "PNG")
    out = decode_image(path, (64, 48))
    assert out.shape == (64, 48, 3)
    assert_colour(out, ORANGE, 0)


def test_too_many_pixels_names_the_path(tmp_path):
    path = save(Image.new("RGB", (20, 20), ORANGE), tmp_path / "big.png", "PNG")
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(path, (8, 8), max_pixels=100)
    assert caught.value.path == str(path)
    assert caught.value.reason == f"{REASON_TOO_MANY_PIXELS} (20 x 20 > 100)"
    assert str(caught.value) == f"{path}: {REASON_TOO_MANY_PIXELS} (20 x 20 > 100)"


@pytest.mark.parametrize(
    ("side", "detail"),
    [(11_000, "(11000 x 11000 > 100000000)"), (20_000, "decompression bomb")],
    ids=["above-our-limit", "above-pillow-bomb-limit"],
)
def test_huge_header_refused_before_decoding(side, detail):
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(png_header(side, side), (8, 8), path_for_errors="huge.png")
    assert caught.value.reason.startswith(REASON_TOO_MANY_PIXELS)
    assert detail in caught.value.reason


def test_truncated_jpeg(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (150, 200, 3), np.uint8)
    data = jpeg_bytes(Image.fromarray(noise))
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match="truncated") as caught:
        decode_image(path, (32, 32))
    assert caught.value.reason.startswith(REASON_CORRUPT)
    assert not ImageFile.LOAD_TRUNCATED_IMAGES  # no global switch was flipped


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (MemoryError("boom"), f"{REASON_UNDECODABLE}: MemoryError: boom"),
        (ValueError("odd mode"), f"{REASON_UNDECODABLE}: ValueError: odd mode"),
        (OSError("broken data stream"), f"{REASON_CORRUPT} (broken data stream)"),
    ],
)
def test_pillow_failures_during_load(tmp_path, monkeypatch, error, reason):
    path = save(Image.new("RGB", (8, 8), ORANGE), tmp_path / "a.png", "PNG")

    def failing_load(self):
        raise error

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", failing_load)
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(path, (8, 8))
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", REASON_EMPTY),
        (np.random.default_rng(0).bytes(1000), REASON_NOT_AN_IMAGE),
        (b"<!DOCTYPE html><html><body>Not found</body></html>\n", REASON_NOT_AN_IMAGE),
    ],
    ids=["zero-bytes", "random-bytes", "html"],
)
def test_not_decodable_files(tmp_path, content, reason):
    path = tmp_path / "photo.jpg"
    path.write_bytes(content)
    for call in (lambda: decode_image(path, (8, 8)), lambda: read_image_header(path)):
        with pytest.raises(ImageDecodeError) as caught:
            call()
        assert (caught.value.path, caught.value.reason) == (str(path), reason)


def test_missing_file(tmp_path):
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(tmp_path / "gone.jpg", (8, 8))
    assert caught.value.reason.startswith(REASON_UNREADABLE)


def test_bytes_input_and_error_name():
    data = jpeg_bytes(Image.new("RGB", (30, 20), ORANGE), quality=95)
    assert_colour(decode_image(data, (10, 10)), ORANGE, 6)
    assert read_image_header(data) == ("JPEG", 30, 20)
    with pytest.raises(ImageDecodeError, match=r"^<upload>: empty file$"):
        decode_image(b"", (10, 10))
    with pytest.raises(ImageDecodeError, match=r"^cat\.jpg: too many pixels"):
        decode_image(data, (10, 10), max_pixels=10, path_for_errors="cat.jpg")


@pytest.fixture
def draft_calls(monkeypatch) -> list[tuple]:
    """Spy on JPEG draft: records (mode, requested size, size after draft)."""
    calls: list[tuple] = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        result = original(self, mode, size)
        calls.append((mode, size, self.size))
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    return calls


def test_large_jpeg_decoded_at_reduced_scale(draft_calls):
    data = jpeg_bytes(Image.new("RGB", (2000, 1500), ORANGE))
    out = decode_image(data, (48, 64))
    assert draft_calls == [("RGB", (64, 48), (250, 188))]  # libjpeg at 1/8 scale
    assert_colour(out, ORANGE, 8)


def test_draft_size_follows_exif_rotation(draft_calls):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 800 x 200, shown 200 x 800
    data = jpeg_bytes(Image.new("RGB", (800, 200), ORANGE), exif=exif.tobytes())
    assert decode_image(data, (400, 100)).shape == (400, 100, 3)
    assert draft_calls == [("RGB", (400, 100), (400, 100))]


def test_png_is_not_drafted(tmp_path, draft_calls):
    path = save(Image.new("RGB", (40, 30), ORANGE), tmp_path / "a.png", "PNG")
    decode_image(path, (8, 8))
    assert draft_calls == []


def test_size_must_be_positive():
    with pytest.raises(ValueError):
        decode_image(b"irrelevant", (0, 8))


def test_ycck_jpeg_decodes_to_the_same_colours_as_cmyk():
    """YCCK (Adobe transform 2): libjpeg turns it back into CMYK, Pillow then into RGB."""
    cmyk = np.zeros((32, 32, 4), np.uint8)
    cmyk[:16] = (0, 200, 200, 30)
    cmyk[16:] = (220, 60, 0, 10)
    plain = io.BytesIO()
    Image.fromarray(cmyk, "CMYK").save(plain, "JPEG", quality=95)
    # Build the YCCK samples: the C, M, Y planes as R, G, B in YCbCr, K as it is; Pillow
    # inverts all four planes when it writes CMYK, so hand it the inverse.
    ycc = np.asarray(Image.fromarray(cmyk[..., :3], "RGB").convert("YCbCr"))
    planes = np.dstack([255 - ycc, cmyk[..., 3]]).astype(np.uint8)
    ycck = io.BytesIO()
    Image.fromarray(planes, "CMYK").save(ycck, "JPEG", quality=95)
    data = bytearray(ycck.getvalue())
    adobe = data.find(b"Adobe")
    assert adobe > 0 and data[adobe + 11] == 0
    data[adobe + 11] = 2  # the Adobe APP14 transform flag: YCCK
    with Image.open(io.BytesIO(bytes(data))) as img:
        assert img.info["adobe_transform"] == 2
    expected = decode_image(plain.getvalue(), (32, 32)).astype(int)
    got = decode_image(bytes(data), (32, 32)).astype(int)
    assert np.abs(expected - got).max() <= 4
    assert got[4, 4, 0] > 200 and got[4, 4, 1] < 80  # red-ish top, not a swapped plane


def corrupt_exif_jpeg() -> bytes:
    """A good JPEG whose EXIF block is cut short: Pillow warns when its orientation is read."""
    buffer = io.BytesIO()
    exif = b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x05\x00\x12\x01\x03\x00\x01\x00\x00\x00\x01\x00"
    Image.new("RGB", (8, 8), ORANGE).save(buffer, "JPEG", exif=exif + b"\x00\x00\x99\x99")
    return buffer.getvalue()


def test_pillow_warnings_are_per_call_from_threads_and_never_lost_elsewhere(caplog):
    """Many threads decode images that warn while a bystander thread warns too: each call logs
    its own file's warning, every bystander warning reaches the process's recorder, and once the
    decoding ends the process's warning machinery is as it was (warnings.catch_warnings from
    threads left a dead recorder installed that swallowed every later warning)."""
    content = corrupt_exif_jpeg()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        before = (warnings.showwarning, list(warnings.filters))
        stop = threading.Event()

        def bystander() -> int:
            sent = 0
            while not stop.is_set() and sent < 20_000:
                warnings.warn(f"bystander {sent}", UserWarning, stacklevel=1)
                sent += 1
                time.sleep(0)  # the others' turn
            return sent

        def decode(index: int) -> None:
            assert_colour(
                decode_image(content, (8, 8), path_for_errors=f"img{index}.jpg"), ORANGE, 12
            )

        with (
            caplog.at_level(logging.DEBUG, logger="imgclass.data.images"),
            ThreadPoolExecutor(9) as pool,
        ):
            sent = pool.submit(bystander)
            list(pool.map(decode, range(400)))
            stop.set()
            sent = sent.result()
        assert (warnings.showwarning, warnings.filters) == before
        warnings.warn("after", UserWarning, stacklevel=1)
    logged = [r.getMessage() for r in caplog.records if "Pillow warning" in r.getMessage()]
    assert sorted(m.split(":")[0] for m in logged) == sorted(f"img{i}.jpg" for i in range(400))
    assert all("Corrupt EXIF data" in m for m in logged)
    shown = [str(w.message) for w in seen]
    assert shown == [f"bystander {i}" for i in range(sent)] + ["after"]


def test_a_warning_is_no_failure_under_an_error_filter(caplog):
    """This module runs under filterwarnings("error"): a decode that warns still decodes."""
    with caplog.at_level(logging.DEBUG, logger="imgclass.data.images"):
        pixels = decode_image(corrupt_exif_jpeg(), (8, 8), path_for_errors="exif.jpg")
    assert_colour(pixels, ORANGE, 12)
    assert "exif.jpg: Pillow warning: Corrupt EXIF data" in caplog.text

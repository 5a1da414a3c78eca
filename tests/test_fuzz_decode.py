"""Property test: whatever the bytes, decode_image returns pixels or raises ImageDecodeError.

Inputs are random bytes, random bytes behind a real format signature, and real JPEG/PNG/GIF
files (made here with Pillow) with bytes flipped, cut off or inserted. 300 cases in all;
bench/fuzz_decode.py runs 10,000 and more.
"""

from __future__ import annotations

import io
from functools import cache

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from imgclass.data import images
from imgclass.data.images import ImageDecodeError, decode_image

# No Pillow warning may escape decode_image either.
pytestmark = pytest.mark.filterwarnings("error")

REASONS = tuple(value for name, value in vars(images).items() if name.startswith("REASON_"))
SIZE = (12, 10)
MAX_PIXELS = 4_000_000  # a mutated header may claim a huge image: refuse it cheaply
SIGNATURES = [
    b"\xff\xd8\xff\xe0",
    b"\x89PNG\r\n\x1a\n",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"RIFF\x00\x01\x00\x00WEBPVP8 ",
]
FUZZ = settings(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@cache
def real_files() -> tuple[bytes, ...]:
    """Small real files in the formats photos come in, a few colour modes each."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    out = []
    for img, fmt, params in [
        (rgb, "JPEG", {"quality": 80}),
        (rgb, "JPEG", {"quality": 60, "progressive": True}),
        (rgb.convert("L"), "JPEG", {}),
        (rgb.convert("CMYK"), "JPEG", {}),
        (rgb, "PNG", {}),
        (rgb.convert("RGBA"), "PNG", {}),
        (rgb.convert("P"), "PNG", {"transparency": 0}),
        (rgb.convert("P"), "GIF", {}),
    ]:
        buffer = io.BytesIO()
        img.save(buffer, fmt, **params)
        out.append(buffer.getvalue())
    return tuple(out)


def check_decode(data: bytes) -> None:
    """The property: pixels of the asked size, or ImageDecodeError with a documented reason."""
    try:
        pixels = decode_image(data, SIZE, max_pixels=MAX_PIXELS)
    except ImageDecodeError as err:
        assert err.reason.startswith(REASONS), err.reason
        assert err.path == "<upload>"
    else:
        assert pixels.shape == (*SIZE, 3) and pixels.dtype == np.uint8


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 2**20), st.integers(1, 255)),
    st.tuples(st.just("cut"), st.integers(0, 2**20)),
    st.tuples(st.just("insert"), st.integers(0, 2**20), st.binary(min_size=1, max_size=16)),
)


def mutate(data: bytes, changes: list[tuple]) -> bytes:
    buffer = bytearray(data)
    for kind, where, *rest in changes:
        if not buffer:
            break
        at = where % len(buffer)
        if kind == "flip":
            buffer[at] ^= rest[0]
        elif kind == "cut":
            del buffer[at:]
        else:
            buffer[at:at] = rest[0]
    return bytes(buffer)


@settings(FUZZ, max_examples=60)
@given(st.binary(max_size=4096))
def test_random_bytes(data):
    check_decode(data)


@settings(FUZZ, max_examples=60)
@given(st.sampled_from(SIGNATURES), st.binary(max_size=2048))
def test_random_bytes_behind_a_real_signature(signature, tail):
    check_decode(signature + tail)


@settings(FUZZ, max_examples=180)
@given(st.integers(0, len(real_files()) - 1), st.lists(mutation, min_size=1, max_size=8))
def test_mutated_real_files(index, changes):
    check_decode(mutate(real_files()[index], changes))


def test_the_real_files_decode_unmutated():
    for data in real_files():
        check_decode(data)
        assert decode_image(data, SIZE).shape == (*SIZE, 3)

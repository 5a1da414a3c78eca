"""One image file (or its bytes) -> a (height, width, 3) uint8 RGB array of a fixed size.

Pillow identifies the format by content, never by the file extension. Resizing squashes to the
target size without cropping (the Keras `image_dataset_from_directory` default) with bilinear
resampling. EXIF orientation is applied; animated images give their first frame; transparent
pixels are composited on `BACKGROUND` (white); 16-bit images are scaled to 8 bits (value / 257,
rounded). JPEGs are decoded by libjpeg at a reduced scale (1/2 to 1/8) that still covers the target
size, which roughly doubles throughput on photos.

Every failure raises `ImageDecodeError`; its reason starts with one of the `REASON_*` constants:

    empty file
    not an image (unrecognised format)
    too many pixels (W x H > max_pixels)              checked before any pixel is decoded
    truncated or corrupt image data (<Pillow message>)
    cannot decode: <ExceptionType>: <message>         anything else, MemoryError included
    cannot read file (<OS message>)                   missing, unreadable, a directory

Pillow's warnings are collected per call, on the calling thread, and logged at DEBUG with the
file's name, never raised or printed (`_pillow_warnings`: safe from many decoding threads at once,
unlike `warnings.catch_warnings`).
"""

from __future__ import annotations

import io
import logging
import os
import stat
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from PIL import ExifTags, Image, ImageOps

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS: int = 100_000_000  # width * height; refused with a clear reason, never an OOM
BACKGROUND: tuple[int, int, int] = (255, 255, 255)  # transparent pixels are composited on white

REASON_EMPTY = "empty file"
REASON_NOT_AN_IMAGE = "not an image (unrecognised format)"
REASON_TOO_MANY_PIXELS = "too many pixels"
REASON_CORRUPT = "truncated or corrupt image data"
REASON_UNDECODABLE = "cannot decode"
REASON_UNREADABLE = "cannot read file"
REASON_NOT_A_FILE = "not a regular file"

_SWAPS_AXES = {5, 6, 7, 8}  # EXIF orientations that turn the image by 90 degrees
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_HIGH_DEPTH_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


class ImageDecodeError(Exception):
    """An image file that cannot be turned into pixels; `str(e)` is "<path>: <reason>"."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def decode_image(
    source: str | os.PathLike | bytes,
    size: tuple[int, int],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    path_for_errors: str | None = None,
) -> np.ndarray:
    """Decode one image file (or its bytes) to a (height, width, 3) uint8 RGB array.

    size: (height, width) of the result; the image is squashed to it, never cropped.
    path_for_errors: the name errors give; defaults to the path, or "<upload>" for bytes.
    """
    height, width = size
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive (height, width), got {size}")
    name = _display_name(source, path_for_errors)
    with _open(source, name) as img:
        if img.width * img.height > max_pixels:
            reason = too_many_pixels(img.width, img.height, max_pixels)
            raise ImageDecodeError(name, reason)
        if img.format in ("JPEG", "MPO"):  # libjpeg decodes at 1/2..1/8 scale, >= the target
            turned = _orientation(img) in _SWAPS_AXES
            img.draft("RGB", (height, width) if turned else (width, height))
        img.load()
        _exif_transpose(img, name)
        return resize_image(img, size)


def resize_image(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """An image in memory, as decode_image ends: RGB, squashed to (height, width) bilinearly
    (Pillow's reducing_gap 3.0), a (height, width, 3) uint8 array."""
    height, width = size
    rgb = _to_rgb(img).resize((width, height), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.array(rgb, dtype=np.uint8)  # a writable, contiguous copy


def read_image_header(
    source: str | os.PathLike | bytes, *, path_for_errors: str | None = None
) -> tuple[str, int, int]:
    """Return (format, width, height) read from the header, without decoding any pixel."""
    name = _display_name(source, path_for_errors)
    with _open(source, name) as img:
        return img.format or "unknown", img.width, img.height


def _display_name(source: str | os.PathLike | bytes, path_for_errors: str | None) -> str:
    if path_for_errors is not None:
        return path_for_errors
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<upload>"
    return os.fspath(source)


def unreadable(err: OSError) -> str:
    """The skip reason of a file the OS would not read, in the OS's words."""
    return f"{REASON_UNREADABLE} ({err.strerror or err})"


def too_many_pixels(width: int, height: int, max_pixels: int) -> str:
    """The skip reason of an image over the pixel limit."""
    return f"{REASON_TOO_MANY_PIXELS} ({width} x {height} > {max_pixels})"


def header_size(content: bytes) -> tuple[int, int] | None:
    """(width, height) from an image file's header (nothing decoded); None if Pillow finds no
    image header there (the decoder then says why)."""
    try:
        with _pillow_warnings(), Image.open(io.BytesIO(content)) as img:  # warnings dropped
            return img.width, img.height
    except Exception:  # Pillow's many failures, decompression bombs included: no area (such
        return None  # files never decode, so no cache holds them either)


def _open_regular(path: str | os.PathLike, name: str) -> io.BufferedIOBase:
    """The file opened for reading if it is a regular one. Opened without blocking and checked
    on the open descriptor: a FIFO (named pipe) would otherwise block the open until a writer
    comes, and a device or socket is no image either."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise ImageDecodeError(name, unreadable(e)) from e
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ImageDecodeError(name, REASON_NOT_A_FILE)
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return open(fd, "rb")  # noqa: SIM115 - closed by the caller's `with stream`


# Pillow's warnings, collected per call. warnings.catch_warnings swaps process-wide state on
# entry and puts back what it found on exit: from threads, one can put back another's recorder,
# which then swallows every later warning of the process. Instead, while any thread decodes, one
# router is in place (the first caller puts it in, the last takes it out, under a lock): a filter
# that lets every warning of Pillow and of this module through (an "error" filter of the
# process's would fail a good decode, a "once" one hide a file's warning), and a showwarning that
# hands a warning to the list of the thread it was raised on, if that thread is decoding, and
# any other to the showwarning it replaced.
_PILLOW = r"(PIL|imgclass\.data\.images)(\.|$)"  # the modules whose warnings are a decode's
_router_lock = threading.Lock()
_router_users = 0
_replaced = warnings.showwarning  # what the router hands other threads' warnings to
_decoding = threading.local()  # .caught: the list of the call running on this thread


def _route(message, category, filename, lineno, file=None, line=None) -> None:
    caught = getattr(_decoding, "caught", None)
    if caught is not None:
        caught.append(message)
    elif getattr(_decoding, "routing", False):  # a showwarning put in after the router and
        # handing on to it handed the warning back: shown as Python shows it, not looped
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))
    else:
        _decoding.routing = True
        try:
            _replaced(message, category, filename, lineno, file, line)
        finally:
            _decoding.routing = False


@contextmanager
def _pillow_warnings() -> Iterator[list[Warning | str]]:
    """The warnings raised on this thread while the block runs, in a list, never shown."""
    global _router_users, _replaced
    with _router_lock:
        if not _router_users:
            if warnings.showwarning is not _route:  # (put back by someone who had saved it)
                _replaced = warnings.showwarning
            warnings.showwarning = _route
            warnings.filterwarnings("always", module=_PILLOW)
        _router_users += 1
    outer = getattr(_decoding, "caught", None)
    _decoding.caught = caught = []
    try:
        yield caught
    finally:
        _decoding.caught = outer
        with _router_lock:
            _router_users -= 1
            if not _router_users:
                _remove_router()


def _remove_router() -> None:
    """Take the router's filter out and put back the showwarning it replaced, unless someone
    replaced the router since (it then hands on to the one it replaced: nothing is lost)."""
    for index, entry in enumerate(warnings.filters):
        if entry[0] == "always" and entry[3] is not None and entry[3].pattern == _PILLOW:
            del warnings.filters[index]
            getattr(warnings, "_filters_mutated", lambda: None)()  # the C cache's version
            break
    if warnings.showwarning is _route:
        warnings.showwarning = _replaced


@contextmanager
def _open(source: str | os.PathLike | bytes, name: str) -> Iterator[Image.Image]:
    """Open the image lazily (header only); any failure inside the block becomes ImageDecodeError.

    Pillow's warnings are recorded here and logged at DEBUG instead of escaping.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        stream: io.BufferedIOBase = io.BytesIO(source)
    else:
        stream = _open_regular(source, name)
    with stream, _pillow_warnings() as caught:
        if stream.seek(0, io.SEEK_END) == 0:
            raise ImageDecodeError(name, REASON_EMPTY)
        stream.seek(0)
        try:
            with Image.open(stream) as img:
                yield img
        except ImageDecodeError:
            raise
        except Image.UnidentifiedImageError as e:
            raise ImageDecodeError(name, REASON_NOT_AN_IMAGE) from e
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageDecodeError(name, f"{REASON_TOO_MANY_PIXELS} ({e})") from e
        except OSError as e:  # Pillow's signal for truncated or broken data
            raise ImageDecodeError(name, f"{REASON_CORRUPT} ({e})") from e
        except Exception as e:  # any other Pillow failure (MemoryError too) is one clear reason
            raise ImageDecodeError(name, f"{REASON_UNDECODABLE}: {type(e).__name__}: {e}") from e
        finally:
            for message in caught:
                log.debug("%s: Pillow warning: %s", name, message)


def _orientation(img: Image.Image) -> int:
    """EXIF orientation 1..8, or 1 when absent or unreadable."""
    try:
        return int(img.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:  # a broken EXIF block must not fail the decode
        return 1


def _exif_transpose(img: Image.Image, name: str) -> None:
    try:
        ImageOps.exif_transpose(img, in_place=True)
    except Exception as e:  # a broken EXIF block must not fail the decode
        log.debug("%s: EXIF orientation ignored (%s: %s)", name, type(e).__name__, e)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB; alpha (or a transparency key) is composited on BACKGROUND."""
    if img.mode in _HIGH_DEPTH_MODES:
        return _high_depth_to_l(img).convert("RGB")
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        composited = Image.new("RGB", rgba.size, BACKGROUND)
        composited.paste(rgba, mask=rgba)  # blends by the alpha band
        return composited
    if img.mode == "RGB":
        return img
    return img.convert("RGB")  # L, 1, P, CMYK (Adobe-inverted included), YCbCr, ...


def _high_depth_to_l(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float grey images -> 8-bit L.

    I;16 and I within 0..65535 are 16-bit: value / 257 rounded. F within 0..1 is scaled by 255.
    Anything else is stretched from its own minimum and maximum to 0..255.
    """
    values = np.nan_to_num(np.asarray(img, dtype=np.float32))
    low, high = float(values.min()), float(values.max())
    if img.mode.startswith("I") and low >= 0 and high <= 65535:
        scaled = values / 257
    elif img.mode == "F" and low >= 0 and high <= 1:
        scaled = values * 255
    else:
        scaled = (values - low) * (255 / (high - low) if high > low else 0.0)
    return Image.fromarray(np.rint(scaled).astype(np.uint8))  # 2-D uint8 -> mode L

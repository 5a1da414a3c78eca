import re

import numpy as np
import pytest

import imgclass.data.cache as cache
from imgclass.data.cache import load_images
from imgclass.data.scan import scan_folder


def _count_decodes(monkeypatch):
    calls = []
    real = cache.decode_image

    def counting(path, size, **options):
        calls.append(path)
        return real(path, size, **options)

    monkeypatch.setattr(cache, "decode_image", counting)
    return calls


def test_second_load_reads_the_cache_and_decodes_nothing(class_tree, tmp_path, monkeypatch):
    calls = _count_decodes(monkeypatch)
    manifest = scan_folder(class_tree)
    first = load_images(manifest, 16, tmp_path / "c", workers=1)
    assert first.decoded_now == 36 and len(calls) == 36
    assert first.pixels.shape == (36, 16, 16, 3) and first.pixels.dtype == np.uint8
    second = load_images(scan_folder(class_tree), 16, tmp_path / "c", workers=1)
    assert second.decoded_now == 0 and len(calls) == 36
    np.testing.assert_array_equal(first.pixels, second.pixels)


def test_cache_is_per_content_and_per_size(class_tree, tmp_path, monkeypatch):
    calls = _count_decodes(monkeypatch)
    load_images(scan_folder(class_tree), 16, tmp_path / "c", workers=1)
    new = class_tree / "red" / "new.jpg"
    new.write_bytes((class_tree / "blue" / "blue_001.jpg").read_bytes())  # known content
    (class_tree / "red" / "red_000.jpg").write_bytes(
        (class_tree / "green" / "green_000.jpg").read_bytes()
    )  # changed content, known too
    again = load_images(scan_folder(class_tree), 16, tmp_path / "c", workers=1)
    assert again.decoded_now == 0
    other_size = load_images(scan_folder(class_tree), 8, tmp_path / "c", workers=1)
    # 35 distinct contents now (red_000 became a copy of green_000): each decoded once
    assert other_size.decoded_now == 35 and other_size.pixels.shape == (37, 8, 8, 3)
    assert len(calls) == 36 + 35


def test_undecodable_files_are_reported_and_remembered(class_tree, tmp_path):
    (class_tree / "red" / "broken.jpg").write_bytes(b"<html>not an image</html>")
    manifest = scan_folder(class_tree)
    decoded = load_images(manifest, 16, tmp_path / "c", workers=2)
    bad = [i for i, item in enumerate(manifest.items) if item.path == "red/broken.jpg"][0]
    assert not decoded.ok[bad] and decoded.ok.sum() == 36
    assert decoded.failures == {bad: "not an image (unrecognised format)"}
    assert load_images(manifest, 16, tmp_path / "c").failures == decoded.failures


def test_parallel_and_serial_decoding_agree(class_tree, tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "_PARALLEL_FROM", 1)
    parallel = load_images(scan_folder(class_tree), 16, tmp_path / "p", workers=2)
    serial = load_images(scan_folder(class_tree), 16, tmp_path / "s", workers=1)
    np.testing.assert_array_equal(parallel.pixels, serial.pixels)


def test_pixel_limit_skips_clearly_and_is_not_remembered(class_tree, tmp_path):
    from PIL import Image

    Image.new("RGB", (300, 200), (10, 20, 30)).save(class_tree / "red" / "big.png")
    manifest = scan_folder(class_tree)
    big = [i for i, item in enumerate(manifest.items) if item.path == "red/big.png"][0]
    limited = load_images(manifest, 16, tmp_path / "c", workers=1, max_pixels=50_000)
    assert limited.failures == {big: "too many pixels (300 x 200 > 50000)"}
    assert not limited.ok[big] and limited.ok.sum() == 36
    raised = load_images(manifest, 16, tmp_path / "c", workers=1, max_pixels=100_000)
    assert raised.ok[big] and raised.decoded_now == 1 and not raised.failures


def test_a_size_whose_decoded_set_cannot_fit_in_memory_is_refused_before_decoding(
    class_tree, tmp_path
):
    """Issue 13.10: 36 images at 30,000 px would take 97 GB; refused with the figures before
    one is decoded or cached (it allocated 34 GB after writing 721 MB of cache at 2048 px)."""
    from click.testing import CliRunner

    from imgclass.cli import main
    from imgclass.runtime import available_memory

    available = available_memory()
    if available is None or available > 90e9:
        pytest.skip(f"needs a machine with less than 90 GB available (has {available})")
    cache_dir = tmp_path / "cache"
    result = CliRunner().invoke(
        main,
        [
            "train",
            str(class_tree),
            "--out",
            str(tmp_path / "run"),
            "--image-size",
            "30000",
            "--cache-dir",
            str(cache_dir),
        ],
    )
    assert result.exit_code == 1
    assert re.search(
        r"Error: 36 images decoded at 30000x30000 px take 97\.2 GB \(194\.4 GB "
        r"while 36 are decoded\), but [0-9.]+ GB of memory is available: choose "
        r"a smaller --image-size",
        result.output,
    ), result.output
    assert not list(cache_dir.rglob("*.npy"))

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


@pytest.mark.parametrize("short", ["disk", "memory"])
def test_a_size_that_cannot_be_decoded_here_is_refused_before_decoding(
    class_tree, tmp_path, monkeypatch, short
):
    """Issue 13.10: 36 images at 30,000 px would take 97 GB; refused with the figures before
    one is decoded or cached (it allocated 34 GB after writing 721 MB of cache at 2048 px).
    The decoded images go to the cache's disk, a shard at a time through memory: either may be
    too small (made so here, whatever this machine has)."""
    import shutil

    from click.testing import CliRunner

    from imgclass.cli import main
    from imgclass.data import cache

    free = shutil.disk_usage(tmp_path)._replace(free=int(50e9 if short == "disk" else 1e15))
    monkeypatch.setattr(shutil, "disk_usage", lambda path: free)
    if short == "memory":
        monkeypatch.setattr(cache, "available_memory", lambda: int(4e9))
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
    expected = {
        "disk": r"Error: 36 images decoded at 30000x30000 px take 97\.2 GB in the cache "
        r"\(.*\), but its disk has 50\.0 GB free: choose a smaller --image-size or another "
        r"--cache-dir",
        "memory": r"Error: images decoded at 30000x30000 px take 2\.7 GB each \(5\.4 GB while "
        r"1 are decoded together\), but 4\.0 GB of memory is available: choose a smaller "
        r"--image-size",
    }
    assert re.search(expected[short], result.output), result.output
    assert not list(cache_dir.rglob("*.npy"))


def test_the_rows_are_read_from_the_cache_files_a_shard_at_a_time(
    class_tree, tmp_path, monkeypatch
):
    """Training's store is the cache: the rows are memory maps of its shard files (no private
    copy of the data set), new contents are decoded and written 10 at a time here (a shard's
    bytes), and every way of indexing the rows gives what decoding each file gives."""
    from imgclass.data.cache import CachedRows
    from imgclass.data.images import decode_image

    monkeypatch.setattr(cache, "SHARD_BYTES", 10 * 8 * 8 * 3)
    manifest = scan_folder(class_tree)
    rows = load_images(manifest, 8, tmp_path / "c", workers=1).pixels
    assert isinstance(rows, CachedRows) and rows.shape == (36, 8, 8, 3) and rows.nbytes == 6912
    assert len(list((tmp_path / "c").rglob("*.npy"))) == 4 == len(rows.arrays)
    assert all(isinstance(array.base, np.memmap) for array in rows.arrays)  # views of maps
    expected = np.stack([decode_image(manifest.absolute(i), (8, 8)) for i in manifest.items])
    np.testing.assert_array_equal(np.asarray(rows), expected)
    index = np.array([35, 0, 17, 17, 9])
    np.testing.assert_array_equal(rows[index], expected[index])
    np.testing.assert_array_equal(rows[3], expected[3])
    np.testing.assert_array_equal(rows[5:12], expected[5:12])
    mask = np.arange(36) % 3 == 0
    np.testing.assert_array_equal(rows[mask], expected[mask])
    subset = rows.take(index)
    assert subset.shape == (5, 8, 8, 3)
    np.testing.assert_array_equal(subset[[4, 0]], expected[[9, 35]])
    # a later load reads the same shards and decodes nothing
    again = load_images(scan_folder(class_tree), 8, tmp_path / "c", workers=1)
    assert again.decoded_now == 0
    np.testing.assert_array_equal(np.asarray(again.pixels), expected)

"""Tests for imgclass.data.ingest: zips and folders in, one folder per class out."""

import hashlib
import io
import logging
import os
import stat
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from imgclass.data.ingest import (
    ANIMALS10_NAMES,
    IMAGE_SUFFIXES,
    LeftOut,
    SkippedFile,
    UnsafeArchiveError,
    parse_name_map,
    prepare,
)

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255)]


def image(i: int, fmt: str = "JPEG") -> bytes:
    """A tiny real image; a different colour for each i."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), COLOURS[i % len(COLOURS)]).save(buf, fmt)
    return buf.getvalue()


def make_zip(path: Path, members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=compression)
    return path


def write_files(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def tree(root: Path) -> dict[str, str]:
    """Every file under root (links not followed) -> a hash of its content."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def reasons(report) -> dict[str, str]:
    return {s.member: s.reason for s in report.skipped}


@pytest.fixture
def animal_zips(tmp_path: Path) -> list[Path]:
    return [
        make_zip(
            tmp_path / "gatto-001.zip", {f"raw-img/gatto/g{i}.jpeg": image(i) for i in range(3)}
        ),
        make_zip(
            tmp_path / "cane-001.zip", {f"raw-img/cane/c{i}.jpeg": image(i) for i in range(2)}
        ),
        make_zip(tmp_path / "football_test.zip", {"football_test/f0.jpg": image(0)}),
    ]


def test_public_constants():
    assert ANIMALS10_NAMES["gatto"] == "cat" and ANIMALS10_NAMES["scoiattolo"] == "squirrel"
    assert len(ANIMALS10_NAMES) == 10
    assert {".jpg", ".jpeg", ".png", ".tiff"} <= IMAGE_SUFFIXES


def test_class_folders_found_and_italian_names_mapped(tmp_path, animal_zips):
    report = prepare(animal_zips, tmp_path / "out")
    assert report.counts == {"cat": 3, "dog": 2, "football_test": 1}
    assert report.written == 6
    assert report.renamed == {"cane": "dog", "gatto": "cat"}
    assert (tmp_path / "out" / "cat" / "g0.jpeg").read_bytes() == image(0)
    assert report.skipped == [] and report.left_out == []


def test_user_map_overrides_builtin_names(tmp_path, animal_zips):
    name_map = parse_name_map(["gatto=kitty", " football_test = football "])
    report = prepare(animal_zips, tmp_path / "out", name_map=name_map)
    assert report.counts == {"dog": 2, "football": 1, "kitty": 3}
    plain = prepare(animal_zips, tmp_path / "plain", builtin_names=False)
    assert plain.counts == {"cane": 2, "football_test": 1, "gatto": 3}
    assert plain.renamed == {}


@pytest.mark.parametrize("pair", ["gatto", "=cat", "gatto=", "gatto=../cat", "gatto=a/b"])
def test_parse_name_map_names_the_bad_pair(pair):
    with pytest.raises(ValueError, match="bad class mapping"):
        parse_name_map([pair])


def test_classes_keep_only_wanted_and_leave_out_whole_sources(tmp_path, animal_zips):
    mixed = make_zip(
        tmp_path / "mixed.zip", {"x/gatto/m0.jpg": image(4), "x/cavallo/h0.jpg": image(5)}
    )
    report = prepare([*animal_zips, mixed], tmp_path / "out", classes=["cat"])
    assert report.counts == {"cat": 4}
    assert sorted(os.listdir(tmp_path / "out")) == ["cat"]
    assert report.left_out == [
        LeftOut(str(animal_zips[1]), "holds none of the wanted classes (found: dog)"),
        LeftOut(str(animal_zips[2]), "holds none of the wanted classes (found: football_test)"),
    ]
    # Files of a left-out source are not listed one by one; unwanted ones elsewhere are.
    assert report.skipped == [
        SkippedFile(str(mixed), "x/cavallo/h0.jpg", "class 'horse' not wanted")
    ]


def test_missing_wanted_class_raises_before_writing(tmp_path, animal_zips):
    with pytest.raises(ValueError, match=r"zebra.*found: \['cat', 'dog', 'football_test'\]"):
        prepare(animal_zips, tmp_path / "out", classes=["cat", "zebra"])
    assert not (tmp_path / "out").exists()


def test_missing_source_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.zip"):
        prepare([tmp_path / "nope.zip"], tmp_path / "out")


def test_zip_and_folder_sources_mixed(tmp_path, animal_zips):
    folder = write_files(tmp_path / "photos", {"gatto/p0.png": image(3, "PNG")})
    (folder / "more").mkdir()
    make_zip(folder / "more" / "ragno.zip", {"ragno/s0.jpg": image(1)})
    report = prepare([animal_zips[0], folder], tmp_path / "out")
    assert report.counts == {"cat": 4, "spider": 1}
    assert report.left_out == [] and report.skipped == []
    assert sorted(os.listdir(tmp_path / "out" / "cat")) == [
        "g0.jpeg",
        "g1.jpeg",
        "g2.jpeg",
        "p0.png",
    ]


def test_junk_non_images_and_root_files_are_skipped_with_reasons(tmp_path):
    members = {
        "__MACOSX/raw-img/gatto/._g0.jpg": b"junk",
        "raw-img/gatto/.DS_Store": b"junk",
        "raw-img/gatto/Thumbs.db": b"junk",
        "raw-img/.cache/gatto/h.jpg": image(1),
        "raw-img/gatto/notes.txt": b"text",
        "raw-img/gatto/inner.zip": b"PK",
        "root.jpg": image(2),
        "raw-img/gatto/ok.JPG": image(0),
    }
    archive = make_zip(tmp_path / "a.zip", members)
    folder = write_files(
        tmp_path / "dir",
        {"desktop.ini": b"x", "top.png": image(3, "PNG"), "cane/d.gif": image(4, "GIF")}
        | {".git/objects/x.jpg": image(5), "cane/README": b"x"},
    )
    report = prepare([archive, folder], tmp_path / "out")
    assert report.counts == {"cat": 1, "dog": 1}
    assert reasons(report) == {
        "__MACOSX/raw-img/gatto/._g0.jpg": "OS junk file",
        "raw-img/gatto/.DS_Store": "OS junk file",
        "raw-img/gatto/Thumbs.db": "OS junk file",
        "raw-img/.cache/gatto/h.jpg": "OS junk file",
        "raw-img/gatto/notes.txt": "not an image file extension '.txt'",
        "raw-img/gatto/inner.zip": "nested archive: not extracted",
        "root.jpg": "not inside a class folder",
        ".git": "OS junk folder",
        "desktop.ini": "OS junk file",
        "top.png": "not inside a class folder",
        "cane/README": "not an image file extension ''",
    }


def test_unsafe_zip_members_refused_and_nothing_escapes(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    absolute = f"/{tmp_path.name}-abs/gatto/a.jpg"
    link = zipfile.ZipInfo("raw-img/gatto/link.jpg")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    archive = work / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name in ["../evil/x.jpg", "raw-img/../../evil/y.jpg", "raw-img\\..\\..\\evil\\z.jpg"]:
            zf.writestr(name, image(1))
        zf.writestr(absolute, image(2))
        zf.writestr("C:/win/gatto/b.jpg", image(3))
        zf.writestr(link, "../../../../outside.jpg")
        zf.writestr("raw-img/gatto/good.jpg", image(0))
        zf.writestr("raw-img/../b.jpg", image(4))  # class folder would be "raw-img"
    before = tree(tmp_path)
    report = prepare([archive], work / "out")
    assert report.counts == {"cat": 1}
    assert tree(work / "out") == {"cat/good.jpg": hashlib.sha256(image(0)).hexdigest()}
    after = tree(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("work/out/")} == before
    assert not Path(absolute).parents[1].exists()
    assert reasons(report) == {
        "../evil/x.jpg": "unsafe path (.. component): refused",
        "raw-img/../../evil/y.jpg": "unsafe path (.. component): refused",
        "raw-img\\..\\..\\evil\\z.jpg": "unsafe path (.. component): refused",
        absolute: "unsafe path (absolute): refused",
        "C:/win/gatto/b.jpg": "unsafe path (absolute): refused",
        "raw-img/gatto/link.jpg": "symbolic link member: refused",
        "raw-img/../b.jpg": "unsafe path (.. component): refused",
    }


def test_folder_symlinks_followed_only_inside(tmp_path):
    outside = write_files(tmp_path / "outside", {"gatto/o.jpg": image(5), "x.jpg": image(4)})
    folder = write_files(tmp_path / "dir", {"gatto/in.jpg": image(0), "real/gatto/r.jpg": image(1)})
    (folder / "gatto" / "to_outside.jpg").symlink_to(outside / "x.jpg")
    (folder / "gatto" / "to_inside.jpg").symlink_to(folder / "real" / "gatto" / "r.jpg")
    (folder / "linked").symlink_to(outside, target_is_directory=True)
    report = prepare([folder], tmp_path / "out")
    assert sorted(os.listdir(tmp_path / "out" / "cat")) == ["in.jpg", "r.jpg", "to_inside.jpg"]
    refused = "symbolic link pointing outside the data root"
    assert reasons(report) == {"gatto/to_outside.jpg": refused, "linked": refused}


def test_class_folder_linked_outside_out_dir_is_refused(tmp_path, animal_zips):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "cat").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(UnsafeArchiveError, match=r"gatto-001\.zip.*raw-img/gatto/g0\.jpeg"):
        prepare(animal_zips[:1], tmp_path / "out")
    assert list(elsewhere.iterdir()) == []


def set_encrypted_flag(path: Path) -> None:
    """Mark the first member of a zip as encrypted, in its local and central headers."""
    raw = bytearray(path.read_bytes())
    central = raw.index(b"PK\x01\x02")
    raw[6] |= 0x1
    raw[central + 8] |= 0x1
    path.write_bytes(bytes(raw))


def test_encrypted_oversized_and_bomb_members_refused(tmp_path, caplog):
    archive = make_zip(
        tmp_path / "a.zip",
        {
            "raw-img/gatto/secret.jpg": b"not really encrypted",
            "raw-img/gatto/bomb.jpg": bytes(50 * 2**20),
            "raw-img/gatto/ok.jpg": image(0),
        },
    )
    set_encrypted_flag(archive)
    report = prepare([archive], tmp_path / "out")
    assert tree(tmp_path / "out") == {"cat/ok.jpg": hashlib.sha256(image(0)).hexdigest()}
    why = reasons(report)
    assert why["raw-img/gatto/secret.jpg"] == "encrypted member: refused"
    assert why["raw-img/gatto/bomb.jpg"].startswith("compression ratio")
    assert why["raw-img/gatto/bomb.jpg"].endswith("refused")

    none_left = f"^no image files inside class folders in {archive}$"  # every member refused
    with (
        caplog.at_level(logging.WARNING, logger="imgclass"),
        pytest.raises(ValueError, match=none_left),
    ):
        prepare([archive], tmp_path / "small", max_member_bytes=100)
    assert "skipped raw-img/gatto/ok.jpg: 633 bytes, over max_member_bytes (100): refused" in (
        caplog.text
    )


def test_size_caps_on_folder_files_and_source_totals(tmp_path):
    folder = write_files(tmp_path / "dir", {f"gatto/{i}.jpg": image(i) for i in range(3)})
    capped = prepare([folder], tmp_path / "capped", max_member_bytes=100)
    assert set(reasons(capped).values()) == {"larger than max_member_bytes (100): refused"}
    budget = len(image(0)) + len(image(1))
    report = prepare([folder], tmp_path / "out", max_total_bytes=budget)
    assert report.counts == {"cat": 2}
    assert reasons(report)["gatto/2.jpg"].endswith("stopped")


def test_corrupt_archives_reported_and_others_processed(tmp_path, animal_zips):
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"this is not a zip archive")
    bad_crc = make_zip(
        tmp_path / "crc.zip",
        {"gatto/bad.jpg": image(4), "gatto/fine.jpg": image(5)},
        compression=zipfile.ZIP_STORED,
    )
    raw = bytearray(bad_crc.read_bytes())
    raw[raw.index(image(4)) + 100] ^= 0xFF
    bad_crc.write_bytes(bytes(raw))
    report = prepare([broken, bad_crc, animal_zips[0]], tmp_path / "out")
    assert report.counts == {"cat": 4}
    assert [lo.source for lo in report.left_out] == [str(broken)]
    assert report.left_out[0].reason.startswith("not a readable zip archive")
    assert reasons(report)["gatto/bad.jpg"].startswith("corrupt or unreadable")
    assert not (tmp_path / "out" / "cat" / "bad.jpg").exists()


def test_rerun_is_idempotent(tmp_path, animal_zips):
    out = tmp_path / "out"
    first = prepare(animal_zips, out)
    files = tree(out)
    second = prepare(animal_zips, out)
    assert tree(out) == files
    assert second.counts == first.counts
    assert second.written == 0
    assert {s.reason for s in second.skipped} == {"already present with the same content"}
    assert len(second.skipped) == first.written
    assert not [p for p in out.rglob(".*")]  # no temporary files left behind


def test_name_collision_with_different_content_gets_a_suffix(tmp_path):
    one = make_zip(tmp_path / "one.zip", {"gatto/x.jpg": image(0)})
    two = make_zip(tmp_path / "two.zip", {"gatto/x.jpg": image(1)})
    report = prepare([one, two], tmp_path / "out")
    assert tree(tmp_path / "out") == {
        "cat/x.jpg": hashlib.sha256(image(0)).hexdigest(),
        "cat/x-1.jpg": hashlib.sha256(image(1)).hexdigest(),
    }
    again = prepare([two, one], tmp_path / "out")
    assert again.written == 0 and again.counts == report.counts == {"cat": 2}


def animals10_raw() -> Path:
    shared = os.environ.get("IMGCLASS_SHARED_DATASETS")
    datasets = (
        Path(shared) if shared else Path(__file__).resolve().parents[2] / "shared" / "datasets"
    )
    return datasets / "animals10-raw"


def test_real_animals10_archives(tmp_path):
    raw = animals10_raw()
    if not raw.is_dir():
        pytest.skip(f"shared data set not found at {raw}")
    wanted = ["cat", "chicken", "cow", "dog", "horse", "spider"]
    report = prepare([raw], tmp_path / "out", classes=wanted)
    assert report.counts == {c: 32 for c in wanted}
    assert report.written == 6 * 32
    left_out = sorted(Path(lo.source).name.split("-")[0] for lo in report.left_out)
    assert left_out == [
        "elefante",
        "farfalla",
        "football_test.zip",
        "indoor_scenes",
        "pecora",
        "scoiattolo",
    ]
    assert (
        LeftOut(
            str(raw / "football_test.zip"),
            "holds none of the wanted classes (found: football_test)",
        )
        in report.left_out
    )
    assert report.renamed["gatto"] == "cat"


def test_sources_without_any_image_are_an_error_that_says_why(tmp_path):
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 this is not a zip archive")
    with pytest.raises(
        ValueError,
        match=f"^no image files inside class folders in {broken}; "
        f"{broken}: not a readable zip archive",
    ):
        prepare([broken], tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="^no image files inside class folders in "):
        prepare([tmp_path / "empty"], tmp_path / "out")
    assert not (tmp_path / "out").exists()

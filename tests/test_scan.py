import hashlib
import json
import os

import pytest

from imgclass.data.scan import DataError, scan_folder


def test_classes_are_sorted_folder_names_and_files_hashed(class_tree):
    manifest = scan_folder(class_tree)
    assert manifest.classes == ["blue", "green", "red"]
    assert len(manifest.items) == 36
    item = manifest.items[0]
    assert item.path == "blue/blue_000.jpg" and item.label == 0
    assert item.sha256 == hashlib.sha256((class_tree / item.path).read_bytes()).hexdigest()


def test_junk_root_files_and_empty_classes_are_reported(class_tree, caplog):
    (class_tree / "notes.txt").write_text("hello")
    (class_tree / "red" / ".DS_Store").write_bytes(b"\0")
    (class_tree / "red" / "Thumbs.db").write_bytes(b"\0")
    (class_tree / "__MACOSX").mkdir()
    (class_tree / "empty").mkdir()
    manifest = scan_folder(class_tree)
    assert manifest.classes == ["blue", "empty", "green", "red"]  # no index shift
    assert [i.label for i in manifest.items if i.path.startswith("red/")][0] == 3
    reasons = {s.path: s.reason for s in manifest.skipped}
    assert reasons["notes.txt"] == "not inside a class folder"
    assert reasons["red/Thumbs.db"] == "OS junk file"
    assert "'empty' holds no files" in caplog.text


def test_subfolders_belong_to_their_class(class_tree):
    nested = class_tree / "blue" / "more"
    nested.mkdir()
    (nested / "x.jpg").write_bytes((class_tree / "blue" / "blue_000.jpg").read_bytes())
    manifest = scan_folder(class_tree)
    assert any(i.path == "blue/more/x.jpg" and i.label == 0 for i in manifest.items)


def test_folder_without_class_folders_is_a_clear_error(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match="no class folders"):
        scan_folder(tmp_path)
    with pytest.raises(DataError, match="not a folder"):
        scan_folder(tmp_path / "missing")


def _reasons(manifest):
    return {s.path: s.reason for s in manifest.skipped}


def test_links_inside_the_root_are_followed_and_outside_ones_skipped(class_tree, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes((class_tree / "red" / "red_000.jpg").read_bytes())
    (class_tree / "blue" / "to_red.jpg").symlink_to(class_tree / "red" / "red_001.jpg")
    (class_tree / "blue" / "rel.jpg").symlink_to("../blue/blue_000.jpg")
    (class_tree / "blue" / "out.jpg").symlink_to(outside / "secret.jpg")
    (class_tree / "blue" / "outdir").symlink_to(outside, target_is_directory=True)
    (class_tree / "outclass").symlink_to(outside, target_is_directory=True)
    (class_tree / "blue" / "broken.jpg").symlink_to(class_tree / "nothing.jpg")
    (class_tree / "green" / "sub").mkdir()
    (class_tree / "green" / "sub" / "reds").symlink_to(class_tree / "red")
    manifest = scan_folder(class_tree)
    assert manifest.classes == ["blue", "green", "red"]  # the outside link is no class
    paths = {i.path: i for i in manifest.items}
    assert "blue/to_red.jpg" in paths and "blue/rel.jpg" in paths
    assert paths["green/sub/reds/red_005.jpg"].label == 1  # a linked folder inside the root
    reasons = _reasons(manifest)
    for rel in ("blue/out.jpg", "blue/outdir", "outclass"):
        assert reasons[rel] == "symbolic link pointing outside the data root"
    assert reasons["blue/broken.jpg"] == "broken symbolic link"
    assert not any("secret" in p for p in paths)


def test_link_loops_end_and_are_reported(class_tree):
    (class_tree / "blue" / "again").symlink_to(class_tree / "blue")
    (class_tree / "blue" / "root").symlink_to(class_tree)
    (class_tree / "red" / "self.jpg").symlink_to("self.jpg")
    (class_tree / "everything").symlink_to(class_tree)
    (class_tree / "red" / "a").mkdir()
    (class_tree / "red" / "a" / "up").symlink_to("..")
    manifest = scan_folder(class_tree)
    assert manifest.classes == ["blue", "green", "red"]
    assert len(manifest.items) == 36
    reasons = _reasons(manifest)
    for rel in ("blue/again", "blue/root", "red/self.jpg", "everything", "red/a/up"):
        assert reasons[rel] == "symbolic link loop", rel


def test_unicode_spaces_and_non_utf8_names_are_read_and_printable(class_tree):
    jpeg = (class_tree / "red" / "red_000.jpg").read_bytes()
    (class_tree / "red" / "photo de Zoë 猫.jpg").write_bytes(jpeg)
    raw = os.fsencode(class_tree / "red") + b"/caf\xe9 \xff.jpg"
    with open(raw, "wb") as f:
        f.write(jpeg + b"\0")
    os.mkdir(os.fsencode(class_tree) + b"/gr\xfcn")
    with open(os.fsencode(class_tree) + b"/gr\xfcn/x.jpg", "wb") as f:
        f.write(jpeg)
    manifest = scan_folder(class_tree)
    assert manifest.classes == ["blue", "gr\\xfcn", "green", "red"]  # sorted as text
    paths = {i.path: i for i in manifest.items}
    assert "red/photo de Zoë 猫.jpg" in paths
    odd = paths["red/caf\\xe9 \\xff.jpg"]
    assert odd.sha256 == hashlib.sha256(jpeg + b"\0").hexdigest()
    assert manifest.absolute(odd).read_bytes() == jpeg + b"\0"  # the file on disk, opened
    assert manifest.absolute(paths["gr\\xfcn/x.jpg"]).read_bytes() == jpeg
    json.dumps([i.path for i in manifest.items], ensure_ascii=False).encode("utf-8")


def test_a_name_that_clashes_once_written_as_text_is_skipped(class_tree):
    with open(os.fsencode(class_tree / "red") + b"/caf\xe9.jpg", "wb") as f:
        f.write(b"one")
    (class_tree / "red" / "caf\\xe9.jpg").write_bytes(b"two")  # a real backslash in the name
    manifest = scan_folder(class_tree)
    assert sum(i.path == "red/caf\\xe9.jpg" for i in manifest.items) == 1
    assert _reasons(manifest)["red/caf\\xe9.jpg"].startswith("name clashes")


def test_fifos_are_not_read(class_tree):
    os.mkfifo(class_tree / "red" / "pipe.jpg")  # reading it would block forever
    assert _reasons(scan_folder(class_tree))["red/pipe.jpg"] == "not a regular file"


def test_junk_at_the_root_is_reported_not_taken_for_a_class(class_tree):
    (class_tree / "__MACOSX").mkdir()
    (class_tree / ".DS_Store").write_bytes(b"\0")
    (class_tree / "blue" / ".hidden").mkdir()
    (class_tree / "blue" / ".hidden" / "x.jpg").write_bytes(b"x")
    manifest = scan_folder(class_tree)
    assert manifest.classes == ["blue", "green", "red"]
    reasons = _reasons(manifest)
    assert reasons["__MACOSX"] == "OS junk folder" and reasons[".DS_Store"] == "OS junk file"
    assert reasons["blue/.hidden"] == "OS junk folder"
    assert not any(".hidden" in i.path for i in manifest.items)


def test_duplicates_and_label_conflicts_are_found_and_conflicts_left_out(class_tree):
    blue = (class_tree / "blue" / "blue_000.jpg").read_bytes()
    (class_tree / "blue" / "copy1.jpg").write_bytes(blue)
    (class_tree / "blue" / "copy2.jpg").write_bytes(blue)
    red = (class_tree / "red" / "red_000.jpg").read_bytes()
    (class_tree / "green" / "is_red.jpg").write_bytes(red)
    (class_tree / "blue" / "is_red_too.jpg").write_bytes(red)
    manifest = scan_folder(class_tree)
    groups = {g.sha256: g for g in manifest.same_content()}
    dup = groups[hashlib.sha256(blue).hexdigest()]
    assert dup.classes == ["blue"]
    assert dup.paths == ["blue/blue_000.jpg", "blue/copy1.jpg", "blue/copy2.jpg"]
    conflict = groups[hashlib.sha256(red).hexdigest()]
    assert conflict.classes == ["blue", "green", "red"]
    clean = manifest.without_conflicts()
    assert len(clean.items) == len(manifest.items) - 3
    reasons = _reasons(clean)
    assert reasons["green/is_red.jpg"] == "label conflict: same content also in class blue, red"
    assert reasons["red/red_000.jpg"] == "label conflict: same content also in class blue, green"
    assert {i.path for i in clean.items} >= set(dup.paths)  # exact duplicates are all kept

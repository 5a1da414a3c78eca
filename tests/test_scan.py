import hashlib

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

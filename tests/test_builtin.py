from imgclass.data.builtin import digits_folder
from imgclass.data.scan import scan_folder


def test_digits_are_written_once_as_a_class_folder_tree(tmp_path):
    root = digits_folder(tmp_path)
    manifest = scan_folder(root)
    assert manifest.classes == [str(d) for d in range(10)]
    assert len(manifest.items) == 1797 and not manifest.skipped
    stamp = (root / "0" / "0000.png").stat().st_mtime_ns
    assert digits_folder(tmp_path) == root
    assert (root / "0" / "0000.png").stat().st_mtime_ns == stamp

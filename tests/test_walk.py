"""One folder walk, one set of rules: the data scan, prepare and predict read the same files of a
messy tree and skip the same entries for the same reasons (data/walk.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imgclass.data.images import REASON_NOT_A_FILE
from imgclass.data.ingest import prepare
from imgclass.data.scan import scan_folder
from imgclass.data.walk import (
    REASON_JUNK,
    REASON_JUNK_FOLDER,
    REASON_LINK_BROKEN,
    REASON_LINK_LOOP,
    REASON_LINK_OUTSIDE,
    REASON_RUN_DIR,
    Walk,
)
from imgclass.predict import Predictor
from imgclass.rundir import RUN_MARKERS
from tests.conftest import make_class_tree

READ = {"blue/sub/deep.jpg", "red/sub/deep.jpg"}  # besides each class's own images
SKIPPED = {
    "red/.DS_Store": REASON_JUNK,
    "red/__MACOSX": REASON_JUNK_FOLDER,
    "red/outside.png": REASON_LINK_OUTSIDE,
    "red/broken.png": REASON_LINK_BROKEN,
    "red/sub/loop": REASON_LINK_LOOP,
    "red/fifo.png": REASON_NOT_A_FILE,
    "red/old-run": REASON_RUN_DIR,
}


@pytest.fixture
def messy(tmp_path) -> Path:
    root = make_class_tree(tmp_path / "data", per_class=2, size=8)
    red = root / "red"
    for cls in ("red", "blue"):
        (root / cls / "sub").mkdir()
        (root / cls / "sub" / "deep.jpg").write_bytes((root / cls / f"{cls}_000.jpg").read_bytes())
    (red / ".DS_Store").write_bytes(b"\0junk")
    (red / "__MACOSX").mkdir()
    (red / "__MACOSX" / "._x.png").write_bytes(b"\0junk")
    (tmp_path / "elsewhere.png").write_bytes((red / "red_000.jpg").read_bytes())
    (red / "outside.png").symlink_to(tmp_path / "elsewhere.png")
    (red / "broken.png").symlink_to(tmp_path / "missing.png")
    (red / "sub" / "loop").symlink_to(red, target_is_directory=True)
    os.mkfifo(red / "fifo.png")
    (red / "old-run").mkdir()
    for name in RUN_MARKERS:
        (red / "old-run" / name).write_text("{}")
    return root


def images(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*_*.jpg") if p.is_file()} | READ


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")
def test_scan_prepare_and_predict_follow_the_same_rules(messy, tmp_path, trained_run):
    walked = list(Walk(messy).files())
    expected = {f.rel for f in walked if f.reason is None}
    assert expected == images(messy)
    assert {f.rel: f.reason for f in walked if f.reason} == SKIPPED

    manifest = scan_folder(messy)
    assert {i.path for i in manifest.items} == expected
    assert {s.path: s.reason for s in manifest.skipped} == SKIPPED

    report = prepare([messy], tmp_path / "prepared")
    assert {s.member: s.reason for s in report.skipped} == SKIPPED
    assert sum(report.counts.values()) == len(expected)  # the copies of sub/deep.png included

    predicted = Predictor(trained_run, backend="pytorch").predict(messy)
    named = {Path(p.path).relative_to(messy).as_posix(): p for p in predicted}
    assert {name for name, p in named.items() if p.error is None} == expected
    assert {name: p.error for name, p in named.items() if p.error} == {
        name: reason
        for name, reason in SKIPPED.items()
        if reason not in (REASON_JUNK, REASON_JUNK_FOLDER)  # left out without a word
    }

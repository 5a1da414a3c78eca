"""bench/growth.py at a tiny size: it makes its set, trains in one process and in two under
torchrun, and reports every figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "growth.py"
TRAIN = ["--recipe", "seed", "--image-size", "8", "--epochs", "1", "--batch-size", "8"]


@pytest.mark.slow
def test_growth_benchmark_reports_each_size_and_process_count(tmp_path):
    command = [sys.executable, str(BENCH), "--sizes", "60", "--ranks", "1", "2"]
    done = subprocess.run(
        [*command, "--work", str(tmp_path), "--", *TRAIN],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "growth.json").read_text())
    assert [(row["n"], row["ranks"]) for row in rows] == [(60, 1), (60, 2)]
    for row in rows:
        assert row["train_images"] == 48 and 0 <= row["val_accuracy"] <= 1
        assert row["scan_s"] >= 0 and row["decode_img_s"] > 0 and row["epoch_us_per_img"] > 0
        assert row["peak_anon_mb"] > 50 and row["peak_file_mb"] > 0  # torch alone is more
    # the set is made once: 60 JPEGs in 10 class folders, the same bytes for the same index
    images = sorted((tmp_path / "set-60").glob("class*/*.jpg"))
    assert len(images) == 60 and len({p.parent.name for p in images}) == 10

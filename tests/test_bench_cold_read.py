"""bench/cold_read.py at a tiny size: it writes a store in the cache's shards, reads it in both
orders, cold and warm, reports each and leaves nothing behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "cold_read.py"


@pytest.mark.slow
def test_cold_read_benchmark_reports_both_orders_cold_and_warm(tmp_path):
    done = subprocess.run(
        [sys.executable, str(BENCH), "--sizes", "8", "--rows", "300", "--batch", "64"]
        + ["--work", str(tmp_path / "work")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [row["order"] for row in rows] == ["store order", "shuffled"]
    for row in rows:
        assert (row["size"], row["rows"]) == (8, 300)
        assert all(row[key] > 0 for key in ("cold_rows_s", "cold_MB_s", "warm_rows_s"))
    assert "flags:" in done.stdout and "load average" in done.stdout
    assert not list((tmp_path / "work").iterdir()), "the store is removed"

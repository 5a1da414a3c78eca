"""bench/gpu.py --smoke: every path of the GPU benchmark runs on the CPU at tiny sizes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "gpu.py"


@pytest.mark.slow
def test_gpu_benchmark_smoke_runs_every_part_on_the_cpu(tmp_path):
    done = subprocess.run(
        [sys.executable, str(BENCH), "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "gpu.json").read_text())
    assert results["smoke"] and results["device"] == "cpu"
    rows = results["throughput"]
    assert [(r["recipe"], r["batch"]) for r in rows] == [
        ("seed", 4),
        ("seed", 8),
        ("fast", 4),
        ("fast", 8),
    ]
    assert all(r["images_per_s"] > 0 and r["peak_gib"] is None for r in rows)
    flowers = results["flowers5"]
    assert 0 <= flowers["target"] <= 1 and flowers["seed_seconds"] > 0
    cifar = results["cifar10"]
    assert cifar["epochs"] == 1 and 0 <= cifar["test_accuracy"] <= 1
    # the CIFAR-like zips went through `prepare`: 10 classes of 10 training images
    train = tmp_path / "cifar-train"
    assert sorted(p.name for p in train.iterdir()) == [str(d) for d in range(10)]
    assert all(len(list(p.iterdir())) == 10 for p in train.iterdir())
    assert "CIFAR-10 fast recipe 32x32" in done.stdout

"""Batch prediction throughput on flowers5: PyTorch against ONNX Runtime, end to end and model only.

For each run given: export it to ONNX (in a temporary folder), then, interleaved repetition by
repetition, time `Predictor(...).predict(<every flowers5 photo>)` (decoding in threads + model,
images/s) with the run (PyTorch) and with the .onnx file (ONNX Runtime), PyTorch with one decoding
thread too (what the parallel decoding brings), and the model alone on pre-decoded pixels.

Then the latency of one image per `predict` call (decode + model), p50 and p99, both engines.

    python bench/predict_throughput.py RUN [RUN ...] [--data DIR] [--reps 3] [--limit N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from imgclass import runtime
from imgclass.export import export_onnx
from imgclass.predict import Predictor, expand_paths
from imgclass.runtime import usable_cores

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "flowers5"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--data", type=Path, default=SHARED)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--limit", type=int, help="only N files, evenly spaced in sorted order")
    parser.add_argument(
        "--single",
        type=int,
        default=100,
        help="files predicted one call each, for the latency of one image",
    )
    args = parser.parse_args()
    print(runtime.describe_cpu())  # the figures below are for this CPU, bf16 answer and load
    files = list(expand_paths([args.data]))
    if args.limit:
        files = files[:: max(1, len(files) // args.limit)][: args.limit]
    print(
        f"{len(files)} files of {args.data}, {usable_cores()} cores; images/s, median of "
        f"{args.reps} interleaved runs [min-max]"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for run in args.runs:
            onnx_file = export_onnx(run, Path(tmp) / f"{run.name}.onnx")
            predictors = {
                "pytorch": Predictor(run, backend="pytorch"),
                "onnxruntime": Predictor(onnx_file),
                "pytorch, 1 decoding thread": Predictor(run, workers=1, backend="pytorch"),
            }
            batch = np.stack([predictors["pytorch"].load_pixels(f) for f in files[:512]])
            for predictor in predictors.values():  # warm-up
                predictor.predict_pixels(batch[:64])
            timings: dict[str, list[float]] = {}
            for _ in range(args.reps):
                for name, predictor in predictors.items():
                    start = time.perf_counter()
                    results = predictor.predict(files)
                    elapsed = time.perf_counter() - start
                    assert sum(r.error is None for r in results) > 0
                    timings.setdefault(f"predict files, {name}", []).append(len(files) / elapsed)
                for name in ("pytorch", "onnxruntime"):
                    start = time.perf_counter()
                    predictors[name].predict_pixels(batch)
                    timings.setdefault(f"model only (batches of 64), {name}", []).append(
                        len(batch) / (time.perf_counter() - start)
                    )
            latency = {name: [] for name in ("pytorch", "onnxruntime")}
            for path in files[: args.single]:  # one image per call, as a service answers it
                for name, values in latency.items():
                    start = time.perf_counter()
                    predictors[name].predict([path])
                    values.append((time.perf_counter() - start) * 1000)
            meta = predictors["pytorch"].meta
            print(
                f"\n{run} ({meta.architecture}, {meta.image_size}x{meta.image_size}, "
                f"tta_flip={meta.tta_flip})"
            )
            for name, values in timings.items():
                print(
                    f"  {name:<44} {statistics.median(values):8.0f} "
                    f"[{min(values):.0f}-{max(values):.0f}]"
                )
            for name, values in latency.items():
                cuts = statistics.quantiles(values, n=100)
                print(
                    f"  one image per call, {name}: p50 {cuts[49]:.1f} ms, p99 {cuts[98]:.1f} "
                    f"ms ({len(values)} calls)"
                )
            for kind in ("predict files", "model only (batches of 64)"):
                ratio = statistics.median(timings[f"{kind}, onnxruntime"]) / statistics.median(
                    timings[f"{kind}, pytorch"]
                )
                print(f"  {kind}: onnxruntime / pytorch {ratio:.2f}x")


if __name__ == "__main__":
    main()

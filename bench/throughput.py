"""Reference-model throughput: imgclass's default path against plain eager fp32 PyTorch.

Training images/s at batch 32 and 128, inference latency at batch 1 (p50/p99) and images/s at
batch 256, for the seed CNN at 64x64 with 6 classes. imgclass trains with its default path
(channels_last, the allocator setting, threads = cores, bf16 where native, fused optimiser) and
predicts with `Predictor`'s default backend on a run exported as `train` exports it (ONNX Runtime
on CPUs without native bf16); inference goes from uint8 pixels to probabilities on both sides.
Each configuration runs in its own fresh process (the allocator setting is process-wide), and the
processes are interleaved repetition by repetition so that a noisy neighbour hits every
configuration alike. Keras/TensorFlow is measured
too when it is importable (an optional baseline, never a dependency).

    python bench/throughput.py [--reps 3] [--seconds 6] [--keras-python PYTHON]

--keras-python: an interpreter that has TensorFlow (e.g. a separate venv), for the Keras baseline
when this one has none.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

CONFIGS = ["imgclass", "eager-fp32", "keras"]
MEASURES = [
    ("train_b32", "train img/s, batch 32"),
    ("train_b128", "train img/s, batch 128"),
    ("infer_b1_p50_ms", "inference batch 1, p50 ms"),
    ("infer_b1_p99_ms", "inference batch 1, p99 ms"),
    ("infer_b256", "inference img/s, batch 256"),
]


def _timed(step, batch: int, seconds: float) -> float:
    """Images per second of `step`, after warm-up, over at least `seconds`."""
    for _ in range(3):
        step()
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or n < 5:
        step()
        n += 1
    return n * batch / elapsed


def _latencies(call, seconds: float) -> tuple[float, float]:
    for _ in range(10):
        call()
    times: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 50:
        t = time.perf_counter()
        call()
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return times[len(times) // 2], times[min(len(times) - 1, int(len(times) * 0.99))]


def _default_predictor(directory: str):
    """imgclass's own inference path: the seed CNN saved as a run, exported as `train` does,
    loaded by Predictor with its default backend."""
    from imgclass.checkpoint import ModelMeta, save_model
    from imgclass.export import export_onnx
    from imgclass.models import build_model
    from imgclass.predict import Predictor

    model = build_model("seed_cnn", 6, 64)
    save_model(
        directory, model, ModelMeta.describe(model, [f"class{i}" for i in range(6)], 64, "seed_cnn")
    )
    export_onnx(directory)
    return Predictor(directory, batch_size=256)


def worker_torch(config: str, seconds: float) -> dict:
    import tempfile

    import numpy as np
    import torch

    fast = config == "imgclass"
    if fast:
        from imgclass import runtime

        runtime.configure()
        device = runtime.Device.select()
    from imgclass.config import build_config
    from imgclass.models import build_model
    from imgclass.optim import build_optimizer

    layout = torch.channels_last if fast else torch.contiguous_format
    autocast = device.autocast if fast else __import__("contextlib").nullcontext
    results = {}
    for batch in (32, 128):
        model = build_model("seed_cnn", 6, 64).to(memory_format=layout).train()
        optimizer = (
            build_optimizer(model, build_config("seed"))
            if fast
            else torch.optim.Adam(model.parameters(), lr=5e-4)
        )
        x = torch.rand(batch, 3, 64, 64).contiguous(memory_format=layout)
        y = torch.randint(0, 6, (batch,))

        def step(model=model, x=x, y=y, optimizer=optimizer):
            with autocast():
                loss = torch.nn.functional.cross_entropy(model(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        results[f"train_b{batch}"] = _timed(step, batch, seconds)

    # inference from decoded uint8 pixels to probabilities
    rng = np.random.default_rng(0)
    one, big = (rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8) for n in (1, 256))
    with tempfile.TemporaryDirectory() as directory:
        if fast:
            predictor = _default_predictor(directory)
            predict, results["engine"] = predictor.predict_pixels, predictor.backend
        else:
            model = build_model("seed_cnn", 6, 64).eval()

            def predict(pixels):
                with torch.inference_mode():
                    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255)
                    return torch.softmax(model(x), 1).numpy()

        results["infer_b1_p50_ms"], results["infer_b1_p99_ms"] = _latencies(
            lambda: predict(one), seconds
        )
        results["infer_b256"] = _timed(lambda: predict(big), 256, seconds)
    results["threads"] = torch.get_num_threads()
    return results


def worker_keras(seconds: float) -> dict:
    import numpy as np
    from tensorflow import keras

    def build():
        return keras.Sequential(
            [
                keras.Input((64, 64, 3)),
                keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
                keras.layers.BatchNormalization(),
                keras.layers.MaxPooling2D(),
                keras.layers.Conv2D(128, 3, padding="same", activation="relu"),
                keras.layers.BatchNormalization(),
                keras.layers.MaxPooling2D(),
                keras.layers.Conv2D(256, 3, padding="same", activation="relu"),
                keras.layers.BatchNormalization(),
                keras.layers.MaxPooling2D(),
                keras.layers.Flatten(),
                keras.layers.Dense(512, activation="relu"),
                keras.layers.Dropout(0.4),
                keras.layers.Dense(6, activation="softmax"),
            ]
        )

    results = {}
    for batch in (32, 128):
        model = build()
        model.compile(keras.optimizers.Adam(5e-4), "sparse_categorical_crossentropy")
        x = np.random.rand(batch, 64, 64, 3).astype("float32")
        y = np.random.randint(0, 6, batch)
        results[f"train_b{batch}"] = _timed(
            lambda m=model, x=x, y=y: m.train_on_batch(x, y), batch, seconds
        )
    model = build()
    one = np.random.rand(1, 64, 64, 3).astype("float32")
    results["infer_b1_p50_ms"], results["infer_b1_p99_ms"] = _latencies(
        lambda: model(one, training=False), seconds
    )
    big = np.random.rand(256, 64, 64, 3).astype("float32")
    results["infer_b256"] = _timed(lambda: model(big, training=False), 256, seconds)
    return results


def _keras_available(python: str) -> bool:
    probe = subprocess.run([python, "-c", "import tensorflow"], capture_output=True)
    return probe.returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0, help="per measurement")
    parser.add_argument(
        "--keras-python",
        default=sys.executable,
        help="interpreter with TensorFlow for the Keras baseline",
    )
    parser.add_argument("--worker", choices=CONFIGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = (
            worker_keras(args.seconds)
            if args.worker == "keras"
            else worker_torch(args.worker, args.seconds)
        )
        print(json.dumps(result))
        return
    from imgclass.runtime import describe_cpu  # here: the workers import torch themselves

    print(describe_cpu())  # the figures below are for this CPU, bf16 answer and load
    configs = CONFIGS if _keras_available(args.keras_python) else CONFIGS[:2]
    if "keras" not in configs:
        print("TensorFlow is not importable here: the Keras baseline is skipped.")
    runs: dict[str, list[dict]] = {c: [] for c in configs}
    for rep in range(args.reps):
        for config in configs:
            python = args.keras_python if config == "keras" else sys.executable
            out = subprocess.run(
                [python, __file__, "--worker", config, "--seconds", str(args.seconds)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            runs[config].append(json.loads(out.strip().splitlines()[-1]))
            print(f"rep {rep + 1}/{args.reps} {config}: done", file=sys.stderr)
    print(f"\nseed CNN, 64x64, 6 classes; median of {args.reps} interleaved runs [min-max]")
    baselines = configs[1:]
    header = f"{'measure':<28}" + "".join(f"{c:>24}" for c in configs)
    print(header + "".join(f"{'imgclass / ' + b:>22}" for b in baselines))
    for key, label in MEASURES:
        row = f"{label:<28}"
        medians = {}
        for config in configs:
            values = [r[key] for r in runs[config]]
            medians[config] = statistics.median(values)
            row += f"{medians[config]:>9.1f} [{min(values):.1f}-{max(values):.1f}]".rjust(24)
        for baseline in baselines:
            ratio = medians["imgclass"] / medians[baseline]
            if key.endswith("_ms"):
                ratio = 1 / ratio  # lower latency is better: show the speed-up
            row += f"{ratio:>21.2f}x"
        print(row)
    print(
        f"threads: {runs['imgclass'][0]['threads']}; imgclass inference: "
        f"{runs['imgclass'][0]['engine']} (Predictor's default backend for a trained run)"
    )


if __name__ == "__main__":
    main()

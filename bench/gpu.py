"""GPU benchmark, one command in under 5 minutes on one GPU: training speed, time to accuracy.

1. Training images/s of the seed CNN and of the `fast` recipe's net at 64x64, batch 256 and 512,
   through imgclass's own training step (`train_one_epoch`: autocast, loss scaling, channels_last)
   on a batch already on the device, and the peak GPU memory of each.
2. flowers5: the `seed` recipe, then the `fast` recipe on the same split; the time the `fast`
   recipe takes to reach the seed recipe's final validation accuracy (history.csv, as in
   bench/time_to_accuracy.py), both recipes' accuracy and time.
3. CIFAR-10 (cifar10-train.zip / cifar10-test.zip, prepared once into class folders): the `fast`
   recipe at 32x32 on the training set (10 % held out for validation); the training time until
   the validation accuracy first reaches 94 %, and the test-set accuracy at the end.

    python bench/gpu.py [--device cuda] [--out DIR] [--datasets ../shared/datasets]
    python bench/gpu.py --smoke   # tiny sizes on the CPU in seconds: every path runs (CI)

--smoke swaps the data for 12 of scikit-learn's digits per class (zipped like CIFAR-10), sizes for
16x16 and batches of 4 and 8, the recipes' epochs for 1: its figures mean nothing.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from time_to_accuracy import reach_time, read_run
from torch import nn
from tqdm import tqdm

from imgclass import runtime
from imgclass.config import RECIPES
from imgclass.data.ingest import prepare
from imgclass.evaluation import evaluate
from imgclass.models import build_model
from imgclass.optim import build_optimizer
from imgclass.runtime import Device
from imgclass.training import train, train_one_epoch

CIFAR_TARGET = 0.94


def synchronize(device: Device) -> None:
    if device.torch_device.type == "cuda":
        torch.cuda.synchronize(device.torch_device)


def throughput(recipe: str, size: int, batch: int, steps: int, device: Device) -> dict:
    """Training images/s of a recipe's model on one batch already on the device; peak memory."""
    config = RECIPES[recipe]
    torch.manual_seed(0)
    model = build_model(config.model, 10, size).to(
        device.torch_device, memory_format=torch.channels_last
    )
    optimizer = build_optimizer(model, config)
    x = torch.rand(batch, 3, size, size, device=device.torch_device).contiguous(
        memory_format=torch.channels_last
    )
    y = torch.randint(0, 10, (batch,), device=device.torch_device)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    scaler = device.grad_scaler()

    def run(n: int) -> None:
        train_one_epoch(
            model,
            iter(itertools.repeat((x, y), n)),
            optimizer,
            None,
            loss_fn,
            device,
            tqdm(disable=True),
            scaler,
        )

    run(min(3, steps))  # warm-up: kernels chosen, memory pools filled
    synchronize(device)
    if device.torch_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device.torch_device)
    start = time.perf_counter()
    run(steps)
    synchronize(device)
    seconds = time.perf_counter() - start
    memory = (
        torch.cuda.max_memory_allocated(device.torch_device) / 2**30
        if device.torch_device.type == "cuda"
        else None
    )
    return {
        "recipe": recipe,
        "model": config.model,
        "size": size,
        "batch": batch,
        "images_per_s": steps * batch / seconds,
        "peak_gib": memory,
    }


def time_to_seed_accuracy(data: Path, out: Path, device: str, overrides: dict) -> dict:
    """Seed recipe, then fast recipe, same split: when fast reaches the seed's final accuracy."""
    runs = {}
    for recipe in ("seed", "fast"):
        train(
            data,
            out / f"flowers-{recipe}",
            recipe=recipe,
            device=device,
            overwrite=True,
            **overrides,
        )
        runs[recipe] = read_run(out / f"flowers-{recipe}")
    target = runs["seed"][1]["val_accuracy"]
    return {
        "target": target,
        "seed_seconds": runs["seed"][1]["train_seconds"],
        "fast_reach_seconds": reach_time(runs["fast"][0], target),
        "fast_val_accuracy": runs["fast"][1]["val_accuracy"],
        "fast_seconds": runs["fast"][1]["train_seconds"],
    }


def cifar_time_to_94(
    train_zip: Path, test_zip: Path, out: Path, device: str, overrides: dict
) -> dict:
    folders = {}
    for name, archive in (("train", train_zip), ("test", test_zip)):
        folders[name] = out / f"cifar-{name}"
        done = out / f"cifar-{name}.prepared"
        if not done.exists():  # prepared once, kept with --out
            prepare([archive], folders[name])
            done.touch()
    run = out / "cifar-fast"
    result = train(
        folders["train"],
        run,
        recipe="fast",
        device=device,
        val_split=0.1,
        overwrite=True,
        **{"image_size": 32, **overrides},
    )
    history, metrics = read_run(run)
    test = evaluate(run, folders["test"])
    return {
        "reach_seconds": reach_time(history, CIFAR_TARGET),
        "val_accuracy": metrics["val_accuracy"],
        "test_accuracy": test.accuracy,
        "train_seconds": metrics["train_seconds"],
        "epochs": len(result.history),
    }


def smoke_data(folder: Path) -> tuple[Path, Path, Path]:
    """12 of scikit-learn's digits per class as a class-folder tree of PNGs, and 10 + 2 of them
    as CIFAR-like zips (train/<class>/<file>, test/<class>/<file>)."""
    from sklearn.datasets import load_digits  # shipped with scikit-learn, no download

    digits = load_digits()
    tree, zips = folder / "digits12", {"train": folder / "train.zip", "test": folder / "test.zip"}
    with (
        zipfile.ZipFile(zips["train"], "w") as train_zip,
        zipfile.ZipFile(zips["test"], "w") as test_zip,
    ):
        for label in range(10):
            (tree / str(label)).mkdir(parents=True, exist_ok=True)
            for i, index in enumerate(np.flatnonzero(digits.target == label)[:12]):
                png = tree / str(label) / f"{index:04d}.png"
                Image.fromarray(np.uint8(digits.images[index] * 255 / 16)).save(png)
                side, archive = ("train", train_zip) if i < 10 else ("test", test_zip)
                archive.write(png, f"{side}/{label}/{png.name}")
    return tree, zips["train"], zips["test"]


def main() -> None:
    default = Path(__file__).resolve().parents[2] / "shared" / "datasets"
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cuda, cuda:N, mps or cpu")
    parser.add_argument(
        "--datasets", type=Path, default=default, help="the folder holding flowers5/ and cifar10/"
    )
    parser.add_argument("--out", type=Path, help="keep runs and prepared CIFAR-10 here")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU, seconds")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    runtime.configure()
    print(runtime.describe_cpu())  # the figures below are for this CPU, bf16 answer and load
    out = args.out or Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        device_name, size, batches, steps = "cpu", 16, (4, 8), 1
        flowers, train_zip, test_zip = smoke_data(out)
        overrides = {"epochs": 1, "image_size": 16}
    else:
        device_name, size, batches, steps = args.device, 64, (256, 512), 30
        flowers = args.datasets / "flowers5"
        train_zip, test_zip = (
            args.datasets / "cifar10" / f"cifar10-{name}.zip" for name in ("train", "test")
        )
        overrides = {}
        for path in (flowers, train_zip, test_zip):
            if not path.exists():
                sys.exit(f"{path}: not found (give --datasets)")
    device = Device.select("auto", device_name)
    name = (
        torch.cuda.get_device_name(device.torch_device)
        if device.torch_device.type == "cuda"
        else "CPU"
    )
    print(f"device {device.torch_device} ({name}), {device.precision}, torch {torch.__version__}")
    results: dict = {
        "device": str(device.torch_device),
        "precision": device.precision,
        "smoke": args.smoke,
        "throughput": [],
    }
    started = time.perf_counter()
    print(f"{'recipe':<8}{'model':<14}{'size':>6}{'batch':>7}{'train img/s':>14}{'peak GiB':>10}")
    for recipe, batch in itertools.product(("seed", "fast"), batches):
        row = throughput(recipe, size, batch, steps, device)
        results["throughput"].append(row)
        peak = "n/a" if row["peak_gib"] is None else f"{row['peak_gib']:.2f}"
        print(
            f"{recipe:<8}{row['model']:<14}{size:>6}{batch:>7}{row['images_per_s']:>14.0f}"
            f"{peak:>10}"
        )
    flowers_result = time_to_seed_accuracy(flowers, out, device_name, overrides)
    results["flowers5"] = flowers_result
    reach = flowers_result["fast_reach_seconds"]
    print(
        f"{flowers.name}: seed recipe {flowers_result['target']:.3f} val acc in "
        f"{flowers_result['seed_seconds']:.1f} s; fast reaches it in "
        f"{'never' if reach is None else f'{reach:.1f} s'}, ends at "
        f"{flowers_result['fast_val_accuracy']:.3f} after {flowers_result['fast_seconds']:.1f} s"
    )
    cifar = cifar_time_to_94(train_zip, test_zip, out, device_name, overrides)
    results["cifar10"] = cifar
    reach = cifar["reach_seconds"]
    print(
        f"CIFAR-10 fast recipe 32x32: {CIFAR_TARGET:.0%} validation accuracy "
        f"{'not reached' if reach is None else f'after {reach:.1f} s'}; final val "
        f"{cifar['val_accuracy']:.4f}, test {cifar['test_accuracy']:.4f}, "
        f"{cifar['epochs']} epochs in {cifar['train_seconds']:.1f} s"
    )
    results["total_seconds"] = time.perf_counter() - started
    (out / "gpu.json").write_text(json.dumps(results, indent=2))
    print(f"total {results['total_seconds']:.0f} s; results in {out / 'gpu.json'}")


if __name__ == "__main__":
    main()

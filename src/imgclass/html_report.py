"""The run report: one self-contained HTML file (images as data: URIs) that works offline.

Everything comes from the run directory, plus the data folder recorded in config.json for the
thumbnails of wrong predictions and the augmented training samples; without that folder the
report still renders and says which images are missing and why. The validation probabilities
come from `val_predictions.csv` (`val_predictions.py`).
All text goes through Jinja2 with autoescape: file and class names can hold any characters.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import jinja2
import numpy as np
import torch
from PIL import Image, ImageOps

from imgclass import atomic, rundir, runtime
from imgclass.config import TrainConfig
from imgclass.data.augment import TrainAugment
from imgclass.data.batches import iterate_batches
from imgclass.data.images import ImageDecodeError, decode_image
from imgclass.evaluation import classification_metrics
from imgclass.plots import class_counts_figure, reliability_figure
from imgclass.val_predictions import (
    VAL_PREDICTIONS,
    ValPredictions,
    calibration,
    data_folder,
    predict_validation,
)

log = logging.getLogger(__name__)

REPORT = "report.html"
THUMBNAIL_SIDE = 128  # pixels, the longest side of a wrong prediction's thumbnail
WRONG_SHOWN = 12  # most confidently wrong validation images shown
AUGMENTED_SHOWN = 24  # augmented training samples in the grid
SKIPPED_LISTED = 200  # skipped files listed one by one (all are in scan.json)


@dataclass
class ReportResult:
    path: Path
    missing: list[str]  # one line per section that lacks images or data, with the reason


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _png(data: bytes) -> str:
    return _data_uri(data, "image/png")


def _png_image(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return _png(buffer.getvalue())


def _thumbnail(path: Path) -> str:
    """A JPEG data: URI of the original file, upright (EXIF), longest side THUMBNAIL_SIDE."""
    with Image.open(path) as img:
        img.draft("RGB", (THUMBNAIL_SIDE, THUMBNAIL_SIDE))  # JPEG: decode at a reduced scale
        small = ImageOps.exif_transpose(img).convert("RGB")
    small.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=80)
    return _data_uri(buffer.getvalue(), "image/jpeg")


def _read_json(path: Path, missing: list[str], section: str):
    try:
        return atomic.read_json(path)
    except (OSError, ValueError) as err:
        missing.append(f"{section}: {path.name} unreadable ({err})")
        return None


def _val_predictions(
    run_dir: Path, classes: list[str], missing: list[str]
) -> ValPredictions | None:
    stored = run_dir / VAL_PREDICTIONS
    if stored.is_file():
        try:
            return ValPredictions.read(stored, classes)
        except (OSError, ValueError) as err:
            log.warning("%s; recomputing the validation predictions", err)
    try:
        predictions = predict_validation(run_dir)
    except (OSError, ValueError) as err:
        missing.append(
            f"per-class metrics, confusion, wrong predictions, calibration: "
            f"{VAL_PREDICTIONS} is absent or unreadable and cannot be recomputed "
            f"({err})"
        )
        return None
    predictions.write(run_dir)
    return predictions


def _wrong_predictions(
    predictions: ValPredictions, root: Path, gone: str | None, missing: list[str]
) -> list[dict]:
    """The validation images wrong with the highest confidence, with thumbnails where possible."""
    probabilities, labels = predictions.probabilities, predictions.labels
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    order = wrong[np.argsort(-probabilities[wrong, predicted[wrong]], kind="stable")]
    shown, no_image = [], 0
    for i in order[:WRONG_SHOWN]:
        item = {
            "path": predictions.paths[i],
            "true": predictions.classes[labels[i]],
            "predicted": predictions.classes[predicted[i]],
            "p_predicted": probabilities[i, predicted[i]],
            "p_true": probabilities[i, labels[i]],
            "image": None,
            "why": gone,
        }
        if gone is None:
            try:
                item["image"] = _thumbnail(root / predictions.paths[i])
            except (OSError, ValueError, Image.DecompressionBombError) as err:
                item["why"] = f"cannot read {predictions.paths[i]}: {err}"
        no_image += item["image"] is None
        shown.append(item)
    if no_image:
        missing.append(
            f"wrong predictions: {no_image} of {len(shown)} thumbnails missing ("
            f"{gone or 'unreadable files, named in the section'})"
        )
    return shown


def _augmented_samples(
    config: TrainConfig, root: Path, train_entries: list[dict], classes: list[str]
) -> tuple[list[dict], str | None]:
    """Training images through the training augmentation (target, PNG), or why there are none.

    The images are decoded as the training cache decodes them and augmented by the objects
    training uses (TrainAugment on iterate_batches), from a seeded stream of their own; under
    MixUp or CutMix a sample's target is a mix of classes, shown with their shares.
    """
    generator = runtime.generator(config.seed, "report")
    order = torch.randperm(len(train_entries), generator=generator).tolist()
    pixels, labels, failures = [], [], []
    for i in order:
        if len(pixels) == AUGMENTED_SHOWN:
            break
        entry = train_entries[i]
        try:
            pixels.append(
                decode_image(
                    root / entry["path"], (config.image_size,) * 2, max_pixels=config.max_pixels
                )
            )
        except ImageDecodeError as err:
            failures.append(f"{entry['path']}: {err.reason}")
            continue
        labels.append(classes.index(entry["label"]))
    if not pixels:
        return [], f"no training image could be decoded ({'; '.join(failures[:3])})"
    augment = TrainAugment(config.augment, generator, len(classes))
    x, targets = next(
        iterate_batches(
            torch.from_numpy(np.stack(pixels)), torch.tensor(labels), len(labels), augment=augment
        )
    )
    images = (x.permute(0, 2, 3, 1) * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    return [
        {"label": _target_caption(target, classes), "image": _png_image(image)}
        for target, image in zip(targets, images)
    ], None


def _target_caption(target: torch.Tensor, classes: list[str]) -> str:
    """A class name, or for a mixed target (MixUp/CutMix) each class with its share."""
    if target.ndim == 0:
        return classes[int(target)]
    shares = sorted(((p, i) for i, p in enumerate(target.tolist()) if p >= 0.005), reverse=True)
    return " + ".join(f"{classes[i]} {p:.2f}" for p, i in shares)


def _config_rows(config: dict, prefix: str = "") -> list[tuple[str, str]]:
    rows = []
    for key, value in config.items():
        if isinstance(value, dict):
            rows += _config_rows(value, f"{prefix}{key}.")
        else:
            rows.append((prefix + key, json.dumps(value, ensure_ascii=False)))
    return rows


def _train_config(config: dict) -> TrainConfig:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig.from_dict({k: v for k, v in config.items() if k in fields})


def _data_section(
    split: dict, classes: list[str], scan: dict | None, skipped: list[dict] | None
) -> dict:
    parts = {side: Counter(entry["label"] for entry in split[side]) for side in ("train", "val")}
    counts = {
        "training": [parts["train"][c] for c in classes],
        "validation": [parts["val"][c] for c in classes],
    }
    skips = scan["skipped"] if scan is not None else (skipped or [])
    return {
        "chart": _png(class_counts_figure(classes, counts)),
        "rows": [(c, t, v, t + v) for c, t, v in zip(classes, *counts.values())],
        "root": scan["root"] if scan else None,
        "skipped": skips[:SKIPPED_LISTED],
        "skipped_total": len(skips),
        "reasons": Counter(s["reason"] for s in skips).most_common(),
        "duplicates": len(scan["duplicates"]) if scan else None,
        "conflicts": len(scan["conflicts"]) if scan else None,
        "conflicts_kept": scan["conflicts_kept"] if scan else None,
    }


def build_report(run_dir: str | os.PathLike) -> tuple[str, list[str]]:
    """The HTML of a run's report and the list of what it lacks (one line per reason)."""
    run_dir = Path(run_dir)
    missing: list[str] = []
    for needed in rundir.RUN_MARKERS:
        if not (run_dir / needed).is_file():
            raise FileNotFoundError(f"{run_dir / needed}: missing (is {run_dir} an imgclass run?)")
    config = atomic.read_json(run_dir / rundir.CONFIG)
    split = atomic.read_json(run_dir / rundir.SPLIT)
    classes = config["classes"]
    train_config = _train_config(config)
    root, gone = data_folder(config)
    metrics = _read_json(run_dir / rundir.METRICS, missing, "summary") or {}
    model = _read_json(run_dir / rundir.METADATA, missing, "configuration") or {}
    scan = _read_json(run_dir / rundir.SCAN, missing, "data summary")
    skipped = None if scan else _read_json(run_dir / rundir.SKIPPED, missing, "data summary")

    curves = run_dir / "curves.png"  # plotted by train from the history
    if not curves.is_file():
        missing.append("training curves: curves.png absent")
    predictions = _val_predictions(run_dir, classes, missing)
    evaluation = cal = wrong = None
    if predictions is not None:
        evaluation = classification_metrics(
            predictions.labels, predictions.probabilities.argmax(axis=1), classes
        )
        cal = calibration(predictions.probabilities, predictions.labels)
        wrong = _wrong_predictions(predictions, root, gone, missing)
    augmented, augmented_why = [], gone
    if gone is None:
        augmented, augmented_why = _augmented_samples(train_config, root, split["train"], classes)
    if not augmented:
        missing.append(f"augmented training samples: {augmented_why}")

    confusion = None
    if evaluation is not None:
        matrix = np.array(evaluation.confusion)
        shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
        confusion = list(zip(classes, matrix.tolist(), shares.tolist()))
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("imgclass", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    html = environment.get_template(REPORT).render(
        run=str(run_dir.resolve()),
        classes=classes,
        metrics=metrics,
        missing=missing,
        data=_data_section(split, classes, scan, skipped),
        config=_config_rows(config),
        model=_config_rows(model),
        curves=_png(curves.read_bytes()) if curves.is_file() else None,
        evaluation=evaluation,
        confusion=confusion,
        wrong=wrong,
        wrong_shown=WRONG_SHOWN,
        calibration=cal,
        reliability=_png(
            reliability_figure(cal.confidence, cal.accuracy, cal.count, cal.edges, cal.ece)
        )
        if cal
        else None,
        augmented=augmented,
        augmented_why=augmented_why,
        augment=dataclasses.asdict(train_config.augment),
    )
    return html, missing


def write_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> ReportResult:
    """Write the report (default RUN/report.html); returns where and what it lacks."""
    html, missing = build_report(run_dir)
    path = Path(out) if out else Path(run_dir) / REPORT
    atomic.write_text(path, html)
    for line in missing:
        log.warning("%s lacks %s", path.name, line)
    return ReportResult(path, missing)

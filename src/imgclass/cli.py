"""The `imgclass` command: parse arguments, call the library, print. No logic of its own."""

from __future__ import annotations

import json
import logging
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import click

from imgclass.config import (
    CLASS_WEIGHTS,
    DEFAULT_RECIPE,
    LR_SCALINGS,
    OPTIMIZERS,
    PRECISIONS,
    RECIPES,
    SAMPLERS,
    SCHEDULES,
)

log = logging.getLogger("imgclass")

_TTA = click.option(
    "--tta/--no-tta",
    default=None,
    help="Average each image's and its mirror's probabilities [default: as the run was validated].",
)
AUGMENT_OPTIONS = ("mixup", "cutmix", "random_erasing", "trivial_augment")  # AugmentConfig fields


class _Errors(click.Group):
    """Known errors (bad data, bad files, bad values, a disk that is read-only, full or not
    ours, too little memory) become one clear line and exit code 1; -v logs the traceback
    above it."""

    def invoke(self, ctx: click.Context):
        from imgclass.checkpoint import CheckpointError
        from imgclass.data.ingest import UnsafeArchiveError
        from imgclass.data.scan import DataError

        try:
            return super().invoke(ctx)
        except (
            DataError,
            CheckpointError,
            UnsafeArchiveError,
            OSError,
            ValueError,
            MemoryError,
        ) as err:
            log.debug("the error's traceback (-v):", exc_info=err)
            raise click.ClickException(_one_line(err)) from err


def _one_line(err: Exception) -> str:
    """The error's message; an OS error as 'FILE: what the OS said'."""
    if isinstance(err, OSError) and err.strerror is not None and err.filename is not None:
        return f"{err.filename}: {err.strerror}"
    return str(err) or type(err).__name__  # a bare MemoryError says nothing


@click.group(cls=_Errors)
@click.option("-v", "--verbose", is_flag=True, help="Show debug messages.")
@click.version_option(package_name="imgclass")
def main(verbose: bool) -> None:
    """Train, evaluate and use image classifiers from folders or zip archives of photos."""
    for old in [h for h in log.handlers if h.get_name() == "imgclass-cli"]:
        log.removeHandler(old)  # main() runs again when called in-process (tests, notebooks)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name("imgclass-cli")
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if verbose else logging.INFO)


def _table(rows: list[tuple], headers: tuple) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(headers, widths))]
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


@main.command(short_help="Zips and folders of photos to class folders.")
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder to write, one sub-folder per class.",
)
@click.option(
    "--classes",
    multiple=True,
    help="Keep only these classes (names after mapping): "
    "--classes cat,dog,cow (or repeat the option; one quoted value may use spaces).",
)
@click.option(
    "--map",
    "maps",
    multiple=True,
    metavar="FROM=TO",
    help="Rename a class folder, e.g. --map gatto=cat.",
)
@click.option(
    "--no-builtin-names", is_flag=True, help="Do not translate the Animals-10 Italian folder names."
)
def prepare(
    sources: tuple[Path, ...],
    out: Path,
    classes: tuple[str, ...],
    maps: tuple[str, ...],
    no_builtin_names: bool,
) -> None:
    """Unpack zip archives and folders of photos into one folder per class."""
    from imgclass.data.ingest import parse_name_map
    from imgclass.data.ingest import prepare as run_prepare

    wanted = [c for spec in classes for c in spec.replace(",", " ").split()] or None
    report = run_prepare(
        sources,
        out,
        classes=wanted,
        name_map=parse_name_map(maps),
        builtin_names=not no_builtin_names,
    )
    for left in report.left_out:
        click.echo(f"left out: {left.source}: {left.reason}")
    for source, target in sorted(report.renamed.items()):
        click.echo(f"renamed: {source} -> {target}")
    click.echo(_table(sorted(report.counts.items()), ("class", "images")))
    click.echo(
        f"{sum(report.counts.values())} images in {len(report.counts)} classes in "
        f"{report.out_dir} ({report.written} written now)"
    )
    if report.skipped:
        click.echo(f"\n{len(report.skipped)} files skipped:")
        click.echo(
            _table(
                [(s.source, s.member, s.reason) for s in report.skipped],
                ("source", "file", "reason"),
            )
        )


_RECIPE = click.option(
    "--recipe",
    help=f"A named recipe ({', '.join(RECIPES)}) or a .json "
    f"recipe file  [default: {DEFAULT_RECIPE}].",
)
_MODEL = click.option(
    "--model",
    help="seed_cnn, fast_resnet, or any timm backbone, e.g. "
    "tf_efficientnet_lite0, resnet18, mobilenet_v3_small, efficientnet_b0 "
    "[default: the recipe's].",
)
_PRETRAINED = click.option(
    "--pretrained",
    help="Backbone weights: a .safetensors or .pth state "
    "dict file, or 'imagenet' (tf_efficientnet_lite0's are installed with "
    "imgclass; others are downloaded once).",
)
_IMAGE_SIZE = click.option(
    "--image-size",
    type=int,
    help="Side of the square input, pixels "
    "[default: the recipe's; a backbone's own input size with --model].",
)
_EPOCHS = click.option("--epochs", type=int, help="Maximum number of epochs.")
_BATCH_SIZE = click.option("--batch-size", type=int, help="Images per optimiser step.")
_SEED = click.option("--seed", type=int, help="Seed of every random stream (split, order, ...).")
_CACHE_DIR = click.option(
    "--cache-dir",
    type=click.Path(path_type=Path),
    help="Decoded-image cache (default $IMGCLASS_CACHE_DIR or ~/.cache/imgclass).",
)


def _given(options: dict) -> dict:
    """The recipe overrides given on the command line (click passes None for the others), the
    augmentation ones as the `augment` dict."""
    given = {
        name: value
        for name, value in options.items()
        if value is not None and name not in AUGMENT_OPTIONS
    }
    augment = {name: options[name] for name in AUGMENT_OPTIONS if options.get(name) is not None}
    return {**given, "augment": augment} if augment else given


def _data(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """DATA_DIR: a folder of class folders, or a .csv file of path,label rows."""
    if value is not None and not value.is_dir() and value.suffix.lower() != ".csv":
        raise click.BadParameter(f"{value}: neither a folder nor a .csv file of path,label rows")
    return value


def _data_argument(required: bool = True) -> Callable:
    return click.argument(
        "data_dir", required=required, callback=_data, type=click.Path(exists=True, path_type=Path)
    )


_DATA_DIR = _data_argument()


@main.command(short_help="Train a classifier on class folders.")
@_data_argument(required=False)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Run directory (default runs/<data>-<recipe>-<time>).",
)
@_RECIPE
@_MODEL
@_PRETRAINED
@click.option(
    "--freeze-epochs",
    type=int,
    help="Backbones: train only the new head for this many epochs, then all layers.",
)
@click.option("--dropout", type=float, help="Dropout before the classifier [default: the model's].")
@_IMAGE_SIZE
@_EPOCHS
@click.option(
    "--batch-size",
    type=int,
    help="Images per optimiser step, all processes together "
    "(under torchrun each takes batch-size / processes).",
)
@click.option("--lr", type=float, help="Learning rate (per optimiser step, at --lr-batch images).")
@click.option(
    "--lr-scaling",
    type=click.Choice(LR_SCALINGS),
    help="How the learning rate follows a --batch-size other than --lr-batch: none "
    "(as given), linear (x batch/lr-batch), sqrt  [default: none].",
)
@click.option(
    "--lr-batch",
    type=int,
    help="The batch size --lr is tuned for [default: the recipe's batch size].",
)
@click.option("--val-split", type=float, help="Fraction of each class held out.")
@_SEED
@click.option("--patience", type=int, help="Early-stopping patience in epochs (0: off).")
@click.option(
    "--optimizer",
    type=click.Choice(OPTIMIZERS),
    help="adam, adamw (decoupled weight decay) or sgd (Nesterov momentum).",
)
@click.option("--weight-decay", type=float, help="Weight decay coefficient.")
@click.option(
    "--schedule",
    type=click.Choice(SCHEDULES),
    help="Learning rate per step: constant, onecycle or cosine (both warm up first).",
)
@click.option(
    "--warmup", type=float, help="Share of all steps spent warming up (onecycle, cosine)."
)
@click.option("--label-smoothing", type=float, help="Share of the target spread over all classes.")
@click.option("--mixup", type=float, help="MixUp Beta(a, a) concentration a (0: off).")
@click.option(
    "--cutmix",
    type=float,
    help="CutMix Beta(a, a) concentration a (0: off); with "
    "--mixup, each batch uses one of the two.",
)
@click.option(
    "--random-erasing",
    type=float,
    help="Probability of erasing a random rectangle of each training image.",
)
@click.option(
    "--trivial-augment/--no-trivial-augment",
    default=None,
    help="TrivialAugment Wide: one random op of 14 per training image.",
)
@click.option(
    "--class-weights",
    type=click.Choice(CLASS_WEIGHTS),
    help="auto: weigh each class in the loss by n / (classes x its count).",
)
@click.option(
    "--sampler",
    type=click.Choice(SAMPLERS),
    help="balanced: draw training images so every class is equally frequent.",
)
@click.option(
    "--cached-features/--no-cached-features",
    default=None,
    help="Backbones with --pretrained: train the new head alone on the frozen "
    "backbone's features, computed once and cached (the transfer recipe).",
)
@click.option(
    "--finetune-epochs",
    type=int,
    help="After the head on cached features: "
    "fine-tune for this many epochs (cosine schedule) the layers --finetune-stages "
    "says.",
)
@click.option(
    "--finetune-stages",
    type=click.IntRange(min=0),
    help="0: every layer, on the "
    "augmented images; N: the backbone's last N stages, on the activations below "
    "them, computed once (EfficientNet family; several times faster) "
    "[default: the recipe's].",
)
@click.option(
    "--finetune-lr",
    type=float,
    help="Peak learning rate of the new head while fine-tuning (per step at --lr-batch images).",
)
@click.option(
    "--backbone-lr-scale",
    type=float,
    help="Backbones: the pretrained layers' "
    "learning rate as a share of the head's [default: the recipe's].",
)
@click.option(
    "--tta/--no-tta",
    "tta_flip",
    default=None,
    help="Validate and predict on each image and its mirror, averaged.",
)
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    help="auto: bf16 where the hardware computes it natively, fp16 (with loss "
    "scaling) on GPUs without bf16.",
)
@click.option(
    "--device", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps  [default: auto]."
)
@click.option(
    "--keep-conflicts",
    is_flag=True,
    default=None,
    help="Keep images whose content also appears under another class.",
)
@click.option(
    "--max-pixels",
    type=click.IntRange(min=1),
    help="Skip images with more pixels (width x height) [default: 100,000,000].",
)
@_CACHE_DIR
@click.option("--overwrite", is_flag=True, help="Replace a finished run in --out.")
@click.option(
    "--resume",
    type=click.Path(file_okay=False, path_type=Path),
    help="Continue the run in this folder from its last completed epoch, with its own "
    "recipe, options and data (give no other option but --cache-dir, "
    "--no-export, --no-report and --keep-checkpoint). Under torchrun, rank 0's folder: "
    "the other machines need no copy of it.",
)
@click.option(
    "--keep-checkpoint",
    is_flag=True,
    help="Keep the resume checkpoint (the model "
    "and optimiser state, 100+ MB for the seed CNN) once the run has finished.",
)
@click.option(
    "--export/--no-export",
    default=True,
    show_default=True,
    help="Write RUN/model.onnx at the end: predict and serve run it in ONNX Runtime "
    "on CPUs without native bf16 (about 2x faster there).",
)
@click.option(
    "--report/--no-report",
    default=True,
    show_default=True,
    help="Write RUN/report.html at the end (`imgclass report RUN` writes it later).",
)
def train(
    data_dir: Path | None,
    out: Path | None,
    recipe: str | None,
    cache_dir: Path | None,
    overwrite: bool,
    resume: Path | None,
    export: bool,
    report: bool,
    keep_checkpoint: bool,
    **overrides,
) -> None:
    """Train a classifier on DATA_DIR/<class>/<images> or a CSV of path,label rows (default:
    built-in digits).

    Ctrl-C ends the run at its last completed epoch (exit code 130); --resume continues it.
    Once training is over, Ctrl-C waits for the run's files (seconds) and skips the ONNX export
    and the report, which `imgclass export` and `imgclass report` write later.
    """
    from imgclass.export import FILE as ONNX_FILE
    from imgclass.html_report import REPORT
    from imgclass.training import train as run_train

    try:
        result = run_train(
            data_dir,
            out,
            recipe=recipe,
            cache_dir=cache_dir,
            progress=True,
            overwrite=overwrite,
            resume=resume,
            export=export,
            report=report,
            keep_checkpoint=keep_checkpoint,
            **_given(overrides),
        )
    except KeyboardInterrupt:
        click.echo("Interrupted before the first epoch ended: no checkpoint to keep.", err=True)
        sys.exit(130)
    if result.rank:  # torchrun: rank 0 speaks for all
        sys.exit(130 if result.interrupted else 0)
    click.echo(f"run written to {result.run_dir}")
    if result.unwritten:
        later = {ONNX_FILE: "imgclass export", REPORT: "imgclass report"}
        click.echo(
            "Interrupted once the run was saved; write what it skipped with: "
            + "; ".join(f"{later[name]} {result.run_dir}" for name in result.unwritten),
            err=True,
        )
        sys.exit(130)
    if result.interrupted:
        click.echo(
            f"Interrupted: the run ends with epoch {result.history[-1].epoch} (saved); "
            f"continue it with: imgclass train --resume {result.run_dir}",
            err=True,
        )
        sys.exit(130)
    run = shlex.quote(str(result.run_dir))
    if (result.run_dir / REPORT).is_file():  # (a report that failed was a warning)
        click.echo(f"the report: {result.run_dir / REPORT}")
    click.echo(
        "next:\n"
        f"  imgclass evaluate {run} [DATA_DIR]      # metrics, on other data too\n"
        f"  imgclass predict {run} photo.jpg photos/  # labels of new photos\n"
        f"  imgclass serve {run}                     # an HTTP service and a web page"
    )


@main.command(short_help="Metrics of a run, on its split or other data.")
@click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_data_argument(required=False)
@click.option("--out", type=click.Path(path_type=Path), help="Where to write the results.")
@_CACHE_DIR
@_TTA
def evaluate(
    run: Path, data_dir: Path | None, out: Path | None, cache_dir: Path | None, tta: bool | None
) -> None:
    """Metrics of RUN on its validation split, or on DATA_DIR/<class>/<images> or a CSV."""
    from imgclass.evaluation import evaluate as run_evaluate

    m = run_evaluate(run, data_dir, out=out, cache_dir=cache_dir, tta=tta)
    click.echo(f"{m.count} images: accuracy {m.accuracy:.4f}, macro-F1 {m.macro_f1:.4f}")
    click.echo(
        _table(
            [
                (
                    name,
                    f"{v['precision']:.3f}",
                    f"{v['recall']:.3f}",
                    f"{v['f1']:.3f}",
                    v["support"],
                )
                for name, v in m.per_class.items()
            ],
            ("class", "precision", "recall", "f1", "support"),
        )
    )
    click.echo("confusion matrix (rows: true, columns: predicted)")
    click.echo(
        _table([(name, *row) for name, row in zip(m.classes, m.confusion)], ("", *m.classes))
    )


@main.command(short_help="Write a run's self-contained HTML report.")
@click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="HTML file to write (default RUN/report.html).",
)
def report(run: Path, out: Path | None) -> None:
    """One self-contained HTML page on RUN: data, curves, errors, calibration, samples."""
    from imgclass.html_report import write_report

    result = write_report(run, out)  # logs what the report lacks, and why
    click.echo(f"report written to {result.path} ({result.path.stat().st_size / 1e6:.1f} MB)")


_MODEL_SOURCE = click.Path(exists=True, path_type=Path)
_BACKEND = click.option(
    "--backend",
    type=click.Choice(["auto", "pytorch", "onnx"]),
    default="auto",
    show_default=True,
    help="Engine for a run directory: auto is ONNX Runtime (RUN/model.onnx) "
    "on CPUs without native bf16, PyTorch elsewhere.",
)


@main.command(short_help="Labels of new photos (files or folders).")
@click.argument("model", type=_MODEL_SOURCE)
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--top-k", type=int, default=1, show_default=True, help="Labels per image.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "csv", "jsonl"]),
    default="text",
    show_default=True,
    help="csv: path, label_1, probability_1, ..., error; jsonl: one JSON object per line.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Images per batch.",
)
@click.option(
    "--max-pixels",
    type=click.IntRange(min=1),
    help="Skip images with more pixels (width x height) [default: 100,000,000].",
)
@_TTA
@_BACKEND
def predict(
    model: Path,
    paths: tuple[Path, ...],
    top_k: int,
    fmt: str,
    batch_size: int,
    max_pixels: int | None,
    tta: bool | None,
    backend: str,
) -> None:
    """Labels with probabilities for image files or folders of them.

    MODEL is a run directory or a .onnx file written by `imgclass export`. Rows stream out as
    batches finish, in input order; a progress bar goes to stderr.
    """
    import csv

    from imgclass.predict import Predictor

    predictor = Predictor(
        model,
        batch_size,
        tta=tta,
        backend=backend,
        **({"max_pixels": max_pixels} if max_pixels else {}),
    )
    log.info("%s: %s", model, predictor.backend)
    k = max(1, min(top_k, len(predictor.classes)))
    writer = csv.writer(sys.stdout, lineterminator="\n")
    if fmt == "csv":
        writer.writerow(
            [
                "path",
                *(f"{c}_{i}" for i in range(1, k + 1) for c in ("label", "probability")),
                "error",
            ]
        )
    skipped = 0
    for p in predictor.predict_iter(paths, top_k=k, progress=True):
        skipped += p.error is not None
        if fmt == "jsonl":
            click.echo(
                json.dumps(
                    {
                        "path": p.path,
                        "labels": p.labels,
                        "probabilities": p.probabilities,
                        "error": p.error,
                    }
                )
            )
        elif fmt == "csv":
            pairs = [x for pair in zip(p.labels, p.probabilities) for x in pair]
            writer.writerow([p.path, *(pairs or [""] * 2 * k), p.error or ""])
        elif p.error:
            click.echo(f"{p.path}\tskipped: {p.error}")
        else:
            click.echo(
                f"{p.path}\t"
                + "  ".join(f"{label} {prob:.3f}" for label, prob in zip(p.labels, p.probabilities))
            )
    if skipped:
        log.warning("%d files skipped (not decodable images)", skipped)


@main.command(short_help="Export a run's model to ONNX.")
@click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["onnx"]),
    default="onnx",
    show_default=True,
    help="The export's format (ONNX, opset 18, dynamic batch).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The model file to write [default: RUN/model.onnx]; its metadata goes "
    "beside it (model.onnx.json).",
)
@_TTA
def export(run: Path, fmt: str, out: Path | None, tta: bool | None) -> None:
    """Export RUN's model (dynamic batch, checked against PyTorch with ONNX Runtime)."""
    from imgclass.export import export_onnx, metadata_path

    path = export_onnx(run, out, tta=tta)
    click.echo(f"wrote {path} and {metadata_path(path)}")


@main.command(short_help="An HTTP service and web page for a model.")
@click.argument("model", type=_MODEL_SOURCE)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on (0.0.0.0: every interface).",
)
@click.option("--port", type=int, default=8000, show_default=True, help="TCP port to listen on.")
@click.option(
    "--max-upload-mb",
    type=float,
    default=20,
    show_default=True,
    help="Largest request body; larger ones get 413.",
)
@click.option(
    "--max-pixels",
    type=click.IntRange(min=1),
    default=40_000_000,
    show_default=True,
    help="Largest image (width x height); larger ones get 413.",
)
@click.option(
    "--top-k",
    type=int,
    default=3,
    show_default=True,
    help="Labels per image unless the request asks (?top_k=).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="Most images one model call takes from concurrent requests.",
)
@_BACKEND
def serve(
    model: Path,
    host: str,
    port: int,
    max_upload_mb: float,
    max_pixels: int,
    top_k: int,
    batch_size: int,
    backend: str,
) -> None:
    """An HTTP service and web page for MODEL (a run directory or a .onnx file).

    POST /predict, GET /health, GET /model, GET /openapi.json, and GET / a page to drop photos on.
    """
    from imgclass.serve import serve as run_service

    run_service(
        model,
        host=host,
        port=port,
        max_upload_bytes=int(max_upload_mb * 2**20),
        max_pixels=max_pixels,
        top_k=top_k,
        batch_size=batch_size,
        backend=backend,
    )


@main.command(short_help="Check a data folder without training.")
@_DATA_DIR
@click.option(
    "--image-size",
    type=int,
    help="Side the images are decoded to (default: the default recipe's), so a later "
    "train at that size finds them in the cache.",
)
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path),
    help="Decoded-image cache (default $IMGCLASS_CACHE_DIR or ~/.cache/imgclass).",
)
@click.option(
    "--keep-conflicts",
    is_flag=True,
    help="Keep contents found under two classes (default: leave every copy out).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the report as JSON (the run's scan.json) to this file.",
)
def scan(
    data_dir: Path,
    image_size: int | None,
    cache_dir: Path | None,
    keep_conflicts: bool,
    out: Path | None,
) -> None:
    """Check DATA_DIR/<class>/<images> or a CSV of path,label rows without training: images,
    skips, duplicates, conflicts."""
    from imgclass import atomic
    from imgclass.config import load_recipe
    from imgclass.data.dataset import load_dataset

    size = image_size or load_recipe(DEFAULT_RECIPE).image_size
    report = load_dataset(data_dir, size, cache_dir, keep_conflicts=keep_conflicts).report
    if out:
        atomic.write_json(out, report.to_dict())
    click.echo(_table(list(report.images.items()), ("class", "images")))
    click.echo(
        f"{sum(report.images.values())} images in {len(report.classes)} classes in {report.root}"
    )
    if report.empty_classes:
        click.echo(
            f"classes without images (training refuses them): {', '.join(report.empty_classes)}"
        )
    if report.skipped:
        click.echo(f"\n{len(report.skipped)} files skipped:")
        click.echo(_table([(s.path, s.reason) for s in report.skipped], ("file", "reason")))
    if report.duplicates:
        click.echo(
            "\nexact duplicates (same content in one class; every copy kept, all on "
            f"one side of the split): {len(report.duplicates)}"
        )
        click.echo(
            _table(
                [(g.sha256[:12], g.classes[0], ", ".join(g.paths)) for g in report.duplicates],
                ("sha256", "class", "files"),
            )
        )
    if report.conflicts:
        fate = "kept" if report.conflicts_kept else "left out; --keep-conflicts keeps them"
        click.echo(
            f"\nlabel conflicts (same content in several classes; {fate}): {len(report.conflicts)}"
        )
        click.echo(
            _table(
                [
                    (g.sha256[:12], ", ".join(g.classes), ", ".join(g.paths))
                    for g in report.conflicts
                ],
                ("sha256", "classes", "files"),
            )
        )


@main.command("lr-find", short_help="Learning-rate range test.")
@_DATA_DIR
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Folder for lr_find.csv, .png and .json [default: runs/<data>-lr-find].",
)
@_RECIPE
@_MODEL
@_PRETRAINED
@_IMAGE_SIZE
@_BATCH_SIZE
@_SEED
@click.option(
    "--steps",
    type=int,
    default=100,
    show_default=True,
    help="Optimiser steps of the sweep (at most).",
)
@click.option(
    "--start-lr",
    type=float,
    default=1e-7,
    show_default=True,
    help="Learning rate of the sweep's first step.",
)
@click.option(
    "--end-lr",
    type=float,
    default=10.0,
    show_default=True,
    help="Learning rate the sweep grows to (it stops earlier when the loss diverges).",
)
@_CACHE_DIR
def lr_find(
    data_dir: Path,
    out: Path | None,
    recipe: str | None,
    steps: int,
    start_lr: float,
    end_lr: float,
    cache_dir: Path | None,
    **overrides,
) -> None:
    """Learning-rate range test: loss against an exponentially growing learning rate."""
    from imgclass.lrfind import lr_find as run_lr_find

    out = out or Path("runs") / f"{data_dir.resolve().name}-lr-find"
    result = run_lr_find(
        data_dir,
        out,
        recipe=recipe,
        steps=steps,
        start_lr=start_lr,
        end_lr=end_lr,
        cache_dir=cache_dir,
        **_given(overrides),
    )
    click.echo(
        f"{len(result.lrs)} steps ({result.stopped}), lr {result.lrs[0]:.3g} to "
        f"{result.lrs[-1]:.3g}"
    )
    click.echo(
        f"suggested learning rate: {result.suggested_lr:.3g} (steepest descent of the "
        f"smoothed loss); minimum / 10: {result.min_loss_lr_div10:.3g}"
    )
    click.echo(f"plot and table in {out} (lr_find.png, lr_find.csv, lr_find.json)")


@main.command(short_help="Search hyperparameters with Optuna.")
@_DATA_DIR
@click.option(
    "--trials",
    type=int,
    required=True,
    help="Trials to finish (counting those of an earlier, interrupted tune in --out).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Folder of the study (study.db), trials.csv, history.png, best_recipe.json "
    "[default: runs/<data>-tune].",
)
@_RECIPE
@_MODEL
@_PRETRAINED
@_IMAGE_SIZE
@_EPOCHS
@_SEED
@click.option("--timeout", type=float, help="Start no new trial after this many seconds.")
@_CACHE_DIR
def tune(
    data_dir: Path,
    trials: int,
    out: Path | None,
    recipe: str | None,
    timeout: float | None,
    cache_dir: Path | None,
    **overrides,
) -> None:
    """Search learning rate, batch size, dropout and augmentation with Optuna."""
    from imgclass.tune import tune as run_tune

    out = out or Path("runs") / f"{data_dir.resolve().name}-tune"

    try:
        result = run_tune(
            data_dir,
            out,
            trials,
            recipe=recipe,
            timeout=timeout,
            cache_dir=cache_dir,
            **_given(overrides),
        )
    except KeyboardInterrupt:
        click.echo(
            f"Interrupted: {out / 'study.db'} keeps the finished trials; the same "
            "command continues the study.",
            err=True,
        )
        sys.exit(130)
    ranked = result.ranked()
    params = list(result.study.best_trial.params)
    click.echo(
        _table(
            [
                (
                    r["trial"],
                    f"{r['val_loss']:.4f}",
                    f"{r['val_acc']:.4f}",
                    r["epochs"],
                    *(f"{r[k]:.4g}" if isinstance(r[k], float) else r[k] for k in params),
                )
                for r in ranked[:10]
            ],
            ("trial", "val_loss", "val_acc", "epochs", *params),
        )
    )
    states = [r["state"] for r in result.rows]
    click.echo(
        f"{len(states)} trials: {states.count('complete')} complete, "
        f"{states.count('pruned')} pruned, {states.count('fail')} failed"
    )
    click.echo(
        f"best: trial {result.study.best_trial.number}, validation accuracy "
        f"{result.best_val_acc:.4f}; recipe written to {out / 'best_recipe.json'} "
        f"(imgclass train DATA --recipe {out / 'best_recipe.json'})"
    )


def _recipe_defaults_shown() -> None:
    """A recipe's value is the default of every option that overrides one: say so in --help
    (the value depends on --recipe, so click cannot show it)."""
    import dataclasses

    from imgclass.config import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)} | set(AUGMENT_OPTIONS)
    for command in (train, lr_find, tune):
        for param in command.params:
            if (
                isinstance(param, click.Option)
                and param.name in fields
                and param.help
                and "default" not in param.help
                and not param.show_default
            ):
                param.help += "  [default: the recipe's]"


_recipe_defaults_shown()

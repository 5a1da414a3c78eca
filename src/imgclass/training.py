"""train(): data folder in, run directory out. fit(): epochs, early stopping, history.

The main path, top to bottom: load the data (scan, decode once), split, build the model, fit
with early stopping on validation loss (restoring the best weights), save everything a later
command needs into the run directory.

Crash safety: after every completed epoch fit() saves a checkpoint (model, optimiser, schedule,
early stopping, history, random-generator states); `train(resume=RUN)` continues from it and, on
the CPU, ends bit for bit where an uninterrupted run ends. Ctrl-C abandons the current epoch and
finishes the run from the last completed one (metrics.json: "interrupted": true).
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import functools
import io
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from tqdm.auto import tqdm

from imgclass import atomic, distributed, rundir, runtime
from imgclass.checkpoint import (
    CHECKPOINT,
    CheckpointError,
    ModelMeta,
    TrainingState,
    load_checkpoint,
    save_checkpoint,
    save_model,
)
from imgclass.config import TrainConfig, build_config
from imgclass.data.augment import TrainAugment
from imgclass.data.batches import Batch, epoch_order, iterate_batches, prefetch
from imgclass.data.builtin import digits_folder
from imgclass.data.dataset import Dataset
from imgclass.data.features import ONNX_FILE as FEATURES_ONNX
from imgclass.data.features import feature_folder
from imgclass.data.scan import DataError
from imgclass.data.split import Split, saved_split, split_json
from imgclass.distributed import Context
from imgclass.evaluation import (
    ClassificationMetrics,
    classification_metrics,
    predict_proba,
    write_metrics,
)
from imgclass.export import FILE as ONNX_FILE
from imgclass.html_report import REPORT, write_report
from imgclass.models.backbones import Backbone, FeatureHead
from imgclass.models.summary import model_summary
from imgclass.optim import build_optimizer, build_schedule
from imgclass.plots import plot_curves
from imgclass.runtime import Device
from imgclass.tracking import tensorboard
from imgclass.training_setup import (
    Tensors,
    TrainingSetup,
    augmentation,
    optimiser_step,
    setup_training,
    training_loss,
)
from imgclass.val_predictions import ValPredictions

log = logging.getLogger(__name__)


@dataclass
class EpochStats:
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    val_macro_f1: float  # F1 of each class, averaged: accuracy's honest twin on imbalanced data
    seconds: float
    images_per_s: float  # training images per second of the training pass
    data_wait: float  # share of the training pass spent waiting for a batch
    lr: float  # learning rate at the start of the epoch


@dataclass
class TrainResult:
    run_dir: Path
    config: TrainConfig
    classes: list[str]
    history: list[EpochStats]
    restored_epoch: int  # the epoch whose weights were kept (lowest validation loss)
    metrics: dict
    interrupted: bool = False  # Ctrl-C: the run ends at its last completed epoch
    rank: int = 0  # under torchrun, this process's rank; only rank 0 wrote files and metrics
    unwritten: tuple[str, ...] = ()  # Ctrl-C once the run was saved: files it skipped


@dataclass
class FitResult:
    history: list[EpochStats]
    restored_epoch: int
    interrupted: bool


def train_one_epoch(
    model: nn.Module,
    batches: Iterator[Batch],
    optimizer: torch.optim.Optimizer,
    schedule: LRScheduler | None,
    loss_fn: nn.Module,
    device: Device,
    bar: tqdm,
    scaler: torch.amp.GradScaler | None = None,
    ranks: Context = distributed.SINGLE,
    after_step: Callable[[], None] = lambda: None,
) -> tuple[float, float, float]:
    """One pass over the training batches -> (loss, accuracy, share of the time spent waiting).

    scaler: fp16 loss scaling (Device.grad_scaler). Loss and accuracy are over all ranks.
    after_step: called after every optimiser step (under torchrun: where a Ctrl-C is taken).
    """
    scaler = scaler or torch.amp.GradScaler("cpu", enabled=False)
    model.train()
    total_loss = correct = seen = 0.0
    waited = 0.0
    start = time.perf_counter()
    with bar:
        while True:
            t = time.perf_counter()
            batch = next(batches, None)
            waited += time.perf_counter() - t
            if batch is None:
                break
            x, y = (v.to(device.torch_device, non_blocking=True) for v in batch)
            loss, logits = optimiser_step(model, x, y, optimizer, loss_fn, device, scaler)
            if schedule is not None:
                schedule.step()
            n = len(y)
            total_loss += loss.item() * n
            correct += (logits.argmax(1) == (y.argmax(1) if y.ndim == 2 else y)).sum().item()
            seen += n
            bar.update(n)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.4f}")
            after_step()
    total_loss, correct, seen = ranks.sum([total_loss, correct, seen])
    return total_loss / seen, correct / seen, waited / (time.perf_counter() - start)


@torch.no_grad()
def validate(
    model: nn.Module,
    data: Tensors,
    device: Device,
    num_classes: int,
    batch_size: int,
    tta_flip: bool = False,
) -> tuple[float, float, float]:
    """(loss, accuracy, macro-F1) on a split; the loss is unweighted whatever the class weights.

    batch_size: the training batch size, so that the activations fit in the memory training has
    already taken (larger batches made the seed recipe's peak RSS ~70 MB larger).
    """
    probabilities = torch.from_numpy(
        predict_proba(model, data.pixels, device, batch_size, tta_flip=tta_flip)
    )
    labels = data.labels.cpu()
    loss = nn.functional.nll_loss(torch.log(probabilities.clamp_min(1e-12)), labels)
    scores = classification_metrics(
        labels.numpy(), probabilities.argmax(1).numpy(), [str(c) for c in range(num_classes)]
    )
    return loss.item(), scores.accuracy, scores.macro_f1


class EarlyStopping:
    """Keras' EarlyStopping(monitor="val_loss", patience, restore_best_weights=True).

    patience 0 is training without the callback: no stop, and the last weights are kept.
    """

    def __init__(self, patience: int):
        self.patience = patience
        self.best_loss, self.best_epoch, self.best_state = math.inf, 0, None

    def should_stop(self, epoch: int, val_loss: float, model: nn.Module) -> bool:
        if val_loss < self.best_loss:
            self.best_loss, self.best_epoch = val_loss, epoch
            if self.patience:
                self.best_state = copy.deepcopy(model.state_dict())
            return False
        return bool(self.patience) and epoch - self.best_epoch >= self.patience

    def restore(self, model: nn.Module, last_epoch: int) -> int:
        """Load the best weights; returns the epoch whose weights the model now holds."""
        if self.best_state is None:
            return last_epoch
        model.load_state_dict(self.best_state)
        return self.best_epoch


def _set_frozen(model: nn.Module, config: TrainConfig, epoch: int) -> None:
    """Freeze-then-unfreeze: the backbone is frozen in epochs 1..freeze_epochs (a function of
    the epoch alone, so a resumed run freezes exactly as an uninterrupted one)."""
    if not config.freeze_epochs:
        return
    frozen = epoch <= config.freeze_epochs
    assert isinstance(model, Backbone), "check_model_options allows freeze_epochs on backbones"
    model.freeze(frozen)
    if frozen:
        log.info(
            "epoch %d: backbone frozen (until epoch %d), training the new head only",
            epoch,
            config.freeze_epochs,
        )
    elif epoch == config.freeze_epochs + 1:
        log.info("epoch %d: backbone unfrozen, training all layers", epoch)


@dataclass
class _Loop:
    """What fit() trains with, built once: the model (DDP-wrapped under torchrun), optimiser,
    schedule, loss, random streams, augmentation, early stopping and the data."""

    model: nn.Module
    trained: nn.Module  # `model` as the training pass calls it (DDP's wrapper under torchrun)
    optimizer: torch.optim.Optimizer
    schedule: LRScheduler | None
    loss_fn: nn.Module
    streams: dict[str, torch.Generator]
    scaler: torch.amp.GradScaler
    augment: TrainAugment | None
    stopper: EarlyStopping
    train_data: Tensors
    val_data: Tensors
    config: TrainConfig
    device: Device
    num_classes: int
    ranks: Context

    @classmethod
    def build(
        cls,
        model: nn.Module,
        train_data: Tensors,
        val_data: Tensors,
        config: TrainConfig,
        device: Device,
        num_classes: int,
        ranks: Context,
    ) -> _Loop:
        steps_per_epoch = len(
            distributed.batch_bounds(len(train_data.labels), config.batch_size, ranks.world_size)
        )
        optimizer = build_optimizer(model, config)
        # one epoch order for all ranks; augmentation draws of their own
        streams = {
            "shuffle": runtime.generator(config.seed, "shuffle"),
            "augment": runtime.generator(config.seed, ranks.stream("augment")),
        }
        return cls(
            model,
            ranks.wrap(model, device.torch_device),
            optimizer,
            build_schedule(optimizer, config, steps_per_epoch),
            training_loss(config, train_data.labels, num_classes, device),
            streams,
            device.grad_scaler(),
            augmentation(config, streams["augment"], num_classes, train_data),
            EarlyStopping(config.patience),
            train_data,
            val_data,
            config,
            device,
            num_classes,
            ranks,
        )

    def epoch(self, epoch: int, progress: bool, after_step: Callable[[], None]) -> EpochStats:
        """One epoch: a training pass in this epoch's order (after_step: after each step), then
        validation (on rank 0; every rank gets its numbers, so that all stop early together)."""
        config, ranks, train_data = self.config, self.ranks, self.train_data
        _set_frozen(self.model, config, epoch)
        start = time.perf_counter()
        lr = self.optimizer.param_groups[0]["lr"]
        order = epoch_order(
            train_data.labels.cpu(), self.streams["shuffle"], balanced=config.sampler == "balanced"
        )
        batches = prefetch(
            iterate_batches(
                train_data.pixels,
                train_data.labels,
                config.batch_size,
                order=order,
                augment=self.augment,
                shard=ranks.batches,
            )
        )
        bar = tqdm(
            total=len(order) // ranks.world_size,
            unit="img",
            desc=f"epoch {epoch}/{config.epochs}",
            leave=False,
            disable=None if progress and ranks.is_main else True,
        )
        try:
            train_loss, train_acc, waited = train_one_epoch(
                self.trained,
                batches,
                self.optimizer,
                self.schedule,
                self.loss_fn,
                self.device,
                bar,
                self.scaler,
                ranks,
                after_step,
            )
        finally:
            batches.close()  # the producer thread stops drawing from the streams
        train_seconds = time.perf_counter() - start
        val_loss, val_acc, val_f1 = ranks.from_main(
            validate(
                self.model,
                self.val_data,
                self.device,
                self.num_classes,
                config.batch_size,
                config.tta_flip,
            )
            if ranks.is_main
            else (0, 0, 0)
        )
        return EpochStats(
            epoch,
            train_loss,
            train_acc,
            val_loss,
            val_acc,
            val_f1,
            time.perf_counter() - start,
            len(train_data.labels) / train_seconds,
            waited,
            lr,
        )

    def capture(self, history: list[EpochStats], stop: bool, copy_tensors: bool) -> TrainingState:
        """The state after the last epoch of `history` (every rank's random streams in it)."""
        stopper = self.stopper
        state = TrainingState.capture(
            [asdict(h) for h in history],
            stop,
            self.model,
            self.optimizer,
            self.schedule,
            self.streams,
            (stopper.best_loss, stopper.best_epoch, stopper.best_state),
            self.config.to_dict(),
            copy_tensors=copy_tensors,
        )
        state.rng = self.ranks.gather_rng(state.rng)
        return state

    def restore(self, state: TrainingState) -> list[EpochStats]:
        """Back to the end of a completed epoch; returns the history up to it."""
        state.rng = self.ranks.own_rng(state.rng)
        state.apply(self.model, self.optimizer, self.schedule, self.streams)
        stopper = self.stopper
        stopper.best_loss, stopper.best_epoch = state.best_loss, state.best_epoch
        stopper.best_state = state.best_model
        return [EpochStats(**h) for h in state.history]


class _LastEpoch:
    """The state of the last completed epoch, for resume and Ctrl-C: in a checkpoint folder
    (rank 0 writes it, read back only on Ctrl-C), or without one in memory (4x the model's size
    is then held)."""

    def __init__(self, folder: Path | None, ranks: Context, resumed: TrainingState | None):
        self.folder, self.ranks = folder, ranks
        self.state = resumed if folder is None else None

    @property
    def in_memory(self) -> bool:
        return self.folder is None

    def keep(self, state: TrainingState) -> None:
        if self.folder is None:
            self.state = state
        elif self.ranks.is_main:
            save_checkpoint(self.folder, state)

    def state_after(self, completed: int) -> TrainingState | None:
        """The state to go back to after `completed` epochs (None when there is none): rank
        0's checkpoint reaches the others through the process group."""
        if self.folder is None or not completed:
            return self.state
        return self.ranks.on_main(lambda: load_checkpoint(self.folder))


def _log_epoch(stats: EpochStats, epochs: int) -> None:
    log.info(
        "epoch %d/%d  train loss %.4f acc %.4f  val loss %.4f acc %.4f "
        "macro-F1 %.4f  %.1f s  %.0f img/s",
        stats.epoch,
        epochs,
        stats.train_loss,
        stats.train_acc,
        stats.val_loss,
        stats.val_acc,
        stats.val_macro_f1,
        stats.seconds,
        stats.images_per_s,
    )


def fit(
    model: nn.Module,
    train_data: Tensors,
    val_data: Tensors,
    config: TrainConfig,
    device: Device,
    num_classes: int,
    progress: bool = False,
    *,
    checkpoint_dir: Path | None = None,
    resume: TrainingState | None = None,
    ranks: Context = distributed.SINGLE,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> FitResult:
    """Train with early stopping on validation loss; the model ends with the best weights.

    checkpoint_dir: save a checkpoint there after every epoch (rank 0). resume: continue from one.
    ranks: under torchrun, this process's share of the work (distributed.py).
    on_epoch: called with each epoch's stats once its checkpoint is saved (TensorBoard, tune's
    pruning); an exception it raises ends the fit and propagates.
    Ctrl-C (KeyboardInterrupt) goes back to the last completed epoch and ends the fit there;
    it is raised again only when no epoch was completed. Under torchrun a Ctrl-C that reaches
    any rank is taken by all at the same point (`_together`).
    """
    if config.freeze_epochs and ranks.world_size > 1:  # DDP fixes the trained set at wrapping
        raise ValueError("--freeze-epochs does not work under torchrun yet: train in one process")
    loop = _Loop.build(model, train_data, val_data, config, device, num_classes, ranks)
    last = _LastEpoch(checkpoint_dir, ranks, resume)
    history: list[EpochStats] = []
    stop = interrupted = False
    if resume is not None:
        history, stop = loop.restore(resume), resume.stop
        log.info("resuming after epoch %d of %d", resume.epoch, config.epochs)
    with _ctrl_c(defer=True) if ranks.active else contextlib.nullcontext([]) as pressed:
        together = functools.partial(_together, ranks, pressed)
        try:
            while not stop and len(history) < config.epochs:
                stats = loop.epoch(len(history) + 1, progress, together)
                history.append(stats)
                _log_epoch(stats, config.epochs)
                stop = loop.stopper.should_stop(stats.epoch, stats.val_loss, model)
                last.keep(loop.capture(history, stop, copy_tensors=last.in_memory))
                if on_epoch is not None:
                    on_epoch(stats)
                if stop:
                    log.info(
                        "early stopping: validation loss has not improved for %d epochs",
                        config.patience,
                    )
                together()  # a Ctrl-C in validation or the checkpoint: the epoch is complete
        except KeyboardInterrupt:
            completed = last.state_after(len(history))
            if completed is None:
                raise
            history, interrupted = loop.restore(completed), True
            log.warning(
                "interrupted: epoch %d abandoned, the run ends with epoch %d",
                completed.epoch + 1,
                completed.epoch,
            )
        pressed.clear()  # pressed again while going back: the same Ctrl-C (torchrun passes it on)
    kept = loop.stopper.restore(model, history[-1].epoch)
    if kept != history[-1].epoch:
        log.info(
            "restored the weights of epoch %d (lowest validation loss %.4f)",
            kept,
            loop.stopper.best_loss,
        )
    return FitResult(history, kept, interrupted)


def _together(ranks: Context, pressed: list[int]) -> None:
    """KeyboardInterrupt on every rank at once when Ctrl-C reached any of them since the last
    call (`pressed`: its deferred presses). Every rank calls this at the same points of the
    loop: a rank leaving where the others wait for it in a collective (the gradients' average,
    validation's figures) would leave them waiting. One process: the press was raised already."""
    if ranks.sum([len(pressed)])[0]:
        pressed.clear()
        raise KeyboardInterrupt


def _resumed_state(folder: Path, config: TrainConfig, ranks: Context) -> TrainingState | None:
    """The checkpoint in rank 0's `folder` to resume from, on every rank (None: no completed
    epoch); CheckpointError if it was written with another configuration."""

    def read() -> TrainingState | None:
        if not (folder / CHECKPOINT).exists():
            return None
        state = load_checkpoint(folder)
        if state.config != config.to_dict():
            raise CheckpointError(
                f"{folder / CHECKPOINT}: written with another configuration than the run's "
                "config.json"
            )
        return state

    return ranks.on_main(read)


def _joined(first: FitResult, then: FitResult) -> FitResult:
    """Two stages as one run: the second's epochs numbered after the first's; its end kept."""
    offset = len(first.history)
    later = [dataclasses.replace(stats, epoch=stats.epoch + offset) for stats in then.history]
    return FitResult(first.history + later, offset + then.restored_epoch, then.interrupted)


def _history_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _run_dir(out: str | os.PathLike | None, data_dir: Path, recipe: str, overwrite: bool) -> Path:
    """--out, or runs/DATA-RECIPE-TIME, made ready for a new run (rundir.new_run)."""
    if out is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path("runs") / f"{data_dir.resolve().name}-{recipe}-{stamp}"
    return rundir.new_run(Path(out), data_dir, overwrite)


def _stored_run(run_dir: Path) -> tuple[TrainConfig, dict]:
    """The TrainConfig and config.json of a run to resume."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return rundir.stored_config(
        run_dir,
        lambda stored: TrainConfig.from_dict({k: v for k, v in stored.items() if k in fields}),
    )


def _environment(device: Device, ranks: Context) -> dict:
    """Where a run trains, as config.json records it (rank 0's view under torchrun)."""
    return {
        "device_used": str(device.torch_device),
        "precision_used": device.precision,
        "threads": torch.get_num_threads(),
        "processes": ranks.world_size,
    }


def _warn_if_moved(run_dir: Path, stored: dict, device: Device, ranks: Context) -> None:
    now = _environment(device, ranks)
    before = {"processes": 1} | {k: stored[k] for k in now if k in stored}
    changed = [f"{k} {before.get(k)} -> {v}" for k, v in now.items() if before.get(k) != v]
    if changed and ranks.is_main:
        log.warning(
            "%s: resumed with another %s: the results may differ in the last digits "
            "from an uninterrupted run",
            run_dir,
            ", ".join(changed),
        )


def _export(run_dir: Path, body: Path | None = None) -> None:
    """RUN/model.onnx, for fast CPU inference; the run stands without it. body: the backbone's
    features.onnx of a transfer run (export_onnx)."""
    # ONNX and its exporter: only once training is done
    from imgclass.export import caused_by_ctrl_c, export_onnx

    try:
        export_onnx(run_dir, body=body)
    except Exception as err:  # the exporter raises many types; the model is saved already
        if caused_by_ctrl_c(err):
            raise KeyboardInterrupt from err
        log.warning(
            "%s: model.onnx not written (%s); predict and serve use PyTorch, "
            "`imgclass export` retries",
            run_dir,
            str(err).splitlines()[0],
        )


def _report(run_dir: Path) -> None:
    try:
        write_report(run_dir)
    except Exception as err:  # the model and metrics are saved: a report never fails the run
        log.warning("%s: report not written (%s); `imgclass report` retries", run_dir, err)


@contextlib.contextmanager
def _ctrl_c(defer: bool) -> Iterator[list[int]]:
    """Ctrl-C (SIGINT) over a block, never lost. defer: held until the block ends and raised
    then, so that what the block writes is whole. Else raised at once as usual, and raised again
    when the block ends if something inside swallowed it: Python only prints a KeyboardInterrupt
    that lands in a finaliser or a weakref callback, and torch's exporter runs many. Signals
    reach the main thread only: elsewhere, or when SIGINT has a handler of someone else's, this
    does nothing. Yields the presses held so far, for a block that takes them earlier itself
    (and clears them)."""
    pressed: list[int] = []
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield pressed
        return

    def on_sigint(signum, frame):
        pressed.append(signum)
        if not defer:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield pressed
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if pressed:
        raise KeyboardInterrupt


@dataclass(frozen=True)
class _Outputs:
    """What a finished run writes besides its model and metrics (train()'s switches)."""

    export: bool = True  # RUN/model.onnx
    report: bool = True  # RUN/report.html
    keep_checkpoint: bool = False  # the resume checkpoint stays


def train(
    data_dir: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    *,
    recipe: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    overwrite: bool = False,
    resume: str | os.PathLike | None = None,
    export: bool = True,
    report: bool = True,
    keep_checkpoint: bool = False,
    **overrides,
) -> TrainResult:
    """Train a classifier on a class-folder tree or a CSV of path,label rows (default: the
    built-in digits) into a run folder.

    recipe: a named recipe or a .json recipe file (default: transfer).
    progress: tqdm's bars (features, each epoch) where someone watches: a notebook's widget or
        a terminal's line, none in a log file; False: none.
    overrides: any TrainConfig field (image_size, epochs, batch_size, lr, val_split, seed, ...).
    resume: a run folder to continue from its last completed epoch, with the recipe, overrides
        and data stored in it; any other argument but cache_dir, progress, export, report and
        keep_checkpoint is then an error.
    export: write the model as RUN/model.onnx at the end too (ONNX Runtime: the engine that
        `Predictor` picks on CPUs without native bf16); a failed export is a warning.
    report: write RUN/report.html at the end too (`imgclass report` writes it later).
    keep_checkpoint: keep the resume checkpoint (model, optimiser state: 100+ MB for the seed
        CNN) once the run has finished; by default it goes with the need for it.
    Under torchrun every process calls this; rank 0 writes the run directory, the others return
    a TrainResult with empty metrics.
    """
    ranks = Context.from_env()
    runtime.configure(ranks.threads())
    outputs = _Outputs(export, report, keep_checkpoint)
    stored = None
    if resume is not None:
        _check_resume_alone(
            resume,
            {"data_dir": data_dir, "out": out, "recipe": recipe, "overwrite": overwrite or None}
            | overrides,
        )
    ranks = ranks.start()
    package_log = logging.getLogger("imgclass")
    level = package_log.level
    if not ranks.is_main:  # one console, rank 0's lines; the others' warnings and errors
        package_log.setLevel(logging.WARNING)
    try:
        if resume is not None:  # rank 0's run folder: the others' may be on another machine
            config, stored = ranks.on_main(lambda: _stored_run(Path(resume)))
            run_dir, data_dir = Path(resume), Path(stored["data_dir"])
        else:
            config = build_config(recipe, **overrides)
        ranks.check_batch_size(config.batch_size)
        device = Device.select(config.precision, config.device, ranks.local_rank)
        ranks = ranks.on(device.torch_device)
        if stored is not None:
            _warn_if_moved(run_dir, stored, device, ranks)
        else:
            if data_dir is None:
                with ranks.local_main_first():
                    data_dir = digits_folder(cache_dir)
                log.info("no data folder given: using the built-in digits data set (%s)", data_dir)
            data_dir = Path(data_dir)
            run_dir = ranks.on_main(lambda: _run_dir(out, data_dir, config.recipe, overwrite))
        # one process trains into a folder at a time (rank 0 for all under torchrun)
        with rundir.locked(run_dir) if ranks.is_main else contextlib.nullcontext():
            if stored is None and ranks.is_main:
                rundir.clear_stale(run_dir)
            with _run_log(run_dir, append=stored is not None, write=ranks.is_main):
                return _train(
                    data_dir, run_dir, config, cache_dir, progress, stored, device, ranks, outputs
                )
    finally:
        package_log.setLevel(level)
        ranks.stop()


def _check_resume_alone(resume: str | os.PathLike, arguments: dict) -> None:
    """ValueError naming the arguments given beside resume: a resumed run keeps its own."""
    given = [name for name, value in arguments.items() if value is not None]
    if given:
        raise ValueError(
            f"resume continues {resume} with the recipe, options and data "
            f"stored in it: leave out {', '.join(given)}"
        )


@contextlib.contextmanager
def _run_log(run_dir: Path, append: bool, write: bool) -> Iterator[None]:
    """The package's log lines also go to RUN/train.log while the block runs (when `write`)."""
    if not write:
        yield
        return
    handler = logging.FileHandler(
        run_dir / rundir.LOG, mode="a" if append else "w", encoding="utf-8"
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger("imgclass").addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger("imgclass").removeHandler(handler)
        handler.close()


def _saved_split(run_dir: Path, classes: list[str], dataset: Dataset) -> Split:
    """The split of the run to resume as indices into the data loaded again; DataError if the
    classes or any of its files changed."""
    if dataset.classes != classes:
        raise DataError(
            f"{dataset.root}: classes changed since the run started "
            f"({', '.join(classes)} -> {', '.join(dataset.classes)})"
        )
    split, changed = saved_split(run_dir / rundir.SPLIT, dataset)
    if changed:
        raise DataError(
            f"{dataset.root}: {len(changed)} files of {run_dir / rundir.SPLIT} are "
            f"missing or changed ({', '.join(changed[:3])}"
            f"{', ...' if len(changed) > 3 else ''}); resuming needs the data the "
            "run started with"
        )
    added = len(dataset.paths) - len(split.train) - len(split.val)
    if added:
        log.warning("%s: %d files added since the run started are left out", dataset.root, added)
    return split


def _write_run_description(
    run_dir: Path,
    config: TrainConfig,
    data_dir: Path,
    dataset: Dataset,
    split: Split,
    device: Device,
    ranks: Context,
    model: nn.Module,
) -> None:
    """config.json, split.json, skipped.json, scan.json: what the run is, written before fitting.

    config.json's pretrained_weights: where the backbone's starting weights came from (source,
    file, sha256), None without pretrained weights."""
    atomic.write_json(
        run_dir / rundir.CONFIG,
        {
            **config.to_dict(),
            "data_dir": str(data_dir.resolve()),
            "classes": dataset.classes,
            "pretrained_weights": getattr(model, "weights", None),
            **_environment(device, ranks),
        },
    )
    atomic.write_json(
        run_dir / rundir.SPLIT, split_json(split, dataset, config.seed, config.val_split)
    )
    atomic.write_json(
        run_dir / rundir.SKIPPED, [{"path": s.path, "reason": s.reason} for s in dataset.skipped]
    )
    atomic.write_json(run_dir / rundir.SCAN, dataset.report.to_dict())


def _train(
    data_dir: Path,
    run_dir: Path,
    config: TrainConfig,
    cache_dir: str | os.PathLike | None,
    progress: bool,
    stored: dict | None,
    device: Device,
    ranks: Context,
    outputs: _Outputs,
) -> TrainResult:
    """stored: the config.json of the run to resume, None for a new run."""
    started = time.perf_counter()
    saved = functools.partial(_saved_split, run_dir, stored["classes"]) if stored else None
    setup = setup_training(
        data_dir,
        config,
        cache_dir,
        device,
        ranks=ranks,
        split=saved and (lambda dataset: ranks.on_main(lambda: saved(dataset))),
        progress=progress,
    )
    resume = _resumed_state(run_dir, config, ranks) if stored is not None else None
    if stored is not None and resume is None:
        log.info("%s: no completed epoch to resume from: starting at epoch 1", run_dir)
    # the pretrained weights are read unless the run resumes from a checkpoint (which has its
    # own), and before a new run writes anything, so a bad weights file leaves no run behind
    model = setup.new_model(dataclasses.replace(config, pretrained=None) if resume else config)
    if stored is None and ranks.is_main:
        _write_run_description(
            run_dir,
            config,
            data_dir,
            setup.dataset,
            setup.split,
            device,
            ranks,
            setup.backbone or model,
        )
    log.info(
        "%s",
        model_summary(setup.backbone or model, config.image_size, title=f"model {config.model}"),
    )
    if not ranks.is_main:  # dropout masks of its own
        torch.manual_seed(runtime.stream_seed(config.seed, ranks.stream("dropout")))
    with tensorboard(run_dir) if ranks.is_main else contextlib.nullcontext() as on_epoch:
        setup, model, fitted = _fit_stages(
            setup, model, run_dir, resume, stored is not None, progress, ranks, on_epoch
        )
    runtime.release_freed_memory()  # activations, gradients, optimiser state: done with
    classes = setup.dataset.classes
    result = TrainResult(
        run_dir, config, classes, fitted.history, fitted.restored_epoch, {}, fitted.interrupted
    )
    if not ranks.is_main:  # rank 0 writes the run's files
        return dataclasses.replace(result, rank=ranks.rank)
    metrics, unwritten = _finish(run_dir, model, setup, fitted, started, outputs)
    return dataclasses.replace(result, metrics=metrics, unwritten=unwritten)


def _fit_stages(
    setup: TrainingSetup,
    model: nn.Module,
    run_dir: Path,
    resume: TrainingState | None,
    resuming: bool,
    progress: bool,
    ranks: Context,
    on_epoch: Callable[[EpochStats], None] | None,
) -> tuple[TrainingSetup, nn.Module, FitResult]:
    """fit() the model, then (finetune_epochs) the backbone under it in a stage of its own,
    checkpointed in RUN/finetune/. Returns the setup and model of the last stage, and the
    stages' epochs as one history."""
    config = setup.config
    if setup.backbone is not None:
        log.info("training its new head on the backbone's cached features")
    fitted = fit(
        model,
        setup.train,
        setup.val,
        config,
        setup.device,
        setup.num_classes,
        progress,
        checkpoint_dir=run_dir,
        resume=resume,
        ranks=ranks,
        on_epoch=on_epoch,
    )
    if not config.finetune_epochs or fitted.interrupted:
        return setup, model, fitted
    model = setup.model_to_save(model)  # the backbone with the head just trained
    tuning = config.finetuning()
    if tuning.finetune_stages:
        setup, model = setup.with_activations(model, tuning.finetune_stages)
    else:
        setup = setup.with_images()
    folder = run_dir / rundir.FINETUNE
    if ranks.is_main:
        folder.mkdir(exist_ok=True)
    log.info(
        "fine-tuning %s for %d epochs (lr %.3g, backbone x %g)",
        f"the last {tuning.finetune_stages} stages" if tuning.finetune_stages else "every layer",
        tuning.epochs,
        tuning.lr,
        tuning.backbone_lr_scale,
    )
    offset = len(fitted.history)  # the stage's epochs numbered after the head's
    tuned = fit(
        model,
        setup.train,
        setup.val,
        tuning,
        setup.device,
        setup.num_classes,
        progress,
        checkpoint_dir=folder,
        resume=_resumed_state(folder, tuning, ranks) if resuming else None,
        ranks=ranks,
        on_epoch=on_epoch
        and (lambda stats: on_epoch(dataclasses.replace(stats, epoch=stats.epoch + offset))),
    )
    return setup, model, _joined(fitted, tuned)


def _finish(
    run_dir: Path,
    model: nn.Module,
    setup: TrainingSetup,
    fitted: FitResult,
    started: float,
    outputs: _Outputs,
) -> tuple[dict, tuple[str, ...]]:
    """Rank 0 saves the trained run (_save_results), then the files `imgclass export` and
    `imgclass report` can write later. Ctrl-C while the run is saved waits for it (seconds),
    then skips those later files. Returns the metrics and the files skipped."""
    config = setup.config
    body = (
        feature_folder(setup.backbone, config.image_size, setup.cache_dir) / FEATURES_ONNX
        if isinstance(model, FeatureHead)
        else None
    )  # else layers below the head trained
    later = [
        (name, write)
        for name, write, wanted in (
            (ONNX_FILE, lambda run: _export(run, body), outputs.export),
            (REPORT, _report, outputs.report),
        )
        if wanted
    ]
    unwritten = [name for name, _ in later]
    metrics: dict = {}
    try:
        with _ctrl_c(defer=True):
            metrics = _save_results(run_dir, model, setup, fitted, started)
            if not fitted.interrupted and not outputs.keep_checkpoint:  # nothing left to resume
                log.info(
                    "removed the resume checkpoint (%.0f MB): the run is finished "
                    "(--keep-checkpoint keeps it)",
                    rundir.remove_checkpoints(run_dir) / 1e6,
                )
        for name, write in later:
            with _ctrl_c(defer=False):
                write(run_dir)
                unwritten.remove(name)
    except KeyboardInterrupt:
        if unwritten:  # else the press was swallowed in the last step, which finished
            log.warning(
                "%s: interrupted once the run was saved; not written: %s",
                run_dir,
                ", ".join(unwritten),
            )
    return metrics, tuple(unwritten)


def _save_results(
    run_dir: Path, model: nn.Module, setup: TrainingSetup, fitted: FitResult, started: float
) -> dict:
    """The files of a finished run: the model (setup.model_to_save), history, curves, validation
    metrics and predictions (of `model`, the one trained, on what it was validated on), and
    metrics.json last (a run without it can be resumed). Returns the metrics."""
    dataset, split, val_data, config = setup.dataset, setup.split, setup.val, setup.config
    device = setup.device
    history, restored, interrupted = fitted.history, fitted.restored_epoch, fitted.interrupted
    saved = setup.model_to_save(model)
    save_model(
        run_dir,
        saved,
        ModelMeta.describe(
            saved, dataset.classes, config.image_size, config.model, config.tta_flip
        ),
    )
    rows = [asdict(h) for h in history]
    atomic.write_text(run_dir / rundir.HISTORY, _history_csv(rows))
    columns = {k: [row[k] for row in rows] for k in rows[0]}
    plot_curves(columns["epoch"], columns, restored, run_dir / "curves.png")

    def scored(side: Tensors) -> tuple[np.ndarray, np.ndarray, ClassificationMetrics]:
        """(probabilities, labels, metrics) of `model` on one side of the split."""
        probabilities = predict_proba(
            model, side.pixels, device, config.batch_size, tta_flip=config.tta_flip
        )
        labels = side.labels.cpu().numpy()  # the labels may be on a GPU
        return (
            probabilities,
            labels,
            classification_metrics(labels, probabilities.argmax(1), dataset.classes),
        )

    probabilities, val_labels, validation = scored(val_data)
    write_metrics(validation, run_dir)
    best = max(history, key=lambda h: h.val_acc)
    metrics = {
        "best_val_acc": best.val_acc,
        "best_val_acc_epoch": best.epoch,
        "best_val_macro_f1": max(h.val_macro_f1 for h in history),
        "restored_epoch": restored,
        "restored_val_acc": history[restored - 1].val_acc,
        "lowest_val_loss": min(h.val_loss for h in history),
        "final_train_acc": history[-1].train_acc,
        "final_epoch": history[-1].epoch,
        "stopped_early": history[-1].epoch < config.epochs and not interrupted,
        "interrupted": interrupted,
        "val_accuracy": validation.accuracy,
        "val_macro_f1": validation.macro_f1,
        "train_images": len(split.train),
        "val_images": len(split.val),
        "skipped_files": len(dataset.skipped),
        "train_seconds": sum(h.seconds for h in history),
        "total_seconds": time.perf_counter() - started,
    }
    if setup.test is not None:  # the data's own test folder, never trained or validated on
        _, _, test = scored(setup.test)
        metrics |= {
            "test_accuracy": test.accuracy,
            "test_macro_f1": test.macro_f1,
            "test_images": len(split.test),
        }
        log.info(
            "test accuracy %.4f, macro-F1 %.4f on the %d images of %s/",
            test.accuracy,
            test.macro_f1,
            len(split.test),
            dataset.sides["test"],
        )
    ValPredictions(
        dataset.classes, [dataset.paths[i] for i in split.val], val_labels, probabilities
    ).write(run_dir)
    atomic.write_json(run_dir / rundir.METRICS, metrics)
    log.info(
        "best validation accuracy %.4f at epoch %d; restored epoch %d (val acc %.4f, "
        "macro-F1 %.4f); final training accuracy %.4f at epoch %d; lowest validation "
        "loss %.4f; %d files skipped",
        best.val_acc,
        best.epoch,
        restored,
        validation.accuracy,
        validation.macro_f1,
        history[-1].train_acc,
        history[-1].epoch,
        metrics["lowest_val_loss"],
        len(dataset.skipped),
    )
    return metrics

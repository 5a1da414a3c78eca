"""Save and load a trained model and the per-epoch training checkpoint: safetensors, never pickle.

`model.json` holds everything needed to rebuild the model and to preprocess images exactly as in
validation: the class names in label order, image size, normalisation, architecture, versions.

`checkpoint.safetensors` holds everything `fit` needs to continue after a completed epoch
(`TrainingState`): tensors as named tensors, the rest as JSON in the file's own metadata, so the
one atomic write of that file is the commit. `checkpoint.json` is a readable summary of it.
Every safetensors file carries a sha256 of its tensors and metadata: a damaged or edited file is
a `CheckpointError` naming it, never silently different weights.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import platform
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from imgclass import atomic
from imgclass.models import build_model
from imgclass.rundir import CHECKPOINT, CHECKPOINT_SUMMARY, METADATA, WEIGHTS


class CheckpointError(ValueError):
    """A model or checkpoint file that is missing, truncated, tampered with or does not fit."""


@dataclass(frozen=True)
class ModelMeta:
    classes: list[str]
    image_size: int
    architecture: str
    # input = pixels (uint8, RGB, HxW squashed) * scale, then (x - mean) / std per channel
    normalisation: dict = field(
        default_factory=lambda: {"scale": 1 / 255, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
    )
    resize: str = "squash to image_size x image_size, bilinear (no crop)"
    tta_flip: bool = False  # predictions average the image and its mirror
    num_parameters: int = 0
    versions: dict = field(default_factory=dict)

    @classmethod
    def describe(
        cls,
        model: nn.Module,
        classes: list[str],
        image_size: int,
        architecture: str,
        tta_flip: bool = False,
    ) -> ModelMeta:
        return cls(
            list(classes),
            image_size,
            architecture,
            tta_flip=tta_flip,
            num_parameters=count_parameters(model),
            versions=_versions(),
        )


@dataclass
class LoadedModel:
    model: nn.Module  # in eval mode, on the CPU
    meta: ModelMeta


def count_parameters(model: nn.Module) -> int:
    """Keras' count: weights plus BatchNorm running statistics (not PyTorch's batch counter)."""
    buffers = sum(
        b.numel() for name, b in model.named_buffers() if not name.endswith("num_batches_tracked")
    )
    return sum(p.numel() for p in model.parameters()) + buffers


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("imgclass", "torch", "torchvision"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "unknown"
    return versions


def _digest(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    h = hashlib.sha256()
    for key in sorted(metadata):
        h.update(f"{key}={metadata[key]}\n".encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{list(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _write_safetensors(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str], sync_dir: bool = False
) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = {**metadata, "sha256": _digest(tensors, metadata)}
    atomic.write_with(path, lambda tmp: _save_file(tensors, tmp, metadata), sync_dir=sync_dir)


def _save_file(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """save_file streams the tensors to disk (no second in-memory copy of a large checkpoint);
    its I/O failure (a full disk) is an OSError like any other write's."""
    try:
        save_file(tensors, path, metadata=metadata)
    except SafetensorError as err:
        raise OSError(str(err)) from err


def _read_safetensors(
    path: Path,
    checksum_required: bool = True,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file, its checksum verified."""
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        with safe_open(path, framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise CheckpointError(
            f"{path}: truncated or not a safetensors file ({str(err).splitlines()[0]})"
        ) from err
    expected = metadata.pop("sha256", None)
    if expected is None and checksum_required:
        raise CheckpointError(
            f"{path}: no sha256 in its metadata (not written by imgclass, or tampered with)"
        )
    if expected is not None and expected != _digest(tensors, metadata):
        raise CheckpointError(
            f"{path}: contents do not match their sha256 (damaged or tampered with)"
        )
    return tensors, metadata


def save_model(folder: str | os.PathLike, model: nn.Module, meta: ModelMeta) -> None:
    folder = Path(folder)
    # the classes travel with the weights (inside their checksum): model.json is checked
    # against them, so an edited or swapped class list is refused instead of mislabelling
    _write_safetensors(
        folder / WEIGHTS, model.state_dict(), {"format": "pt", "classes": json.dumps(meta.classes)}
    )
    atomic.write_json(folder / METADATA, asdict(meta))


def _model_files(folder: Path) -> tuple[Path, Path]:
    weights, meta_file = folder / WEIGHTS, folder / METADATA
    for path in (weights, meta_file):
        if not path.is_file():
            raise CheckpointError(f"{path}: missing (is {folder} a finished imgclass run?)")
    return weights, meta_file


def read_meta(run: str | os.PathLike) -> ModelMeta:
    """The ModelMeta of a run directory, without loading its weights."""
    _, meta_file = _model_files(Path(run))
    try:
        return ModelMeta(**atomic.read_json(meta_file))
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{meta_file}: unreadable model metadata ({err})") from err


def weights_digest(run: str | os.PathLike) -> str | None:
    """The sha256 recorded in a run's model.safetensors (None for older runs without one)."""
    weights, _ = _model_files(Path(run))
    try:
        with safe_open(weights, framework="pt") as f:
            return (f.metadata() or {}).get("sha256")
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise CheckpointError(
            f"{weights}: truncated or not a safetensors file ({str(err).splitlines()[0]})"
        ) from err


def load_model(run: str | os.PathLike) -> LoadedModel:
    """The model of a run directory (or a folder holding model.safetensors + model.json)."""
    folder = Path(run)
    weights, meta_file = _model_files(folder)
    meta = read_meta(folder)
    try:
        model = build_model(meta.architecture, len(meta.classes), meta.image_size)
    except ValueError as err:
        raise CheckpointError(f"{meta_file}: {err}") from err
    state, metadata = _read_safetensors(weights, checksum_required=False)  # older: none
    saved = json.loads(metadata["classes"]) if "classes" in metadata else meta.classes
    if saved != meta.classes:
        raise CheckpointError(
            f"{meta_file}: its classes ({', '.join(meta.classes)}) are not "
            f"those saved with the weights in {weights} "
            f"({', '.join(saved)}): edited or mixed up"
        )
    try:
        model.load_state_dict(state)
    except (RuntimeError, ValueError) as err:
        raise CheckpointError(
            f"{weights}: truncated or not matching {meta.architecture} ({str(err).splitlines()[0]})"
        ) from err
    model.eval()
    return LoadedModel(model.to(memory_format=torch.channels_last), meta)


@dataclass
class TrainingState:
    """Everything fit() needs to continue exactly after a completed epoch."""

    epoch: int  # the last completed epoch
    stop: bool  # early stopping ended training after this epoch
    history: list[dict]  # EpochStats of epochs 1..epoch, as dicts
    model: dict[str, torch.Tensor]
    optimizer: dict  # torch optimizer state_dict
    schedule: dict | None  # torch LR-scheduler state_dict, None for a constant learning rate
    best_loss: float  # EarlyStopping: the lowest validation loss so far, its epoch, its weights
    best_epoch: int
    best_model: dict[str, torch.Tensor] | None
    rng: dict[str, torch.Tensor]  # uint8 generator states by stream (shuffle, augment, torch, ...)
    config: dict  # the TrainConfig of the run, as a dict

    @classmethod
    def capture(
        cls,
        history: list[dict],
        stop: bool,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: LRScheduler | None,
        streams: dict[str, torch.Generator],
        best: tuple[float, int, dict[str, torch.Tensor] | None],
        config: dict,
        copy_tensors: bool = True,
    ) -> TrainingState:
        """The state after the last epoch of history.

        copy_tensors: a copy, never views of the live tensors (False: views, for a state that
        is saved at once and dropped).
        streams: the named generators fit() draws from; the global one (dropout) is added here.
        best: EarlyStopping's lowest loss, its epoch and its weights (replaced, never changed).
        """
        keep = copy.deepcopy if copy_tensors else (lambda value: value)
        rng = {name: g.get_state() for name, g in streams.items()}
        rng["torch"] = torch.get_rng_state()
        if torch.cuda.is_available():
            rng |= {f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
        return cls(
            epoch=history[-1]["epoch"],
            stop=stop,
            history=list(history),
            model=keep(model.state_dict()),
            optimizer=keep(optimizer.state_dict()),
            schedule=keep(schedule.state_dict()) if schedule else None,
            best_loss=best[0],
            best_epoch=best[1],
            best_model=best[2],
            rng=rng,
            config=config,
        )

    def apply(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: LRScheduler | None,
        streams: dict[str, torch.Generator],
    ) -> None:
        """Load model, optimiser, schedule and random states; CheckpointError if they do not fit."""
        try:
            model.load_state_dict(self.model)
            optimizer.load_state_dict(self.optimizer)
            if schedule is not None:
                schedule.load_state_dict(self.schedule)
            for name, generator in streams.items():
                generator.set_state(self.rng[name])
            torch.set_rng_state(self.rng["torch"])
            if torch.cuda.is_available() and "cuda0" in self.rng:
                torch.cuda.set_rng_state_all(
                    [self.rng[f"cuda{i}"] for i in range(torch.cuda.device_count())]
                )
        except (RuntimeError, ValueError, KeyError, TypeError) as err:
            raise CheckpointError(
                f"{CHECKPOINT}: does not fit this model and recipe ({str(err).splitlines()[0]})"
            ) from err
        # the memory layout of the parameters (channels_last), so updates run the same kernels
        for param, values in optimizer.state.items():
            for key, value in values.items():
                if isinstance(value, torch.Tensor) and value.shape == param.shape:
                    values[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def save_checkpoint(folder: str | os.PathLike, state: TrainingState) -> None:
    """checkpoint.safetensors (atomic, fsynced, the commit), then checkpoint.json (a summary)."""
    folder = Path(folder)
    tensors = {f"model/{k}": v for k, v in state.model.items()}
    best_is_model = state.best_model is not None and state.best_epoch == state.epoch
    if state.best_model is not None and not best_is_model:  # else the same weights: once
        tensors |= {f"best/{k}": v for k, v in state.best_model.items()}
    tensors |= {f"rng/{k}": v for k, v in state.rng.items()}
    optimizer_other: dict[str, dict] = {}
    for pid, values in state.optimizer["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer/{pid}/{key}"] = value
            else:
                optimizer_other.setdefault(str(pid), {})[key] = value
    rest = {
        "epoch": state.epoch,
        "stop": state.stop,
        "history": state.history,
        "optimizer": {"param_groups": state.optimizer["param_groups"], "state": optimizer_other},
        "schedule": state.schedule,
        "best_loss": state.best_loss,
        "best_epoch": state.best_epoch,
        "best_model": "model" if best_is_model else "best" if state.best_model else None,
        "config": state.config,
    }
    _write_safetensors(
        folder / CHECKPOINT, tensors, {"imgclass.training_state": json.dumps(rest)}, sync_dir=True
    )
    atomic.write_json(
        folder / CHECKPOINT_SUMMARY,
        {
            "epoch": state.epoch,
            "epochs": state.config["epochs"],
            "stop": state.stop,
            "best_epoch": state.best_epoch,
            "best_loss": state.best_loss if math.isfinite(state.best_loss) else None,
            "history": state.history,
            "state": f"{CHECKPOINT} (this file is only a summary)",
        },
    )


def load_checkpoint(folder: str | os.PathLike) -> TrainingState:
    """The TrainingState of checkpoint.safetensors; CheckpointError naming it if unusable."""
    path = Path(folder) / CHECKPOINT
    tensors, metadata = _read_safetensors(path)
    try:
        rest = json.loads(metadata["imgclass.training_state"])
        groups: dict[str, dict] = {"model": {}, "best": {}, "rng": {}, "optimizer": {}}
        for name, value in tensors.items():
            kind, key = name.split("/", 1)
            groups[kind][key] = value
        optimizer_state: dict[int, dict] = {
            int(pid): dict(values) for pid, values in rest["optimizer"]["state"].items()
        }
        for key, value in groups["optimizer"].items():
            pid, field_name = key.split("/", 1)
            optimizer_state.setdefault(int(pid), {})[field_name] = value
        return TrainingState(
            epoch=int(rest["epoch"]),
            stop=bool(rest["stop"]),
            history=list(rest["history"]),
            model=groups["model"],
            optimizer={"state": optimizer_state, "param_groups": rest["optimizer"]["param_groups"]},
            schedule=rest["schedule"],
            best_loss=float(rest["best_loss"]),
            best_epoch=int(rest["best_epoch"]),
            best_model=groups[rest["best_model"]] if rest["best_model"] else None,
            rng=groups["rng"],
            config=rest["config"],
        )
    except (KeyError, ValueError, TypeError, AttributeError) as err:
        raise CheckpointError(
            f"{path}: not an imgclass training checkpoint ({type(err).__name__}: {err})"
        ) from err

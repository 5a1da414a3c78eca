"""Predictor: a trained run or an exported .onnx file -> top-k labels for image files or arrays.

Preprocessing is the validation path exactly: decode_image (squash to the model's size) and the
batches' to_float; nothing is re-implemented here. Files stream through: a bounded window of them
is decoded in threads (Pillow releases the GIL) while the model runs on the previous batch.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from imgclass import rundir, runtime
from imgclass.checkpoint import load_model, read_meta
from imgclass.data.batches import to_float
from imgclass.data.images import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image, resize_image
from imgclass.data.walk import REASON_JUNK, REASON_JUNK_FOLDER, Walk
from imgclass.evaluation import predict_proba
from imgclass.export import FILE as ONNX_FILE
from imgclass.export import OnnxModel, check_onnx, current_export, read_metadata
from imgclass.runtime import Device


@dataclass
class Prediction:
    path: str
    labels: list[str] = field(default_factory=list)  # best first
    probabilities: list[float] = field(default_factory=list)
    error: str | None = None  # why the file was skipped; labels are empty then

    @property
    def label(self) -> str | None:
        return self.labels[0] if self.labels else None


# what predict() takes: an image file or a folder of them, a PIL image, an (H, W, 3) uint8 array
Input = str | os.PathLike | Image.Image | np.ndarray


def _inputs(given: Input | Iterable[Input]) -> Iterator[tuple[str, Path | Image.Image | str]]:
    """(name, file or image) of one input or of each in a list; a folder gives its files (or
    why one is skipped: a link out of the folder, a FIFO, ...), an (N, H, W, 3) array N images,
    named "<image i>" as in-memory images are."""
    if isinstance(given, (str, os.PathLike, Image.Image)) or (
        isinstance(given, np.ndarray) and given.ndim != 4
    ):
        given = [given]  # one input (a string is never read character by character)
    count = 0
    for one in given:
        if isinstance(one, (str, os.PathLike)):
            path = Path(one)
            if path.is_dir():
                yield from _files(path)
            else:
                yield str(path), path
            continue
        arrays = one if isinstance(one, np.ndarray) and one.ndim == 4 else [one]
        for image in arrays:
            if isinstance(image, np.ndarray):
                if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                    raise ValueError(
                        f"an image array is (H, W, 3) uint8 RGB; got {image.shape} {image.dtype}"
                    )
                image = Image.fromarray(image)
            elif not isinstance(image, Image.Image):
                raise TypeError(
                    f"predict takes paths, PIL images or uint8 arrays; got {type(image).__name__}"
                )
            yield f"<image {count}>", image
            count += 1


def _files(folder: Path) -> Iterator[tuple[str, Path | str]]:
    """(name, file or why it is skipped) of each file in a folder, walked by data/walk.py's
    rules; OS junk is left out without a word."""
    for found in Walk(folder).files():
        if found.reason not in (REASON_JUNK, REASON_JUNK_FOLDER):
            yield str(folder / found.rel), found.reason or found.path


BACKENDS = ("auto", "pytorch", "onnx")


class Predictor:
    """Load once, predict many: `Predictor("runs/x").predict(["a.jpg", "photos/"])`.

    source: a run directory or a .onnx file written by `imgclass export`; both give the same
    answers. backend: where a run's model runs. "auto" is ONNX Runtime on a CPU without native
    bf16 when the run holds a current export (RUN/model.onnx, written by `train`): there it
    answers one image in about half PyTorch's time (docs/performance.md); PyTorch elsewhere (GPUs,
    bf16 CPUs) and for runs without one. "onnx" insists on the export, "pytorch" on PyTorch.
    workers: decoding threads (default: usable cores). tta: average each image's and its
    mirror's probabilities (default: as the run was validated; an ONNX file has it inside its
    graph, fixed at export). precision: of a run's model in PyTorch, as `train --precision`
    ("auto": bf16 on GPUs and on CPUs with native bf16, fp32 elsewhere); ONNX Runtime runs fp32.
    """

    def __init__(
        self,
        source: str | os.PathLike,
        batch_size: int = 64,
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        workers: int | None = None,
        tta: bool | None = None,
        backend: str = "auto",
        precision: str = "auto",
    ):
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        runtime.configure()
        self.source = Path(source)
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        self.workers = workers or runtime.usable_cores()
        self.onnx: OnnxModel | None = None
        self.model = None
        if self.source.suffix == ".onnx":
            if backend == "pytorch":
                raise ValueError(
                    f"{self.source}: an exported model runs in ONNX Runtime; give "
                    "the run directory for PyTorch"
                )
            self._load_onnx(self.source, tta, verify=True)
        else:
            meta = read_meta(self.source)
            tta_flip = meta.tta_flip if tta is None else tta
            self.device = Device.select(precision)
            exported = self._run_export(backend, tta_flip)
            if exported:
                self._load_onnx(exported, tta_flip, verify=False)  # current_export did
            else:
                loaded = load_model(self.source)
                self.meta = replace(loaded.meta, tta_flip=tta_flip)
                self.model = loaded.model.to(self.device.torch_device)
            self.metrics = rundir.metrics(self.source)
        self.classes = self.meta.classes

    def _run_export(self, backend: str, tta_flip: bool) -> Path | None:
        """The run's ONNX file when the backend (or auto's choice) is ONNX Runtime.

        Whether the export is current is checked (and a stale one reported) before auto
        chooses an engine for this device, so the warning does not depend on the CPU.
        """
        if backend == "pytorch":
            return None
        exported = current_export(self.source, tta_flip)
        if backend == "onnx" and exported is None:
            flag = "--tta" if tta_flip else "--no-tta"
            raise ValueError(
                f"{self.source}: no current {ONNX_FILE} with tta_flip={tta_flip} "
                f"(write one: imgclass export {self.source} {flag})"
            )
        fp32_cpu = self.device.torch_device.type == "cpu" and self.device.amp is None
        return exported if backend == "onnx" or fp32_cpu else None

    def _load_onnx(self, onnx_file: Path, tta: bool | None, verify: bool) -> None:
        """verify: check the file's bytes against its sha256 (never answer from a damaged or
        changed file); a run's export was checked by current_export already."""
        self.meta, document = read_metadata(onnx_file)
        if verify:
            check_onnx(onnx_file, document)
        if tta is not None and tta != self.meta.tta_flip:
            inside = "with" if self.meta.tta_flip else "without"
            raise ValueError(
                f"{onnx_file}: exported {inside} flip test-time augmentation "
                f"in its graph; export again with --{'' if tta else 'no-'}tta"
            )
        self.onnx = OnnxModel(onnx_file, self.meta)
        self.metrics = document.get("metrics")

    @property
    def backend(self) -> str:
        return "onnxruntime" if self.onnx else "pytorch"

    def describe(self) -> dict:
        """What a client needs to know about the model (the service's GET /model)."""
        # the model's name, not where it lies: the service shows this to any client
        return {
            "source": Path(self.source).name,
            "backend": self.backend,
            **asdict(self.meta),
            "metrics": self.metrics,
        }

    def load_pixels(
        self,
        source: str | os.PathLike | bytes,
        name: str | None = None,
    ) -> np.ndarray:
        """One file (or its bytes) -> (H, W, 3) uint8, exactly as the training cache decodes it.

        name: what errors call it (default: the path, or "<upload>" for bytes).
        """
        size = self.meta.image_size
        return decode_image(source, (size, size), max_pixels=self.max_pixels, path_for_errors=name)

    def preprocess(self, path: str | os.PathLike) -> torch.Tensor:
        """One file -> the (1, 3, H, W) float tensor the model sees."""
        return to_float(torch.from_numpy(self.load_pixels(path))[None])

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 images of the model's size -> (N, classes) probabilities."""
        if self.onnx:
            return self.onnx.predict_proba(pixels, self.batch_size)
        return predict_proba(
            self.model, pixels, self.device, self.batch_size, tta_flip=self.meta.tta_flip
        )

    def top(self, probabilities: np.ndarray, top_k: int) -> tuple[list[str], list[float]]:
        """One row of probabilities -> the top_k labels and their probabilities, best first."""
        best = np.argsort(-probabilities, kind="stable")[: max(1, min(top_k, len(self.classes)))]
        return [self.classes[i] for i in best], [float(probabilities[i]) for i in best]

    def predict(self, inputs: Input | Iterable[Input], top_k: int = 1) -> list[Prediction]:
        """Top-k labels of one input or a list of them: image files (folders expanded), PIL
        images, (H, W, 3) uint8 RGB arrays (or one (N, H, W, 3) array); in-memory images are
        resized as files are decoded. Undecodable files carry .error."""
        return list(self.predict_iter(inputs, top_k))

    __call__ = predict

    def predict_iter(
        self, inputs: Input | Iterable[Input], top_k: int = 1, progress: bool = False
    ) -> Iterator[Prediction]:
        """predict() as a stream, in input order, a batch at a time; progress: a bar on stderr."""
        items = list(_inputs(inputs))
        batch: list[Prediction] = []
        pixels: list[np.ndarray] = []
        with tqdm(total=len(items), unit="img", disable=None if progress else True) as bar:
            for name, decoded in self._decoded(items):
                prediction = Prediction(name)
                batch.append(prediction)
                if isinstance(decoded, str):
                    prediction.error = decoded
                else:
                    pixels.append(decoded)
                if len(pixels) == self.batch_size or len(batch) == 4 * self.batch_size:
                    yield from self._finish(batch, pixels, top_k)
                    bar.update(len(batch))
                    batch, pixels = [], []
            yield from self._finish(batch, pixels, top_k)
            bar.update(len(batch))

    def _finish(
        self, batch: list[Prediction], pixels: list[np.ndarray], top_k: int
    ) -> list[Prediction]:
        good = [p for p in batch if p.error is None]
        if good:
            for prediction, row in zip(good, self.predict_pixels(np.stack(pixels))):
                prediction.labels, prediction.probabilities = self.top(row, top_k)
        return batch

    def _decoded(
        self, items: list[tuple[str, Path | Image.Image | str]]
    ) -> Iterator[tuple[str, np.ndarray | str]]:
        """(name, pixels or skip reason) in order; at most two batches decoded ahead."""
        size = (self.meta.image_size, self.meta.image_size)

        def load(source: Path | Image.Image | str) -> np.ndarray | str:
            if isinstance(source, str):  # skipped by the folder walk: the reason
                return source
            try:
                if isinstance(source, Image.Image):
                    return resize_image(source, size)
                return self.load_pixels(source)
            except ImageDecodeError as err:
                return err.reason

        window: deque[tuple[str, Future]] = deque()
        with ThreadPoolExecutor(self.workers, thread_name_prefix="imgclass-predict") as pool:
            for path, source in items:
                window.append((path, pool.submit(load, source)))
                if len(window) > 2 * self.batch_size:
                    done, future = window.popleft()
                    yield done, future.result()
            while window:
                done, future = window.popleft()
                yield done, future.result()

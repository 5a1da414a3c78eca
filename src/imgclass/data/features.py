"""Manifest -> the pooled features of a frozen pretrained backbone, each computed once.

The `transfer` recipe trains its new head on these. They are cached beside the decoded pixels,
content-addressed as they are: `<cache>/features/<backbone>-<weights sha256[:16]>/<S>x<S>/`
holds `<digest>.npy` (float32 rows) and `<digest>.json` (the sha256 of each row's file), so a
later run with the same backbone, weights and image size decodes and extracts nothing. Only the
images missing there are decoded (into the pixel cache) and run through the backbone.

On a CPU the backbone runs in ONNX Runtime (`features.onnx` in the same folder, exported once
and checked against PyTorch): 2-3x eager PyTorch's speed on small CPUs (docs/performance.md).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from imgclass.data.batches import to_float
from imgclass.data.cache import (
    SHARD_BYTES,
    CachedRows,
    DecodedImages,
    Shards,
    default_cache_dir,
    load_images,
)
from imgclass.data.images import DEFAULT_MAX_PIXELS
from imgclass.data.scan import Manifest
from imgclass.models.backbones import Backbone
from imgclass.runtime import Device

log = logging.getLogger(__name__)

ONNX_FILE = "features.onnx"
OUTPUT = "features"
BATCH = 16  # images per backbone call
CHUNK = 256  # images read from the pixel cache, then extracted, at a time (224 px: 39 MB)
TOLERANCE = 1e-3  # largest difference tolerated between PyTorch's and ONNX Runtime's features,
# relative to the largest feature


class _Features(torch.nn.Module):
    def __init__(self, model: Backbone):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)


def feature_folder(
    model: Backbone, image_size: int, cache_dir: str | os.PathLike | None = None
) -> Path:
    """Where the features of this backbone, its pretrained weights and this size are kept."""
    if model.weights is None:
        raise ValueError(f"{model.name}: cached features need pretrained weights (--pretrained)")
    return (
        Path(cache_dir or default_cache_dir())
        / "features"
        / f"{model.name}-{model.weights['sha256'][:16]}"
        / f"{image_size}x{image_size}"
    )


class OnnxFeatures:
    """The backbone's features in ONNX Runtime: features.onnx in the feature folder, exported
    the first time and checked against PyTorch (fp32 both) before it is kept."""

    def __init__(self, session):
        self.session = session

    @classmethod
    def open(cls, model: Backbone, image_size: int, folder: Path) -> OnnxFeatures | None:
        """None where the export fails (a warning): PyTorch extracts then, the same numbers."""
        from imgclass.export import caused_by_ctrl_c, export_graph, ort_session, random_batch

        path = folder / ONNX_FILE
        try:
            if not path.is_file():
                body = _Features(model).eval()
                example = random_batch(image_size)
                export_graph(body, example, path, OUTPUT)
                with torch.no_grad():
                    expected = body(example).numpy()
                got = cls(ort_session(path)).run_float(example.numpy())
                difference = float(
                    np.abs(got - expected).max() / max(float(np.abs(expected).max()), 1.0)
                )
                if not difference <= TOLERANCE:
                    path.unlink()
                    raise ValueError(f"ONNX Runtime differs from PyTorch by {difference:.2g}")
            return cls(ort_session(path))
        except Exception as err:  # the exporter raises many types; PyTorch does the same work
            if caused_by_ctrl_c(err):
                raise KeyboardInterrupt from err
            log.warning(
                "%s: no ONNX export of the backbone (%s); extracting with PyTorch",
                path,
                str(err).splitlines()[0],
            )
            return None

    def run_float(self, x: np.ndarray) -> np.ndarray:
        from imgclass.export import INPUT

        return self.session.run([OUTPUT], {INPUT: x})[0]

    def run(self, pixels: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 -> (N, num_features) float32."""
        from imgclass.export import model_input

        return self.run_float(model_input(pixels))


def extract(
    model: Backbone, pixels: np.ndarray, device: Device, session: OnnxFeatures | None = None
) -> np.ndarray:
    """(N, S, S, 3) uint8 -> (N, num_features) float32 pooled features: through `session`
    (ONNX Runtime) when given, else PyTorch on the device (its autocast), the model in eval mode."""
    model.eval()
    out = []
    for start in range(0, len(pixels), BATCH):
        batch = pixels[start : start + BATCH]
        if session is not None:
            out.append(session.run(batch))
        else:
            with torch.no_grad(), device.autocast():
                x = to_float(torch.from_numpy(batch)).to(device.torch_device)
                out.append(model.features(x).float().cpu().numpy())
    return np.concatenate(out).astype(np.float32, copy=False)


def load_features(
    manifest: Manifest,
    size: int,
    cache_dir: str | os.PathLike | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    *,
    model: Backbone,
    device: Device,
    progress: bool = False,
) -> DecodedImages:
    """load_images' counterpart: the features of every manifest item (in `pixels`: float32 rows
    where they lie in the feature cache's memory-mapped shards, CachedRows, read a batch at a
    time as images are), from the cache where it has them; images that fail to decode fail
    here with the same reason. The missing ones are decoded into the pixel cache (load_images:
    its shards, no copy in memory), then extracted CHUNK at a time and written a shard of
    cache.SHARD_BYTES at a time."""
    folder = feature_folder(model, size, cache_dir)
    store = Shards(folder)
    todo = list(
        {item.sha256: item for item in manifest.items if item.sha256 not in store.rows}.values()
    )  # each content once
    failed: dict[str, str] = {}
    decoded_now = 0
    if todo:
        log.info(
            "extracting %s features of %d images at %dx%d (decoded where the pixel cache "
            "lacks them; both cached for later runs)",
            model.name,
            len(todo),
            size,
            size,
        )
        images = load_images(
            dataclasses.replace(manifest, items=todo, skipped=[]),
            size,
            cache_dir,
            max_pixels=max_pixels,
        )
        decoded_now = images.decoded_now
        failed = {todo[i].sha256: reason for i, reason in images.failures.items()}
        good = [item.sha256 for item, ok in zip(todo, images.ok) if ok]
        if good:
            _extract_into(store, good, images.pixels, model, device, progress)
    features, ok = store.rows_held(
        [item.sha256 for item in manifest.items], (model.net.num_features,), np.float32
    )
    failures = {
        index: failed[item.sha256] for index, item in enumerate(manifest.items) if not ok[index]
    }
    return DecodedImages(features, ok, failures, decoded_now)


def _extract_into(
    store: Shards,
    shas: list[str],
    pixels: CachedRows,
    model: Backbone,
    device: Device,
    progress: bool,
) -> None:
    """The features of `pixels` (the images of `shas`) into `store`: CHUNK images read and
    extracted at a time, a shard written every cache.SHARD_BYTES of features (an interrupted
    extraction keeps the shards written)."""
    session = (
        OnnxFeatures.open(model, pixels.shape[1], store.folder)
        if device.torch_device.type == "cpu"
        else None
    )
    per_shard = max(CHUNK, SHARD_BYTES // (model.net.num_features * 4))
    with tqdm(
        total=len(shas),
        unit="img",
        desc="features",
        leave=False,
        disable=None if progress else True,
    ) as bar:
        for start in range(0, len(shas), per_shard):
            end = min(start + per_shard, len(shas))
            parts = []
            for first in range(start, end, CHUNK):
                parts.append(
                    extract(model, pixels[first : min(first + CHUNK, end)], device, session)
                )
                bar.update(len(parts[-1]))
            store.add(shas[start:end], np.concatenate(parts), {})

"""ONNX export of a run's model, and the ONNX Runtime side that reads it back.

The graph is `evaluation.Probabilities` around the model, the same module `predict_proba` runs:
float32 (N, 3, H, W) pixels in [0, 1] (`data/batches.to_float` of the decoded image, the one
preprocessing step) -> (N, classes) softmax probabilities, with the run's flip test-time
augmentation inside when it has one. The batch dimension is dynamic. `<name>.onnx.json` beside it
holds the rest: classes in output order, input size, normalisation, resize rule and metrics.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np
import torch

from imgclass import atomic, rundir, runtime
from imgclass.checkpoint import CheckpointError, ModelMeta, load_model, read_meta, weights_digest
from imgclass.data.scan import file_sha256
from imgclass.evaluation import Probabilities

log = logging.getLogger(__name__)

INPUT, OUTPUT = "pixels", "probabilities"
FILE = "model.onnx"  # in a run directory: written at the end of `train` and by `export`
OPSET = 18
TOLERANCE = 1e-4  # largest difference in probability tolerated between PyTorch and ONNX Runtime
CLASSES_KEY = "imgclass.classes"  # the ONNX file's own metadata_props: its class list (JSON)
# how an image becomes the input (also in metadata_props), precisely enough to reproduce it:
# the README's onnxruntime script follows it and gives predict's probabilities (a test)
INPUT_RULE = (
    "Pillow: open; for a JPEG, draft('RGB', (S, S)) before decoding; apply the EXIF "
    "orientation; convert to RGB; resize((S, S), Image.Resampling.BILINEAR, "
    "reducing_gap=3.0) (squashed, no crop); float32 / 255; channels first, batch "
    "first: (N, 3, S, S). S = imgclass.image_size; the model normalises inside."
)


def metadata_path(onnx_file: str | os.PathLike) -> Path:
    """model.onnx -> model.onnx.json."""
    return Path(f"{os.fspath(onnx_file)}.json")


def export_onnx(
    run: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    tta: bool | None = None,
    body: Path | None = None,
) -> Path:
    """Write RUN's model as ONNX (default RUN/model.onnx) and its metadata JSON; returns the path.

    tta: flip test-time augmentation inside the graph (default: as the run was validated).
    body: the ONNX graph of the model's backbone up to its pooled features (a transfer run's
    cached features.onnx): the run's linear head and softmax are appended to it instead of
    exporting the whole model again (~0.5 s instead of ~10 s for EfficientNet-Lite0).

    The export is checked before it is kept: ONNX Runtime must give PyTorch's probabilities
    (within TOLERANCE) on a batch of random images, else CheckpointError.
    """
    run = Path(run)
    loaded = load_model(run)
    meta = loaded.meta if tta is None else replace(loaded.meta, tta_flip=tta)
    out = Path(out) if out else run / FILE
    head = Probabilities(loaded.model, meta.tta_flip)
    example = random_batch(meta.image_size)
    classifier = getattr(loaded.model, "head", None)
    # the class list goes into the file itself (metadata_props), so the file's sha256 covers it
    # and a class list edited beside it (model.onnx.json) is caught (OnnxModel)
    props = {
        CLASSES_KEY: json.dumps(meta.classes),
        "imgclass.image_size": str(meta.image_size),
        "imgclass.input": INPUT_RULE,
        "imgclass.tta_flip": json.dumps(meta.tta_flip),
    }
    if (
        body is not None
        and body.is_file()
        and not meta.tta_flip
        and isinstance(classifier, torch.nn.Linear)
    ):
        append_head(body, classifier, out, props)
    else:
        export_graph(head, example, out, OUTPUT, props)
    with torch.no_grad():
        expected = head(example).numpy()
    difference = float(np.abs(OnnxModel(out, meta).run(example.numpy()) - expected).max())
    if not difference <= TOLERANCE:
        out.unlink()
        raise CheckpointError(
            f"{out}: ONNX Runtime differs from PyTorch by {difference:.2g} "
            f"(> {TOLERANCE}); not kept"
        )
    atomic.write_json(
        metadata_path(out),
        {
            **asdict(meta),
            "input": {
                "name": INPUT,
                "dtype": "float32",
                "shape": ["batch", 3, meta.image_size, meta.image_size],
                "meaning": "RGB pixels decoded and squashed to image_size, scaled to [0, 1] "
                "(normalisation), channels first",
            },
            "output": {
                "name": OUTPUT,
                "dtype": "float32",
                "shape": ["batch", len(meta.classes)],
                "meaning": "softmax probabilities in the order of `classes`"
                + (" (image and mirror averaged)" if meta.tta_flip else ""),
            },
            "metrics": rundir.metrics(run),
            "source_run": str(run.resolve()),
            "weights_sha256": weights_digest(run),  # which weights: see current_export
            "onnx_sha256": file_sha256(out),  # the file's own bytes: see check_onnx
        },
    )
    log.info("%s: ONNX Runtime matches PyTorch within %.1g on a random batch", out, difference)
    return out


def random_batch(image_size: int) -> torch.Tensor:
    """The example input of an export, and the batch its parity check runs."""
    return torch.rand(3, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))


def export_graph(
    module: torch.nn.Module,
    example: torch.Tensor,
    out: Path,
    output: str,
    props: dict[str, str] | None = None,
) -> None:
    """`module` (in eval mode) as an ONNX graph at `out`: input INPUT (example's shape, the batch
    dimension dynamic), output `output`; props: the file's metadata_props."""
    module.eval()
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(
        module,
        (example,),
        input_names=[INPUT],
        output_names=[output],
        dynamic_shapes=({0: batch},),
        opset_version=OPSET,
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    program.model.metadata_props.update(props or {})
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_with(out, lambda tmp: program.save(tmp, external_data=False))


def append_head(body: Path, linear: torch.nn.Linear, out: Path, props: dict[str, str]) -> None:
    """`body` (INPUT -> pooled features, its one output) with `linear` and a softmax after it:
    the whole model's graph, output OUTPUT, with `props` as its metadata_props. Checked like
    any export (export_onnx)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph_model = onnx.load(os.fspath(body))
    graph = graph_model.graph
    [features] = graph.output
    batch = features.type.tensor_type.shape.dim[0]
    graph.initializer.extend(
        [
            numpy_helper.from_array(linear.weight.detach().float().cpu().numpy(), "head.weight"),
            numpy_helper.from_array(linear.bias.detach().float().cpu().numpy(), "head.bias"),
        ]
    )
    graph.node.extend(
        [
            helper.make_node(
                "Gemm", [features.name, "head.weight", "head.bias"], ["head.logits"], transB=1
            ),
            helper.make_node("Softmax", ["head.logits"], [OUTPUT], axis=1),
        ]
    )
    del graph.output[:]
    graph.output.append(
        helper.make_tensor_value_info(
            OUTPUT, TensorProto.FLOAT, [batch.dim_param or batch.dim_value, linear.out_features]
        )
    )
    helper.set_model_props(graph_model, props)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_with(out, lambda tmp: onnx.save(graph_model, os.fspath(tmp)))


def ort_session(onnx_file: str | os.PathLike):
    """An ONNX Runtime CPU session on the usable cores; CheckpointError naming the file."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = runtime.usable_cores()
    options.inter_op_num_threads = 1
    # no busy-waiting between calls: on a shared or small CPU the spinning threads would take
    # the cores that decode the next images (and serve the next requests)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return onnxruntime.InferenceSession(
            os.fspath(onnx_file), options, providers=["CPUExecutionProvider"]
        )
    except Exception as err:  # ONNX Runtime raises its own exception types
        raise CheckpointError(
            f"{onnx_file}: not a loadable ONNX model ({str(err).splitlines()[0]})"
        ) from err


def caused_by_ctrl_c(err: BaseException) -> bool:
    """Whether a Ctrl-C (KeyboardInterrupt) is behind `err`: torch's exporter wraps it in its
    own errors."""
    cause: BaseException | None = err
    while cause is not None and not isinstance(cause, KeyboardInterrupt):
        cause = cause.__cause__ or cause.__context__
    return cause is not None


def check_onnx(onnx_file: Path, document: dict) -> None:
    """CheckpointError naming the file unless its bytes are those recorded at export (the
    sha256 in its .onnx.json); an export made before imgclass recorded it cannot be checked."""
    recorded = document.get("onnx_sha256")
    if recorded is None:
        raise CheckpointError(
            f"{onnx_file}: no sha256 of the file in "
            f"{metadata_path(onnx_file).name} (exported by an older imgclass): "
            "export it again"
        )
    if file_sha256(onnx_file) != recorded:
        raise CheckpointError(
            f"{onnx_file}: damaged or changed since its export (its sha256 "
            f"is not the one in {metadata_path(onnx_file).name}): export it "
            "again"
        )


def current_export(run: str | os.PathLike, tta_flip: bool) -> Path | None:
    """RUN/model.onnx if it holds the run's present weights and this TTA setting, else None.

    "Present weights": the sha256 recorded in model.safetensors when the export was made equals
    the one there now, so a run trained again (or resumed) into the same folder after its export
    never answers with the old model.
    """
    path = Path(run) / FILE
    if not path.is_file():
        return None
    try:
        meta, document = read_metadata(path)
        digest = weights_digest(run)
    except CheckpointError as err:
        log.warning("%s not used: %s", path, err)
        return None
    if digest is None or document.get("weights_sha256") != digest:
        log.warning(
            "%s not used: exported from other weights than %s/model.safetensors "
            "(export again with `imgclass export %s`)",
            path,
            run,
            run,
        )
        return None
    try:
        check_onnx(path, document)
        if meta.classes != read_meta(run).classes:
            raise CheckpointError(
                f"{metadata_path(path)}: its classes are not those of {run}/model.json"
            )
    except CheckpointError as err:
        log.warning("%s not used, PyTorch answers instead: %s", path, err)
        return None
    return path if meta.tta_flip == tta_flip else None


def read_metadata(onnx_file: str | os.PathLike) -> tuple[ModelMeta, dict]:
    """(ModelMeta, the whole JSON) of an exported model; CheckpointError naming the file."""
    path = metadata_path(onnx_file)
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (written beside the .onnx by imgclass export)")
    try:
        document = atomic.read_json(path)
        known = {f.name for f in fields(ModelMeta)}
        return ModelMeta(**{k: v for k, v in document.items() if k in known}), document
    except (ValueError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{path}: unreadable model metadata ({err})") from err


class OnnxModel:
    """An exported model in ONNX Runtime: the counterpart of predict_proba."""

    def __init__(self, onnx_file: str | os.PathLike, meta: ModelMeta):
        self.session = ort_session(onnx_file)
        self.meta = meta
        inside = self.session.get_modelmeta().custom_metadata_map.get(CLASSES_KEY)
        if inside is not None and json.loads(inside) != meta.classes:
            raise CheckpointError(
                f"{onnx_file}: the classes in {metadata_path(onnx_file).name} "
                f"({', '.join(meta.classes)}) are not those exported in the "
                f"file ({', '.join(json.loads(inside))})"
            )

    def run(self, x: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) float32 in [0, 1] -> (N, classes) probabilities."""
        return self.session.run([OUTPUT], {INPUT: np.ascontiguousarray(x, np.float32)})[0]

    def predict_proba(self, pixels: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, classes), in batches of batch_size as predict_proba."""
        pixels = np.asarray(pixels)
        out = [
            self.run(model_input(pixels[start : start + batch_size]))
            for start in range(0, len(pixels), batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, len(self.meta.classes)), np.float32)


def model_input(pixels: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [0, 1]: batches.to_float's values, bit for
    bit (tests/test_export.py), in numpy. No torch operation runs between two ONNX Runtime calls
    that way: one would wake torch's OpenMP workers, which then spin on the cores ONNX Runtime's
    threads need (one image through Predictor: p50 7.9 -> 4.8 ms, p99 17 -> 7.0 ms)."""
    x = np.ascontiguousarray(pixels.transpose(0, 3, 1, 2), dtype=np.float32)
    x /= np.float32(255)
    return x

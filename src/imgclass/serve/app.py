"""The FastAPI application: POST /predict, GET /health, GET /model, GET / (the web page), and
the Open Inference Protocol (KServe v2, also spoken by Triton, MLServer and TorchServe):
GET /v2, /v2/health/live, /v2/health/ready, /v2/models/{name}[/ready], POST
/v2/models/{name}/infer with a UINT8 [N, H, W, 3] pixel tensor or BYTES of encoded images (base64
strings in JSON); its errors are {"error": "..."} as the protocol says.

Bad requests get a 4xx answer naming the upload and the reason, in the decoder's vocabulary
(data/images.py): empty -> 400, not an image -> 415, truncated or undecodable -> 422, too many
pixels or too large a body -> 413, no image field -> 422, wrong method -> 405, a multipart body
without its closing boundary -> 400; a client gone mid-upload is one log line. Decoding runs in
worker threads (at most one per core), the model in the micro-batcher's: the event loop never
waits on either.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from importlib.metadata import version
from typing import Any

import anyio
import anyio.to_thread
import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from imgclass import runtime
from imgclass.data.images import (
    REASON_EMPTY,
    REASON_NOT_AN_IMAGE,
    REASON_TOO_MANY_PIXELS,
    ImageDecodeError,
)
from imgclass.predict import Predictor
from imgclass.serve.batching import MicroBatcher

log = logging.getLogger(__name__)

FIELDS = ("file", "files")  # multipart field names that carry images
MAX_FILES = 64  # images per request

_STATUS_BY_REASON = {REASON_EMPTY: 400, REASON_NOT_AN_IMAGE: 415, REASON_TOO_MANY_PIXELS: 413}
_ERRORS = {
    status: {"description": text}
    for status, text in {
        400: "empty body or image, or malformed multipart data",
        405: "method not allowed",
        413: "body larger than --max-upload-mb, or image with more pixels than --max-pixels",
        415: "not an image (unrecognised format)",
        422: "truncated or corrupt image, no image field, or a bad parameter",
    }.items()
}
_REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "file": {"type": "string", "format": "binary"},
                    "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                },
            }
        },
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}


class ClassScore(BaseModel):
    label: str
    index: int  # in the model's class order (GET /model's classes)
    probability: float


class ImagePrediction(BaseModel):
    name: str
    top: list[ClassScore]  # best first


class V2Tensor(BaseModel):
    """A tensor of the Open Inference Protocol's JSON: data flat in row-major order (or nested)."""

    name: str
    shape: list[int]
    datatype: str
    data: list
    parameters: dict | None = None


class V2Request(BaseModel):
    id: str | None = None
    inputs: list[V2Tensor]
    outputs: list[dict] | None = None  # [{"name": ...}]: the outputs wanted (default: all)
    parameters: dict | None = None


class V2Error(Exception):
    """A request the protocol answers with {"error": message} and this status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Predictions(BaseModel):
    predictions: list[ImagePrediction]  # in upload order


class _Multipart(MultiPartParser):
    """Starlette's multipart parser, knowing whether the body reached its closing boundary
    (python-multipart does not check: a body cut short parses as fewer fields)."""

    ended = False

    def on_end(self) -> None:
        super().on_end()
        self.ended = True


def _status(err: ImageDecodeError) -> int:
    return next(
        (status for reason, status in _STATUS_BY_REASON.items() if err.reason.startswith(reason)),
        422,
    )


def create_app(
    predictor: Predictor,
    *,
    max_upload_bytes: int = 20 * 2**20,
    top_k: int = 3,
    batch_size: int = 32,
) -> FastAPI:
    """The service around a loaded Predictor; its pixel limit is predictor.max_pixels."""
    batcher = MicroBatcher(predictor.predict_pixels, batch_size)
    default_top_k = top_k
    page = resources.files("imgclass.serve").joinpath("page.html").read_text(encoding="utf-8")
    decoders = anyio.CapacityLimiter(runtime.usable_cores())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(
        title="imgclass",
        summary=f"Image classifier: {', '.join(predictor.classes)}",
        lifespan=lifespan,
    )

    async def body_chunks(request: Request) -> AsyncIterator[bytes]:
        """The request body, refused with 413 as soon as it passes the limit."""
        too_large = HTTPException(
            413, f"request body larger than {max_upload_bytes} bytes (--max-upload-mb)"
        )
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_upload_bytes:
            raise too_large
        received = 0
        try:
            async for chunk in request.stream():
                received += len(chunk)
                if received > max_upload_bytes:
                    raise too_large
                yield chunk
        except ClientDisconnect:  # nobody to answer: a line in the log, not a traceback
            log.info("a client disconnected after %d bytes of its upload", received)
            raise HTTPException(400, "the client disconnected before its body ended") from None

    async def uploads(request: Request) -> list[tuple[str, bytes]]:
        """(name, bytes) of every image in the request: multipart fields or the raw body."""
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return [("<body>", b"".join([chunk async for chunk in body_chunks(request)]))]
        parser = _Multipart(
            request.headers,
            body_chunks(request),
            max_files=MAX_FILES,
            max_fields=MAX_FILES,
            max_part_size=max_upload_bytes,
        )
        try:
            form = await parser.parse()
        except MultiPartException as err:
            raise HTTPException(400, f"malformed multipart body: {err.message}") from err
        try:
            if not parser.ended:
                raise HTTPException(
                    400, "malformed multipart body: it ends before its closing boundary"
                )
            images = [
                (value.filename or field, value)
                for field, value in form.multi_items()
                if field in FIELDS and isinstance(value, UploadFile)
            ]
            if not images:
                got = ", ".join(sorted({f for f, _ in form.multi_items()})) or "none"
                raise HTTPException(
                    422,
                    f"no image field: send images as multipart field "
                    f"'file' (or 'files', repeated); fields sent: {got}",
                )
            return [(name, await value.read()) for name, value in images]
        finally:
            await form.close()

    async def decoded(name: str, data: bytes) -> np.ndarray:
        """One upload -> the model's pixels, decoded in a worker thread (ImageDecodeError)."""
        return await anyio.to_thread.run_sync(predictor.load_pixels, data, name, limiter=decoders)

    async def each(work: Callable[[Any], Awaitable[Any]], items: list) -> list:
        """`await work(item)` for every item at once (decoding in threads, the model calls
        batched across them); the first failure in item order is raised once all have ended."""
        results: list = [None] * len(items)

        async def one(index: int, item: Any) -> None:
            try:
                results[index] = await work(item)
            except Exception as err:  # raised below, the first in item order
                results[index] = err

        async with anyio.create_task_group() as group:
            for index, item in enumerate(items):
                group.start_soon(one, index, item)
        if failed := next((r for r in results if isinstance(r, Exception)), None):
            raise failed
        return results

    async def classify(name: str, data: bytes, k: int) -> ImagePrediction:
        try:
            pixels = await decoded(name, data)
        except ImageDecodeError as err:
            raise HTTPException(_status(err), str(err)) from err
        labels, probabilities = predictor.top(await batcher(pixels), k)
        return ImagePrediction(
            name=name,
            top=[
                ClassScore(label=label, index=predictor.classes.index(label), probability=p)
                for label, p in zip(labels, probabilities)
            ],
        )

    @app.post(
        "/predict",
        response_model=Predictions,
        responses=_ERRORS,
        openapi_extra={"requestBody": _REQUEST_BODY},
    )
    async def predict(
        request: Request,
        top_k: int | None = Query(
            None, ge=1, description="labels per image (default: the service's --top-k)"
        ),
    ) -> Predictions:
        """Top-k labels of one or several images: multipart field 'file' / 'files', or the body."""
        k = top_k or default_top_k
        images = await uploads(request)  # the first bad image (in upload order) answers for all
        return Predictions(predictions=await each(lambda image: classify(*image, k), images))

    @app.get("/health")
    async def health() -> dict:
        """Up and ready; how many model calls served how many images."""
        return {"status": "ok", "model_calls": batcher.batches, "images": batcher.images}

    @app.get("/model")
    async def model() -> dict:
        """Classes, input size, normalisation, architecture, metrics of the model served."""
        return predictor.describe()

    name = predictor.describe()["source"]
    size = predictor.meta.image_size
    outputs = {"probabilities": "FP32", "label": "BYTES", "index": "INT64"}

    @app.exception_handler(V2Error)
    async def v2_error(request: Request, err: V2Error) -> JSONResponse:
        return JSONResponse({"error": str(err)}, err.status)

    def known(model_name: str) -> None:
        if model_name != name:
            raise V2Error(404, f"no model {model_name!r}: this server serves {name!r}")

    @app.get("/v2")
    async def v2_server() -> dict:
        """Open Inference Protocol: the server's metadata."""
        return {"name": "imgclass", "version": version("imgclass"), "extensions": []}

    @app.get("/v2/health/live")
    async def v2_live() -> dict:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def v2_ready() -> dict:
        return {"ready": True}  # the model is loaded before the server listens

    @app.get("/v2/models/{model_name}/ready")
    async def v2_model_ready(model_name: str) -> dict:
        known(model_name)
        return {"name": name, "ready": True}

    @app.get("/v2/models/{model_name}")
    async def v2_model(model_name: str) -> dict:
        """Open Inference Protocol: the model's inputs and outputs (and its classes)."""
        known(model_name)
        return {
            "name": name,
            "versions": [],
            "platform": f"imgclass/{predictor.backend}",
            "inputs": [
                {"name": "image", "datatype": "UINT8", "shape": [-1, size, size, 3]},
                {"name": "image_bytes", "datatype": "BYTES", "shape": [-1]},
            ],
            "outputs": [
                {
                    "name": "probabilities",
                    "datatype": "FP32",
                    "shape": [-1, len(predictor.classes)],
                },
                {"name": "label", "datatype": "BYTES", "shape": [-1]},
                {"name": "index", "datatype": "INT64", "shape": [-1]},
            ],
            "parameters": {"classes": predictor.classes},
        }

    async def v2_images(tensor: V2Tensor) -> list[np.ndarray]:
        """A request's input -> (H, W, 3) uint8 images of the model's size."""
        flat = np.asarray(tensor.data, dtype=object).reshape(-1)
        if int(np.prod(tensor.shape)) != flat.size:
            raise V2Error(
                400,
                f"input {tensor.name!r}: shape {tensor.shape} holds "
                f"{int(np.prod(tensor.shape))} values, data has {flat.size}",
            )
        if tensor.datatype == "UINT8":
            if tensor.shape[1:] != [size, size, 3]:
                raise V2Error(
                    400,
                    f"input {tensor.name!r}: UINT8 pixels must have shape "
                    f"[N, {size}, {size}, 3] (RGB at the model's size), got "
                    f"{tensor.shape}",
                )
            try:
                pixels = np.array(flat.tolist(), dtype=np.int64)
            except (TypeError, ValueError) as err:
                raise V2Error(400, f"input {tensor.name!r}: UINT8 data must be integers") from err
            if pixels.size and (pixels.min() < 0 or pixels.max() > 255):
                raise V2Error(400, f"input {tensor.name!r}: UINT8 data must lie in 0..255")
            return list(pixels.astype(np.uint8).reshape(tensor.shape))
        if tensor.datatype == "BYTES":
            encoded = []
            for i, item in enumerate(flat.tolist()):
                where = f"{tensor.name}[{i}]"
                try:
                    encoded.append((where, base64.b64decode(item, validate=True)))
                except (TypeError, ValueError, binascii.Error) as err:
                    raise V2Error(
                        400, f"input {where}: not a base64 string of an encoded image"
                    ) from err
            try:
                return await each(lambda image: decoded(*image), encoded)
            except ImageDecodeError as err:
                raise V2Error(_status(err), str(err)) from err
        raise V2Error(
            400,
            f"input {tensor.name!r}: datatype {tensor.datatype} not served: "
            f"send UINT8 [N, {size}, {size}, 3] pixels or BYTES of encoded images",
        )

    @app.post("/v2/models/{model_name}/infer")
    async def v2_infer(model_name: str, request: Request) -> dict:
        """Open Inference Protocol: one input (pixels or encoded images) -> the class
        probabilities, the best label and its index, per image."""
        known(model_name)
        try:
            call = V2Request.model_validate_json(
                b"".join([chunk async for chunk in body_chunks(request)])
            )
        except ValidationError as err:
            raise V2Error(
                400,
                f"not an inference request: {err.errors()[0]['msg']} at "
                f"{'.'.join(map(str, err.errors()[0]['loc']))}",
            ) from err
        if len(call.inputs) != 1:
            raise V2Error(400, f"one input expected (image or image_bytes), got {len(call.inputs)}")
        wanted = [o.get("name") for o in call.outputs] if call.outputs else list(outputs)
        if unknown := [o for o in wanted if o not in outputs]:
            raise V2Error(400, f"no output {unknown[0]!r}: choose {', '.join(outputs)}")
        images = await v2_images(call.inputs[0])
        rows = await each(batcher, images)
        probabilities = np.array(rows, dtype=np.float32).reshape(len(images), -1)
        best = probabilities.argmax(axis=1) if len(images) else np.zeros(0, dtype=np.int64)
        data = {
            "probabilities": (list(probabilities.shape), probabilities.ravel().tolist()),
            "label": ([len(images)], [predictor.classes[i] for i in best]),
            "index": ([len(images)], best.tolist()),
        }
        answer = {
            "model_name": name,
            "outputs": [
                {"name": o, "datatype": outputs[o], "shape": data[o][0], "data": data[o][1]}
                for o in wanted
            ],
        }
        return {**answer, "id": call.id} if call.id is not None else answer

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        """The web page: drop or pick photos, see each one's top-k labels as bars."""
        return page

    return app


def serve(
    model: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_upload_bytes: int = 20 * 2**20,
    max_pixels: int = 40_000_000,
    top_k: int = 3,
    batch_size: int = 32,
    backend: str = "auto",
) -> None:
    """Load MODEL (run directory or .onnx) and serve it with uvicorn until interrupted."""
    import uvicorn

    predictor = Predictor(model, batch_size, max_pixels=max_pixels, backend=backend)
    log.info("%s: %s", model, predictor.backend)
    app = create_app(
        predictor, max_upload_bytes=max_upload_bytes, top_k=top_k, batch_size=batch_size
    )
    uvicorn.run(app, host=host, port=port, log_level="info")

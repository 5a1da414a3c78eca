"""`imgclass serve` as a real process on a loopback port, called over HTTP."""

from __future__ import annotations

import base64
import http.client
import io
import json
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image

from imgclass.predict import Predictor
from tests.conftest import make_class_tree
from tests.service import multipart, request, running_service


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_class_tree(tmp_path_factory.mktemp("photos"), per_class=4, seed=11)


def _expected(model, paths, top_k=2, precision="auto"):
    predictor = Predictor(model, precision=precision)
    return [(p.labels, p.probabilities) for p in predictor.predict(paths, top_k=top_k)]


def _answers(body):
    """/predict's entries as (labels, probabilities); each names its class's index too."""
    classes = ["blue", "green", "red"]  # trained_run's, in the model's order
    assert all(
        t["index"] == classes.index(t["label"]) for p in body["predictions"] for t in p["top"]
    )
    return [
        ([t["label"] for t in p["top"]], [t["probability"] for t in p["top"]])
        for p in body["predictions"]
    ]


def _same(answers, expected):
    assert [labels for labels, _ in answers] == [labels for labels, _ in expected]
    for (_, got), (_, want) in zip(answers, expected):
        assert got == pytest.approx(want, abs=1e-6)


@pytest.mark.precision
def test_health_model_page_and_openapi(served_run, trained_run):
    assert request(f"{served_run}/health")[1]["status"] == "ok"
    status, model = request(f"{served_run}/model")
    local = Predictor(trained_run)  # the service picks its backend the same way
    assert status == 200 and model["classes"] == local.meta.classes
    assert model["image_size"] == local.meta.image_size and model["backend"] == local.backend
    assert model["metrics"]["best_val_acc"] is not None
    assert model["source"] == trained_run.name  # issue 14.4: no server path shown to clients
    assert str(trained_run.parent) not in json.dumps(model)
    status, page = request(f"{served_run}/")
    assert status == 200 and '<input id="files" type="file"' in page
    assert "http://" not in page and "https://" not in page  # nothing fetched from elsewhere
    spec = request(f"{served_run}/openapi.json")[1]
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "image/*"} <= set(body)


def test_predict_multipart_raw_and_several(served_run, trained_run, photos):
    paths = sorted(photos.rglob("*.jpg"))[:5]
    expected = _expected(trained_run, paths)
    body, headers = multipart([("file", paths[0].name, paths[0].read_bytes())])
    status, answer = request(f"{served_run}/predict", body, headers)
    assert status == 200 and answer["predictions"][0]["name"] == paths[0].name
    _same(_answers(answer), expected[:1])

    status, answer = request(
        f"{served_run}/predict", paths[1].read_bytes(), {"Content-Type": "image/jpeg"}
    )
    assert status == 200
    _same(_answers(answer), expected[1:2])

    body, headers = multipart([("files", p.name, p.read_bytes()) for p in paths])
    status, answer = request(f"{served_run}/predict?top_k=3", body, headers)
    assert status == 200 and [p["name"] for p in answer["predictions"]] == [p.name for p in paths]
    _same(_answers(answer), _expected(trained_run, paths, top_k=3))


def test_sixteen_concurrent_clients_are_batched(served_run, trained_run, photos):
    paths = sorted(photos.rglob("*.jpg")) * 4
    before = request(f"{served_run}/health")[1]

    def post(path):
        return request(
            f"{served_run}/predict", path.read_bytes(), {"Content-Type": "application/octet-stream"}
        )

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(post, paths))
    assert all(status == 200 for status, _ in answers)
    _same([_answers(body)[0] for _, body in answers], _expected(trained_run, paths))
    after = request(f"{served_run}/health")[1]
    images, calls = after["images"] - before["images"], after["model_calls"] - before["model_calls"]
    assert images == len(paths) and calls < images  # some model calls took several requests


def _png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (10, 120, 30)).save(out, format="PNG")
    return out.getvalue()


def test_bad_requests_get_clear_4xx_and_the_service_stays_up(served_run, photos):
    jpeg = next(photos.rglob("*.jpg")).read_bytes()
    raw = {"Content-Type": "application/octet-stream"}
    cases = [  # (body, headers, method, path, status, words in the detail)
        (b"just some text", raw, "POST", "/predict", 415, "not an image"),
        (jpeg[: len(jpeg) // 3], raw, "POST", "/predict", 422, "truncated"),
        (b"", raw, "POST", "/predict", 400, "empty"),
        (*multipart([("photo", "a.jpg", jpeg)]), "POST", "/predict", 422, "no image field"),
        (*multipart([("file", "empty.jpg", b"")]), "POST", "/predict", 400, "empty.jpg: empty"),
        (
            *multipart([("file", "ok.jpg", jpeg), ("file", "text.jpg", b"hello")]),
            "POST",
            "/predict",
            415,
            "text.jpg: not an image",
        ),
        (
            np.random.default_rng(0).bytes(1_200_000),
            raw,
            "POST",
            "/predict",
            413,
            "larger than 1048576 bytes",
        ),
        (_png(1001, 1000), raw, "POST", "/predict", 413, "too many pixels (1001 x 1000"),
        (
            b"not multipart at all",
            {"Content-Type": "multipart/form-data; boundary=x"},
            "POST",
            "/predict",
            400,
            "malformed multipart",
        ),
        (None, {}, "GET", "/predict", 405, "Method Not Allowed"),
        (jpeg, raw, "PUT", "/predict", 405, "Method Not Allowed"),
        (jpeg, raw, "POST", "/predict?top_k=0", 422, ""),
    ]
    for body, headers, method, path, status, words in cases:
        got, answer = request(f"{served_run}{path}", body, headers, method)
        assert got == status, (path, status, answer)
        assert words in str(answer["detail"]), answer
    assert request(f"{served_run}/health")[1]["status"] == "ok"
    status, answer = request(f"{served_run}/predict", jpeg, raw)
    assert status == 200 and len(answer["predictions"]) == 1


def test_chunked_upload_over_the_limit_gets_413(served_run):
    """No Content-Length to check first: the body is counted as it arrives."""
    parts = urlsplit(served_run)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    chunks = (b"x" * 65536 for _ in range(24))  # 1.5 MiB against a 1 MiB limit
    try:
        connection.request(
            "POST",
            "/predict",
            body=chunks,
            encode_chunked=True,
            headers={"Content-Type": "application/octet-stream"},
        )
        response = connection.getresponse()
        assert response.status == 413 and b"larger than" in response.read()
    except (BrokenPipeError, ConnectionResetError):  # the server may answer and close earlier
        response = connection.getresponse()
        assert response.status == 413
    finally:
        connection.close()
    assert request(f"{served_run}/health")[1]["status"] == "ok"


@pytest.mark.precision
def test_serve_an_onnx_file(exported_onnx, trained_run, photos, tmp_path):
    path = next(photos.rglob("*.jpg"))
    with running_service(exported_onnx, tmp_path) as url:
        assert request(f"{url}/model")[1]["backend"] == "onnxruntime"
        status, answer = request(f"{url}/predict?top_k=2", path.read_bytes())
    assert status == 200
    labels, probabilities = _answers(answer)[0]
    [(want_labels, want_probabilities)] = _expected(trained_run, [path], precision="fp32")
    assert labels == want_labels and probabilities == pytest.approx(want_probabilities, abs=1e-4)


def test_a_client_gone_mid_upload_is_a_log_line_and_a_cut_multipart_body_is_400(
    trained_run, photos, tmp_path
):
    """Issue 13.12, against a server process of its own (its log is read)."""
    import socket
    import time

    jpeg = next(photos.rglob("*.jpg")).read_bytes()
    with running_service(trained_run, tmp_path) as url:
        body, headers = multipart([("file", "a.jpg", jpeg)])
        cut = body[: body.rindex(b"--imgclass-test-boundary")]  # no closing boundary
        status, answer = request(f"{url}/predict", cut, headers)
        assert status == 400, answer
        assert answer["detail"] == ("malformed multipart body: it ends before its closing boundary")
        parts = urlsplit(url)
        for kind, payload in (("application/octet-stream", jpeg), (headers["Content-Type"], body)):
            with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
                sock.sendall(
                    f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: {kind}\r\n"
                    f"Content-Length: {len(payload) + 100_000}\r\n\r\n".encode()
                    + payload
                )  # ... and gone before the rest
            time.sleep(0.5)
        assert request(f"{url}/health")[1]["status"] == "ok"
        time.sleep(0.5)
    [log] = tmp_path.glob("serve-*.log")
    text = log.read_text()
    assert "Traceback" not in text, text
    assert text.count("a client disconnected after ") == 2, text


def _infer(url: str, name: str, call: dict) -> tuple[int, dict]:
    return request(
        f"{url}/v2/models/{name}/infer",
        json.dumps(call).encode(),
        {"Content-Type": "application/json"},
    )


def test_the_open_inference_protocol(served_run, trained_run, photos):
    """Issue 14.4: KServe v2 as a client library speaks it (plain HTTP + JSON): health,
    metadata, a UINT8 pixel tensor and BYTES of encoded images, and its {"error"} answers."""
    name = trained_run.name
    assert request(f"{served_run}/v2/health/live") == (200, {"live": True})
    assert request(f"{served_run}/v2/health/ready") == (200, {"ready": True})
    assert request(f"{served_run}/v2/models/{name}/ready") == (200, {"name": name, "ready": True})
    assert request(f"{served_run}/v2")[1]["name"] == "imgclass"
    status, meta = request(f"{served_run}/v2/models/{name}")
    predictor = Predictor(trained_run)
    size = predictor.meta.image_size
    assert status == 200 and meta["name"] == name
    assert meta["inputs"][0] == {"name": "image", "datatype": "UINT8", "shape": [-1, size, size, 3]}
    assert {o["name"]: o["shape"] for o in meta["outputs"]} == {
        "probabilities": [-1, 3],
        "label": [-1],
        "index": [-1],
    }
    assert meta["parameters"]["classes"] == predictor.classes

    paths = sorted(photos.rglob("*.jpg"))[:3]
    pixels = np.stack([predictor.load_pixels(p) for p in paths])  # what the model takes
    want = predictor.predict_pixels(pixels)
    status, answer = _infer(
        served_run,
        name,
        {
            "id": "a-1",
            "inputs": [
                {
                    "name": "image",
                    "shape": list(pixels.shape),
                    "datatype": "UINT8",
                    "data": pixels.ravel().tolist(),
                }
            ],
        },
    )
    assert status == 200 and answer["id"] == "a-1" and answer["model_name"] == name
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert outputs["probabilities"]["shape"] == [3, 3]
    assert np.allclose(np.reshape(outputs["probabilities"]["data"], (3, 3)), want, atol=1e-6)
    assert outputs["index"]["data"] == want.argmax(axis=1).tolist()
    assert outputs["label"]["data"] == [predictor.classes[i] for i in want.argmax(axis=1)]

    encoded = [base64.b64encode(p.read_bytes()).decode("ascii") for p in paths]
    status, answer = _infer(
        served_run,
        name,
        {
            "inputs": [{"name": "image_bytes", "shape": [3], "datatype": "BYTES", "data": encoded}],
            "outputs": [{"name": "label"}],
        },
    )
    assert status == 200 and "id" not in answer
    assert answer["outputs"] == [
        {
            "name": "label",
            "datatype": "BYTES",
            "shape": [3],
            "data": [p.label for p in predictor.predict(paths)],
        }
    ]

    bad = [  # (model, request, status, words of the error)
        ("nope", {"inputs": []}, 404, "no model 'nope'"),
        (name, {"inputs": "x"}, 400, "not an inference request"),
        (
            name,
            {
                "inputs": [
                    {"name": "image", "shape": [1, 8, 8, 3], "datatype": "UINT8", "data": [0] * 192}
                ]
            },
            400,
            f"[N, {size}, {size}, 3]",
        ),
        (
            name,
            {
                "inputs": [
                    {"name": "image", "shape": [2], "datatype": "BYTES", "data": [encoded[0]]}
                ]
            },
            400,
            "shape [2] holds 2 values, data has 1",
        ),
        (
            name,
            {
                "inputs": [
                    {"name": "image_bytes", "shape": [1], "datatype": "BYTES", "data": ["%%%"]}
                ]
            },
            400,
            "not a base64 string",
        ),
        (
            name,
            {
                "inputs": [
                    {
                        "name": "image_bytes",
                        "shape": [1],
                        "datatype": "BYTES",
                        "data": [base64.b64encode(b"text").decode()],
                    }
                ]
            },
            415,
            "image_bytes[0]: not an image",
        ),
        (
            name,
            {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]},
            400,
            "datatype FP32 not served",
        ),
        (
            name,
            {
                "inputs": [
                    {"name": "image_bytes", "shape": [1], "datatype": "BYTES", "data": [encoded[0]]}
                ],
                "outputs": [{"name": "logits"}],
            },
            400,
            "no output 'logits'",
        ),
    ]
    for model, call, want_status, words in bad:
        status, answer = _infer(served_run, model, call)
        assert status == want_status and words in answer["error"], (call, answer)

"""`imgclass serve` as a real subprocess on a free loopback port, and a small HTTP client."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

STARTUP_SECONDS = 120  # torch and the model load first; CI machines are slow and shared


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_service(model: Path, folder: Path, *options: str) -> Iterator[str]:
    """Start the service, wait for /health, yield its URL; stop it (and show its log) after."""
    port = free_port()
    log_path = folder / f"serve-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "imgclass", "serve", str(model), "--port", str(port), *options],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"imgclass serve exited ({process.returncode}):\n{log_path.read_text()}"
                )
            with contextlib.suppress(OSError):
                if request(f"{url}/health")[0] == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"imgclass serve not up after {STARTUP_SECONDS} s:\n{log_path.read_text()}"
                )
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def request(
    url: str, data: bytes | None = None, headers: dict | None = None, method: str | None = None
) -> tuple[int, dict | str]:
    """(status, JSON body or text) of one HTTP request; 4xx and 5xx answers are returned too.

    A server may answer (413) and close before a large body is sent whole: the answer is still
    read after the broken pipe.
    """
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            connection.request(
                method or ("GET" if data is None else "POST"),
                f"{parts.path or '/'}{'?' + parts.query if parts.query else ''}",
                body=data,
                headers=headers or {},
            )
        response = connection.getresponse()
        status, body, kind = response.status, response.read(), response.headers
    finally:
        connection.close()
    if kind.get_content_type() == "application/json":
        return status, json.loads(body)
    return status, body.decode()


def multipart(files: list[tuple[str, str, bytes]]) -> tuple[bytes, dict]:
    """(body, headers) of a multipart/form-data upload of (field, filename, content) parts."""
    boundary = "imgclass-test-boundary-7d93"
    parts = []
    for field, filename, content in files:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
            + content
            + b"\r\n"
        )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}

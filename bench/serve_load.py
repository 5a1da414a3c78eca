"""Load on `imgclass serve`: requests/s and p50/p99 latency for 1, 4 and 16 concurrent clients.

Starts the service as a real process on a free loopback port (nothing leaves the machine), then
for each number of clients, interleaved repetition by repetition, runs that many threads, each
with its own keep-alive connection, posting single flowers5 photos (the JPEG bytes as the body)
back to back for --seconds or --requests, whichever ends first. Every answer must be 200 with one
prediction; anything else counts as an error. The service's /health tells how many model calls
the images took (micro-batching).

    python bench/serve_load.py MODEL [--backend auto|pytorch|onnx] [--data DIR] [--clients 1 4 16]
        [--seconds 10] [--reps 2]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's tests/ helpers
from imgclass import runtime  # noqa: E402
from tests.service import request, running_service  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "flowers5"


def load(url: str, photos: list[bytes], clients: int, seconds: float, limit: int) -> dict:
    """Latencies (ms) and errors of `clients` threads posting photos until time or count ends."""
    parts = urlsplit(url)
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    sent = iter(range(limit))
    deadline = time.perf_counter() + seconds

    def client(index: int) -> None:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        photo = index
        while time.perf_counter() < deadline and next(sent, None) is not None:
            body = photos[photo % len(photos)]
            photo += clients
            start = time.perf_counter()
            try:
                connection.request(
                    "POST", "/predict", body=body, headers={"Content-Type": "image/jpeg"}
                )
                response = connection.getresponse()
                answer = response.read()
                ok = response.status == 200 and len(json.loads(answer)["predictions"]) == 1
                problem = None if ok else f"{response.status}: {answer[:200]!r}"
            except (OSError, http.client.HTTPException, ValueError) as err:
                problem = f"{type(err).__name__}: {err}"
                connection.close()
                connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
            elapsed = (time.perf_counter() - start) * 1000
            with lock:
                (errors.append(problem) if problem else latencies.append(elapsed))
        connection.close()

    before = request(f"{url}/health")[1]
    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    after = request(f"{url}/health")[1]
    latencies.sort()
    calls = after["model_calls"] - before["model_calls"]
    return {
        "rps": len(latencies) / wall,
        "p50": latencies[len(latencies) // 2],
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "requests": len(latencies),
        "errors": errors,
        "per_call": (after["images"] - before["images"]) / max(calls, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="a run directory or an exported .onnx file")
    parser.add_argument("--data", type=Path, default=SHARED)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seconds", type=float, default=10, help="per level and repetition")
    parser.add_argument("--requests", type=int, default=3000, help="most per level and rep")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--photos", type=int, default=256, help="distinct photos sent")
    parser.add_argument(
        "--backend",
        choices=["auto", "pytorch", "onnx"],
        default="auto",
        help="the service's engine for a run directory",
    )
    args = parser.parse_args()
    print(runtime.describe_cpu())  # the figures below are for this CPU, bf16 answer and load
    files = sorted(p for p in args.data.rglob("*") if p.is_file())
    photos = [p.read_bytes() for p in files[:: max(1, len(files) // args.photos)][: args.photos]]
    results: dict[int, list[dict]] = {n: [] for n in args.clients}
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_service(args.model, Path(tmp), "--backend", args.backend) as url,
    ):
        load(url, photos, 4, 2, 200)  # warm-up
        for _ in range(args.reps):
            for clients in args.clients:
                results[clients].append(load(url, photos, clients, args.seconds, args.requests))
    print(
        f"imgclass serve {args.model} --backend {args.backend}, {len(photos)} flowers5 photos "
        f"(JPEG bodies), loopback; median of {args.reps} interleaved runs of "
        f"<= {args.seconds:g} s [min-max]"
    )
    print(
        f"{'clients':>7} {'requests/s':>18} {'p50 ms':>18} {'p99 ms':>18} "
        f"{'images/model call':>18} {'requests':>9} {'errors':>7}"
    )
    for clients, runs in results.items():
        cells = []
        for key in ("rps", "p50", "p99", "per_call"):
            values = [r[key] for r in runs]
            cells.append(f"{statistics.median(values):.1f} [{min(values):.1f}-{max(values):.1f}]")
        errors = [e for r in runs for e in r["errors"]]
        print(
            f"{clients:>7} "
            + " ".join(f"{c:>18}" for c in cells)
            + f" {sum(r['requests'] for r in runs):>9} {len(errors):>7}"
        )
        for error in errors[:3]:
            print(f"        error: {error}")
    first, last = args.clients[0], args.clients[-1]
    ratio = statistics.median(r["rps"] for r in results[last]) / statistics.median(
        r["rps"] for r in results[first]
    )
    print(f"throughput, {last} clients / {first}: {ratio:.2f}x")


if __name__ == "__main__":
    main()

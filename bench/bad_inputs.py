"""Every bad input of issue 13 in one go, as a user meets it: real `imgclass` processes (and a
real `imgclass serve` on loopback), one row per case: what was done, the exit code or HTTP
status, and the last line the user reads. The table is where the next audit starts.

    python bench/bad_inputs.py            # ~1-2 min on 2 cores: one tiny training first
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.conftest import make_class_tree  # noqa: E402 - the tests' own synthetic photos
from tests.service import multipart, request, running_service  # noqa: E402

TINY = ("--recipe", "seed", "--epochs", "1", "--image-size", "8")


def imgclass(
    *args, cwd: Path | None = None, limit_bytes: int | None = None, look_for: str = ""
) -> tuple[int, str]:
    """(exit code, what the user reads) of one `imgclass` process: its `Error:` line, else the
    first line holding `look_for`, else its last line on stderr (warnings), else on stdout."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    done = subprocess.run(
        [sys.executable, "-m", "imgclass", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=cap if limit_bytes else None,
    )
    errors, output = done.stderr.strip().splitlines(), done.stdout.strip().splitlines()
    last = (
        next((line for line in errors if line.startswith("Error:")), None)
        or next((line for line in errors + output if look_for and look_for in line), None)
        or ((errors or output or [""])[-1])
    )
    if "Traceback" in done.stderr:
        last += "  [TRACEBACK]"
    return done.returncode, last


def cases(tmp: Path, run: Path, data: Path) -> list[tuple[str, Callable[[], tuple[int, str]]]]:
    def damaged_onnx() -> tuple[int, str]:
        copy = tmp / "damaged-run"
        shutil.copytree(run, copy)
        raw = bytearray((copy / "model.onnx").read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        (copy / "model.onnx").write_bytes(bytes(raw))
        return imgclass("predict", copy, next(data.rglob("*.jpg")), look_for="model.onnx")

    def user_files() -> tuple[int, str]:
        mine = tmp / "mine"
        mine.mkdir()
        (mine / "config.json").write_text("{}")
        return imgclass("train", data, "--out", mine, *TINY)

    def locked() -> tuple[int, str]:
        out = tmp / "locked"
        out.mkdir()
        holder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys, time; from pathlib import Path; "
                "from imgclass.rundir import locked\nwith locked(Path(sys.argv[1])):\n"
                "    print('held', flush=True); time.sleep(600)",
                str(out),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            holder.stdout.readline()
            return imgclass("train", data, "--out", out, *TINY)
        finally:
            holder.kill()
            holder.wait()

    def presplit() -> tuple[int, str]:
        root = tmp / "presplit"
        make_class_tree(root / "train", per_class=4)
        make_class_tree(root / "val", per_class=2, seed=1)
        return imgclass("scan", root, "--image-size", "8", look_for="split already")

    def fifo() -> tuple[int, str]:
        folder = tmp / "with-fifo"
        shutil.copytree(data / "red", folder)
        os.mkfifo(folder / "pipe.jpg")
        code, _ = imgclass("predict", run, folder)
        return code, "(the FIFO is skipped; predict ends)" if code == 0 else "hung or failed"

    def recipe(content: str) -> Callable[[], tuple[int, str]]:
        def case() -> tuple[int, str]:
            path = tmp / "recipe.json"
            path.write_text(content)
            return imgclass("train", data, "--out", tmp / "r", "--recipe", path)

        return case

    def empty_class() -> tuple[int, str]:
        root = tmp / "empty-class"
        shutil.copytree(data, root)
        (root / "purple").mkdir()
        return imgclass("train", root, "--out", tmp / "e", *TINY)

    def one_image_class() -> tuple[int, str]:
        root = tmp / "one-image"
        shutil.copytree(data, root)
        make_class_tree(root, per_class=1, classes={"purple": (128, 0, 128)})
        return imgclass("train", root, "--out", tmp / "o", *TINY)

    def corrupt_zip() -> tuple[int, str]:
        path = tmp / "broken.zip"
        path.write_bytes(b"PK\x03\x04 not really a zip")
        return imgclass("prepare", path, "--out", tmp / "prepared")

    def unsafe_zip() -> tuple[int, str]:
        path = tmp / "unsafe.zip"
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("../../escape/cat/a.jpg", (data / "red" / "red_000.jpg").read_bytes())
            archive.writestr("cat/b.jpg", (data / "red" / "red_001.jpg").read_bytes())
        return imgclass("prepare", path, "--out", tmp / "unsafe-out", look_for="unsafe")

    def part_left() -> tuple[int, str]:
        copy = tmp / "part-run"
        shutil.copytree(run, copy)
        (copy / "metrics.json").unlink()  # resumable, as after a kill
        (copy / ".checkpoint.safetensors.abc123.part").write_bytes(bytes(1000))
        code, _ = imgclass("train", "--resume", copy)
        left = list(copy.glob("*.part"))
        return code, f"{len(left)} .part files left after --resume"

    def serve_cases() -> tuple[int, str]:
        jpeg = (data / "red" / "red_000.jpg").read_bytes()
        with running_service(run, tmp) as url:
            body, headers = multipart([("file", "a.jpg", jpeg)])
            cut = body[: body.rindex(b"--imgclass-test-boundary")]
            status, answer = request(f"{url}/predict", cut, headers)
        return status, answer["detail"]

    recipe_cases = [
        ("recipe: unknown key", '{"epoch": 3}'),
        ("recipe: wrong type", '{"epochs": "ten"}'),
        ("recipe: 1.5 epochs", '{"epochs": 1.5}'),
        ("recipe: a list", "[1, 2]"),
        ("recipe: invalid JSON", '{"epochs": 2,}'),
    ]
    return [
        ("1 model.onnx damaged, predict", damaged_onnx),
        ("2 --out inside the data", lambda: imgclass("train", data, "--out", data / "run", *TINY)),
        ("3 a second training into a locked --out", locked),
        ("4 user files in --out", user_files),
        ("6 data split already (train/ val/)", presplit),
        ("7 a FIFO in a folder given to predict", fifo),
        (
            "8 a full disk while training (file-size limit)",
            lambda: imgclass(
                "train",
                data,
                "--out",
                tmp / "full",
                *TINY,
                "--cache-dir",
                tmp / "full-cache",
                limit_bytes=2000,
            ),
        ),
        *[(f"9 {name}", recipe(content)) for name, content in recipe_cases],
        (
            "10 --image-size 30000",
            lambda: imgclass("train", data, "--out", tmp / "big", "--image-size", "30000"),
        ),
        ("11 predict --batch-size 0", lambda: imgclass("predict", run, data, "--batch-size", "0")),
        ("11 a class folder without images", empty_class),
        ("11 a class with one image", one_image_class),
        ("12 serve: multipart without its closing boundary", serve_cases),
        ("13 a .part left by a killed write, then --resume", part_left),
        ("13 prepare a corrupt zip", corrupt_zip),
        ("-- prepare a zip with a member outside its root", unsafe_zip),
    ]


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bad-inputs-") as name:
        tmp = Path(name)
        os.environ["IMGCLASS_CACHE_DIR"] = str(tmp / "cache")
        data = make_class_tree(tmp / "data", per_class=6)
        code, last = imgclass("train", data, "--out", tmp / "run", *TINY, "--keep-checkpoint")
        if code:
            sys.exit(f"the tiny training failed: {last}")
        rows = [(case, *check()) for case, check in cases(tmp, tmp / "run", data)]
    width = max(len(case) for case, _, _ in rows)
    print(f"{'case (issue 13 item)':<{width}}  {'exit/HTTP':>9}  what the user reads")
    for case, code, last in rows:
        print(f"{case:<{width}}  {code:>9}  {last.replace(name, '$TMP')}")
    print(json.dumps({"cases": len(rows), "tracebacks": sum("[TRACEBACK]" in r[2] for r in rows)}))


if __name__ == "__main__":
    main()

"""Atomic file writes: a hidden temporary file in the same folder, then `os.replace`.

A reader (or a rerun after a crash) sees either the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_bytes(dest: str | os.PathLike, data: bytes) -> None:
    dest = Path(dest)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(dest: str | os.PathLike, text: str) -> None:
    write_bytes(dest, text.encode("utf-8"))


def write_json(dest: str | os.PathLike, value: Any) -> None:
    # ASCII escapes: a path with non-UTF-8 bytes (a lone surrogate in Python) still writes
    write_text(dest, json.dumps(value, indent=2, ensure_ascii=True) + "\n")

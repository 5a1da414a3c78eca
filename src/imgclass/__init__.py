"""imgclass: folders or zip archives of labelled photos in, a trained image classifier out.

Public API: train, evaluate, load_model, Predictor, prepare. Imported on first use, so that
`import imgclass` stays cheap and the command line starts fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__all__ = ["Predictor", "evaluate", "load_model", "prepare", "train"]

_HOMES = {
    "train": "imgclass.training",
    "evaluate": "imgclass.evaluation",
    "load_model": "imgclass.checkpoint",
    "Predictor": "imgclass.predict",
    "prepare": "imgclass.data.ingest",
}

if TYPE_CHECKING:
    from imgclass.checkpoint import load_model
    from imgclass.data.ingest import prepare
    from imgclass.evaluation import evaluate
    from imgclass.predict import Predictor
    from imgclass.training import train


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'imgclass' has no attribute {name!r}")

"""The built-in data set: scikit-learn's 1,797 handwritten digits (8x8 scans of real handwriting),
written once as a class-folder tree of PNGs so that it travels the same path as any user's photos.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image

from imgclass import atomic
from imgclass.data.cache import default_cache_dir

log = logging.getLogger(__name__)


def digits_folder(cache_dir: str | os.PathLike | None = None) -> Path:
    """`<cache>/datasets/digits/<0..9>/<n>.png`, written on first use."""
    from sklearn.datasets import load_digits  # shipped with scikit-learn, no download

    root = Path(cache_dir or default_cache_dir()) / "datasets" / "digits"
    done = root.with_name("digits.complete")  # beside the tree: not a file of the data set
    if done.exists():
        return root
    digits = load_digits()
    log.info("writing the built-in digits data set (%d images) to %s", len(digits.images), root)
    for index, (image, label) in enumerate(zip(digits.images, digits.target)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.round(image * (255 / 16)).astype(np.uint8)  # values are 0..16
        atomic.write_with(
            folder / f"{index:04d}.png",
            lambda tmp, p=pixels: Image.fromarray(p).save(tmp, format="PNG"),
        )
    atomic.write_text(done, f"{len(digits.images)}\n")
    return root

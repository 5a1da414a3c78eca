"""Stratified, seeded train/validation split, saved with the run as file paths.

Given groups (the content hashes), every copy of a content lands on the same side: a duplicated
photo is never trained on and validated against. The unique contents are split stratified by
class, then each expands to all its copies; without duplicates this is exactly the plain split.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imgclass import atomic
from imgclass.data.dataset import Dataset
from imgclass.data.scan import DataError, classes_without_images
from imgclass.runtime import stream_seed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Split:
    train: np.ndarray  # indices into the decodable images, sorted
    val: np.ndarray
    test: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # data split already

    def sides(self) -> list[tuple[str, np.ndarray]]:
        """(name, indices) of each side that holds images: train, val, and test if any."""
        every = (("train", self.train), ("val", self.val), ("test", self.test))
        return [(name, index) for name, index in every if name != "test" or len(index)]


def given_split(dataset: Dataset) -> Split:
    """The split of data split already (Dataset.sides: its train, validation and maybe test
    folders). Every class needs training images; a content found in the training folder and
    in another is a warning (that side's accuracy is then not a held-out figure)."""
    side_of = {folder: side for side, folder in dataset.sides.items()}
    of = np.array([side_of[path.split("/", 1)[0]] for path in dataset.paths])
    split = Split(*(np.flatnonzero(of == side) for side in ("train", "val", "test")))
    untaught = sorted(
        set(dataset.classes) - {dataset.classes[c] for c in dataset.labels[split.train]}
    )
    if untaught:
        raise DataError(
            f"no training images ({dataset.sides['train']}/) for "
            f"{'class' if len(untaught) == 1 else 'classes'} {', '.join(untaught)}"
        )
    if not len(split.val):
        raise DataError(f"no validation images in {dataset.sides['val']}/")
    trained = {dataset.sha256[i] for i in split.train}
    for side, index in split.sides()[1:]:
        copies = sum(dataset.sha256[i] in trained for i in index)
        if copies:
            log.warning(
                "%d images of %s/ have the same content as a training image: its "
                "accuracy is not a held-out figure",
                copies,
                dataset.sides[side],
            )
    return split


def _approximate_mode(counts: np.ndarray, draws: int, rng: np.random.RandomState) -> np.ndarray:
    """How many of `draws` each class gets: its share rounded down, the rest to the largest
    remainders, ties broken at random (scikit-learn's utils.extmath._approximate_mode)."""
    continuous = counts / counts.sum() * draws
    taken = np.floor(continuous)
    need = int(draws - taken.sum())
    remainder = continuous - taken
    for value in np.sort(np.unique(remainder))[::-1]:
        if need <= 0:
            break
        (tied,) = np.where(remainder == value)
        add = min(len(tied), need)
        taken[rng.choice(tied, size=add, replace=False)] += 1
        need -= add
    return taken.astype(int)


def _stratified_sample(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n indices of labels, each class in proportion: the validation side of scikit-learn's
    train_test_split(test_size=n, stratify=labels, random_state=seed), draw for draw.

    Kept here so that a seed gives the same split whatever scikit-learn is installed (and its
    ~75 MB import stays out of training); tests/test_split.py compares the two.
    """
    rng = np.random.RandomState(seed)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    members = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])
    n_train = _approximate_mode(counts, len(labels) - n, rng)
    n_val = _approximate_mode(counts - n_train, n, rng)
    return np.concatenate(
        [m.take(rng.permutation(len(m)))[k : k + v] for m, k, v in zip(members, n_train, n_val)]
    )


def stratified_split(
    labels: np.ndarray,
    val_fraction: float,
    seed: int,
    groups: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
) -> Split:
    """Each class contributes about val_fraction of its images to validation.

    groups: one key per image (its sha256); images sharing a key always land on the same side,
    and val_fraction then counts distinct contents. A group's class is that of its first image
    (groups span classes only when label conflicts are kept). classes: the data set's classes,
    each of which must have images (else DataError naming those that have none).
    """
    labels = np.asarray(labels, dtype=np.int64)
    if groups is None:
        group_of = first = np.arange(len(labels))
    else:
        if len(groups) != len(labels):
            raise ValueError(f"{len(groups)} groups for {len(labels)} labels")
        # the groups numbered by first appearance, so that distinct contents split as plain
        # images (a dict of the keys: np.unique on them made a 256-byte string of each, 51 MB
        # at 200k images, and sorted a copy)
        numbers: dict[str, int] = {}
        group_of = np.fromiter(
            (numbers.setdefault(key, len(numbers)) for key in groups), np.int64, len(groups)
        )
        first = np.unique(group_of, return_index=True)[1]
    group_labels = labels[first]
    counts = np.bincount(group_labels, minlength=len(classes or ()))
    present = counts[counts > 0]
    if len(present) < 2:
        raise DataError(f"need at least 2 classes with images to train, found {len(present)}")
    if classes is not None and len(present) < len(classes):  # outputs that no image teaches
        raise classes_without_images([classes[c] for c in np.flatnonzero(counts == 0)])
    if present.min() < 2:
        copies = " of different content (copies count once)" if len(first) < len(labels) else ""
        short = [int(c) for c in np.flatnonzero((counts > 0) & (counts < 2))]
        named = ", ".join(classes[c] if classes is not None else f"class {c}" for c in short)
        raise DataError(
            f"every class needs at least 2 images{copies} (one for training, one "
            f"for validation); {named} {'has' if len(short) == 1 else 'have'} 1"
        )
    n_val = max(round(val_fraction * len(first)), len(present))  # at least one per class
    if len(first) - n_val < len(present):
        raise DataError(
            f"a validation share of {val_fraction} of {len(first)} images leaves "
            f"fewer training images than the {len(present)} classes"
        )
    val_groups = _stratified_sample(group_labels, n_val, stream_seed(seed, "split") % 2**32)
    in_val = np.isin(group_of, val_groups)
    return Split(np.flatnonzero(~in_val), np.flatnonzero(in_val))


def split_json(split: Split, dataset: Dataset, seed: int, val_split: float) -> dict:
    """What split.json holds: every file of each side with its content hash and class."""
    return {
        "seed": seed,
        "val_split": val_split,
        "given": dataset.sides,
        **{
            side: [
                {
                    "path": dataset.paths[i],
                    "sha256": dataset.sha256[i],
                    "label": dataset.classes[dataset.labels[i]],
                }
                for i in index
            ]
            for side, index in split.sides()
        },
    }


def saved_split(path: Path, dataset: Dataset) -> tuple[Split, list[str]]:
    """The split stored in split.json as indices into `dataset` (the data loaded again).

    Returns it with the stored files that are missing or changed (content or class), which it
    leaves out; files of `dataset` that split.json does not name are on neither side.
    """
    saved = atomic.read_json(path)
    where = {p: i for i, p in enumerate(dataset.paths)}
    sides: dict[str, np.ndarray] = {}
    changed: list[str] = []
    for side in ("train", "val", "test"):
        kept = []
        for entry in saved.get(side, []):
            i = where.get(entry["path"])
            if (
                i is None
                or dataset.sha256[i] != entry["sha256"]
                or (dataset.classes[dataset.labels[i]] != entry["label"])
            ):
                changed.append(entry["path"])
            else:
                kept.append(i)
        sides[side] = np.array(kept, dtype=np.int64)
    return Split(sides["train"], sides["val"], sides["test"]), changed

import numpy as np
import pytest

from imgclass.data.scan import DataError
from imgclass.data.split import stratified_split


def test_split_is_stratified_disjoint_and_complete():
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    split = stratified_split(labels, 0.2, seed=0)
    assert len(split.val) == 20
    assert np.bincount(labels[split.val]).tolist() == [10, 6, 4]
    assert not set(split.train) & set(split.val)
    assert sorted([*split.train, *split.val]) == list(range(100))


def test_split_depends_on_the_seed_only():
    labels = np.repeat([0, 1], 40)
    a, b = stratified_split(labels, 0.25, 7), stratified_split(labels, 0.25, 7)
    assert np.array_equal(a.val, b.val)
    assert not np.array_equal(a.val, stratified_split(labels, 0.25, 8).val)


def test_one_class_or_single_image_class_is_a_clear_error():
    with pytest.raises(DataError, match="at least 2 classes"):
        stratified_split(np.zeros(10, dtype=np.int64), 0.2, 0)
    with pytest.raises(DataError, match="at least 2 images"):
        stratified_split(np.array([0, 0, 0, 1]), 0.2, 0)

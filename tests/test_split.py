import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.model_selection import train_test_split

from imgclass.data.scan import DataError
from imgclass.data.split import _stratified_sample, stratified_split


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
    with pytest.raises(DataError, match=r"at least 2 images .*; dog has 1$"):  # issue 13.11
        stratified_split(np.array([0, 0, 0, 1, 2, 2]), 0.2, 0, classes=["cat", "dog", "emu"])
    with pytest.raises(DataError, match=r"; cat, emu have 1$"):
        stratified_split(np.array([0, 1, 1, 2]), 0.2, 0, classes=["cat", "dog", "emu"])


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    st.lists(st.integers(2, 60), min_size=2, max_size=8),
    st.floats(0.05, 0.6),
    st.integers(0, 2**32 - 1),
    st.randoms(use_true_random=False),
)
def test_the_sample_is_scikit_learns_draw_for_draw(counts, fraction, seed, shuffle):
    """Splits made with scikit-learn's train_test_split stay the same (earlier runs' split.json,
    the figures in docs/), whatever scikit-learn is installed."""
    labels = np.repeat(np.arange(len(counts)), counts)
    shuffle.shuffle(labels)  # classes interleaved, as files come
    n_val = max(round(fraction * len(labels)), len(counts))
    if len(labels) - n_val < len(counts):
        return
    _, expected = train_test_split(
        np.arange(len(labels)), test_size=n_val, stratify=labels, random_state=seed
    )
    assert np.array_equal(np.sort(_stratified_sample(labels, n_val, seed)), np.sort(expected))


def test_a_validation_share_that_leaves_too_few_training_images_is_a_clear_error():
    with pytest.raises(DataError, match="fewer training images than the 3 classes"):
        stratified_split(np.repeat([0, 1, 2], 2), 0.9, 0)


def _shares_are_within_one_image(keys_labels: np.ndarray, val_keys: np.ndarray) -> None:
    """Each class's validation count is within one of its exact share of the validation set."""
    counts = np.bincount(keys_labels)
    val_counts = np.bincount(keys_labels[val_keys], minlength=len(counts))
    exact = len(val_keys) * counts / counts.sum()
    assert np.all(np.abs(val_counts - exact) < 1), (val_counts, exact)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    st.lists(st.integers(2, 40), min_size=2, max_size=6), st.floats(0.1, 0.5), st.integers(0, 2**31)
)
def test_without_duplicates_the_split_is_stratified_to_within_one_image(counts, fraction, seed):
    labels = np.repeat(np.arange(len(counts)), counts)
    if max(round(fraction * len(labels)), len(counts)) > len(labels) - len(counts):
        return  # too small to hold one image per class on both sides
    hashes = [f"{i:064x}" for i in range(len(labels))]
    split = stratified_split(labels, fraction, seed, groups=hashes)
    plain = stratified_split(labels, fraction, seed)
    assert np.array_equal(split.val, plain.val)  # distinct contents: exactly the plain split
    _shares_are_within_one_image(labels, split.val)
    assert sorted([*split.train, *split.val]) == list(range(len(labels)))


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.integers(0, 2**31))
def test_every_copy_of_a_content_lands_on_the_same_side(seed):
    rng = np.random.default_rng(seed)
    n_contents = int(rng.integers(20, 80))
    content_labels = rng.integers(0, 3, n_contents)
    content_labels[:6] = [0, 0, 1, 1, 2, 2]  # every class holds >= 2 contents
    copies = rng.choice([1, 1, 2, 3, 10], n_contents)  # many duplicates, some large groups
    content_of = rng.permutation(np.repeat(np.arange(n_contents), copies))
    labels = content_labels[content_of]
    hashes = [f"sha{c}" for c in content_of]
    split = stratified_split(labels, 0.2, seed, groups=hashes)
    train_contents, val_contents = set(content_of[split.train]), set(content_of[split.val])
    assert not train_contents & val_contents  # no leakage
    assert sorted([*split.train, *split.val]) == list(range(len(labels)))
    val_keys = np.array(sorted(val_contents))
    _shares_are_within_one_image(content_labels, val_keys)  # stratified over distinct contents
    again = stratified_split(labels, 0.2, seed, groups=hashes)
    assert np.array_equal(again.val, split.val)


def test_a_class_whose_images_are_all_one_content_is_a_clear_error():
    labels = np.array([0, 0, 0, 1, 1, 1])
    with pytest.raises(DataError, match="at least 2 images of different content"):
        stratified_split(labels, 0.3, 0, groups=["a", "a", "a", "b", "c", "d"])


def test_a_class_without_images_is_named_not_trained():
    with pytest.raises(
        DataError,
        match=r"^classes without images: dog, fox; add images or "
        r"remove the folders \(imgclass scan lists them\)$",
    ):
        stratified_split(np.array([0, 0, 2, 2]), 0.5, 0, classes=["cat", "dog", "emu", "fox"])


def test_training_on_a_tree_with_an_empty_class_folder_is_one_line(tmp_path):
    from click.testing import CliRunner

    from imgclass.cli import main
    from tests.conftest import make_class_tree

    data = make_class_tree(tmp_path / "data", per_class=4)
    (data / "empty").mkdir()
    result = CliRunner().invoke(
        main,
        ["train", str(data), "--out", str(tmp_path / "run"), "--recipe", "seed", "--epochs", "1"]
        + ["--image-size", "8"],
    )
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        "Error: class without images: empty; add images or remove the folder (imgclass scan "
        "lists them)"
    )

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from imgclass.data.scan import DataError
from imgclass.evaluation import classification_metrics, evaluate
from tests.conftest import make_class_tree


def test_metrics_on_a_known_case():
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 1, 0])
    m = classification_metrics(y_true, y_pred, ["a", "b", "c"])
    assert m.accuracy == pytest.approx(4 / 6)
    assert m.confusion == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert m.per_class["a"] == pytest.approx(
        {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3}
    )
    assert m.per_class["b"]["f1"] == pytest.approx(0.8)
    assert m.per_class["c"]["f1"] == 0
    assert m.macro_f1 == pytest.approx((2 / 3 + 0.8 + 0) / 3)


@pytest.mark.filterwarnings("ignore:A single label was found:UserWarning")  # labels= is given
@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.integers(1, 7), st.integers(1, 60), st.integers(0, 2**31))
def test_metrics_are_scikit_learns(n_classes, n, seed):
    """The numpy definitions give scikit-learn's numbers, classes absent or never predicted too."""
    rng = np.random.default_rng(seed)
    y_true, y_pred = rng.integers(0, n_classes, n), rng.integers(0, n_classes, n)
    labels = list(range(n_classes))
    m = classification_metrics(y_true, y_pred, [str(c) for c in labels])
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    assert m.confusion == confusion_matrix(y_true, y_pred, labels=labels).tolist()
    for c in labels:
        assert m.per_class[str(c)] == {
            "precision": precision[c],
            "recall": recall[c],
            "f1": f1[c],
            "support": support[c],
        }


def test_evaluate_defaults_to_the_runs_validation_split(trained_run):
    m = evaluate(trained_run)
    split = json.loads((trained_run / "split.json").read_text())
    assert m.count == len(split["val"])
    stored = json.loads((trained_run / "evaluation.json").read_text())
    assert stored["accuracy"] == m.accuracy
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert m.accuracy == pytest.approx(metrics["val_accuracy"])
    for name in ("confusion.png", "confusion.json"):
        assert (trained_run / name).is_file()


def test_evaluate_on_other_data_maps_classes_by_name(trained_run, tmp_path):
    other = make_class_tree(
        tmp_path / "other",
        per_class=5,
        seed=9,
        classes={"red": (200, 40, 30), "blue": (30, 60, 200)},
    )
    m = evaluate(trained_run, other, out=tmp_path / "eval")
    assert m.count == 10 and m.classes == ["blue", "green", "red"]
    assert m.per_class["green"]["support"] == 0 and m.accuracy >= 0.9
    assert json.loads((tmp_path / "eval" / "confusion.json").read_text())["matrix"][1] == [0, 0, 0]


def test_evaluate_rejects_classes_the_model_does_not_know(trained_run, tmp_path):
    other = make_class_tree(tmp_path / "other", per_class=2, classes={"purple": (120, 0, 120)})
    with pytest.raises(DataError, match="unknown to the model: purple"):
        evaluate(trained_run, other, out=tmp_path / "eval")

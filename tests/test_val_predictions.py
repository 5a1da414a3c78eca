import numpy as np
import pytest

from imgclass.val_predictions import VAL_PREDICTIONS, ValPredictions, calibration


def test_calibration_error_is_the_bin_weighted_gap_between_confidence_and_accuracy():
    labels = np.array([0, 0, 1, 1])
    sure_and_half_right = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    result = calibration(sure_and_half_right, labels, bins=10)
    assert result.ece == pytest.approx(0.25)  # 3 correct of 4 at confidence 1.0
    assert result.count[-1] == 4 and sum(result.count) == 4
    assert result.accuracy[-1] == pytest.approx(0.75)
    honest = np.array([[0.75, 0.25]] * 4)  # 75 % sure, right 3 times in 4
    assert calibration(honest, np.array([0, 0, 0, 1])).ece == pytest.approx(0.0)
    assert calibration(honest, np.array([1, 1, 1, 1])).ece == pytest.approx(0.75)
    edges = calibration(np.array([[0.5, 0.5], [0.1, 0.9]]), np.array([0, 1]), bins=2)
    assert edges.count == [1, 1]  # 0.5 lies in the lower bin, 0.9 in the upper one


def test_val_predictions_csv_round_trip_and_a_clear_error_for_other_classes(tmp_path):
    classes = ["a,b", 'say "x"', "c"]  # names the CSV must quote
    stored = ValPredictions(
        classes,
        ["a,b/1.jpg", "c/\u00e9t\u00e9 2.jpg"],
        np.array([0, 2]),
        np.array([[0.7, 0.2, 0.1], [0.5, 0.25, 0.25]]),
    )
    stored.write(tmp_path)
    again = ValPredictions.read(tmp_path / VAL_PREDICTIONS, classes)
    assert again.paths == stored.paths and (again.labels == stored.labels).all()
    assert np.array_equal(again.probabilities, stored.probabilities)
    lines = (tmp_path / VAL_PREDICTIONS).read_text(encoding="utf-8").splitlines()
    assert lines[1].startswith('"a,b/1.jpg","a,b","a,b",0.7,')  # names with commas quoted
    with pytest.raises(ValueError, match=f"{VAL_PREDICTIONS}: header is not"):
        ValPredictions.read(tmp_path / VAL_PREDICTIONS, ["a", "b", "c"])

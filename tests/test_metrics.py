"""The logged metrics equal scikit-learn's on a fixed example."""

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, recall_score

from aos_bench.metrics import per_class, scores

Y_TRUE = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 3])
Y_PRED = np.array([0, 0, 1, 0, 1, 1, 0, 2, 3, 3, 3, 0])


def test_scores_match_scikit_learn_in_percent():
    result = scores(Y_TRUE, Y_PRED, 4, minority_classes=[1, 2])
    f1 = f1_score(Y_TRUE, Y_PRED, average=None)
    assert result["test_f1_macro"] == pytest.approx(100 * f1_score(Y_TRUE, Y_PRED, average="macro"))
    assert result["test_f1_weighted"] == pytest.approx(100 * f1_score(Y_TRUE, Y_PRED, average="weighted"))
    assert result["test_accuracy"] == pytest.approx(100 * accuracy_score(Y_TRUE, Y_PRED))
    assert result["test_balanced_accuracy"] == pytest.approx(100 * balanced_accuracy_score(Y_TRUE, Y_PRED))
    recalls = recall_score(Y_TRUE, Y_PRED, average=None)  # 3/4, 2/3, 1/2, 2/3
    assert result["test_gmean"] == pytest.approx(100 * (0.75 * 2 / 3 * 0.5 * 2 / 3) ** 0.25)
    assert result["test_gmean"] == pytest.approx(100 * np.prod(recalls) ** 0.25)
    assert result["test_f1_minority"] == pytest.approx(100 * f1[[1, 2]].mean())
    assert result["test_f1_majority"] == pytest.approx(100 * f1[[0, 3]].mean())


def test_a_class_never_predicted_counts_as_zero_f1():
    y_true, y_pred = np.array([0, 0, 1, 2]), np.array([0, 0, 0, 0])
    result = scores(y_true, y_pred, 3, minority_classes=[1, 2])
    assert result["test_f1_macro"] == pytest.approx(100 * (2 / 3) / 3)  # class 0: P 1/2, R 1, F1 2/3
    assert result["test_gmean"] == 0.0 and result["test_f1_minority"] == 0.0


def test_no_minority_metric_without_minority_classes():
    assert "test_f1_minority" not in scores(Y_TRUE, Y_PRED, 4, minority_classes=[])


def test_per_class_table():
    table = per_class(Y_TRUE, Y_PRED, ["a", "b", "c", "d"])
    assert table["class"].tolist() == ["a", "b", "c", "d"]
    assert table["support"].tolist() == [4, 3, 2, 3]
    assert table["f1"].to_numpy() == pytest.approx(100 * f1_score(Y_TRUE, Y_PRED, average=None))

"""Test-set metrics, in percent, computed with scikit-learn."""

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, precision_recall_fscore_support


def scores(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, minority_classes: Sequence[int]) -> dict[str, float]:
    """Headline metrics in percent: macro-F1 first, then weighted F1, accuracy, balanced accuracy, G-mean, minority/majority F1."""
    labels = list(range(n_classes))
    _, recall, f1, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    minority = list(minority_classes)
    majority = [c for c in labels if c not in minority]
    result = {
        "test_f1_macro": f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0),
        "test_f1_weighted": f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0),
        "test_accuracy": accuracy_score(y_true, y_pred),
        "test_balanced_accuracy": balanced_accuracy_score(y_true, y_pred),
        "test_gmean": float(np.prod(recall) ** (1 / n_classes)),  # geometric mean of per-class recalls
        "test_f1_majority": float(np.mean(f1[majority])),
    }
    if minority:  # no minority classes without imbalance
        result["test_f1_minority"] = float(np.mean(f1[minority]))
    return {name: 100 * float(value) for name, value in result.items()}


def per_class(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    """Precision, recall, F1 (percent) and support of every class."""
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=list(range(len(classes))), zero_division=0
    )
    return pd.DataFrame(
        {"class": list(classes), "precision": 100 * precision, "recall": 100 * recall, "f1": 100 * f1, "support": support}
    )



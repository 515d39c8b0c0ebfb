"""Metrics against values worked out by hand (the same definitions as scikit-learn)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pam.train.metrics import (
    average_precision,
    best_f1_threshold,
    class_report,
    precision_recall_curve,
    precision_recall_f1,
    recall_at_precision,
    roc_auc,
    threshold_for_precision,
)

# Ranked: 0.9 pos, 0.8 neg, 0.7 pos, 0.6 pos, 0.5 neg.
Y = np.array([1, 0, 1, 1, 0])
S = np.array([0.9, 0.8, 0.7, 0.6, 0.5])


def test_precision_recall_curve_points() -> None:
    p, r, t = precision_recall_curve(Y, S)
    np.testing.assert_allclose(t, [0.9, 0.8, 0.7, 0.6, 0.5])
    np.testing.assert_allclose(p, [1, 1 / 2, 2 / 3, 3 / 4, 3 / 5])
    np.testing.assert_allclose(r, [1 / 3, 1 / 3, 2 / 3, 1, 1])


def test_average_precision_by_hand() -> None:
    # (R_n - R_{n-1}) P_n: 1/3*1 + 0*1/2 + 1/3*2/3 + 1/3*3/4 + 0*3/5 = 29/36
    assert average_precision(Y, S) == pytest.approx(29 / 36)
    # Tied scores form one step: at 0.8 one positive and one negative come in together.
    # 1/2 * 1/2 + 1/2 * 2/3 = 7/12 (ordering within the tie must not matter).
    assert average_precision([1, 0, 1, 0], [0.8, 0.8, 0.5, 0.2]) == pytest.approx(7 / 12)
    assert average_precision([0, 1, 1, 0], [0.8, 0.8, 0.5, 0.2]) == pytest.approx(7 / 12)
    assert average_precision([1, 1, 0], [0.9, 0.8, 0.1]) == pytest.approx(1.0)
    assert math.isnan(average_precision([0, 0], [0.1, 0.2]))


def test_roc_auc_with_ties_by_hand() -> None:
    # Positives 0.8, 0.5, 0.5; negatives 0.8, 0.2. Pairs won: 0.5 + 1 + 0 + 1 + 0 + 1 = 3.5 of 6.
    assert roc_auc([1, 0, 1, 0, 1], [0.8, 0.8, 0.5, 0.2, 0.5]) == pytest.approx(3.5 / 6)
    assert roc_auc(Y, S) == pytest.approx(4 / 6)  # pos 0.9,0.7,0.6 vs neg 0.8,0.5
    assert roc_auc([1, 0], [0.3, 0.3]) == pytest.approx(0.5)
    assert math.isnan(roc_auc([1, 1], [0.3, 0.4]))


def test_precision_recall_f1_at_threshold() -> None:
    at = precision_recall_f1(Y, S, 0.7)  # 0.9, 0.8, 0.7 called (>= is inclusive)
    assert (at.tp, at.fp, at.fn) == (2, 1, 1)
    assert (at.precision, at.recall, at.f1) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    none = precision_recall_f1(Y, S, 0.95)
    assert (none.precision, none.recall, none.f1) == (0.0, 0.0, 0.0)


def test_threshold_for_target_precision_and_recall_at_precision() -> None:
    point = threshold_for_precision(Y, S, 0.7)  # 0.6 gives P 3/4 and R 1
    assert point.threshold == pytest.approx(0.6)
    assert (point.precision, point.recall) == pytest.approx((0.75, 1.0))
    assert threshold_for_precision(Y, S, 0.8).threshold == pytest.approx(0.9)
    assert recall_at_precision(Y, S, 0.8) == pytest.approx(1 / 3)
    assert recall_at_precision(Y, S, 0.7) == pytest.approx(1.0)
    assert threshold_for_precision([0, 1], [0.9, 0.1], 0.9) is None  # never reached
    assert recall_at_precision([0, 1], [0.9, 0.1], 0.9) == 0.0


def test_best_f1_threshold() -> None:
    # F1 per threshold: 0.5, 0.4, 2/3, 6/7, 3/4 -> 0.6
    point = best_f1_threshold(Y, S)
    assert point.threshold == pytest.approx(0.6)
    assert point.f1 == pytest.approx(6 / 7)


def test_class_report_and_input_checks() -> None:
    rep = class_report(np.c_[Y, 1 - Y], np.c_[S, 1 - S], ["a", "b"], {"a": 0.7})
    assert rep["a"]["ap"] == pytest.approx(29 / 36)
    assert rep["a"]["precision"] == pytest.approx(2 / 3)
    assert rep["b"]["threshold"] == 0.5  # the card's default for a class without threshold
    assert rep["a"]["recall_at_p0.9"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        average_precision([1, 2], [0.1, 0.2])
    with pytest.raises(ValueError):
        roc_auc([1, 0, 1], [0.1, 0.2])

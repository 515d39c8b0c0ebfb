"""Calibration picks the operating point a user asked for, on a case built by hand."""

from __future__ import annotations

import numpy as np
import pytest

from pam.train.calibrate import calibrate, calibrate_thresholds

# Ranked scores with labels: P P N P P N P N
S = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])
Y = np.array([1, 1, 0, 1, 1, 0, 1, 0])
# Precision / recall when calling >= each score:
# .95: 1/1, 1/5   .9: 2/2, 2/5   .8: 2/3   .7: 3/4, 3/5   .6: 4/5, 4/5   .5: 4/6   .4: 5/7, 1   .3: 5/8


def test_target_precision_takes_the_best_recall_reaching_it() -> None:
    got = calibrate(Y[:, None], S[:, None], ["a"], target_precision=0.8, placement="score")["a"]
    assert got.threshold == pytest.approx(0.6)
    assert got.method == "precision"
    assert (got.precision, got.recall) == pytest.approx((0.8, 0.8))
    # Stricter target: only the top two clips keep precision 1.
    assert calibrate_thresholds(Y[:, None], S[:, None], ["a"], 0.9, "score") == {"a": pytest.approx(0.9)}


def test_midpoint_placement_keeps_the_same_calls_with_a_margin() -> None:
    got = calibrate(Y[:, None], S[:, None], ["a"], target_precision=0.8)["a"]
    assert got.threshold == pytest.approx(0.55)  # halfway between 0.6 (called) and 0.5 (not)
    assert (got.precision, got.recall) == pytest.approx((0.8, 0.8))


def test_unreachable_target_falls_back_to_best_f1_and_no_positives_to_default() -> None:
    y = np.c_[[0, 1, 0, 1], [0, 0, 0, 0]]
    s = np.c_[[0.9, 0.8, 0.7, 0.6], [0.1, 0.2, 0.3, 0.4]]
    got = calibrate(y, s, ["a", "b"], target_precision=0.9, placement="score")
    assert got["a"].method == "f1"  # the top clip is a negative: precision 0.9 is never reached
    assert got["a"].threshold == pytest.approx(0.6)  # F1: 0, 0.5, 0.4, 2/3
    assert got["b"].method == "default" and got["b"].threshold == 0.5


def test_best_f1_when_no_target() -> None:
    got = calibrate(Y[:, None], S[:, None], ["a"], target_precision=None, placement="score")["a"]
    # F1 at .6 = 0.8, at .4 = 2*5/(2*5+2+0) = 10/12; .4 wins
    assert got.method == "f1" and got.threshold == pytest.approx(0.4)

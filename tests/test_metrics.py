"""Metrics against matrices worked out by hand."""

import math

import numpy as np
import pytest

from continual import metrics

# rows: step 0..3, columns: tasks 1..3
R = np.array([
    [0.50, 0.40, 0.30],
    [0.90, 0.50, 0.35],
    [0.70, 0.95, 0.40],
    [0.60, 0.80, 0.90],
])


def test_average_accuracy_over_seen_tasks():
    got = metrics.average_accuracy(R)
    assert math.isnan(got[0])
    np.testing.assert_allclose(got[1:], [0.90, (0.70 + 0.95) / 2, (0.60 + 0.80 + 0.90) / 3])


def test_forgetting_uses_best_accuracy_since_learned():
    got = metrics.forgetting(R)
    assert np.isnan(got[:2]).all()
    # step 2: task 1 fell 0.90 -> 0.70; step 3: task 1 from max(0.90, 0.70), task 2 from 0.95
    np.testing.assert_allclose(got[2:], [0.20, ((0.90 - 0.60) + (0.95 - 0.80)) / 2])


def test_bwt_against_accuracy_right_after_learning():
    got = metrics.backward_transfer(R)
    np.testing.assert_allclose(got[2:], [0.70 - 0.90, ((0.60 - 0.90) + (0.80 - 0.95)) / 2])


def test_forgetting_and_bwt_differ_when_a_task_improves_later():
    # task 1 learned at 0.6, rises to 0.8 while learning task 2, then drops to 0.7
    R2 = np.array([[0.1, 0.1, 0.1], [0.6, 0.2, 0.1], [0.8, 0.9, 0.1], [0.7, 0.9, 0.9]])
    assert metrics.forgetting(R2)[3] == pytest.approx((0.1 + 0.0) / 2)
    assert metrics.backward_transfer(R2)[3] == pytest.approx((0.1 + 0.0) / 2)
    assert metrics.backward_transfer(R2)[2] == pytest.approx(0.2)
    assert metrics.forgetting(R2)[2] == pytest.approx(-0.2)  # best-since-learned is 0.6 at step 2


def test_single_task_has_no_forgetting():
    got = metrics.step_metrics(np.array([[0.3], [0.9]]))
    assert got == [
        {"step": 0, "average_accuracy": None, "forgetting": None, "bwt": None},
        {"step": 1, "average_accuracy": 0.9, "forgetting": None, "bwt": None},
    ]

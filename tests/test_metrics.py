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


# Final metrics of R above, worked out by hand.

def test_final_metrics_of_a_complete_matrix():
    assert metrics.final_average_accuracy(R) == pytest.approx((0.60 + 0.80 + 0.90) / 3)
    assert metrics.average_incremental_accuracy(R) == pytest.approx((0.90 + 0.825 + (2.3 / 3)) / 3)
    assert metrics.final_forgetting(R) == pytest.approx((0.30 + 0.15) / 2)
    assert metrics.final_backward_transfer(R) == pytest.approx((-0.30 - 0.15) / 2)
    np.testing.assert_allclose(metrics.task_forgetting(R), [0.30, 0.15, np.nan])
    np.testing.assert_allclose(metrics.plasticity(R), [0.90, 0.95, 0.90])
    # task 2 just before (step 1) minus step 0: 0.50 - 0.40; task 3 at step 2 minus step 0: 0.40 - 0.30
    assert metrics.forward_transfer(R) == pytest.approx(0.10)
    # ZSCL Transfer: task 2 above the diagonal of R[1:]: 0.50; task 3: (0.35 + 0.40) / 2
    assert metrics.zscl_transfer(R) == pytest.approx((0.50 + 0.375) / 2)
    assert metrics.zscl_avg(R) == pytest.approx((0.90 + 0.50 + 0.35 + 0.70 + 0.95 + 0.40 + 0.60 + 0.80 + 0.90) / 9)
    assert metrics.zscl_last(R) == pytest.approx(metrics.final_average_accuracy(R))


def test_final_metrics_by_name_with_probes():
    P = np.array([[0.80, 0.60], [0.70, 0.65], [0.75, 0.50], [0.60, 0.55]])
    np.testing.assert_allclose(metrics.concept_forgetting(P),
                               [[0, 0], [-0.10, 0.05], [-0.05, -0.10], [-0.20, -0.05]], atol=1e-12)
    got = metrics.final_metrics(R, P, tasks=["a", "b", "c"], probes=["probe:p", "probe:p:zero_shot"])
    assert list(got)[:len(metrics.FINAL)] == list(metrics.FINAL)
    assert got["forgetting"] == pytest.approx(0.225)
    assert got["plasticity"] == pytest.approx((0.90 + 0.95 + 0.90) / 3)
    assert got["plasticity:b"] == pytest.approx(0.95) and got["forgetting:a"] == pytest.approx(0.30)
    assert "forgetting:c" not in got  # the last task has nothing after it to forget in
    assert got["concept_delta:probe:p"] == pytest.approx(-0.20)
    assert got["concept_delta:probe:p:zero_shot"] == pytest.approx(-0.05)


def test_one_task():
    R1 = np.array([[0.3], [0.9]])
    got = metrics.final_metrics(R1, tasks=["only"])
    assert got["final_average_accuracy"] == got["average_incremental_accuracy"] == pytest.approx(0.9)
    assert got["zscl_avg"] == got["zscl_last"] == got["plasticity"] == got["plasticity:only"] == pytest.approx(0.9)
    for name in ("forgetting", "bwt", "forward_transfer", "zscl_transfer"):
        assert math.isnan(got[name]), name
    assert not any(k.startswith(("forgetting:", "concept_delta:")) for k in got)  # and no probes: no Δ


def test_incomplete_matrix_gives_nan_finals():
    short = R[:3]  # a method that stopped after task 2 of 3
    got = metrics.final_metrics(short, np.full((3, 1), 0.5), tasks=["a", "b", "c"], probes=["probe:p"])
    assert all(math.isnan(v) for v in got.values())
    np.testing.assert_allclose(metrics.plasticity(short), [0.90, 0.95, np.nan])  # what was learned, was
    assert math.isnan(metrics.final_metrics(R[:0], tasks=["a", "b", "c"])["zscl_avg"])  # no rows: no crash


def test_nan_entries_propagate_to_what_they_touch():
    broken = R.copy()
    broken[3, 0] = np.nan  # task 1 failed to evaluate after the last step
    assert math.isnan(metrics.final_average_accuracy(broken))
    assert math.isnan(metrics.final_forgetting(broken)) and math.isnan(metrics.zscl_avg(broken))
    np.testing.assert_allclose(metrics.task_forgetting(broken), [np.nan, 0.15, np.nan])
    assert metrics.forward_transfer(broken) == pytest.approx(0.10)  # row 3 is not part of it
    assert metrics.zscl_transfer(broken) == pytest.approx(0.4375)

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


# ZSCL's own numbers: the 11 x 11 MTIL matrix (percent; rows: after each of the 11 training steps, columns:
# the 11 datasets, its CIFAR-10 column already deleted) that Thunderbeee/ZSCL mtil/results.ipynb shows for
# `visualize("./exp_wc_fair.npy")`, and what its `statistics()` printed for it: transfer 26.7, avg 16.0,
# last 10.9 (each rounded to one decimal by the notebook).
ZSCL_EXP_WC_FAIR = [
    [1.770177, 74.481567, 45.47, 36.436170, 39.648148, 4.732477, 35.445545, 39.87, 16.244208, 30.257431, 56.310055],
    [0.990099, 62.039171, 25.90, 22.978723, 33.166667, 2.862254, 19.659406, 65.80, 13.082584, 6.703146, 23.125374],
    [0.960096, 36.175115, 13.55, 16.436170, 23.388889, 2.130428, 9.172277, 52.59, 9.648406, 3.693570, 11.475334],
    [0.690069, 38.536866, 21.47, 16.648936, 9.666667, 4.342169, 12.574257, 47.62, 12.101390, 5.521701, 14.403935],
    [0.720072, 43.778802, 17.60, 15.212766, 3.370370, 7.985038, 10.859406, 32.87, 14.445353, 3.656262, 15.967082],
    [2.040204, 35.195853, 8.88, 7.819149, 10.796296, 1.707595, 7.073267, 43.44, 12.373944, 2.959831, 10.771919],
    [1.380138, 40.725806, 12.89, 11.648936, 15.000000, 1.349813, 9.184158, 51.44, 15.944399, 2.910086, 13.047676],
    [1.440144, 19.297235, 2.05, 8.297872, 12.574074, 0.992031, 3.398020, 10.12, 3.161624, 1.019774, 9.043262],
    [1.110111, 40.149770, 13.10, 6.808511, 12.518519, 0.845666, 7.192079, 8.11, 4.142818, 2.362890, 13.314330],
    [1.350135, 44.124424, 16.20, 6.808511, 12.425926, 0.764352, 9.635644, 18.97, 6.650313, 0.820793, 15.875132],
    [0.930093, 33.928571, 12.25, 7.074468, 13.592593, 1.366076, 8.249505, 34.84, 5.342055, 1.280935, 0.836743],
]


def test_zscl_transfer_avg_last_give_what_zscls_notebook_printed():
    # Our matrix has a step-0 row (the pre-trained model) that ZSCL's metrics leave out: any values do.
    R = np.vstack([np.full(11, 0.5), np.array(ZSCL_EXP_WC_FAIR) / 100])
    assert round(100 * metrics.zscl_transfer(R), 1) == 26.7
    assert round(100 * metrics.zscl_avg(R), 1) == 16.0
    assert round(100 * metrics.zscl_last(R), 1) == 10.9


def test_chance_accuracy_by_setting():
    np.testing.assert_allclose(metrics.chance_accuracy([2, 4]), [[1 / 2, 1 / 4]] * 3)
    # class-incremental: task j at step i among the classes of tasks 1..max(i, j)
    np.testing.assert_allclose(metrics.chance_accuracy([2, 4, 4], class_incremental=True),
                               [[1 / 2, 1 / 6, 1 / 10], [1 / 2, 1 / 6, 1 / 10], [1 / 6, 1 / 6, 1 / 10],
                                [1 / 10, 1 / 10, 1 / 10]])
    # X-TAIL: every task among every task's classes, at every step
    np.testing.assert_allclose(metrics.chance_accuracy([2, 4, 4], all_classes=True), [[1 / 10] * 3] * 4)

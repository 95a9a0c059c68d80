"""Continual-learning metrics: pure functions of the accuracy matrix. No torch, no models.

The matrix `R` has one row per step and one column per task, in sequence order:
    R[0, j]  accuracy on task j before any training (task j's initial head on the pre-trained model),
    R[i, j]  accuracy on task j after training on tasks 1..i (tasks are 1-indexed in the text below,
             so task j is column j-1 and was learned at step j).
A complete run of T tasks has T + 1 rows (steps 0..T). Every entry is scored at every step, so the
upper triangle (i < j) is task j's accuracy before it is learned: with its linear-probe head on the
current features, its zero-shot head, or its random head (the sequence's `head_init`).

Per step i (written to metrics.json after every step; NaN where undefined):
    average accuracy   A_i = 1/i Σ_{j≤i} R[i, j]
    forgetting         F_i = 1/(i-1) Σ_{j<i} ( max_{j≤l<i} R[l, j] − R[i, j] )     (Chaudhry et al. 2018)
    BWT                B_i = 1/(i-1) Σ_{j<i} ( R[i, j] − R[j, j] )                  (Lopez-Paz & Ranzato 2017)
    concept forgetting Δ_i(p) = P[i, p] − P[0, p]  for each probe column p (linear probe, and zero-shot
                       for CLIP) of the probe matrix P (same rows as R): what the model lost (< 0) or
                       gained (> 0) on data it never trains on, against the pre-trained model.

Final metrics, defined on a complete matrix only (T + 1 rows); a run with fewer rows (failed or still
going) gets NaN, and so does any metric that touches a NaN entry (NaN propagates, never skipped):
    final average accuracy        A_T
    average incremental accuracy  1/T Σ_{i=1..T} A_i                                   (Rebuffi et al. 2017)
    forgetting, per task          f_j = max_{j≤l<T} R[l, j] − R[T, j]  for j < T (NaN for the last task);
                                  its mean over j < T is F_T
    BWT                           B_T
    plasticity, per task          R[j, j], accuracy right after learning task j; and its mean over j
    forward transfer (FWT)        1/(T-1) Σ_{j=2..T} ( R[j-1, j] − R[0, j] ): accuracy on task j just
                                  before it is learned minus the pre-trained model's; > 0 when the
                                  earlier tasks made the features better for task j (Lopez-Paz &
                                  Ranzato 2017, with step 0 as the baseline instead of a random model)
    ZSCL Transfer, Avg, Last      (Zheng et al. 2023, "Preventing zero-shot transfer degradation in
                                  continual learning of vision-language models", MTIL tables) on the
                                  T × T matrix R[1:] (row 0 left out, as in ZSCL):
        Transfer = 1/(T-1) Σ_{j=2..T} ( 1/(j-1) Σ_{1≤i<j} R[i, j] )   the upper triangle of R[1:],
                   each column averaged first, then the columns; NaN for T = 1
        Avg      = 1/T² Σ_{i=1..T} Σ_{j=1..T} R[i, j]                 every entry of R[1:]
        Last     = 1/T Σ_j R[T, j]                                    the last row; equal to A_T here,
                   since every task is scored at every step
    concept forgetting            Δ_T(p) per probe column.
"""

from __future__ import annotations

import numpy as np


def average_accuracy(R: np.ndarray) -> np.ndarray:
    """A_i per step i (NaN at step 0, where no task has been seen)."""
    R = np.asarray(R, dtype=float)
    out = np.full(R.shape[0], np.nan)
    for i in range(1, R.shape[0]):
        out[i] = R[i, :i].mean()
    return out


def forgetting(R: np.ndarray) -> np.ndarray:
    """F_i per step: how far each earlier task fell from its best accuracy since it was learned."""
    R = np.asarray(R, dtype=float)
    out = np.full(R.shape[0], np.nan)
    for i in range(2, R.shape[0]):
        out[i] = np.mean([R[j + 1 : i, j].max() - R[i, j] for j in range(i - 1)])
    return out


def backward_transfer(R: np.ndarray) -> np.ndarray:
    """B_i per step: accuracy now minus accuracy right after learning, averaged over earlier tasks."""
    R = np.asarray(R, dtype=float)
    out = np.full(R.shape[0], np.nan)
    for i in range(2, R.shape[0]):
        out[i] = np.mean([R[i, j] - R[j + 1, j] for j in range(i - 1)])
    return out


def concept_forgetting(P: np.ndarray) -> np.ndarray:
    """Δ_i = P[i] − P[0] for each probe column (same shape as P; row 0 is 0, or NaN where P[0] is)."""
    P = np.asarray(P, dtype=float)
    if P.shape[0] == 0:
        return P.copy()
    return P - P[0]


def step_metrics(R: np.ndarray) -> list[dict[str, float | None]]:
    """One dict per step (written to metrics.json); NaN becomes None so the JSON stays standard."""
    columns = {"average_accuracy": average_accuracy(R), "forgetting": forgetting(R), "bwt": backward_transfer(R)}
    return [
        {"step": i, **{k: (None if np.isnan(v[i]) else float(v[i])) for k, v in columns.items()}}
        for i in range(np.asarray(R).shape[0])
    ]


# Final metrics: NaN unless the matrix is complete (T + 1 rows for T task columns).

def is_complete(R: np.ndarray) -> bool:
    R = np.asarray(R, dtype=float)
    return R.ndim == 2 and R.shape[1] > 0 and R.shape[0] == R.shape[1] + 1


def _final(values: np.ndarray, R: np.ndarray) -> float:
    return float(values[-1]) if is_complete(R) else np.nan


def final_average_accuracy(R: np.ndarray) -> float:
    """A_T."""
    return _final(average_accuracy(R), R)


def average_incremental_accuracy(R: np.ndarray) -> float:
    """1/T Σ_{i=1..T} A_i."""
    return float(average_accuracy(R)[1:].mean()) if is_complete(R) else np.nan


def final_forgetting(R: np.ndarray) -> float:
    """F_T."""
    return _final(forgetting(R), R)


def final_backward_transfer(R: np.ndarray) -> float:
    """B_T."""
    return _final(backward_transfer(R), R)


def task_forgetting(R: np.ndarray) -> np.ndarray:
    """f_j = max_{j≤l<T} R[l, j] − R[T, j] per task (NaN for the last task, and all NaN if incomplete)."""
    R = np.asarray(R, dtype=float)
    T = R.shape[1]
    out = np.full(T, np.nan)
    if is_complete(R):
        for j in range(T - 1):
            out[j] = R[j + 1 : T, j].max() - R[T, j]
    return out


def plasticity(R: np.ndarray) -> np.ndarray:
    """R[j, j] per task: accuracy right after learning it (NaN for tasks not learned yet)."""
    R = np.asarray(R, dtype=float)
    T = R.shape[1]
    return np.array([R[j + 1, j] if j + 1 < R.shape[0] else np.nan for j in range(T)])


def forward_transfer(R: np.ndarray) -> float:
    """1/(T-1) Σ_{j=2..T} (R[j-1, j] − R[0, j]), NaN for T = 1."""
    R = np.asarray(R, dtype=float)
    T = R.shape[1]
    if not is_complete(R) or T < 2:
        return np.nan
    return float(np.mean([R[j, j] - R[0, j] for j in range(1, T)]))


def zscl_transfer(R: np.ndarray) -> float:
    """ZSCL Transfer: mean over tasks j ≥ 2 of the mean of R[1..j-1, j] (upper triangle of R[1:])."""
    R = np.asarray(R, dtype=float)
    T = R.shape[1]
    if not is_complete(R) or T < 2:
        return np.nan
    return float(np.mean([R[1:j + 1, j].mean() for j in range(1, T)]))


def zscl_avg(R: np.ndarray) -> float:
    """ZSCL Avg: the mean of every entry of R[1:] (T × T)."""
    R = np.asarray(R, dtype=float)
    return float(R[1:].mean()) if is_complete(R) else np.nan


def zscl_last(R: np.ndarray) -> float:
    """ZSCL Last: the mean of the last row (= A_T when every task is scored at every step)."""
    R = np.asarray(R, dtype=float)
    return float(R[-1].mean()) if is_complete(R) else np.nan


def chance_accuracy(classes: list[int], *, class_incremental: bool = False, all_classes: bool = False) -> np.ndarray:
    """(T + 1) × T: the accuracy of a uniform guess, laid out as R. Task j alone has classes[j] classes;
    class-incremental, task j is predicted at step i among the classes of tasks 1..max(i, j) (as scored);
    `all_classes` (X-TAIL), among every task's classes at every step."""
    T = len(classes)
    seen = np.cumsum(classes)
    if all_classes:
        return np.full((T + 1, T), 1 / seen[-1])
    return np.array([[1 / (seen[max(i, j + 1) - 1] if class_incremental else classes[j]) for j in range(T)]
                     for i in range(T + 1)])


# name -> (function of R, higher is better); the order is the order of the report's tables.
FINAL = {
    "final_average_accuracy": (final_average_accuracy, True),
    "average_incremental_accuracy": (average_incremental_accuracy, True),
    "forgetting": (final_forgetting, False),
    "bwt": (final_backward_transfer, True),
    "plasticity": (lambda R: float(np.mean(plasticity(R))) if is_complete(R) else np.nan, True),
    "forward_transfer": (forward_transfer, True),
    "zscl_transfer": (zscl_transfer, True),
    "zscl_avg": (zscl_avg, True),
    "zscl_last": (zscl_last, True),
}


def final_metrics(R: np.ndarray, P: np.ndarray | None = None, *, tasks: list[str],
                  probes: list[str] = ()) -> dict[str, float]:
    """Every final metric by name: FINAL, then `plasticity:<task>`, `forgetting:<task>` (all but the last) and
    `concept_delta:<probe column>` (Δ_T). All NaN for an incomplete matrix."""
    R = np.asarray(R, dtype=float).reshape(-1, len(tasks))
    out = {name: fn(R) for name, (fn, _) in FINAL.items()}
    complete = is_complete(R)
    for name, p in zip(tasks, plasticity(R) if complete else [np.nan] * len(tasks)):
        out[f"plasticity:{name}"] = float(p)
    for name, f in zip(tasks[:-1], task_forgetting(R)):  # the last task is never forgotten: left out
        out[f"forgetting:{name}"] = float(f)
    if probes:
        P = np.asarray(P, dtype=float).reshape(-1, len(probes))
        delta = concept_forgetting(P)
        for k, name in enumerate(probes):
            out[f"concept_delta:{name}"] = float(delta[-1, k]) if complete and len(delta) == R.shape[0] else np.nan
    return out

"""Continual-learning metrics: pure functions of the accuracy matrix. No torch, no models.

The matrix `R` has one row per step and one column per task, in sequence order:
    R[0, j]  accuracy on task j before any training (task j's initial head on the pre-trained model),
    R[i, j]  accuracy on task j after training on tasks 1..i (tasks are 1-indexed in the text below,
             so task j is column j-1 and was learned at step j).
Each metric is NaN where it is undefined (e.g. forgetting before a second task has been learned).

    average accuracy  A_i = 1/i   Σ_{j≤i}  R[i, j]
    forgetting        F_i = 1/(i-1) Σ_{j<i} ( max_{j≤l<i} R[l, j] − R[i, j] )      (Chaudhry et al. 2018)
    BWT               B_i = 1/(i-1) Σ_{j<i} ( R[i, j] − R[j, j] )                   (Lopez-Paz & Ranzato 2017)
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


def step_metrics(R: np.ndarray) -> list[dict[str, float | None]]:
    """One dict per step (written to metrics.json); NaN becomes None so the JSON stays standard."""
    columns = {"average_accuracy": average_accuracy(R), "forgetting": forgetting(R), "bwt": backward_transfer(R)}
    return [
        {"step": i, **{k: (None if np.isnan(v[i]) else float(v[i])) for k, v in columns.items()}}
        for i in range(np.asarray(R).shape[0])
    ]

"""The reference row every continual-learning table prints: no training at all.

The pre-trained backbone stays as loaded and each task keeps the head it starts with (the linear probe
on the pre-trained features, or the zero-shot text head): nothing is forgotten, so its matrix is the
plasticity floor a method must beat on each task and the probe score it must keep.
"""

from __future__ import annotations

from continual.datasets.tasks import TaskData
from continual.methods.contract import Method
from continual.models import TaskModel
from continual.train import FitStats, Trainer


class Frozen(Method):
    def fit_task(self, model: TaskModel, task: TaskData, *, step: int, trainer: Trainer) -> FitStats:
        return FitStats(steps=0, seconds=0.0, losses={})

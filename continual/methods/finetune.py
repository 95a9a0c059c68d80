"""Plain end-to-end fine-tuning: cross-entropy on the current task's head."""

from __future__ import annotations

import torch

from continual.datasets.tasks import TaskData
from continual.methods.contract import Method
from continual.models import TaskModel
from continual.train import Batch, FitStats, Trainer


class Finetune(Method):
    def fit_task(self, model: TaskModel, task: TaskData, *, step: int, trainer: Trainer) -> FitStats:
        return trainer.fit(model, task, loss_terms=self.loss_terms)

    def loss_terms(self, model: TaskModel, batch: Batch) -> dict[str, torch.Tensor]:
        return {"ce": batch.ce(model(batch.x, batch.task))}

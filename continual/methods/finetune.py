"""Plain end-to-end fine-tuning: cross-entropy on the current task's head."""

from __future__ import annotations

import torch

from continual.datasets.tasks import TaskData
from continual.methods.options import FinetuneOptions
from continual.models import Backbone, TaskModel
from continual.train import Batch, FitStats, Trainer


class Finetune:
    def __init__(self, options: FinetuneOptions, *, pretrained: Backbone):
        self.options = options

    def fit_task(self, model: TaskModel, task: TaskData, *, step: int, trainer: Trainer) -> FitStats:
        return trainer.fit(model, task, loss_terms=self.loss_terms, label=f"{self.options.key} {step}:{task.name}")

    def loss_terms(self, model: TaskModel, batch: Batch) -> dict[str, torch.Tensor]:
        return {"ce": batch.ce(model(batch.x, batch.task))}

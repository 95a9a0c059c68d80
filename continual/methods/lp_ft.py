"""LP-FT: fit the task's head as a linear probe on the frozen features, then fine-tune end to end.

Kumar, Raghunathan, Jones, Ma, Liang, "Fine-Tuning can Distort Pretrained Features and Underperform
Out-of-Distribution", ICLR 2022 (arXiv 2202.10054): fine-tuning from a random or poor head moves the
features most in the first updates, while the head catches up; a head that already fits (the linear probe)
lets the features change less. Their LP is logistic regression on frozen features, run to convergence;
ours is the evaluation's (`evaluate.fit_linear_head`, full-batch L-BFGS), on the features of the backbone
as it is when the task starts, so after earlier tasks, not only the pre-trained one.

What differs from `finetune`: only the head a task starts from. With `model.head_init: linear_probe`
every method already starts each task from exactly this probe, so lp_ft trains exactly as finetune does;
with `zero_shot` (CLIP's text head) or `random`, lp_ft replaces that head by the probe first, and the task
is then scored with the head it trained from the probe.
"""

from __future__ import annotations

import torch

from continual.datasets.tasks import TaskData
from continual.evaluate import extract_features, fit_linear_head
from continual.methods.contract import Method
from continual.models import TaskModel
from continual.train import Batch, FitStats, Trainer, use_bf16


class LPFT(Method):
    def fit_task(self, model: TaskModel, task: TaskData, *, step: int, trainer: Trainer) -> FitStats:
        # The probe draws nothing from the RNG the step was seeded with (its Head's init would), so the
        # fine-tuning that follows shuffles as finetune's does: with head_init linear_probe, update for update.
        with torch.random.fork_rng(devices=[]):
            features = extract_features(model.backbone.for_inference(), task.train, device=trainer.device,
                                        batch_size=trainer.eval_batch_size,
                                        bf16=use_bf16(trainer.training, trainer.device))
            head = fit_linear_head(features, task.train.labels, len(task.class_names),
                                   normalize=model.backbone.normalize_features)
        model.heads[task.name] = head.to(trainer.device)
        return trainer.fit(model, task, loss_terms=self.loss_terms)

    def loss_terms(self, model: TaskModel, batch: Batch) -> dict[str, torch.Tensor]:
        return {"ce": batch.ce(model(batch.x, batch.task))}

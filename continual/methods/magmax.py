"""MagMax: sequential fine-tuning, then per weight the task vector of largest magnitude.

Marczak, Twardowski, Trzciński, Cygert, "MagMax: Leveraging Model Merging for Seamless Continual Learning",
ECCV 2024 (arXiv 2407.06322); their code, danielm1405/magmax:

  - sequential fine-tuning: task t starts from θ_{t−1}, the model task t − 1's fine-tuning ended with, not
    from the merge (finetune_splitted.py lines 35-38, `--sequential-finetuning`, run by
    scripts/CIL/finetune_seq.sh lines 18-26);
  - task vectors τ_t = θ_t − θ_0 of those checkpoints (src/merging/task_vectors.py lines 25-33), and per
    entry p, τ^p = τ_k^p with k = argmax_t |τ_t^p|, the later task's on a tie (`merge_max_abs`, lines
    104-127);
  - θ = θ_0 + λ·τ with λ = 0.5 (merge_splitted.py line 70, merge_8datasets.py line 25: `(merge_max_abs, [0.5])`).

Their scripts merge once, after the last task (merge_splitted.py lines 161-171; `evaluate_merged_fts`,
lines 37-59, merges the first t task vectors for t = 1..T, commented out at line 168). Here the runner
scores the model after every task, so the merge of the task vectors so far is what each step leaves in
`model`: the final row is their result, and the rows before it the same method stopped earlier. The
max-magnitude merge is a running one (max over t of the first t vectors, ties to the later one), so MagMax
keeps one task vector, τ_max, however many tasks, plus the fine-tuned θ_t the next task starts from (both
on the CPU, both in `state_dict`). `finetuning: independent` starts every task from θ_0 instead (their
scripts/CIL/finetune.sh, which scripts/CIL/all.sh runs beside the sequential one, lines 13-14).

Only the backbone is merged: each task keeps the head it trained, as wise_ft's do (theirs are zero-shot text
heads, kept frozen: finetune_splitted.py line 60). Floating buffers
(BatchNorm statistics) are merged like the weights, as their task vectors hold every floating entry.
"""

from __future__ import annotations

import torch

from continual.datasets.tasks import TaskData
from continual.methods import merging
from continual.methods.contract import Method
from continual.methods.merging import FineTuning, TaskVector, apply, max_magnitude
from continual.methods.options import MagMaxOptions
from continual.models import Backbone, TaskModel
from continual.train import Batch, FitStats, Trainer


class MagMax(Method):
    def __init__(self, options: MagMaxOptions, *, pretrained: Backbone, context=None):
        super().__init__(options, pretrained=pretrained)
        self.finetuning = FineTuning(pretrained, sequential=options.finetuning == "sequential")
        self.tau_max: TaskVector | None = None  # per entry, the largest-magnitude task vector entry so far

    @classmethod
    def problems(cls, options: MagMaxOptions, backbone: Backbone) -> list[tuple[str, str]]:
        return merging.problems(backbone)  # LoRA adapters cannot hold a merge

    def fit_task(self, model: TaskModel, task: TaskData, *, step: int, trainer: Trainer) -> FitStats:
        self.finetuning.start(model.backbone)
        stats = trainer.fit(model, task, loss_terms=self.loss_terms)
        self.tau_max = max_magnitude(self.tau_max, self.finetuning.end(model.backbone))
        apply(model.backbone, self.finetuning.pretrained, self.tau_max, scale=self.options.lambda_)
        stats.extra["merge_lambda"] = self.options.lambda_
        return stats

    def loss_terms(self, model: TaskModel, batch: Batch) -> dict[str, torch.Tensor]:
        return {"ce": batch.ce(model(batch.x, batch.task))}

    def state_dict(self) -> dict:
        return {} if self.tau_max is None else {"tau_max": self.tau_max, **self.finetuning.state_dict()}

    def load_state_dict(self, state: dict, *, model: TaskModel, trainer: Trainer) -> None:
        self.finetuning.load_state_dict(state, own={"tau_max"})
        self.tau_max = state["tau_max"]

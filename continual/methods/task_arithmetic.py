"""Task arithmetic in a sequence: fine-tune, then the backbone ← θ_0 + λ · the sum of the task vectors so far.

Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023 (arXiv 2212.04089), addition of task
vectors; their code, mlfoundations/task_vectors src/task_vectors.py: τ_t = θ_t − θ_0 over every floating
entry (lines 20-23), τ = Σ_t τ_t (`__add__`/`sum`, lines 25-39) and θ = θ_0 + λ·τ (`apply_to`, lines 49-61).

λ = 0.4: the value TIES-merging's authors use for task arithmetic where no validation set chooses it
(prateeky2806/ties-merging src/ties_minimal.ipynb, line 381 of the file: `lamda = 0.4`). Ilharco et al.
pick λ per experiment on held-out validation data (their README's two-task example: 0.8, lines 129-132),
which a continual run does not have; a sequence sets it per entry (`lambda:`). With λ fixed the sum grows
with the tasks; 1/T, weight averaging (MagMax's "Avg" row, magmax merge_splitted.py line 71), is another
method.

Task vectors come from independent fine-tuning by default: every task starts from θ_0, as each of
Ilharco et al.'s task vectors is (task_vectors src/finetune.py lines 32-34 build the pre-trained encoder),
and as MagMax's comparison runs the merging baselines ("independent fine-tuning + merging", magmax
scripts/CIL/finetune.sh); `finetuning: sequential` starts each from the last task's fine-tuned weights
(MagMax's sequential fine-tuning, kept by the method: the model it leaves is the merge). The running sum is
one task vector on the CPU, in `state_dict` with the fine-tuned weights of sequential fine-tuning.

After every task `model` is the merge of the task vectors so far (their scripts merge once at the end; the
last row is that merge). Only the backbone is merged: each task keeps the head it trained, as wise_ft's do.
Floating buffers (BatchNorm statistics) are summed like the weights, as their task vectors hold every
floating entry (with `training.batchnorm: train`, λ·T > 1 extrapolates a running variance and can take it
below 0).
"""

from __future__ import annotations

import torch

from continual.datasets.tasks import TaskData
from continual.methods import merging
from continual.methods.contract import Method
from continual.methods.merging import FineTuning, TaskVector, add, apply
from continual.methods.options import TaskArithmeticOptions
from continual.models import Backbone, TaskModel
from continual.train import Batch, FitStats, Trainer


class TaskArithmetic(Method):
    def __init__(self, options: TaskArithmeticOptions, *, pretrained: Backbone, context=None):
        super().__init__(options, pretrained=pretrained)
        self.finetuning = FineTuning(pretrained, sequential=options.finetuning == "sequential")
        self.total: TaskVector | None = None  # Σ_t τ_t over the tasks so far

    @classmethod
    def problems(cls, options: TaskArithmeticOptions, backbone: Backbone) -> list[tuple[str, str]]:
        return merging.problems(backbone)  # LoRA adapters cannot hold a merge

    def fit_task(self, model: TaskModel, task: TaskData, *, step: int, trainer: Trainer) -> FitStats:
        self.finetuning.start(model.backbone)
        stats = trainer.fit(model, task, loss_terms=self.loss_terms)
        self.total = add(self.total, self.finetuning.end(model.backbone))
        apply(model.backbone, self.finetuning.pretrained, self.total, scale=self.options.lambda_)
        stats.extra["merge_lambda"] = self.options.lambda_
        return stats

    def loss_terms(self, model: TaskModel, batch: Batch) -> dict[str, torch.Tensor]:
        return {"ce": batch.ce(model(batch.x, batch.task))}

    def state_dict(self) -> dict:
        return {} if self.total is None else {"sum": self.total, **self.finetuning.state_dict()}

    def load_state_dict(self, state: dict, *, model: TaskModel, trainer: Trainer) -> None:
        self.finetuning.load_state_dict(state, own={"sum"})
        self.total = state["sum"]

"""TIES-merging in a sequence: fine-tune, then trim, elect sign and disjoint-merge the task vectors so far.

Yadav, Tam, Choshen, Raffel, Bansal, "TIES-Merging: Resolving Interference When Merging Models", NeurIPS
2023 (arXiv 2306.01708); their code, prateeky2806/ties-merging src/utils/merge_utils.py (`merge_methods`
with reset `topk`, resolve `mass`, merge `dis-mean`, lines 412-455), which MagMax's comparison copies
(danielm1405/magmax src/merging/ties.py, run at merge_splitted.py lines 93-112):

  1. trim: each task vector keeps its k % entries of largest magnitude, one threshold over the whole model
     (`topk_values_mask`, lines 122-142), the rest 0;
  2. elect: per entry, the sign of the sum of the trimmed vectors; 0 takes the majority sign over the
     model (`resolve_sign`, lines 332-342; `resolve_zero_signs`, lines 310-317);
  3. disjoint merge: the mean of the trimmed entries that have the elected sign (`disjoint_merge`, lines
     345-373);
  θ = θ_0 + λ·τ_TIES.

Defaults: k = 20 and λ = 1, the authors' (src/ties_minimal.ipynb, lines 321-323 of the file: `K = 20`,
`lamda = 1`; their README's topk20 / mass / dis-mean, lines 80-83; they pick λ in [0.8, 2.5] on validation
data where they have it, README line 83). MagMax ran TIES at λ = 0.55 (merge_splitted.py line 117): a
sequence sets `lambda:` per entry. k is always a percentage here (the reference reads K ≤ 1 as a fraction).

Trimming reads one task vector only, so each is trimmed once, when its task ends; elect and merge read, per
entry, only the sums and counts of the trimmed entries of each sign. Those four tensors (merging.ties_add)
are what the method keeps, on the CPU and in `state_dict`, instead of every task vector: four task vectors'
memory whatever the number of tasks, plus the fine-tuned weights under `finetuning: sequential`.

Task vectors come from independent fine-tuning by default, every task from θ_0, as TIES defines them and as
MagMax's comparison runs the merging baselines (magmax scripts/CIL/finetune.sh); `finetuning: sequential`
starts each task from the last one's fine-tuned weights. After every task `model` is the merge of the task
vectors so far (their scripts merge once at the end; the last row is that merge). Only the backbone is
merged: each task keeps the head it trained, as wise_ft's do. Floating buffers (BatchNorm statistics) are
merged like the weights.
"""

from __future__ import annotations

import torch

from continual.datasets.tasks import TaskData
from continual.methods import merging
from continual.methods.contract import Method
from continual.methods.merging import FineTuning, TaskVector, apply, ties_add, ties_merge, trim
from continual.methods.options import TIESOptions
from continual.models import Backbone, TaskModel
from continual.train import Batch, FitStats, Trainer


class TIES(Method):
    def __init__(self, options: TIESOptions, *, pretrained: Backbone, context=None):
        super().__init__(options, pretrained=pretrained)
        self.finetuning = FineTuning(pretrained, sequential=options.finetuning == "sequential")
        self.sums: dict[str, TaskVector] | None = None  # merging.ties_add's statistic of the trimmed vectors

    @classmethod
    def problems(cls, options: TIESOptions, backbone: Backbone) -> list[tuple[str, str]]:
        return merging.problems(backbone)  # LoRA adapters cannot hold a merge

    def fit_task(self, model: TaskModel, task: TaskData, *, step: int, trainer: Trainer) -> FitStats:
        self.finetuning.start(model.backbone)
        stats = trainer.fit(model, task, loss_terms=self.loss_terms)
        trimmed = trim(self.finetuning.end(model.backbone), keep=self.options.k)
        self.sums = ties_add(self.sums, trimmed)
        apply(model.backbone, self.finetuning.pretrained, ties_merge(self.sums), scale=self.options.lambda_)
        kept = sum(int(v.count_nonzero()) for v in trimmed.values())
        stats.extra.update(merge_lambda=self.options.lambda_,
                           ties_kept=kept / sum(v.numel() for v in trimmed.values()))
        return stats

    def loss_terms(self, model: TaskModel, batch: Batch) -> dict[str, torch.Tensor]:
        return {"ce": batch.ce(model(batch.x, batch.task))}

    def state_dict(self) -> dict:
        return {} if self.sums is None else {"ties": self.sums, **self.finetuning.state_dict()}

    def load_state_dict(self, state: dict, *, model: TaskModel, trainer: Trainer) -> None:
        self.finetuning.load_state_dict(state, own={"ties"})
        self.sums = state["ties"]

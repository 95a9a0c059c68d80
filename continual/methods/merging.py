"""Merging task vectors: what task arithmetic, TIES-merging and MagMax share (methods/task_arithmetic.py,
ties.py, magmax.py).

A task vector is τ_t = θ_t − θ_0, the fine-tuned backbone less the pre-trained one, entry by entry: a dict
name -> tensor over the backbone's floating state (weights and floating buffers such as BatchNorm's running
statistics; integer entries such as `num_batches_tracked` are left out, as mlfoundations/task_vectors
src/task_vectors.py lines 20-22 skip int64 and uint8). A merge turns the task vectors seen so far into one,
τ, and the backbone becomes θ_0 + λ·τ (`apply`). Each method keeps a running statistic of its task vectors,
not the vectors themselves, so what it carries does not grow with the number of tasks:

  task arithmetic  Σ_t τ_t                                  (`add`)
  MagMax           per entry, the τ_t of largest |τ_t|     (`max_magnitude`)
  TIES             each τ_t trimmed (`trim`), then per entry the sums and counts of its positive and of
                   its negative entries (`ties_add`), from which the elected sign and the disjoint mean
                   follow (`ties_merge`)

`FineTuning` is the other shared half: where each task's fine-tuning starts (the pre-trained backbone, or
where the last task's fine-tuning ended) and the task vector it ends with. Everything here lives on the CPU:
a merge is a few element-wise passes over the weights, once a task.
"""

from __future__ import annotations

import torch

from continual.models import Backbone, trainable

TaskVector = dict[str, torch.Tensor]  # state entry name -> τ, on the CPU


def cpu_state(backbone: Backbone) -> dict[str, torch.Tensor]:
    """A copy of the backbone's whole state (weights and buffers) on the CPU."""
    return {k: v.detach().cpu().clone() for k, v in backbone.state_dict().items()}


@torch.no_grad()
def task_vector(finetuned: dict[str, torch.Tensor], pretrained: dict[str, torch.Tensor]) -> TaskVector:
    """τ = θ − θ_0 for every floating entry (mlfoundations/task_vectors src/task_vectors.py lines 20-23)."""
    return {k: finetuned[k] - v for k, v in pretrained.items() if v.is_floating_point()}


@torch.no_grad()
def apply(backbone: Backbone, pretrained: dict[str, torch.Tensor], tau: TaskVector, *, scale: float) -> None:
    """backbone ← θ_0 + scale·τ on the floating entries, θ_0 on the others (task_vectors src/task_vectors.py
    `apply_to`, lines 49-61, which loads the pre-trained model and adds the scaled vector). scale = 0 gives
    θ_0 exactly."""
    for name, value in backbone.state_dict().items():
        value.copy_(pretrained[name] + scale * tau[name] if name in tau else pretrained[name])


@torch.no_grad()
def add(total: TaskVector | None, tau: TaskVector) -> TaskVector:
    """Task arithmetic's Σ_t τ_t, one more term: the running sum in task order (task_vectors
    src/task_vectors.py `__add__`, lines 25-34, as `sum(task_vectors)` adds them)."""
    if total is None:
        return {k: v.clone() for k, v in tau.items()}
    for k, v in total.items():
        v.add_(tau[k])
    return total


@torch.no_grad()
def max_magnitude(kept: TaskVector | None, tau: TaskVector) -> TaskVector:
    """MagMax's merge, one more task: per entry the value of largest magnitude, sign included, the later
    task's on a tie (magmax src/merging/task_vectors.py `merge_max_abs`, lines 104-127: `>=`, line 122)."""
    if kept is None:
        return {k: v.clone() for k, v in tau.items()}
    return {k: torch.where(tau[k].abs() >= v.abs(), tau[k], v) for k, v in kept.items()}


@torch.no_grad()
def trim(tau: TaskVector, *, keep: float) -> TaskVector:
    """TIES's trim: the task vector's `keep` % entries of largest magnitude, the rest 0 (ties-merging
    src/utils/merge_utils.py `topk_values_mask`, lines 122-142; magmax's copy: src/merging/ties.py lines
    98-118). One threshold for the whole vector, all its tensors as one, as both flatten the model into one
    row per task (merge_utils.py `state_dict_to_vector`, line 38): the entries at or above the
    (d − ⌊d·keep/100⌋)-th smallest magnitude are kept: ⌊d·keep/100⌋ + 1 of them, ties at the threshold
    aside (one more than keep %, as the reference's kthvalue counts). keep = 100 keeps
    everything (where the reference's kthvalue(0) would fail)."""
    flat = torch.cat([v.abs().flatten().float() for v in tau.values()])
    d = flat.numel()
    k = d - int(d * (keep / 100))
    if k == 0:
        return {name: v.clone() for name, v in tau.items()}
    threshold = flat.kthvalue(k).values
    return {name: torch.where(v.abs() >= threshold, v, torch.zeros_like(v)) for name, v in tau.items()}


@torch.no_grad()
def ties_add(sums: dict[str, TaskVector] | None, trimmed: TaskVector) -> dict[str, TaskVector]:
    """One more trimmed task vector into TIES's running statistic: per entry the sum of the positive values,
    of the negative values, and how many of each. That is all TIES's elect and disjoint mean read of the
    tasks (`ties_merge`), so it costs four task vectors' memory whatever the number of tasks."""
    if sums is None:
        sums = {"positive": {k: torch.zeros_like(v) for k, v in trimmed.items()},
                "negative": {k: torch.zeros_like(v) for k, v in trimmed.items()},
                "n_positive": {k: torch.zeros(v.shape, dtype=torch.int32) for k, v in trimmed.items()},
                "n_negative": {k: torch.zeros(v.shape, dtype=torch.int32) for k, v in trimmed.items()}}
    for k, v in trimmed.items():
        sums["positive"][k].add_(v.clamp(min=0))
        sums["negative"][k].add_(v.clamp(max=0))
        sums["n_positive"][k].add_(v > 0)
        sums["n_negative"][k].add_(v < 0)
    return sums


@torch.no_grad()
def ties_merge(sums: dict[str, TaskVector]) -> TaskVector:
    """TIES's elect and disjoint merge (ties-merging src/utils/merge_utils.py: `resolve_sign` "mass", lines
    332-342, and `disjoint_merge` "dis-mean", lines 345-373; magmax's copy: src/merging/ties.py lines 163-228).

    Elect: per entry the sign of the sum of the trimmed task vectors (Σ positive + Σ negative, the same
    number up to rounding); where that is 0, the majority sign, the sign of the sum of every entry's
    elected sign over the whole model (`resolve_zero_signs`, lines 310-317). Disjoint mean: the mean of the
    entries of the elected sign (those > 0 where it is positive, those < 0 otherwise, as the reference's
    `torch.where(sign > 0, T > 0, T < 0)`), 0 where there are none."""
    elected = {k: torch.sign(v + sums["negative"][k]) for k, v in sums["positive"].items()}
    # The majority as a count (positives − negatives), exact at any size.
    majority = torch.sign(sum((s > 0).sum() - (s < 0).sum() for s in elected.values()))
    merged = {}
    for k, sign in elected.items():
        sign = torch.where(sign == 0, majority.to(sign.dtype), sign)
        positive = sums["positive"][k] / sums["n_positive"][k].clamp(min=1)
        negative = sums["negative"][k] / sums["n_negative"][k].clamp(min=1)
        merged[k] = torch.where(sign > 0, positive, negative).to(sums["positive"][k].dtype)
    return merged


def problems(backbone: Backbone) -> list[tuple[str, str]]:
    """What a merging method refuses of the model it would train (contract.Method.problems): LoRA adapters. A
    merge of LoRA updates (their sum, a per-entry max, TIES's mean) is no update of rank r that the adapters can
    hold, and the frozen weights under them are not saved in a checkpoint."""
    if not trainable.lora_factors(backbone):
        return []
    return [("lambda", "θ_0 + λ·τ, a merge of the task vectors, cannot be used with model.trainable: lora: a merge "
                       "of LoRA updates is no update of rank r that the adapters can hold; use model.trainable full, "
                       "last_blocks, bias or frozen")]


class FineTuning:
    """Where each task's fine-tuning starts, and the task vector it ends with.

    sequential: each task starts from where the last one's fine-tuning ended, θ_{t−1} (never from the merged
    model; MagMax, magmax finetune_splitted.py lines 35-38: `--sequential-finetuning` loads the previous
    split's checkpoint); independent: every task starts from the pre-trained θ_0 (lines 39-41, the task
    vectors task arithmetic and TIES were defined on). The model the runner scores is the merge, so the
    fine-tuned weights a sequence goes on from are kept here, on the CPU, and in the method's state."""

    def __init__(self, pretrained: Backbone, *, sequential: bool):
        self.pretrained = cpu_state(pretrained)  # θ_0, as loaded: rebuilt the same on a resume
        self.sequential = sequential
        self.last: dict[str, torch.Tensor] | None = None  # θ_{t−1}, the whole state (sequential only)

    @torch.no_grad()
    def start(self, backbone: Backbone) -> None:
        """Put the backbone this task's fine-tuning starts from into `backbone` (in place: same parameters)."""
        backbone.load_state_dict(self.last if self.last is not None else self.pretrained)

    def end(self, backbone: Backbone) -> TaskVector:
        """The task vector of the fine-tuned `backbone`; sequential: its weights kept for the next task."""
        finetuned = cpu_state(backbone)
        if self.sequential:
            self.last = finetuned
        return task_vector(finetuned, self.pretrained)

    def state_dict(self) -> dict:
        return {} if self.last is None else {"finetuned": self.last}

    def load_state_dict(self, state: dict, *, own: set[str]) -> None:
        """Take back what `state_dict` gave, from a method's state whose other keys are `own`."""
        expected = own | ({"finetuned"} if self.sequential else set())
        if set(state) != expected:
            raise ValueError(f"expected the method state {sorted(expected)}, got {sorted(state)}")
        self.last = state.get("finetuned")

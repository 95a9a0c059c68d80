"""Scoring after every step, the same for every method: task accuracies with each task's head, and
linear-probe (and CLIP zero-shot) accuracy on held-out probes, all from one feature pass per split."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from continual import distributed, progress
from continual.datasets.tasks import Split, TaskData
from continual.models import Backbone, Head, TaskModel


@torch.inference_mode()
def _features(backbone: Backbone, images: torch.Tensor, *, batch_size: int, device: torch.device,
              bf16: bool, bar=None) -> torch.Tensor:
    if distributed.active():
        return _shared_features(backbone, images, batch_size=batch_size, device=device, bf16=bf16, bar=bar)
    chunks = []
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for start in range(0, len(images), batch_size):
            x = backbone.preprocess(images[start : start + batch_size].to(device, non_blocking=True))
            chunks.append(backbone(x).float())
            if bar is not None:
                bar.update(len(x))
    return torch.cat(chunks)


def _shared_features(backbone: Backbone, images: torch.Tensor, *, batch_size: int, device: torch.device,
                     bf16: bool, bar=None) -> torch.Tensor:
    """Under torchrun: the same batches, spread over the ranks and gathered, so every rank holds every
    feature (a linear probe fits on all of a split's; the accuracies are then the same on every rank)."""
    out = torch.empty(len(images), backbone.feature_dim, device=device)

    def compute(start: int, stop: int) -> list[torch.Tensor]:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return [backbone(backbone.preprocess(images[start:stop].to(device, non_blocking=True))).float()]

    def store(start: int, stop: int, outputs: list[torch.Tensor]) -> None:
        out[start:stop] = outputs[0]
        if bar is not None:
            bar.update(stop - start)

    distributed.each_batch(len(images), batch_size, compute, store, like=[((backbone.feature_dim,), torch.float32)])
    return out


# training.eval_batch_size: auto. On a CPU, 64 (measured fastest on 2 cores at 64 px, schema.py); on a GPU the
# largest power of two up to EVAL_BATCH_CAP whose inference forward fits in EVAL_MEMORY_SHARE of the free memory,
# worked out from two measured batches, so nothing is tried until it runs out of memory (under torchrun every
# rank must take the same batches). Half the free memory, not all: the optimiser's state and the next task's
# images arrive after this is measured, and the allocator fragments. 1024: past it ViT-B/16's evaluation on an
# H100 is compute-bound already, so a larger batch only takes memory (issue #24 asks "as large as fit").
EVAL_BATCH_CPU = 64
EVAL_BATCH_CAP = 1024
EVAL_MEMORY_SHARE = 0.5


def fitting_batch(*, fixed_bytes: float, per_image_bytes: float, free_bytes: float, cap: int = EVAL_BATCH_CAP,
                  share: float = EVAL_MEMORY_SHARE) -> int:
    """The largest power of two <= cap whose `fixed_bytes + n * per_image_bytes` fits in `share` of `free_bytes`;
    at least 1 (a model that does not fit one image fails when it runs, with torch's own message)."""
    room = share * free_bytes - max(0.0, fixed_bytes)
    fits = int(room // max(1.0, per_image_bytes)) if room > 0 else 0
    batch = 1
    while batch * 2 <= min(fits, cap):
        batch *= 2
    return batch


@torch.inference_mode()
def auto_eval_batch(backbone: Backbone, images: torch.Tensor, *, device: torch.device, bf16: bool) -> int:
    """training.eval_batch_size: auto resolved for `backbone` on `device`, measured on `images` (a few of a
    split's uint8 images, repeated to 16 if fewer): see EVAL_BATCH_CAP."""
    if device.type != "cuda":
        return EVAL_BATCH_CPU
    was_training = backbone.training
    backbone.eval()
    peaks = {}
    try:
        for n in (8, 16):
            x = images[torch.arange(n) % len(images)]
            torch.cuda.synchronize(device)
            before = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                backbone(backbone.preprocess(x.to(device)))
            torch.cuda.synchronize(device)
            peaks[n] = torch.cuda.max_memory_allocated(device) - before
    finally:
        backbone.train(was_training)
    per_image = max(1.0, (peaks[16] - peaks[8]) / 8)
    batch = fitting_batch(fixed_bytes=peaks[8] - 8 * per_image, per_image_bytes=per_image,
                          free_bytes=torch.cuda.mem_get_info(device)[0])
    return int(distributed.least(batch)) if distributed.active() else batch


def extract_features(backbone: Backbone, split: Split, *, batch_size: int, device: torch.device,
                     bf16: bool = False, bar=None) -> torch.Tensor:
    """(N, D) float32 features of a split in eval mode, as an ordinary tensor (usable with autograd);
    `bar` (a progress.bar) is advanced by each batch's images."""
    was_training = backbone.training
    backbone.eval()
    try:
        return _features(backbone, split.images, batch_size=batch_size, device=device, bf16=bf16, bar=bar).clone()
    finally:
        backbone.train(was_training)


def fit_linear_head(features: torch.Tensor, labels: torch.Tensor, num_classes: int, *, normalize: bool,
                    max_iter: int = 100, l2: float = 1e-2) -> Head:
    """Multinomial logistic regression on frozen features, full-batch L-BFGS, returned as a `Head` that
    takes raw features (the standardisation used for conditioning is folded into its weights)."""
    labels = labels.to(features.device)
    x = F.normalize(features, dim=1) if normalize else features
    mean, std = x.mean(0), feature_scale(x)
    z = (x - mean) / std
    weight = torch.zeros(num_classes, x.shape[1], device=x.device, requires_grad=True)
    bias = torch.zeros(num_classes, device=x.device, requires_grad=True)
    # L2 on the weights of the scaled features (feature_scale), on the mean loss. scikit-learn's default (C=1,
    # i.e. 1/N here) leaves separable features with huge weights: measured on MNIST at 64 px, fine-tuning
    # from such a head first *lost* accuracy (0.909 -> 0.820) and varied by 9 points between seeds; at
    # 1e-2 the probe is as accurate (0.905) and fine-tuning then improves it (0.911, 0.921 for 2 seeds).
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=10,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z @ weight.T + bias, labels) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    head = Head(x.shape[1], num_classes, normalize=normalize).to(features.device)
    with torch.no_grad():
        w = weight / std
        head.linear.weight.copy_(w)
        head.linear.bias.copy_(bias - w @ mean)
    return head


def feature_scale(x: torch.Tensor) -> torch.Tensor:
    """What fit_linear_head divides each feature by: its standard deviation, but never less than the root
    mean square of all of them. The L2 acts on the weights of the divided features, so a feature divided
    by its own tiny spread (a channel active on a few images only) had its weight made cheap, and huge once
    folded back: issue #23 saw raw weights of 1,500, and the probes of the default sequence's tasks had up
    to 613 (64 px) with this floor 0.4. At 32 px 1,081 of EfficientNet-Lite0's 1,280 features are zero on
    every MNIST image in eval mode and 39 more barely vary; in training mode drop-connect moves them by up
    to 0.5 and BatchNorm's batch statistics (training.batchnorm: train) by 0.6 on average, which such
    weights turned into logits in the hundreds. Under the floor their weights are penalised in the units of
    every other feature's. Probe accuracy measured with it: docs/learned-worse.md."""
    spread = x.std(0)
    return spread.clamp_min(float(spread.pow(2).mean().sqrt().clamp_min(1e-12)))


@torch.no_grad()
def accuracy(head: Head | list[Head], features: torch.Tensor, labels: torch.Tensor) -> float:
    """The fraction of `labels` predicted by `head`; by a list of heads, among all their classes at once
    (their logits side by side, as one grown head: class-incremental, `labels` offset to match)."""
    heads = head if isinstance(head, list) else [head]
    modes = [h.training for h in heads]
    for h in heads:
        h.eval()
    logits = torch.cat([h(features) for h in heads], dim=1)
    correct = int((logits.argmax(1) == labels.to(features.device)).sum())
    for h, mode in zip(heads, modes):
        h.train(mode)
    return correct / len(labels)  # an exact fraction, not a float32 mean


@dataclass
class Evaluation:
    row: dict[str, float]  # column name -> accuracy in [0, 1]
    future_heads: dict[str, Head]  # linear_probe heads fit now for tasks not yet learned


def evaluate(model: TaskModel, tasks: list[TaskData], probes: list[TaskData], *, learned: int, head_init: str,
             zero_shot_probes: dict[str, Head] | None, batch_size: int, device: torch.device,
             bf16: bool = False, class_incremental: bool = False, all_classes: bool = False,
             show_progress: bool = False, compile: bool = False, given: Collection[str] = ()) -> Evaluation:
    """One row of the accuracy matrix after `learned` tasks have been trained.

    A learned task is scored with its own head. A task not yet learned is scored with the head it would
    start with now (its linear probe on the current features, or its zero-shot / random head), which
    makes row 0 and the upper triangle measure transfer. Probes are never trained on: a linear probe is
    fit on the current frozen features of the probe's train split and scored on its test split.

    `class_incremental`: task j's test images are predicted among the classes of every task seen so far
    (tasks 1..learned), by the heads of those tasks side by side (the grown head); a task not yet learned,
    among the classes of tasks 1..j, its own head being the one it would start with now.

    `all_classes` (setting x_tail): every task's test images are predicted among the classes of all the tasks,
    learned or not, at every step (the not-learned ones by the heads they would start with: zero-shot), as RAIL's
    X-TAIL scores each domain's test set against the text head of every domain's classes (dual_RAIL.py:39-47,148).

    `given`: tasks whose head the model holds from step 0 (an exported model's heads, model.pretrained naming its
    folder: docs/export.md): until learned, scored with that head, never a linear probe.

    `show_progress`: a bar over the images whose features this pass computes. `compile`: the encoder's
    forward torch.compile'd for this pass (training.compile resolved, train.use_compile).
    """
    encoder = model.backbone.for_inference()  # e.g. BatchNorm folded into convolutions, once per evaluation
    probing = [j >= learned and head_init == "linear_probe" and task.name not in given  # a head fit on train
               for j, task in enumerate(tasks)]
    images = sum(len(t.test.labels) + len(t.train.labels) * fit for t, fit in zip(tasks, probing))
    images += sum(len(p.train.labels) + len(p.test.labels) for p in probes)
    with progress.bar(images, "evaluating " + (f"after step {learned}" if learned else "the pre-trained model"),
                      enabled=show_progress) as shown:
        def features(split: Split) -> torch.Tensor:
            with encoder.compiled(compile):
                return extract_features(encoder, split, batch_size=batch_size, device=device, bf16=bf16, bar=shown)

        normalize = model.backbone.normalize_features
        row: dict[str, float] = {}
        future: dict[str, Head] = {}
        heads: list[Head] = []
        for j, task in enumerate(tasks):
            if probing[j]:
                future[task.name] = fit_linear_head(features(task.train), task.train.labels, len(task.class_names),
                                                    normalize=normalize)
                heads.append(future[task.name])
            else:
                heads.append(model.heads[task.name])
            if not (class_incremental or all_classes):
                row[task.name] = accuracy(heads[j], features(task.test), task.test.labels)
        offset = 0
        for j, task in enumerate(tasks if class_incremental or all_classes else []):
            seen = heads if all_classes else heads[: max(learned, j + 1)]
            row[task.name] = accuracy(seen, features(task.test), task.test.labels + offset)
            offset += len(task.class_names)
        for probe in probes:
            test = features(probe.test)
            head = fit_linear_head(features(probe.train), probe.train.labels, len(probe.class_names),
                                   normalize=normalize)
            row[f"probe:{probe.name}"] = accuracy(head, test, probe.test.labels)
            if zero_shot_probes:
                zero_shot = zero_shot_probes[probe.name]
                row[f"probe:{probe.name}:zero_shot"] = accuracy(zero_shot, test, probe.test.labels)
    return Evaluation(row=row, future_heads=future)

"""The one training loop. A method supplies named loss terms; this loop sums, steps and logs them."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from continual.datasets.tasks import TaskData
from continual.models import TaskModel

@dataclass
class Batch:
    x: torch.Tensor  # preprocessed inputs, on the device
    y: torch.Tensor  # labels, on the device
    index: torch.Tensor  # positions in the task's training split (CPU), for what a method computed per sample
    task: str


# (model, batch) -> {"ce": ..., "ldifs": ...}; the loop sums the terms.
LossTerms = Callable[[TaskModel, Batch], dict[str, torch.Tensor]]


@dataclass
class FitStats:
    steps: int
    seconds: float
    losses: dict[str, float]  # mean of each term over the last epoch
    # Each term on the task's first batch, before any update: the starting head and features, which depend
    # on data, preprocessing, head fitting and seeding but not on how the updates accumulate float
    # error, so they are pinned across CPUs by the tests.
    first_losses: dict[str, float] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # method-specific facts worth recording (e.g. buffer size)


def use_bf16(training, device: torch.device) -> bool:
    """`precision` resolved: auto means bf16 on CUDA and fp32 on CPU."""
    precision = getattr(training, "precision", "fp32")
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def epoch_means(sums: dict[str, torch.Tensor], *, steps: int, task: str) -> dict[str, float]:
    """Mean of each loss term over an epoch's `steps`; a non-finite one stops the method here."""
    losses = {k: float(v) / max(1, steps) for k, v in sums.items()}
    for k, v in losses.items():
        if not math.isfinite(v):
            raise FloatingPointError(f"loss term '{k}' became {v} while training task '{task}'")
    return losses


@dataclass
class Trainer:
    """Settings shared by every method: optimiser, schedule, epochs, batch size, device, progress bar."""

    training: object  # config.TrainingConfig (duck-typed, so this module needs no config import)
    device: torch.device
    progress: bool = True
    log_every: int = 10  # progress-bar refresh: reading a loss forces a device sync, so not every step
    scratch: Path | None = None  # where a method may keep large files it can recompute (LDIFS's anchor cache)

    @property
    def autocast(self) -> torch.autocast:
        """bf16 autocast around forward and loss where `precision` asks for it (the master weights,
        optimiser and gradients stay float32)."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_bf16(self.training, self.device))

    def on_device(self, images: torch.Tensor) -> torch.Tensor:
        """A task's uint8 images, moved to the GPU once when they fit in 4 GiB (then no host copy per
        step), else left in host memory and copied per batch from pinned memory without blocking."""
        if self.device.type == "cuda" and images.nbytes <= 4 * 2**30:
            return images.to(self.device)
        return images

    def batch_to_device(self, images: torch.Tensor) -> torch.Tensor:
        # A no-op for a tensor already there. (Never compare devices with ==: cuda != cuda:0.)
        if images.device.type == "cpu" and self.device.type == "cuda":
            images = images.pin_memory()
        return images.to(self.device, non_blocking=True)

    def trainable_parameters(self, model: TaskModel, task: str) -> list[torch.nn.Parameter]:
        # Backbone + this task's head. Other heads stay out: AdamW's weight decay would shrink them.
        params = list(model.backbone.parameters()) + list(model.heads[task].parameters())
        return [p for p in params if p.requires_grad]

    def make_optimizer(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        t = self.training
        if t.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
        return torch.optim.SGD(params, lr=t.lr, momentum=0.9, weight_decay=t.weight_decay)

    def make_schedule(self, optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
        # Linear warm-up then cosine decay to zero, as in the paper's (wise-ft) training code.
        warmup = min(self.training.warmup_steps, max(total_steps - 1, 0))

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, total_steps - warmup)
            return 0.5 * (1 + math.cos(math.pi * progress))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def steps_per_epoch(self, n: int) -> int:
        return math.ceil(n / self.training.batch_size)

    def fit(self, model: TaskModel, task: TaskData, *, loss_terms: LossTerms, label: str = "") -> FitStats:
        """Train `model` on `task` for the configured epochs with `loss_terms`. Shuffling and dropout draw
        from torch's global RNG, which the runner seeds per step."""
        t = self.training
        images, labels = self.on_device(task.train.images), task.train.labels.to(self.device)
        n = len(labels)
        per_epoch = self.steps_per_epoch(n)
        total = t.epochs * per_epoch
        params = self.trainable_parameters(model, task.name)
        optimizer = self.make_optimizer(params)
        schedule = self.make_schedule(optimizer, total)
        model.train()  # TaskModel.train keeps BatchNorm frozen if the run says so
        start = time.perf_counter()
        bar = tqdm(total=total, desc=label or task.name, unit="step", disable=not self.progress, leave=True)
        sums: dict[str, torch.Tensor] = {}
        first: dict[str, torch.Tensor] = {}
        for epoch in range(t.epochs):
            sums = {}
            order = torch.randperm(n)
            if self.device.type == "cuda":  # pinned: slices of it reach the GPU without a sync (LDIFS cache)
                order = order.pin_memory()
            on_device = order.to(images.device)
            for b in range(per_epoch):
                idx = order[b * t.batch_size : (b + 1) * t.batch_size]
                dev_idx = on_device[b * t.batch_size : (b + 1) * t.batch_size]
                x = model.backbone.preprocess(self.batch_to_device(images[dev_idx]))
                with self.autocast:
                    terms = loss_terms(model, Batch(x, labels[dev_idx.to(self.device)], idx, task.name))
                loss = sum(terms.values())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if t.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
                optimizer.step()
                schedule.step()
                for k, v in terms.items():  # accumulate on device: no sync per step
                    sums[k] = sums.get(k, 0) + v.detach()
                if not first:
                    first = {k: v.detach() for k, v in terms.items()}
                bar.update(1)
                if self.progress and ((b + 1) % self.log_every == 0 or b + 1 == per_epoch):
                    shown = {k: f"{float(v) / (b + 1):.3f}" for k, v in sums.items()}
                    bar.set_postfix(epoch=f"{epoch + 1}/{t.epochs}", **shown)
        bar.close()
        return FitStats(steps=total, seconds=time.perf_counter() - start,
                        losses=epoch_means(sums, steps=per_epoch, task=task.name),
                        first_losses={k: float(v) for k, v in first.items()})

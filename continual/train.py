"""The one training loop. A method supplies named loss terms; this loop sums, steps and logs them.

Every piece of a training step is written here once: the task's plan of steps and passes
(`Trainer.plan`), the optimiser and schedule, autocast, the label-smoothed cross-entropy, the update
(`Trainer.update`: clipping, the optimiser's and the schedule's steps, the images/s and lr points) and
the loss log (`LossLog`: device-side sums, the first batch's terms, the bar and the reads every
`log_every` steps). `Trainer.fit` is the loop; Avalanche's template (methods/avalanche.py), which must
keep its own loop and plugins, calls the same pieces."""

from __future__ import annotations

import contextlib
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from continual import distributed, progress
from continual.augment import augment
from continual.augment import generator as augmentation_generator
from continual.config.schema import TrainingConfig
from continual.datasets.tasks import TaskData
from continual.models import TaskModel
from continual.monitor import Events, Reporter

@dataclass
class Batch:
    x: torch.Tensor  # preprocessed inputs, on the device
    y: torch.Tensor  # labels, on the device, indexing `model(x, task)`: offset past earlier tasks when class-incremental
    index: torch.Tensor  # positions in the task's training split (CPU), for what a method computed per sample
    task: str
    label_smoothing: float = 0.0  # the task's training.label_smoothing (ZSCL's recipe: 0.2), read by `ce`

    def ce(self, logits: torch.Tensor) -> torch.Tensor:
        """The task's cross-entropy of `logits` against `y`, label-smoothed as the task's training says: what
        every method's `ce` term is (FLYP's contrastive loss, distillation and penalties are not smoothed)."""
        return F.cross_entropy(logits, self.y, label_smoothing=self.label_smoothing)


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
    # Plain cross-entropy of the task's logits on that first batch, as trained ("train": drop-connect,
    # dropout, BatchNorm as configured) and in eval mode ("eval"): far apart, it is the starting model's
    # noise in training mode, not the updates, that the task's loss starts from (issue #23). Empty when the
    # method's forward does not pass the batch through model.backbone.
    first_ce: dict[str, float] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # method-specific facts worth recording (e.g. buffer size)


def use_bf16(training: TrainingConfig, device: torch.device) -> bool:
    """`precision` resolved: auto means bf16 on CUDA and fp32 on CPU."""
    return training.precision == "bf16" or (training.precision == "auto" and device.type == "cuda")


def use_compile(training: TrainingConfig, device: torch.device) -> bool:
    """`compile` resolved: true, else off (auto: off until measured faster on a GPU; schema.py says why)."""
    return training.compile is True


def use_fused(training: TrainingConfig, device: torch.device) -> bool:
    """`fused` resolved: auto means fused on CUDA (measured faster there; schema.py), torch's default elsewhere."""
    return training.fused is True or (training.fused == "auto" and device.type == "cuda")


def epoch_means(sums: dict[str, torch.Tensor], *, steps: int, task: str) -> dict[str, float]:
    """Mean of each loss term over an epoch's `steps`; a non-finite one stops the method here."""
    losses = {k: float(v) / max(1, steps) for k, v in sums.items()}
    for k, v in losses.items():
        if not math.isfinite(v):
            raise FloatingPointError(f"loss term '{k}' became {v} while training task '{task}'")
    return losses


class LossLog:
    """What a training loop logs, alike in both loops: each loss term summed over the pass on the device (no
    sync per step), the first step's terms, the progress bar, and the Reporter's reads of the sums (bar and
    TensorBoard) every `log_every` steps and at a pass's end. `scale`: under torchrun, rank 0's share of each
    batch read as if it were the whole batch."""

    def __init__(self, trainer: Trainer, total: int, label: str, *, scale: float = 1):
        self.bar = progress.bar(total, label, enabled=trainer.progress, unit="step", leave=True)
        self.report = Reporter(self.bar, show=trainer.progress, events=trainer.events, scale=scale)
        self.every = trainer.log_every
        self.sums: dict[str, torch.Tensor] = {}
        self.first: dict[str, torch.Tensor] = {}

    def new_pass(self) -> None:
        self.sums = {}

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        for k, v in terms.items():  # accumulate on device: no sync per step
            self.sums[k] = self.sums.get(k, 0) + v.detach()
        if not self.first:
            self.first = {k: v.detach() for k, v in terms.items()}

    def stepped(self, count: int, *, last: bool, **postfix: str) -> None:
        """After the `count`-th step of the pass (`last`: the pass's last)."""
        self.bar.update(1)
        if self.report.reads and (count % self.every == 0 or last):
            self.report.read(self.sums, count=count, **postfix)

    def close(self) -> None:
        self.bar.close()


@dataclass
class Trainer:
    """Settings shared by every method: optimiser, schedule, epochs, batch size, device, progress bar."""

    training: TrainingConfig  # the task's own (tasks[i].training over the sequence's), set by the runner per task
    device: torch.device
    progress: bool = True
    log_every: int = 10  # progress bar and TensorBoard points: reading a loss syncs the device, so not every step
    scratch: Path | None = None  # where a method may keep large files it can recompute (LDIFS's anchor cache)
    events: Events | None = None  # the method's TensorBoard scalars (continual/monitor.py); None: none written
    eval_batch_size: int = 64  # training.eval_batch_size resolved for the run (runner.resolve_eval_batch)
    label: str = ""  # the progress bar's, e.g. "ldifs-100 2:cifar10" (the method's key, the step, the task); set by the runner

    @property
    def autocast(self) -> torch.autocast:
        """bf16 autocast around forward and loss where `precision` asks for it (the master weights,
        optimiser and gradients stay float32)."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_bf16(self.training, self.device))

    GPU_SHARE = 0.25  # of the GPU's free memory a task's images may take to live there for the whole task

    def on_device(self, images):
        """A task's uint8 images (a tensor, or an `Images` read by row from memory or the store), moved
        to the GPU once when they fit in GPU_SHARE of its free memory (then no host copy per step), else
        left where they are and read per batch, copied from pinned memory without blocking."""
        if self.device.type == "cuda" and images.nbytes <= self.GPU_SHARE * torch.cuda.mem_get_info(self.device)[0]:
            return images.to(self.device)
        return images

    def batch_to_device(self, images: torch.Tensor) -> torch.Tensor:
        # A no-op for a tensor already there. (Never compare devices with ==: cuda != cuda:0.)
        if images.device.type == "cpu" and self.device.type == "cuda":
            images = images.pin_memory()
        return images.to(self.device, non_blocking=True)

    def batches(self, images, index: torch.Tensor, steps: int, *, shared: bool = False) -> Iterator[torch.Tensor]:
        """One epoch's uint8 batches (rows `index`, in batches of batch_size), on the device; `shared`: this
        rank's share of each (distributed.share). From host memory to a GPU, the next batch is read and
        pinned in a thread while this one trains: the step's kernels are queued without waiting, so reading
        overlaps them instead of adding to them."""
        size = self.training.batch_size
        rows = [index[b * size : (b + 1) * size] for b in range(steps)]
        if shared:
            rows = [r[distributed.share(len(r))] for r in rows]
        if not rows:
            return
        if images.device.type != "cpu" or self.device.type != "cuda":
            yield from (self.batch_to_device(images[r]) for r in rows)
            return
        with ThreadPoolExecutor(1, thread_name_prefix="next-batch") as reader:
            ahead = reader.submit(lambda r: images[r].pin_memory(), rows[0])
            for b in range(steps):
                batch = ahead.result()
                if b + 1 < steps:
                    ahead = reader.submit(lambda r: images[r].pin_memory(), rows[b + 1])
                yield batch.to(self.device, non_blocking=True)

    def trainable_parameters(self, model: TaskModel, task: str) -> list[torch.nn.Parameter]:
        # Backbone + the heads that give this task's logits: its own, or class-incremental every head up to
        # it (one grown head). Other heads stay out: AdamW's weight decay would shrink them.
        params = list(model.backbone.parameters())
        for name in model.heads_up_to(task):
            params += list(model.heads[name].parameters())
        return [p for p in params if p.requires_grad]

    def make_optimizer(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        t = self.training
        fused = {"fused": True} if use_fused(t, self.device) else {}
        if t.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay, **fused)
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay, **fused)

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

    def plan(self, per_epoch: int) -> tuple[int, int]:
        """(optimiser steps, passes) of a task whose pass is `per_epoch` batches: `steps_per_task` steps, the
        passes repeating until then and the last cut short, else `epochs` full passes."""
        steps = self.training.steps_per_task
        if steps is None:
            return self.training.epochs * per_epoch, self.training.epochs
        return steps, math.ceil(steps / per_epoch)

    def total_steps(self, n: int) -> int:
        """Optimiser steps on a task of `n` training images."""
        return self.plan(self.steps_per_epoch(n))[0]

    def cross_entropy(self) -> torch.nn.CrossEntropyLoss:
        """The task's `ce` as a criterion (for a loop that takes one): label-smoothed as Batch.ce is."""
        return torch.nn.CrossEntropyLoss(label_smoothing=self.training.label_smoothing)

    def update(self, optimizer: torch.optim.Optimizer, schedule: torch.optim.lr_scheduler.LRScheduler,
               params: list[torch.nn.Parameter], log: LossLog, *, images: int) -> None:
        """The end of every optimiser step, once the gradients are in: clipping, the optimiser's step, the
        step's images and lr for images/s and TensorBoard (before the schedule moves it), the schedule's step."""
        if self.training.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, self.training.grad_clip)
        optimizer.step()
        log.report.stepped(images=images, lr=optimizer.param_groups[0]["lr"])
        schedule.step()

    def fit(self, model: TaskModel, task: TaskData, *, loss_terms: LossTerms, label: str | None = None,
            extra_parameters: list[torch.nn.Parameter] = (), after_step: Callable[[int], None] | None = None,
            ) -> FitStats:
        """Train `model` on `task` for the configured epochs with `loss_terms`; `extra_parameters` train
        too (a method's own modules: FLYP's text tower); `after_step(i)` runs after the i-th optimiser step
        (1-based; ZSCL's weight ensemble); `label` the progress bar's, else the trainer's. Shuffling and dropout draw from torch's global RNG, which the
        runner seeds per step; augmentation from a generator seeded by it.

        Under torchrun (distributed.active()) every rank draws the same order and trains on its share of
        each global batch of batch_size, through DistributedDataParallel, which averages the ranks'
        gradients: a rank's loss is weighted by world · (its images) / (the batch's), so that the average
        is the gradient of the whole batch's mean, also when the last batch does not split evenly. The
        logged terms are the whole batch's: each rank's, weighted by its share, summed over ranks."""
        t = self.training
        # Labels index the task's logits: offset past earlier tasks' classes when class-incremental.
        images = self.on_device(task.train.images)
        labels = (task.train.labels + model.label_offset(task.name)).to(self.device)
        n = len(labels)
        per_epoch = self.steps_per_epoch(n)
        total, epochs = self.plan(per_epoch)  # the last pass cut short when steps_per_task is not a multiple
        params = self.trainable_parameters(model, task.name) + [p for p in extra_parameters if p.requires_grad]
        optimizer = self.make_optimizer(params)
        schedule = self.make_schedule(optimizer, total)
        model.train()  # TaskModel.train keeps BatchNorm frozen if the run says so
        shared = distributed.active()
        step = _distributed_step(model, loss_terms, params) if shared else None
        start = time.perf_counter()
        log = LossLog(self, total, label or self.label or task.name, scale=distributed.world() if shared else 1)
        first_ce: dict[str, torch.Tensor] = {}
        draws = augmentation_generator(t.augment)  # None (and nothing drawn) for none
        # training.compile: the backbone's forward compiled for this task's steps only (Backbone.compiled).
        with model.backbone.compiled(use_compile(t, self.device)):
            for epoch in range(epochs):
                log.new_pass()
                steps = min(per_epoch, total - epoch * per_epoch)
                order = torch.randperm(n)
                if self.device.type == "cuda":  # pinned: slices of it reach the GPU without a sync (LDIFS cache)
                    order = order.pin_memory()
                on_device = order.to(images.device)
                for b, x in enumerate(self.batches(images, on_device, steps, shared=shared)):
                    idx = order[b * t.batch_size : (b + 1) * t.batch_size]
                    trained = len(idx)  # images in the whole batch, under torchrun too
                    dev_idx = on_device[b * t.batch_size : (b + 1) * t.batch_size]
                    if shared:  # this rank's rows of the global batch
                        whole, rows = len(idx), distributed.share(len(idx))
                        idx, dev_idx = idx[rows], dev_idx[rows]
                        weight = len(idx) / whole  # of the whole batch's mean; the ranks' weights sum to 1
                    if draws is not None:  # training.augment: on the device, the draws from a seeded CPU generator
                        x = (augment(x, t.augment, draws, whole=whole, rows=rows) if shared
                             else augment(x, t.augment, draws))
                    x = model.backbone.preprocess(x)
                    batch = Batch(x, labels[dev_idx.to(self.device)], idx, task.name,
                                  label_smoothing=t.label_smoothing)
                    with _features_of(model.backbone, batch.x, watch=epoch == b == 0) as seen:
                        if shared:
                            with self.autocast, model.backbone.sharing(whole, rows):
                                terms = step(batch)
                            terms = {k: v * weight for k, v in terms.items()}
                            # DDP divides the sum of gradients by world
                            loss = sum(terms.values()) * distributed.world()
                        else:
                            with self.autocast:
                                terms = loss_terms(model, batch)
                            loss = sum(terms.values())
                    if epoch == b == 0:  # before any update
                        first_ce = self.first_batch_ce(model, batch, seen, weight=weight if shared else 1.0)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    self.update(optimizer, schedule, params, log, images=trained)
                    if after_step is not None:
                        after_step(epoch * per_epoch + b + 1)
                    log.add(terms)
                    log.stepped(b + 1, last=b + 1 == steps, epoch=f"{epoch + 1}/{epochs}")
        log.close()
        sums, first = log.sums, log.first
        if shared:  # the whole batches' terms: each rank's weighted share, summed over the ranks
            keys, ce = list(sums), list(first_ce)
            summed = distributed.all_sum([float(sums[k]) for k in keys] + [float(first[k]) for k in keys]
                                         + [float(first_ce[k]) for k in ce])
            sums, first = dict(zip(keys, summed[: len(keys)])), dict(zip(keys, summed[len(keys) : 2 * len(keys)]))
            first_ce = dict(zip(ce, summed[2 * len(keys) :]))
        return FitStats(steps=total, seconds=time.perf_counter() - start,
                        losses=epoch_means(sums, steps=steps, task=task.name),
                        first_losses={k: float(v) for k, v in first.items()},
                        first_ce={k: float(v) for k, v in first_ce.items()})

    @torch.no_grad()
    def first_batch_ce(self, model: TaskModel, batch: Batch, seen: list[torch.Tensor], *,
                       weight: float = 1.0) -> dict[str, torch.Tensor]:
        """The first batch's plain cross-entropy before any update (FitStats.first_ce), times `weight` (a
        rank's share): "train" from the features the method's own forward computed in training mode
        (`seen`), "eval" from one more forward in eval mode, which draws nothing from the RNG (no
        drop-connect) and so leaves the training that follows as it was."""
        out = {}
        with self.autocast:  # as the features were computed (bf16 under autocast, the model's dtype else)
            if seen:
                out["train"] = F.cross_entropy(model.logits(seen[0], batch.task).float(), batch.y) * weight
            model.eval()
            try:
                out["eval"] = F.cross_entropy(model(batch.x, batch.task).float(), batch.y) * weight
            finally:
                model.train()
        return out


@contextlib.contextmanager
def _features_of(backbone: torch.nn.Module, x: torch.Tensor, *, watch: bool) -> Iterator[list[torch.Tensor]]:
    """The features `backbone` computes for exactly the tensor `x` inside the block (its first such call),
    kept in the yielded list; `watch` False: nothing watched. A hook for one batch per task, not a tap."""
    seen: list[torch.Tensor] = []

    def hook(module, args, output):
        if not seen and args and args[0] is x:  # a tapped forward returns (features, taps)
            seen.append((output[0] if isinstance(output, tuple) else output).detach())

    handle = backbone.register_forward_hook(hook) if watch else None
    try:
        yield seen
    finally:
        if handle is not None:
            handle.remove()


# Whether DDP looks, at every step, for trained parameters the loss did not use (at a cost of a walk over
# the autograd graph). False: every parameter Trainer.fit trains is used by the built-in methods' losses.
FIND_UNUSED = False


class _Step(torch.nn.Module):
    """What DistributedDataParallel wraps: the parameters this task trains, and only those (a head not
    trained gets no gradient, which DDP would wait for), and as forward one step's loss terms of the model."""

    def __init__(self, params: list[torch.nn.Parameter], terms: Callable[[Batch], dict[str, torch.Tensor]]):
        super().__init__()
        self.trained = torch.nn.ParameterList(params)  # the model's own parameters, registered here too
        self.terms = terms

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        return self.terms(batch)


def _distributed_step(model: TaskModel, loss_terms: LossTerms, params: list[torch.nn.Parameter]):
    """The method's loss terms behind DistributedDataParallel, whose construction makes every rank's trained
    parameters rank 0's. Inputs are left where they are (device_ids None): Batch.index stays on the CPU. No
    buffers to broadcast: _Step has none (frozen BatchNorm keeps its statistics; SyncBatchNorm computes
    them from every rank's share alike)."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(_Step(params, lambda batch: loss_terms(model, batch)),
                                   find_unused_parameters=FIND_UNUSED)


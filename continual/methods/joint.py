"""The upper-bound row every continual-learning table prints: one model trained on every task at once.

No sequence: the runner skips the steps before the last (their rows are left empty, NaN) and at the last
step this method trains the pre-trained model on the union of every task's training images, for the
sequence's epochs (or steps_per_task), in shuffled batches that mix the tasks. One head over the union
of the tasks' classes, started from the tasks' own heads side by side (their linear probes, zero-shot or
random heads); afterwards its rows go back to each task's head, so the model is scored as any other
method's, in either setting. So its only row is the last: the accuracy a model reaches when it is never
asked to learn the tasks in order (the report draws it as a dashed reference line). Forgetting, BWT and
everything else that needs the steps in between are undefined (NaN).

What differs from joint training in a task-incremental paper: the softmax spans every task's classes,
not each task's alone (the class-incremental form, a stronger objective), and a task whose classes are
another task's too (task-incremental allows it) has them twice.
"""

from __future__ import annotations

import torch

from continual.datasets.source import concatenated
from continual.datasets.tasks import Split, TaskData
from continual.methods import Context
from continual.methods.contract import Method
from continual.methods.options import JointOptions
from continual.models import Backbone, Head, TaskModel
from continual.train import Batch, FitStats, Trainer


class Joint(Method):
    def __init__(self, options: JointOptions, *, pretrained: Backbone, context: Context | None = None):
        super().__init__(options, pretrained=pretrained)
        if context is None:
            raise ValueError("joint trains on every task of the sequence: build it with context=Context(...)")
        self.tasks = context.tasks

    def fit_task(self, model: TaskModel, task: TaskData, *, step: int, trainer: Trainer) -> FitStats:
        tasks = self.tasks
        sizes = {t.train.images.shape[-1] for t in tasks}  # one stored size: no resizing at all
        size = sizes.pop() if len(sizes) == 1 else model.backbone.image_size
        offsets = [sum(len(t.class_names) for t in tasks[:k]) for k in range(len(tasks))]
        labels = torch.cat([t.train.labels + offset for t, offset in zip(tasks, offsets)])
        train = Split(concatenated([t.train.images for t in tasks], size), labels)
        union = TaskData(name="joint", dataset="joint", train=train, test=train,
                         class_names=[f"{t.name}:{c}" for t in tasks for c in t.class_names])
        heads = [model.heads[t.name] for t in tasks]
        head = Head(model.backbone.feature_dim, len(union.class_names),
                    normalize=model.backbone.normalize_features).to(heads[0].linear.weight.device)
        with torch.no_grad():
            head.linear.weight.copy_(torch.cat([h.linear.weight for h in heads]))
            head.linear.bias.copy_(torch.cat([h.linear.bias for h in heads]))
        # The same backbone (trained in place) with the one union head.
        learner = TaskModel(model.backbone, {"joint": head}, freeze_batchnorm=model.freeze_batchnorm)
        stats = trainer.fit(learner, union, loss_terms=self.loss_terms,
                            label=f"{self.options.key} {step}: all {len(tasks)} tasks")
        with torch.no_grad():
            for t, h, offset in zip(tasks, heads, offsets):
                h.linear.weight.copy_(head.linear.weight[offset : offset + len(t.class_names)])
                h.linear.bias.copy_(head.linear.bias[offset : offset + len(t.class_names)])
        stats.extra["joint_images"] = len(labels)
        return stats

    def loss_terms(self, model: TaskModel, batch: Batch) -> dict[str, torch.Tensor]:
        return {"ce": batch.ce(model(batch.x, batch.task))}

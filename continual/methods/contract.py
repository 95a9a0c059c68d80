"""What the runner asks of a method, and when: the contract every method follows, ours, Avalanche's and a plugin's.

The runner builds one method object per method entry of a run and, for each task in order:

    method = Method(options, pretrained=backbone, context=context)    # once, before task 1
    problems = Method.problems(options, backbone)                      # before anything is written
    for step, task in enumerate(tasks, start=1):
        method.fit_task(model, task, step=step, trainer=trainer)       # train `model` on `task`
        ... the runner evaluates `model` (and method.zero_shot_probes) with the same code for every method,
        ... then checkpoints model + method.state_dict()
    # a resumed run instead: method.load_state_dict(state, model=model, trainer=trainer), then the next task

What may be touched where:
- `fit_task` trains `model` (its backbone and heads) in place and may add or replace `model.heads[task.name]`;
  it trains with `trainer.fit(model, task, loss_terms=...)` (the one loop: optimiser, schedule, clipping,
  precision, augmentation, logging), or its own way as long as it leaves `model` trained on `task` (the
  Avalanche baselines run Avalanche's template on the same step pieces: continual/train.py). It never
  evaluates: the runner scores every method alike, after every step.
- `trainer` is this task's (the task's own `training:` over the sequence's, `trainer.label` the progress
  label, `trainer.scratch` a folder for large recomputable files); the global RNG is seeded per step by
  the runner before `fit_task`, so a method draws from it freely and a resumed run draws the same.
- What a method keeps from one task to the next besides `model` (EWC's importances, FLYP's text tower)
  is what `state_dict` returns, and `load_state_dict` must give it back exactly: a resume continues bit
  for bit. Keep nothing else between tasks.

What a method declares of itself without being imported (what it needs of the model, whether it trains
once, runs under torchrun, which options name it in a legend, the references it reads, the problems of its
options) is on its options class: continual/methods/options.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from continual.datasets.tasks import TaskData
    from continual.methods import Context
    from continual.methods.options import Options
    from continual.models import Backbone, Head, TaskModel
    from continual.train import FitStats, Trainer


class Method:
    """The base of every method: the hooks the runner calls, each with what it does by default."""

    # A method that trains the text tower (FLYP) scores the probes zero-shot with its own text heads: probe
    # name -> head, set by fit_task (and load_state_dict). None: the shared pre-trained text heads.
    zero_shot_probes: dict[str, Head] | None = None

    def __init__(self, options: Options, *, pretrained: Backbone, context: Context | None = None):
        """Once per method entry, before its first task: `options` typed from YAML, `pretrained` the backbone as
        loaded (never trained: a method that anchors to it keeps its own copy or reads it frozen), `context`
        the sequence's data (None where a caller has none, e.g. a benchmark of one task)."""
        self.options = options

    @classmethod
    def problems(cls, options: Options, backbone: Backbone) -> list[tuple[str, str]]:
        """What the built model says is wrong with `options` ((option, message) pairs, e.g. LDIFS's `taps`
        naming a block the model does not have), refused by `run` before anything is written. Called once
        the method's NEEDS are met."""
        return []

    def fit_task(self, model: TaskModel, task: TaskData, *, step: int, trainer: Trainer) -> FitStats:
        """Train `model` on `task` (step `step`, 1-based) and say what it did: FitStats (steps, seconds, each
        loss term's mean, and `extra` facts worth recording in metrics.json)."""
        raise NotImplementedError(f"{type(self).__name__} must define fit_task")

    def state_dict(self) -> dict:
        """What the method carries to the next task besides the model, as tensors and plain values (saved with
        each step's checkpoint; its tensors' bytes are the report's `method_state_bytes`). Nothing, by default."""
        return {}

    def load_state_dict(self, state: dict, *, model: TaskModel, trainer: Trainer) -> None:
        """Continue from `state` (what state_dict returned after the checkpoint's step) with `model`, which
        already holds the checkpoint's weights and heads."""
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, but the checkpoint holds {sorted(state)}")

    def modules(self) -> list[torch.nn.Module]:
        """The modules the method holds of its own (FLYP's text tower, LDIFS's frozen anchor): their gradients
        are cleared before each task and counted in the report's trainable parameters. By default every
        torch module among its attributes."""
        return [v for v in vars(self).values() if isinstance(v, torch.nn.Module)]

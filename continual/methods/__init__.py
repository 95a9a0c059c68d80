"""Methods by name: a plain registry, read top to bottom.

Each entry says what the YAML may set (its `Options` class, in `options.py`), where the code is (a
module and class, imported only when the method runs: the Avalanche baselines pull in avalanche-lib,
~9 s), and what it needs of the model, which the runner checks before anything is written.

A method class is built as `Method(options, *, pretrained)` with its typed options and the
pre-trained backbone, and trains with `fit_task(model, task, *, step, trainer) -> FitStats`. Methods
of our own hand named loss terms to the shared loop (`Trainer.fit`); a method may also train its own
way (the Avalanche baselines do) as long as it leaves `model` trained on `task`. The runner evaluates
every method with the same code. A method that carries state from one task to the next (beyond the
model, which the runner saves) also has `state_dict()` and `load_state_dict(state, *, model, trainer)`,
so that a run can be checkpointed after each step and resumed (see `continual/checkpoints.py`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from continual.methods.options import (EWCOptions, FinetuneOptions, FrozenOptions, L2SPOptions, LDIFSOptions,
                                       LwFOptions, NaiveOptions, Options, ReplayOptions, WiseFTOptions)

# What a method may need of the model (checked up front by the runner, named in `continual list`):
#   taps  intermediate features of the backbone (a feature-space penalty: LDIFS)
NEEDS = {"taps": "intermediate feature taps (EfficientNet-Lite0; open_clip ViT and ModifiedResNet towers)"}


@dataclass(frozen=True)
class MethodInfo:
    options: type[Options]
    implementation: str  # "module:Class"
    summary: str
    needs: tuple[str, ...] = ()


METHODS: dict[str, MethodInfo] = {
    "finetune": MethodInfo(FinetuneOptions, "continual.methods.finetune:Finetune",
                           "plain end-to-end fine-tuning: cross-entropy on the current task's head"),
    "ldifs": MethodInfo(LDIFSOptions, "continual.methods.ldifs:LDIFS",
                        "cross-entropy + λ · distance of intermediate features to the frozen pre-trained model",
                        needs=("taps",)),
    "frozen": MethodInfo(FrozenOptions, "continual.methods.frozen:Frozen",
                         "no training: the pre-trained backbone and each task's starting head (the reference row)"),
    "l2sp": MethodInfo(L2SPOptions, "continual.methods.l2sp:L2SP",
                       "cross-entropy + λ/2 · squared distance of the backbone's weights to the pre-trained ones"),
    "wise_ft": MethodInfo(WiseFTOptions, "continual.methods.wise_ft:WiseFT",
                          "fine-tune, then interpolate the backbone with the pre-trained (or previous) one: "
                          "(1-α)·anchor + α·fine-tuned"),
    # avalanche-lib's own strategy and plugins, on our model, data and settings (methods/avalanche.py)
    "naive": MethodInfo(NaiveOptions, "continual.methods.avalanche:Naive",
                        "Avalanche's Naive strategy: fine-tuning with no protection (a parity check)"),
    "ewc": MethodInfo(EWCOptions, "continual.methods.avalanche:EWC",
                      "Avalanche's EWCPlugin: quadratic penalty weighted by parameter importance on past tasks"),
    "lwf": MethodInfo(LwFOptions, "continual.methods.avalanche:LwF",
                      "Avalanche's LwFPlugin: distil every previous head from the model after the last task"),
    "replay": MethodInfo(ReplayOptions, "continual.methods.avalanche:Replay",
                         "Avalanche's ReplayPlugin: a buffer of past images mixed into each batch"),
}


def implementation(name: str) -> type:
    """The class that trains method `name` (imports its module, and what that module needs)."""
    module, cls = METHODS[name].implementation.split(":")
    return getattr(importlib.import_module(module), cls)


def build(options: Options, *, pretrained) -> object:
    """The method an options object names, ready for its first task."""
    return implementation(options.name)(options, pretrained=pretrained)

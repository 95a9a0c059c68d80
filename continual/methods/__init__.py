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
import re
from dataclasses import dataclass

from continual.methods.options import (LABEL, RESERVED_KEYS, EWCOptions, FinetuneOptions, FLYPOptions, FrozenOptions,
                                       JointOptions, L2SPOptions, LDIFSOptions, LPFTOptions, LwFOptions, NaiveOptions,
                                       Options, ReplayOptions, WiseFTOptions, ZSCLOptions)

# What a method may need of the model (checked up front by the runner, named in `continual list`):
#   taps  intermediate features of the backbone (a feature-space penalty: LDIFS)
#   text  CLIP's text tower (a contrastive loss on class prompts: FLYP; text-side distillation: ZSCL)
NEEDS = {"taps": "intermediate feature taps (EfficientNet-Lite0; open_clip ViT and ModifiedResNet towers)",
         "text": "a CLIP text tower (family: open_clip)"}


@dataclass(frozen=True)
class MethodInfo:
    options: type[Options]
    implementation: str | type  # "module:Class" (imported when the method runs), or the class (a plugin)
    summary: str
    needs: tuple[str, ...] = ()
    # Built with `context=Context(...)` too: the method sees the whole sequence's data, not only the task it
    # trains on (FLYP re-embeds every task's class prompts with its text tower; ZSCL reads its reference set).
    sees_data: bool = False
    # Trains once, at the last step, on every task together (joint): the runner skips the steps before it,
    # leaving their rows empty (NaN).
    once: bool = False
    # Why it cannot be one run over several ranks under torchrun (README, "Several GPUs in one run"), or None:
    # it can. A method that trains with Trainer.fit can when each loss term is a mean over the batch of a term
    # per image (cross-entropy, LDIFS's distances) or the same on every rank (L2-SP's weight distance, ZSCL's
    # distillation on a reference batch every rank draws alike): the loop weights each rank's share by its
    # size, and DDP's mean of the ranks' gradients is then the whole batch's gradient.
    single_process: str | None = None


# Why the methods that cannot run under torchrun cannot (MethodInfo.single_process).
AVALANCHE_LOOP = ("Avalanche trains with its own loop and plugins (continual/methods/avalanche.py), which do not "
                  "support DistributedDataParallel: each rank would train a model of its own")
BATCH_COUPLED = ("its contrastive loss compares each image with every caption in the batch, so it is not a mean "
                 "of per-image terms: split over ranks, each image would meet only its own rank's captions")
PLUGIN = ("a plugin's method runs under torchrun only when registered with distributed=True (its loss a mean of "
          "per-image terms, trained by Trainer.fit)")


@dataclass(frozen=True)
class Context:
    """What a method with `sees_data` is built with besides its options and the pre-trained backbone."""

    tasks: list  # datasets.tasks.TaskData, in sequence order
    probes: list
    references: dict  # name -> TaskData: the sequence's `references:`, images no one is scored on
    # ("tasks" | "probes" | "references", name) -> its CLIP prompt templates (the spec's, else its dataset's)
    templates: dict


METHODS: dict[str, MethodInfo] = {
    "finetune": MethodInfo(FinetuneOptions, "continual.methods.finetune:Finetune",
                           "plain end-to-end fine-tuning: cross-entropy on the current task's head"),
    "ldifs": MethodInfo(LDIFSOptions, "continual.methods.ldifs:LDIFS",
                        "cross-entropy + λ · distance of intermediate features to the frozen pre-trained model",
                        needs=("taps",)),
    "frozen": MethodInfo(FrozenOptions, "continual.methods.frozen:Frozen",
                         "no training: the pre-trained backbone and each task's starting head (the reference row)"),
    "joint": MethodInfo(JointOptions, "continual.methods.joint:Joint",
                        "one model trained on every task at once, scored after the last step (the upper-bound row)",
                        sees_data=True, once=True),
    "l2sp": MethodInfo(L2SPOptions, "continual.methods.l2sp:L2SP",
                       "cross-entropy + λ/2 · squared distance of the backbone's weights to the pre-trained ones"),
    "wise_ft": MethodInfo(WiseFTOptions, "continual.methods.wise_ft:WiseFT",
                          "fine-tune, then interpolate the backbone with the pre-trained (or previous) one: "
                          "(1-α)·anchor + α·fine-tuned"),
    "lp_ft": MethodInfo(LPFTOptions, "continual.methods.lp_ft:LPFT",
                        "linear probe, then fine-tune: each task's head refit as a logistic regression on the "
                        "frozen features, then end-to-end fine-tuning"),
    "flyp": MethodInfo(FLYPOptions, "continual.methods.flyp:FLYP",
                       "fine-tune like CLIP was pre-trained: contrastive loss between images and their class "
                       "prompts, text tower included", needs=("text",), sees_data=True,
                       single_process=BATCH_COUPLED),
    "zscl": MethodInfo(ZSCLOptions, "continual.methods.zscl:ZSCL",
                       "distil the pre-trained CLIP on reference images, plus a weight ensemble across steps",
                       needs=("text",), sees_data=True),
    # avalanche-lib's own strategy and plugins, on our model, data and settings (methods/avalanche.py)
    "naive": MethodInfo(NaiveOptions, "continual.methods.avalanche:Naive",
                        "Avalanche's Naive strategy: fine-tuning with no protection (a parity check)",
                        single_process=AVALANCHE_LOOP),
    "ewc": MethodInfo(EWCOptions, "continual.methods.avalanche:EWC",
                      "Avalanche's EWCPlugin: quadratic penalty weighted by parameter importance on past tasks",
                      single_process=AVALANCHE_LOOP),
    "lwf": MethodInfo(LwFOptions, "continual.methods.avalanche:LwF",
                      "Avalanche's LwFPlugin: distil every previous head from the model after the last task",
                      single_process=AVALANCHE_LOOP),
    "replay": MethodInfo(ReplayOptions, "continual.methods.avalanche:Replay",
                         "Avalanche's ReplayPlugin: a buffer of past images mixed into each batch",
                         single_process=AVALANCHE_LOOP),
}


BUILTIN = frozenset(METHODS)


def register(name: str, *, options: type[Options], implementation: str | type, summary: str,
             needs: tuple[str, ...] = (), sees_data: bool = False, distributed: bool = False) -> None:
    """Add a method of your own under `name` (README, "Your own method"): `options` its strict options class
    (a subclass of `Options` whose `name` is `Literal[name]`), `implementation` its class or "module:Class".
    `distributed`: it may run under torchrun (it trains with Trainer.fit, and each loss term is a mean over
    the batch of per-image terms, or the same on every rank). A plugin file calls this when imported;
    importing it again registers it again. Built-in names are kept."""
    if name in BUILTIN:
        raise ValueError(f"{name!r} is a built-in method; register yours under another name")
    if name in RESERVED_KEYS or not re.fullmatch(LABEL, name):
        raise ValueError(f"{name!r} cannot name a method: it names its folder in a run (1 to 64 letters, digits, "
                         f"`_`, `+`, `-`, and not {' or '.join(sorted(RESERVED_KEYS))})")
    if not (isinstance(options, type) and issubclass(options, Options)):
        raise TypeError(f"options of {name!r} must be a subclass of continual.methods.options.Options")
    if options.model_fields.get("name") is None or options.model_fields["name"].default != name:
        raise ValueError(f"options of {name!r} need `name: Literal[{name!r}] = {name!r}`")
    unknown = [n for n in needs if n not in NEEDS]
    if unknown:
        raise ValueError(f"unknown needs {unknown} for {name!r} (known: {', '.join(NEEDS)})")
    METHODS[name] = MethodInfo(options, implementation, summary, needs=tuple(needs), sees_data=sees_data,
                               single_process=None if distributed else PLUGIN)


def implementation(name: str) -> type:
    """The class that trains method `name` (imports its module, and what that module needs)."""
    where = METHODS[name].implementation
    if isinstance(where, type):  # registered as a class (a plugin)
        return where
    module, cls = where.split(":")
    return getattr(importlib.import_module(module), cls)


def build(options: Options, *, pretrained, context: Context | None = None) -> object:
    """The method an options object names, ready for its first task (`context` for those that see data)."""
    if METHODS[options.name].sees_data:
        if context is None:
            raise ValueError(f"{options.name} is built with the sequence's data (context=Context(...))")
        return implementation(options.name)(options, pretrained=pretrained, context=context)
    return implementation(options.name)(options, pretrained=pretrained)

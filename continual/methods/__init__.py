"""Methods by name: a plain registry, read top to bottom.

A method is two halves, each written once:
- its options class (`options.py`: light, only pydantic), which holds what the YAML may set and what the
  method declares of itself (SUMMARY, IMPLEMENTATION, NEEDS, ONCE, DISTRIBUTED, LEGEND, the `references:`
  it reads and the problems of its options), read by `validate`, `list`, the runner and the report without
  importing torch;
- its class (`contract.Method`'s subclass, in a file named for it), imported only when it runs, which
  trains a task (`fit_task`) and says what it keeps across a resume. contract.py documents each hook.
The runner names no method: what differs between methods is asked of these two.

A built-in method is its file under methods/, its options class and its line below; a method of your own
is one file that calls `register` (docs, "Adding a method").
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass

from continual.methods.options import (LABEL, RESERVED_KEYS, UNDECLARED, EWCOptions, FinetuneOptions, FLYPOptions,
                                       FrozenOptions, JointOptions, L2SPOptions, LDIFSOptions, LPFTOptions, LwFOptions,
                                       NaiveOptions, Options, RAILOptions, ReplayOptions, WiseFTOptions,
                                       ZSCLOptions)
from continual.methods.options import (DIKIOptions, InfLoRAOptions, MagMaxOptions, MoEAdaptersOptions,
                                       TaskArithmeticOptions, TIESOptions)

# What a method may need of the model (Options.NEEDS; checked up front, named in `continual list`):
#   taps  intermediate features of the backbone (a feature-space penalty: LDIFS)
#   text  CLIP's text tower (a contrastive loss on class prompts: FLYP; text-side distillation: ZSCL)
NEEDS = {"taps": "intermediate feature taps (EfficientNet-Lite0; open_clip ViT and ModifiedResNet towers)",
         "text": "a CLIP text tower (family: open_clip)"}


@dataclass(frozen=True)
class Context:
    """The sequence's data, which every method is built with besides its options and the pre-trained backbone:
    the whole sequence, not only the task it trains on (FLYP re-embeds every task's class prompts with its
    text tower; ZSCL reads its reference set; joint trains on every task)."""

    tasks: list  # datasets.tasks.TaskData, in sequence order
    probes: list
    references: dict  # name -> TaskData: the sequence's `references:`, images no one is scored on
    # ("tasks" | "probes" | "references", name) -> its CLIP prompt templates (the spec's, else its dataset's)
    templates: dict


METHODS: dict[str, type[Options]] = {
    "finetune": FinetuneOptions,
    "ldifs": LDIFSOptions,
    "frozen": FrozenOptions,
    "joint": JointOptions,
    "l2sp": L2SPOptions,
    "wise_ft": WiseFTOptions,
    "lp_ft": LPFTOptions,
    "flyp": FLYPOptions,
    "zscl": ZSCLOptions,
    "rail": RAILOptions,
    # merging: fine-tune, then θ_0 + λ · a merge of the task vectors so far (methods/merging.py)
    "task_arithmetic": TaskArithmeticOptions,
    "ties": TIESOptions,
    "magmax": MagMaxOptions,
    "inflora": InfLoRAOptions,
    "diki": DIKIOptions,
    "moe_adapters": MoEAdaptersOptions,
    # avalanche-lib's own strategy and plugins, on our model, data and settings (methods/avalanche.py)
    "naive": NaiveOptions,
    "ewc": EWCOptions,
    "lwf": LwFOptions,
    "replay": ReplayOptions,
}
BUILTIN = tuple(METHODS)  # the built-in methods in the registry's order (before any plugin)
# The classes of methods registered with their class (plugins): name -> class.
CLASSES: dict[str, type] = {}


def single_process(name: str) -> str | None:
    """Why method `name` cannot run under torchrun (its DISTRIBUTED), or None: it can."""
    declared = METHODS[name].DISTRIBUTED
    return None if declared is True else (declared or UNDECLARED)


def register(options: type[Options], implementation: type) -> None:
    """Add a method of your own (docs, "Adding a method"): `options` its strict options class (a subclass of
    `Options` whose `name: Literal["x"] = "x"` names it, with its SUMMARY, NEEDS, DISTRIBUTED… declared), and
    `implementation` its class (a `contract.Method`). A plugin file calls this when imported; importing it
    again registers it again. Built-in names are kept."""
    if not (isinstance(options, type) and issubclass(options, Options)):
        raise TypeError(f"{options!r} must be a subclass of continual.methods.options.Options")
    field = options.model_fields.get("name")
    name = field.default if field is not None else None
    if not isinstance(name, str):
        raise ValueError(f"{options.__name__} needs `name: Literal['<name>'] = '<name>'`: the method's name in YAML")
    if name in BUILTIN:
        raise ValueError(f"{name!r} is a built-in method; register yours under another name")
    if name in RESERVED_KEYS or not re.fullmatch(LABEL, name):
        raise ValueError(f"{name!r} cannot name a method: it names its folder in a run (1 to 64 letters, digits, "
                         f"`_`, `+`, `-`, and not {' or '.join(sorted(RESERVED_KEYS))})")
    unknown = [n for n in options.NEEDS if n not in NEEDS]
    if unknown:
        raise ValueError(f"unknown NEEDS {unknown} for {name!r} (known: {', '.join(NEEDS)})")
    if not isinstance(implementation, type):
        raise TypeError(f"the implementation of {name!r} must be a class (a continual.methods.contract.Method)")
    METHODS[name] = options
    CLASSES[name] = implementation


def implementation(name: str) -> type:
    """The class that trains method `name` (imports its module, and what that module needs)."""
    if name in CLASSES:
        return CLASSES[name]
    module, cls = METHODS[name].IMPLEMENTATION.split(":")
    return getattr(importlib.import_module(module), cls)


def build(options: Options, *, pretrained, context: Context | None = None) -> object:
    """The method an options object names, ready for its first task, built with the pre-trained backbone and
    the sequence's data (`context`; None where a caller has none: a method that reads it then refuses)."""
    return implementation(options.name)(options, pretrained=pretrained, context=context)

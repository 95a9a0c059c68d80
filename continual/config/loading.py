"""Reading a sequence file: YAML in, a validated `Sequence` (config/schema.py) out, or every problem at once.

`load_sequence` turns a YAML file (or a dict) plus `--set key=value` overrides into a validated
`Sequence`, or raises `ConfigError` whose lines each name the file and the key path, e.g.
`sequences/x.yaml: tasks[1].classes[3]: class 12 not in mnist (10 classes)`.
Checks that need the dataset catalog (class ranges) and the method registry (duplicates) happen here
too, so `continual validate` catches them without loading anything heavy.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Hashable
from pathlib import Path

import yaml
from pydantic import ValidationError

from continual.config.schema import Sequence, shown
from continual.datasets import DATASETS, DataError, resolve_classes


class ConfigError(Exception):
    """One or more problems with a sequence; each line names the source and the key path."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = [f"{source}: {key}: {msg}" if key else f"{source}: {msg}" for key, msg in problems]
        super().__init__("\n".join(lines))


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
        raise ConfigError(label, _problems(err)) from None
    problems = _semantic_problems(seq)
    if problems:
        raise ConfigError(label, problems)
    return seq


def dump_sequence(seq: Sequence) -> str:
    """The resolved sequence as YAML, in the same shape as the input files."""
    raw = seq.model_dump(mode="json")
    raw["methods"] = [{o.name: o.model_dump(mode="json", by_alias=True, exclude={"name"})} for o in seq.methods]
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


def _key_path(loc: tuple) -> str:
    """Pydantic's loc -> `tasks[1].classes[3]`; a method's options are under its name: `methods[1].ldifs.lambda`."""
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("int", "str", "function-after[_known_dataset(), str]") or "[" in str(part):
            continue  # union-member tags pydantic adds to a loc; not keys the user wrote
        else:
            out += f".{part}" if out else str(part)
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


def _message(err: dict) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {shown(err['input'], kind=True)}"
    if kind == "string_too_short" and err["ctx"].get("min_length") == 1:
        return "must not be empty"
    msg = err["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
    return f"{msg}, got {shown(err['input'])}" if kind in _OUT_OF_RANGE else msg


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


def _semantic_problems(seq: Sequence) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for group in ("tasks", "probes"):
        seen: set[str] = set()
        for i, spec in enumerate(getattr(seq, group)):
            if spec.name in seen:
                problems.append((f"{group}[{i}].name", f"duplicate {group[:-1]} name '{spec.name}'"))
            seen.add(spec.name)
            names = DATASETS[spec.dataset].class_names  # None: known only once the files are read
            if names is not None:
                try:
                    resolve_classes(spec.classes, names, dataset=spec.dataset)
                except DataError as err:
                    problems.append((f"{group}[{i}].{err.key}", err.message))
    seen_methods: set[str] = set()
    for i, options in enumerate(seq.methods):
        if options.name in seen_methods:
            problems.append((f"methods[{i}]", f"method '{options.name}' listed twice"))
        seen_methods.add(options.name)
    return problems

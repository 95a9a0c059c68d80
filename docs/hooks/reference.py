"""The reference pages, generated from the schema at every build so that they cannot go stale.

`reference/sequence.md` and `reference/sweep.md` exist only in the built site: each is written from the
pydantic classes (`continual/config/schema.py`, `continual/sweeps/spec.py`, each method's options in
`continual/methods/options.py`) by walking their `model_fields`: key, type, default, constraints, and the
`#` comments the source puts above or beside each field (read with `tokenize`, since pydantic keeps no
comments). A method page's `<!-- options: NAME -->` line becomes that method's options table.

An mkdocs hook (mkdocs.yml, `hooks:`), and plain Python for the rest: mkdocs is imported only inside
`on_files`, so `tests/test_docs.py` imports this file without mkdocs installed.
"""

from __future__ import annotations

import ast
import inspect
import io
import json
import re
import textwrap
import tokenize
import types
import typing
import unicodedata
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo

OPTIONS_MARKER = re.compile(r"^<!-- options: ([\w+-]+) -->$", re.M)

# Constraint attributes of pydantic's field metadata (annotated_types) -> how a reader writes them.
BOUNDS = {"gt": ">", "ge": "≥", "lt": "<", "le": "≤"}


# ---- reading the source -------------------------------------------------------------------------

def field_comments(cls: type) -> dict[str, str]:
    """Field name -> the `#` comments of its declaration in `cls` or a base class: the comment lines right
    above it (no blank line between) and the one at the end of its line. {} for a class without source
    (pydantic's `create_model`)."""
    found: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # a subclass's comment wins over its base's
        if klass in (object, BaseModel) or not issubclass(klass, BaseModel):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        lines = source.splitlines()
        comments = {tok.start[0]: tok.string.lstrip("#").strip()
                    for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
        body = ast.parse(source).body[0].body
        for stmt in body:
            if not (type(stmt).__name__ == "AnnAssign" and type(stmt.target).__name__ == "Name"):
                continue
            above, line = [], stmt.lineno - 1
            while line >= 1 and lines[line - 1].strip().startswith("#"):
                above.insert(0, comments.get(line, ""))
                line -= 1
            inline = [comments[n] for n in range(stmt.lineno, stmt.end_lineno + 1) if n in comments]
            text = " ".join(part for part in above + inline if part)
            if text:
                found[stmt.target.id] = text
    return found


# ---- writing Markdown ---------------------------------------------------------------------------

def md(text: str) -> str:
    """Prose for a table cell: Markdown's special characters escaped outside `code spans`."""
    parts = re.split(r"(`[^`]*`)", text)
    for i in range(0, len(parts), 2):
        parts[i] = re.sub(r"([\\*_\[\]|])", r"\\\1", parts[i]).replace("<", "&lt;").replace(">", "&gt;")
    return "".join(parts)  # a `|` inside a code span stays: Python-Markdown's tables do not split there


def code(value: Any) -> str:
    """A YAML value as the file would write it, as code."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    elif isinstance(value, str):
        text = value
    elif isinstance(value, float):
        text = repr(value)
    else:
        text = json.dumps(value)
    return f"`{text}`"


def bounds(metadata) -> list[str]:
    """`> 0`, `≤ 1000`, `at least 1` from a field's (or an Annotated type's) constraints."""
    said = []
    for item in metadata:
        if isinstance(item, FieldInfo):  # Annotated[int, Field(gt=0)]
            said += bounds(item.metadata)
            continue
        for attr, sign in BOUNDS.items():
            if getattr(item, attr, None) is not None:
                said.append(f"{sign} {getattr(item, attr)}")
        if getattr(item, "min_length", None) is not None:
            said.append(f"at least {item.min_length}")
        if getattr(item, "max_length", None) is not None:
            said.append(f"at most {item.max_length}")
        if getattr(item, "pattern", None) is not None:
            said.append(f"matching `{item.pattern}`")
    return said


def type_name(annotation, models: dict[type, str]) -> str:
    """A field's type as a reader of the YAML thinks of it; a nested model links to its section."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin is Literal:
        return " \\| ".join(code(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a, models) for a in args)
    if origin is typing.Annotated:
        inner = type_name(args[0], models)
        said = bounds(args[1:])
        return f"{inner} ({', '.join(said)})" if said else inner
    if origin is list:
        if not args:
            return "list"
        inner = type_name(args[0], models)
        union = typing.get_origin(args[0]) in (typing.Union, types.UnionType)
        return f"list of ({inner})" if union else f"list of {inner}"
    if origin is dict:
        return f"mapping of {type_name(args[0], models)} to {type_name(args[1], models)}" if args else "mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if annotation in models:
            return f"[{annotation.__name__}](#{anchor(models[annotation])})"
        return "method entry: a name, or `name: {options}` ([below](#methods-options))"
    if annotation is Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


def anchor(title: str) -> str:
    """The id mkdocs' toc gives a heading (Python-Markdown's default slugify)."""
    text = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", text).strip().lower())


def nested(annotation) -> list[type[BaseModel]]:
    """The models a field's annotation holds, in order (`TrainingConfig`, `list[DataSpec]`, `X | None`);
    the methods' options base class is left out (each method has its own table)."""
    from continual.methods.options import Options

    found = []
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [] if issubclass(annotation, Options) else [annotation]
    for arg in typing.get_args(annotation):
        found += [m for m in nested(arg) if m not in found]
    return found


def default_of(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "its defaults"
    return code(value)


def table(cls: type[BaseModel], models: dict[type, str], *, skip=(), seen: dict | None = None) -> str:
    """One row per field of `cls`: key, type, default, what the source says of it. A field of a class
    without source (create_model) says which other table's same key it repeats (`seen`: key -> section)."""
    comments = field_comments(cls)
    rows = ["| key | type | default | what, and why this default |", "|---|---|---|---|"]
    for name, field in cls.model_fields.items():
        if name in skip:
            continue
        key = field.alias or name
        kind = type_name(field.annotation, models)
        said = bounds(field.metadata)
        if said:
            kind += f" ({', '.join(said)})"
        text, default = md(comments.get(name, "")), default_of(field)
        if not text and seen and key in seen:
            # A model without source is a copy of another's fields (pydantic's create_model: a task's own
            # `training`, config/schema.py's TaskTraining): a key it does not give is the original's.
            text, default = f"as [`{seen[key]}.{key}`](#{anchor(seen[key])})", f"`{seen[key]}.{key}`"
        rows.append(f"| `{key}` | {kind} | {default} | {text} |")
    return "\n".join(rows)


def doc_of(cls: type) -> str:
    """The class's own docstring (not one inherited), as prose."""
    doc = cls.__dict__.get("__doc__")
    return inspect.cleandoc(doc) if doc else ""


def model_sections(root: type[BaseModel], root_title: str) -> tuple[list[tuple[str, type[BaseModel]]], dict]:
    """Every model under `root`, breadth first, each titled by the keys that reach it (`tasks[]`, `probes[]`)."""
    titles: dict[type, list[str]] = {root: [root_title]}
    order, queue = [root], [(root, "")]
    while queue:
        cls, path = queue.pop(0)
        if not cls.__pydantic_complete__:
            cls.model_rebuild()  # resolve forward references (`split: RandomSplit | None`), as validating would
        for name, field in cls.model_fields.items():
            key = f"{path}{field.alias or name}"
            listed = typing.get_origin(field.annotation) is list or any(
                typing.get_origin(a) is list for a in typing.get_args(field.annotation))
            key += "[]" if listed else ""
            for model in nested(field.annotation):
                if model not in titles:
                    titles[model] = []
                    order.append(model)
                    queue.append((model, key + "."))
                if key not in titles[model]:
                    titles[model].append(key)
    sections = [(", ".join(titles[m]) if m is not root else root_title, m) for m in order]
    return sections, {m: title for title, m in sections}


def reference(root: type[BaseModel], *, title: str, intro: str, root_title: str) -> str:
    sections, models = model_sections(root, root_title)
    out = [f"# {title}", "", intro, ""]
    seen: dict[str, str] = {}
    for section_title, cls in sections:
        out += [f"## {section_title}", ""]
        if doc := doc_of(cls):
            out += [doc, ""]
        out += [table(cls, models, seen=seen), ""]
        for name, field in cls.model_fields.items():
            seen.setdefault(field.alias or name, section_title)
    return "\n".join(out)


GENERATED = ("*Generated from `{source}` at every build of this site (`docs/hooks/reference.py`): edit the "
             "schema and its comments, not this page.*")


def options_class(name: str) -> type[BaseModel]:
    """Method `name`'s options class: the registry's entry, or the options it holds."""
    from continual.methods import METHODS

    entry = METHODS[name]
    return entry if isinstance(entry, type) and issubclass(entry, BaseModel) else entry.options


def summary(name: str) -> str:
    """The one line `continual list` shows for method `name`."""
    from continual.methods import METHODS

    return getattr(options_class(name), "SUMMARY", "") or getattr(METHODS[name], "summary", "")


def options_table(name: str) -> str:
    """The options a method's YAML entry takes, from its options class: `name` is the tag, not an option, and
    `label`, which every method takes, is in the reference's table of it."""
    cls = options_class(name)
    if not set(cls.model_fields) - {"name", "label"}:
        return "No options of its own besides [`label`](../reference/sequence.md#methods-options)."
    return table(cls, {}, skip=("name", "label"))


def sequence_reference() -> str:
    from continual.config.schema import Sequence
    from continual.methods import METHODS

    page = reference(Sequence, title="Sequence file reference", root_title="Top level", intro=(
        GENERATED.format(source="continual/config/schema.py") + "\n\n"
        "Every key a sequence file may hold; any other key is an error naming the file and the key path. "
        "How the keys work together, with an annotated example: [Sequence files and settings](../sequences.md)."))
    from continual.methods.options import Options

    out = [page, "## Methods' options", "",
           "Each entry of `methods:` is a method's name, or a one-key mapping `name: {options}`. Every method "
           "takes `label`; the others are each method's own, from its options class in "
           "`continual/methods/options.py`.", "",
           table(Options, {}, skip=("name",)), ""]
    for name in METHODS:
        out += [f"### {name}", "", md(summary(name)) + f" ([page](../methods/{name}.md))", "",
                options_table(name), ""]
    return "\n".join(out)


def sweep_reference() -> str:
    from continual.sweeps.spec import SweepFile

    return reference(SweepFile, title="Sweep file reference", root_title="Top level", intro=(
        GENERATED.format(source="continual/sweeps/spec.py") + "\n\n"
        "Every key a sweep file may hold. How a sweep runs, on which backend, and what it writes: "
        "[Sweeps and clusters](../sweeps.md)."))


# The pages that exist only in the built site: path under docs/ -> what writes it.
PAGES = {"reference/sequence.md": sequence_reference, "reference/sweep.md": sweep_reference}


def with_options(markdown: str) -> str:
    """A page with each `<!-- options: NAME -->` line replaced by method NAME's options table."""
    return OPTIONS_MARKER.sub(lambda m: options_table(m.group(1)), markdown)


# ---- the mkdocs hook ----------------------------------------------------------------------------

def on_files(files, config):
    from mkdocs.structure.files import File

    for path, write in PAGES.items():
        files.append(File.generated(config, path, content=write()))
    return files


def on_page_markdown(markdown, page, config, files):
    return with_options(markdown)

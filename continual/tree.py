"""YAML trees (a sequence, a run's config.yaml) as key paths: `training.lr`, `tasks[1].classes[0]`.

The report compares the configs of its runs with `flatten`, the report's tables list a run's settings
with it, and a resume says with `differences` where a sequence is not the one a run was started with.
No pydantic, no pandas: plain dicts and lists, as yaml.safe_load gives them.
"""

from __future__ import annotations


def flatten(doc, prefix: str = "", *, empty_leaves: bool = False) -> dict[str, object]:
    """Key path -> value of every leaf of `doc` (`{"training": {"lr": 1}}` -> `{"training.lr": 1}`; a list's
    items are `key[i]`), under `prefix`. An empty mapping or list holds no leaf, unless `empty_leaves`: then
    it is a value of its own (`training.augment: {}`) wherever its path is not empty. A scalar `doc` is the
    one leaf `{prefix: doc}`; a later key path the same as an earlier one (`a.b` next to `a: {b: ...}`)
    replaces it."""
    out: dict[str, object] = {}
    if isinstance(doc, dict) and (doc or not (empty_leaves and prefix)):
        for k, v in doc.items():
            out |= flatten(v, f"{prefix}.{k}" if prefix else str(k), empty_leaves=empty_leaves)
    elif isinstance(doc, list) and (doc or not (empty_leaves and prefix)):
        for i, v in enumerate(doc):
            out |= flatten(v, f"{prefix}[{i}]", empty_leaves=empty_leaves)
    else:
        out[prefix] = doc
    return out


def differences(a, b, prefix: str = "") -> list[tuple[str, object, object]]:
    """Key paths (`training.lr`, `tasks[1].classes`) where two YAML trees differ, with the value in each
    (None where one has no such key): mappings are compared key by key (`a`'s order, then keys only `b`
    has), lists of mappings of the same length item by item, anything else as a whole."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in list(a) + [k for k in b if k not in a]:
            out += differences(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and all(isinstance(x, dict) for x in a + b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{prefix}[{i}]")]
    return [] if a == b else [(prefix, a, b)]

"""YAML trees as key paths (continual/tree.py) and the one reader of `methods:` items as written
(methods/options.py method_items), on the shapes a hand-edited or older config.yaml holds."""

from __future__ import annotations

import pytest

from continual.methods.options import MethodItem, method_items
from continual.tree import differences, flatten


def test_flatten_names_every_leaf_by_its_key_path():
    doc = {"name": "s", "training": {"lr": 0.1, "augment": {}}, "tasks": [{"name": "a", "classes": [3, 5]}, {"name": "b"}],
           "probes": [], 1: {2: "x"}}
    assert flatten(doc) == {"name": "s", "training.lr": 0.1, "tasks[0].name": "a", "tasks[0].classes[0]": 3,
                            "tasks[0].classes[1]": 5, "tasks[1].name": "b", "1.2": "x"}
    assert list(flatten(doc)) == ["name", "training.lr", "tasks[0].name", "tasks[0].classes[0]", "tasks[0].classes[1]",
                                  "tasks[1].name", "1.2"]  # the file's order


def test_flatten_keeps_empty_mappings_and_lists_as_leaves_when_asked():
    doc = {"training": {"augment": {}, "lr": 1}, "probes": [], "tasks": [{}]}
    assert flatten(doc, empty_leaves=True) == {"training.augment": {}, "training.lr": 1, "probes": [], "tasks[0]": {}}
    assert flatten({}, empty_leaves=True) == {} and flatten([], empty_leaves=True) == {}  # the root is no leaf
    assert flatten({}, "methods.x.opts", empty_leaves=True) == {"methods.x.opts": {}}
    assert flatten([], "a") == {} and flatten({"a": {}}) == {}


@pytest.mark.parametrize("doc, prefix, flat", [
    (3, "", {"": 3}),
    (3, "training.lr", {"training.lr": 3}),
    ([1, [2]], "", {"[0]": 1, "[1][0]": 2}),
    ({"a": {"b": 1}, "a.b": 2}, "", {"a.b": 2}),  # the same key path twice: the later value
    ({"x": None}, "m", {"m.x": None}),
])
def test_flatten_of_scalars_prefixes_and_clashes(doc, prefix, flat):
    assert flatten(doc, prefix) == flat


def test_differences_name_the_key_paths_with_both_values():
    a = {"name": "s", "training": {"lr": 0.1, "epochs": 2}, "tasks": [{"name": "a", "classes": [1, 2]}, {"name": "b"}]}
    b = {"name": "s", "training": {"lr": 0.2, "batch": 8}, "tasks": [{"name": "a", "classes": [1, 3]}, {"name": "b"}]}
    assert differences(a, b) == [("training.lr", 0.1, 0.2), ("training.epochs", 2, None), ("training.batch", None, 8),
                                 ("tasks[0].classes", [1, 2], [1, 3])]  # a list of scalars as a whole
    assert differences(a, a) == []


def test_differences_compare_lists_item_by_item_only_when_both_are_mappings_of_one_length():
    assert differences({"t": [{"a": 1}, {"a": 2}]}, {"t": [{"a": 1}, {"a": 3}]}) == [("t[1].a", 2, 3)]
    assert differences({"t": [{"a": 1}]}, {"t": [{"a": 1}, {"a": 3}]}) == [("t", [{"a": 1}], [{"a": 1}, {"a": 3}])]
    assert differences({"t": [{"a": 1}, 2]}, {"t": [{"a": 1}, 3]}) == [("t", [{"a": 1}, 2], [{"a": 1}, 3])]
    assert differences({"a": {"b": 1}}, {"a": 5}) == [("a", {"b": 1}, 5)]
    assert differences(1, 2, "x") == [("x", 1, 2)] and differences({}, {}) == []


def test_method_items_read_every_shape_continual_writes_or_a_user_types():
    items = method_items(["finetune", {"ldifs": None}, {"ldifs": {"lambda": 100, "label": "ldifs-100"}},
                          {"l2sp": {"lambda": 0.1}}])
    assert items == [MethodItem(0, "finetune", "finetune", {}), MethodItem(1, "ldifs", "ldifs", {}),
                     MethodItem(2, "ldifs-100", "ldifs", {"lambda": 100, "label": "ldifs-100"}),
                     MethodItem(3, "l2sp", "l2sp", {"lambda": 0.1})]


def test_method_items_skip_what_a_damaged_file_holds_and_keep_the_places():
    damaged = [5, None, ["finetune"], {}, {"a": {}, "b": {}}, {5: {}}, {None: {}}, {True: {}},  # skipped
               {"ldifs": "junk"}, {"ldifs": [1]}, {"ldifs": {"label": 5}}, {"ldifs": {"label": None}}, "wise_ft"]
    assert method_items(damaged) == [MethodItem(8, "ldifs", "ldifs", {}), MethodItem(9, "ldifs", "ldifs", {}),
                                     MethodItem(10, "ldifs", "ldifs", {"label": 5}),
                                     MethodItem(11, "ldifs", "ldifs", {"label": None}),
                                     MethodItem(12, "wise_ft", "wise_ft", {})]
    for not_a_list in (None, "finetune", {"finetune": {}}, 5):
        assert method_items(not_a_list) == []

"""The method contract (issue #25): a method is its options class (what it declares) and its class (what it
does, continual/methods/contract.py); the runner asks both and names no method. A method added from one
file trains, is scored, keeps its state across a resume bit for bit, and is refused as it declares."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import yaml

from continual import methods
from continual.cli import main
from continual.methods import CLASSES, METHODS, NEEDS
from continual.methods.contract import Method
from continual.methods.options import Options

ROOT = Path(__file__).resolve().parents[1]

# One file: its options (what it declares) and its class (what it does), registered when the file is imported.
# It adds a penalty pulling the head's weights towards where they were after the previous task, whose copy is
# its state across tasks (saved in each checkpoint, given back on a resume).
ONE_FILE = '''
import os
from typing import ClassVar, Literal

import torch
from pydantic import Field

from continual.methods import register
from continual.methods.contract import Method
from continual.methods.options import Options


class AnchoredHeadOptions(Options):
    name: Literal["anchored_head"] = "anchored_head"
    weight: float = Field(default=0.5, ge=0)
    SUMMARY = "cross-entropy + weight * distance of the backbone's last layer to where the last task left it"
    DISTRIBUTED = True
    LEGEND = (("weight", "w = {}", False),)


class AnchoredHead(Method):
    def __init__(self, options, *, pretrained, context=None):
        super().__init__(options, pretrained=pretrained)
        self.previous = None  # name -> tensor after the last task: kept across tasks
        self.loaded = False

    def fit_task(self, model, task, *, step, trainer):
        if os.environ.get("ANCHORED_HEAD_STOP") == str(step):
            raise KeyboardInterrupt
        last = [p for p in model.backbone.parameters() if p.requires_grad][-1]
        self.pairs = [] if self.previous is None else [(last, self.previous.to(last.device))]
        stats = trainer.fit(model, task, loss_terms=self.loss_terms)
        self.previous = last.detach().clone()
        stats.extra["resumed_with_state"] = self.loaded
        return stats

    def loss_terms(self, model, batch):
        terms = {"ce": batch.ce(model(batch.x, batch.task))}
        if self.pairs:
            terms["anchor"] = self.options.weight * sum((p - q).pow(2).sum() for p, q in self.pairs)
        return terms

    def state_dict(self):
        return {} if self.previous is None else {"previous": self.previous.cpu().clone()}

    def load_state_dict(self, state, *, model, trainer):
        self.previous = state.get("previous")
        self.loaded = self.previous is not None


register(AnchoredHeadOptions, AnchoredHead)
'''


def write(tmp_path: Path, tiny_sequence) -> Path:
    (tmp_path / "anchored_head.py").write_text(ONE_FILE)
    doc = tiny_sequence(methods=["finetune", {"anchored_head": {"weight": 2.0}}],
                        plugins=[str(tmp_path / "anchored_head.py")], keep_checkpoints=2)
    seq = tmp_path / "seq.yaml"
    seq.write_text(yaml.safe_dump(doc))
    return seq


@pytest.fixture
def tiny_sequence():
    """An EfficientNet-Lite0 at 32 px on two tasks of two digits each, a few steps: the contract's run."""
    def make(**changes) -> dict:
        doc = {"name": "contract", "seed": 0, "model": {"family": "efficientnet_lite0", "image_size": 32},
               "tasks": [{"name": "a", "dataset": "digits", "classes": [0, 1], "train_per_class": 8, "test_per_class": 4},
                         {"name": "b", "dataset": "digits", "classes": [2, 3], "train_per_class": 8, "test_per_class": 4}],
               "training": {"batch_size": 8, "warmup_steps": 1, "steps_per_task": 3, "log_every": 1},
               "methods": ["finetune"], "download": False}
        doc.update(changes)
        return doc
    yield make
    METHODS.pop("anchored_head", None)  # as a new process would find it
    CLASSES.pop("anchored_head", None)


def test_a_method_from_one_file_trains_resumes_bit_for_bit_and_shows_in_the_report(tmp_path, tiny_sequence,
                                                                                     monkeypatch, capsys):
    seq = write(tmp_path, tiny_sequence)
    assert main(["run", str(seq), "--out", str(tmp_path / "whole"), "--quiet"]) == 0
    whole = tmp_path / "whole" / "contract"
    metrics = json.loads((whole / "anchored_head" / "metrics.json").read_text())
    assert metrics["complete"]
    steps = metrics["timings"][1:]
    assert "anchor" not in steps[0]["losses"] and steps[1]["losses"]["anchor"] >= 0  # its term, from task 2 on
    assert [t["resumed_with_state"] for t in steps] == [False, False]
    # its legend entry is what its options class declares
    assert "anchored_head (w = 2)" in (whole / "summary.md").read_text()

    # Interrupted while training task 2, then resumed: its state comes back, and the run ends as if never stopped.
    monkeypatch.setenv("ANCHORED_HEAD_STOP", "2")
    assert main(["run", str(seq), "--out", str(tmp_path / "cut"), "--quiet"]) == 130
    monkeypatch.delenv("ANCHORED_HEAD_STOP")
    assert main(["run", str(seq), "--out", str(tmp_path / "cut"), "--quiet", "--resume"]) == 0
    cut = tmp_path / "cut" / "contract"
    resumed = json.loads((cut / "anchored_head" / "metrics.json").read_text())["timings"][1:]
    assert resumed[1]["resumed_with_state"] is True
    assert [t["losses"] for t in resumed] == [t["losses"] for t in steps]
    for method in ("finetune", "anchored_head"):
        assert ((cut / method / "accuracy_matrix.csv").read_bytes()
                == (whole / method / "accuracy_matrix.csv").read_bytes()), method
    capsys.readouterr()
    assert main(["list"]) == 0
    assert "anchored_head" in capsys.readouterr().out  # registered by the run's plugin: listed with its summary


def test_what_a_method_declares_is_what_the_runner_checks(tmp_path, tiny_sequence, capsys):
    """DISTRIBUTED unsaid is `cannot`; NEEDS unmet is refused naming the entry; both before anything is written."""
    (tmp_path / "needy.py").write_text(
        "from typing import Literal\n"
        "from continual.methods import register\n"
        "from continual.methods.contract import Method\n"
        "from continual.methods.options import Options\n"
        "class NeedyOptions(Options):\n"
        "    name: Literal['needy'] = 'needy'\n"
        "    SUMMARY = 'needs a text tower'\n"
        "    NEEDS = ('text',)\n"
        "class Needy(Method):\n"
        "    pass\n"
        "register(NeedyOptions, Needy)\n")
    seq = tmp_path / "seq.yaml"
    seq.write_text(yaml.safe_dump(tiny_sequence(methods=["needy"], plugins=[str(tmp_path / "needy.py")])))
    assert main(["run", str(seq), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert f"{seq}: methods[0]: needy needs {NEEDS['text']}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert methods.single_process("needy") is not None  # it did not declare DISTRIBUTED
    METHODS.pop("needy")
    CLASSES.pop("needy")


def test_register_refuses_what_is_not_a_method():
    class NoName(Options):
        pass

    with pytest.raises(ValueError, match="needs `name: Literal"):
        methods.register(NoName, Method)
    with pytest.raises(ValueError, match="built-in"):
        methods.register(METHODS["ldifs"], Method)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_built_in_method_follows_the_contract(name):
    options = METHODS[name]
    assert issubclass(methods.implementation(name), Method)
    assert options.SUMMARY and options.IMPLEMENTATION
    # each built-in says whether it runs under torchrun, and why not where it cannot
    assert options.DISTRIBUTED is True or (isinstance(options.DISTRIBUTED, str) and options.DISTRIBUTED)
    fields = {f.alias or k for k, f in options.model_fields.items()}
    assert all(option in fields for option, _, _ in options.LEGEND)


def test_the_runner_names_no_method_and_probes_for_no_hook():
    """The runner asks the contract: no built-in method's name as a string or an identifier in its code (prose
    in messages, docstrings and comments aside), and no getattr/hasattr on a method for an optional hook."""
    tree = ast.parse((ROOT / "continual" / "runner.py").read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    # `training.batchnorm == "frozen"` is a setting's value, not the method of that name
    settings = {id(c) for node in ast.walk(tree) if isinstance(node, ast.Compare) and isinstance(node.left, ast.Attribute)
                and node.left.attr == "batchnorm" for c in node.comparators}
    words = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings | settings:
            words.add(node.value)  # a method dispatched on by name: `name == "joint"`
        elif isinstance(node, ast.Name):
            words.add(node.id)
        elif isinstance(node, ast.Attribute):
            words.add(node.attr)
    assert not words & set(METHODS), sorted(words & set(METHODS))
    probes = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "hasattr") and ast.unparse(node.args[0]) == "method"]
    assert not probes, [ast.unparse(p) for p in probes]

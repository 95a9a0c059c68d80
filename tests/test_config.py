"""Strict validation: every bad sequence gives exit status 2, one message naming file and key, no output."""

from pathlib import Path

import pytest
import yaml

from continual.cli import main
from continual.config import ConfigError, load_sequence

ROOT = Path(__file__).resolve().parents[1]

GOOD = {
    "name": "tiny",
    "model": {"family": "efficientnet_lite0", "image_size": 32},
    "tasks": [
        {"name": "a", "dataset": "digits", "classes": [0, 1, 2]},
        {"name": "b", "dataset": "digits", "classes": [3, 4, 5]},
    ],
    "probes": [{"name": "p", "dataset": "digits", "classes": [7, 8]}],
    "methods": ["finetune", {"ldifs": {"lambda": 10}}],
}


def write(tmp_path: Path, doc) -> Path:
    path = tmp_path / "seq.yaml"
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return path


def edited(**changes):
    doc = yaml.safe_load(yaml.safe_dump(GOOD))
    for dotted, value in changes.items():
        node, *_ = [doc]
        keys = dotted.split("__")
        for k in keys[:-1]:
            node = node[int(k)] if k.isdigit() else node[k]
        last = keys[-1]
        if value is DELETE:
            del node[int(last) if last.isdigit() else last]
        else:
            node[int(last) if last.isdigit() else last] = value
    return doc


DELETE = object()


def test_shipped_sequences_validate(capsys):
    files = sorted((ROOT / "sequences").glob("*.yaml"))
    assert len(files) >= 3
    assert main(["validate", *map(str, files)]) == 0
    assert capsys.readouterr().out.count(": ok") == len(files)


def test_good_sequence_parses():
    seq = load_sequence(GOOD)
    assert [t.name for t in seq.tasks] == ["a", "b"]
    assert seq.method("ldifs").lambda_ == 10
    assert seq.training.lr == 5e-4


@pytest.mark.parametrize("doc, key, words", [
    (edited(trainng={"lr": 1}), "trainng", "unknown key"),
    (edited(training={"lr": "fast"}), "training.lr", "number"),
    (edited(training={"epochs": 0}), "training.epochs", "greater than 0"),
    (edited(training={"batch_size": -4}), "training.batch_size", "greater than 0"),
    (edited(training={"lr": 0}), "training.lr", "greater than 0"),
    (edited(tasks__1__dataset="imagenet"), "tasks[1].dataset", "unknown dataset 'imagenet'"),
    (edited(tasks__0__classes=[0, 1, 12]), "tasks[0].classes[2]", "class 12 not in digits (10 classes)"),
    (edited(tasks__0__classes=[0, "cat"]), "tasks[0].classes[1]", "class 'cat' not in digits"),
    (edited(tasks__1__name="a"), "tasks[1].name", "duplicate task name 'a'"),
    (edited(tasks=[]), "tasks", "at least 1"),
    (edited(tasks__0__colour="red"), "tasks[0].colour", "unknown key"),
    (edited(probes__0__classes=[10]), "probes[0].classes[0]", "class 10 not in digits"),
    (edited(model={"family": "resnet"}), "model.family", "efficientnet_lite0"),
    (edited(model={"family": "efficientnet_lite0", "head_init": "zero_shot"}), "model", "zero_shot"),
    (edited(model={"family": "open_clip"}), "model", "arch"),
    (edited(methods=["finetune", "ewcc"]), "methods[1]", "unknown method 'ewcc'"),
    (edited(methods=[{"ldifs": {"lamda": 3}}]), "methods[0].ldifs.lamda", "unknown key"),
    (edited(methods=[{"ldifs": {"anchor": "latest"}}]), "methods[0].ldifs.anchor", "pretrained"),
    (edited(methods=["finetune", "finetune"]), "methods[1]", "listed twice"),
    (edited(methods=[]), "methods", "at least 1"),
    (edited(tasks__0__dataset="imagefolder"), "tasks[0]", "needs `path`"),
    (edited(name="my run/../x"), "name", "starting with a letter or a digit"),
])
def test_bad_sequence(tmp_path, capsys, doc, key, words):
    path = write(tmp_path, doc)
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{path}: {key}: " in err, err
    assert words in err, err
    assert "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("text, words", [
    ("name: [unclosed\n", "not valid YAML (line"),
    ("- just\n- a list\n", "expected a mapping"),
])
def test_unreadable_yaml(tmp_path, capsys, text, words):
    path = write(tmp_path, text)
    assert main(["validate", str(path)]) == 2
    assert f"{path}: {words}" in capsys.readouterr().err


def test_missing_file_and_directory(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.yaml"), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'nope.yaml'}: no such file" in err
    assert f"{tmp_path}: is a directory" in err


def test_overrides_apply_and_are_validated(tmp_path, capsys):
    path = write(tmp_path, GOOD)
    seq = load_sequence(path, ["training.lr=3e-4", "seed=7"])
    assert seq.training.lr == 3e-4 and seq.seed == 7
    with pytest.raises(ConfigError, match=r"training.lrr: unknown key"):
        load_sequence(path, ["training.lrr=3e-4"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_sequence(path, ["training.lr"])
    assert main(["run", str(path), "--set", "training.epochs=-1", "--out", str(tmp_path / "o")]) == 2
    assert "training.epochs" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_unknown_method_on_command_line(tmp_path, capsys):
    path = write(tmp_path, GOOD)
    assert main(["run", str(path), "--methods", "finetune,magic", "--out", str(tmp_path / "o")]) == 2
    assert "--methods: magic: unknown method" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    path = write(tmp_path, yaml.safe_dump(GOOD) + "seed: 1\n")
    text = path.read_text().replace("seed: 1", "seed: 1\ntraining: {lr: 5e-4}")
    path.write_text(text)
    assert load_sequence(path).training.lr == 5e-4

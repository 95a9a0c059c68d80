"""Strict validation: every bad sequence gives exit status 2, one message naming file and key, no output."""

import warnings
from pathlib import Path

import pytest
import yaml

from continual.cli import main
from continual.config import ConfigError, ConfigWarning, dump_sequence, load_sequence

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
    assert seq.training.lr == 1e-5  # the default: the paper's CLIP fine-tuning rate


@pytest.mark.parametrize("doc, key, words", [
    (edited(trainng={"lr": 1}), "trainng", "unknown key"),
    (edited(training={"lr": "fast"}), "training.lr", "number"),
    (edited(training={"epochs": 0}), "training.epochs", "greater than 0"),
    (edited(training={"batch_size": -4}), "training.batch_size", "greater than 0"),
    (edited(training={"lr": 0}), "training.lr", "greater than 0"),
    (edited(tasks__1__dataset="imagenet21k"), "tasks[1].dataset", "unknown dataset 'imagenet21k'"),
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


def test_every_problem_of_a_file_at_once(tmp_path, capsys):
    """One wrong type used to hide the semantic problems of the rest of the file (issue #11)."""
    doc = edited(seed="x", tasks__0__classes=[0, 12], methods=["finetune", "finetune"])
    doc["probes"].append({"name": "mine", "dataset": "imagefolder", "path": str(tmp_path / "nowhere")})
    doc["model"] = {"family": "open_clip", "arch": "ViT-Nope"}
    path = write(tmp_path, doc)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    for line in ["seed: expected an integer, got 'x'", "tasks[0].classes[1]: class 12 not in digits",
                 "methods[1]: method 'finetune' listed twice", f"probes[1].path: {tmp_path / 'nowhere'} does not exist",
                 "model.arch: unknown open_clip architecture 'ViT-Nope'"]:
        assert f"{path}: {line}" in err, err


def test_largest_seed_and_image_size_pass():
    seq = load_sequence(edited(seed=2**63 - 1, model={"family": "efficientnet_lite0", "image_size": 1024}))
    assert seq.seed == 2**63 - 1 and seq.model.image_size == 1024


@pytest.mark.parametrize("probe, words", [
    ({"classes": [0, 1, 2]}, "the same classes of digits as task 'a' (tasks[0]), which is trained on: this probe is "
                             "not held out"),
    ({"classes": [2, 3, 7]}, "shares classes 3 of digits with task 'b' (tasks[1])"),
    ({"classes": None}, "shares classes 0, 1, 2 of digits with task 'a'"),
])
def test_a_probe_that_a_task_trains_on_is_a_warning(tmp_path, capsys, probe, words):
    path = write(tmp_path, edited(probes__0__classes=probe["classes"]))
    with pytest.warns(ConfigWarning) as caught:
        seq = load_sequence(path)
    assert seq.probes[0].classes == probe["classes"]
    assert any(str(w.message).startswith(f"{path}: probes[0]: ") and words in str(w.message) for w in caught), \
        [str(w.message) for w in caught]
    assert all(w.message.key == "probes[0]" and w.message.source == str(path) for w in caught)
    assert main(["validate", str(path)]) == 0  # a warning, not a refusal
    assert f"warning: {path}: probes[0]: " in capsys.readouterr().err


def test_held_out_probes_give_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigWarning)
        load_sequence(GOOD)  # digits 7, 8 against tasks of 0..5
        for path in sorted((ROOT / "sequences").glob("*.yaml")):
            load_sequence(path)


def test_open_clip_architectures_registered_at_run_time(tiny_clip):
    """The tests' tiny CLIP is registered with open_clip.add_model_config, so it is no model_configs/*.json:
    with open_clip imported, its own list is asked."""
    arch, checkpoint = tiny_clip
    model = {"family": "open_clip", "arch": arch, "pretrained": str(checkpoint), "image_size": 32}
    assert load_sequence(edited(model=model)).model.arch == arch
    with pytest.raises(ConfigError, match=r"model.image_size: 36 is not a multiple of continual-tiny-vit's patch size"):
        load_sequence(edited(model={**model, "image_size": 36}))


def test_a_method_whose_needs_the_architecture_cannot_meet(tmp_path, capsys):
    """LDIFS taps ViT and ModifiedResNet towers; open_clip builds timm's ConvNeXt for convnext_base. `run`
    refused it after building the model (20 s here); validate reads the architecture's config instead."""
    doc = edited(model={"family": "open_clip", "arch": "convnext_base"})
    path = write(tmp_path, doc)
    assert main(["validate", str(path)]) == 2
    assert f"{path}: methods[1]: ldifs needs intermediate feature taps" in capsys.readouterr().err
    assert main(["validate", str(write(tmp_path, {**doc, "methods": ["finetune"]}))]) == 0


def test_relative_paths_name_files_next_to_the_sequence(tmp_path, monkeypatch, capsys):
    """A sweep's jobs start wherever the scheduler puts them: `path: data` means next to the file."""
    project = tmp_path / "project"
    for name in ("a", "b"):
        (project / "data" / name).mkdir(parents=True)
        for i in range(3):
            (project / "data" / name / f"{i}.png").write_bytes(b"")  # validate reads names only
    (project / "weights").mkdir()
    (project / "weights" / "lite0.pt").write_bytes(b"")
    doc = {"name": "mine", "model": {"pretrained": "weights/lite0.pt"}, "data_root": "cache",
           "tasks": [{"name": "t", "dataset": "imagefolder", "path": "data"}], "methods": ["finetune"]}
    path = project / "seq.yaml"
    path.write_text(yaml.safe_dump(doc))
    monkeypatch.chdir(tmp_path)  # not the sequence's folder
    seq = load_sequence(Path("project/seq.yaml"))
    assert seq.tasks[0].path == str(project / "data") and seq.model.pretrained == str(project / "weights/lite0.pt")
    assert seq.data_root == str(project / "cache")
    assert main(["validate", "project/seq.yaml"]) == 0
    # a path given with --set is the shell's, relative to where continual runs
    assert load_sequence(Path("project/seq.yaml"), ["data_root=elsewhere"]).data_root == "elsewhere"


def test_every_shipped_sequence_reads_back_as_its_config_yaml_writes_it():
    """config.yaml is read back (`continual export`): the resolved sequence, every method's options included
    (RAIL's of either form, ZSCL's reference, labelled variants), loads as written and writes the same again."""
    from continual.config.loading import sequence_file, shipped_sequences

    forms = set()
    for name in shipped_sequences():
        written = dump_sequence(load_sequence(sequence_file(name)))
        assert dump_sequence(load_sequence(yaml.safe_load(written))) == written, name
        forms |= {o.form for o in load_sequence(yaml.safe_load(written)).methods if o.name == "rail"}
    assert forms == {"primal", "dual"}  # both of RAIL's forms among them

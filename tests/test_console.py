"""What the console says (issue #23): near misses get a "did you mean", `validate` takes `--set` as `run` does,
and the names the docs give the metrics are the ones the API returns."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from continual.cli import main
from continual.config import ConfigError, load_sequence
from continual.config.schema import did_you_mean
from helpers import digits, tiny_sequence

ROOT = Path(__file__).resolve().parents[1]
GOOD = tiny_sequence(tasks=[digits("a", [0, 1], 2, 2)], training={"batch_size": 4},
                     methods=["finetune", {"ldifs": {"lambda": 10}}])


def write(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "seq.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# (where the typo goes, the key path the message names, what it should suggest)
TYPOS = [
    (("training", "epoch"), "training.epoch", "epochs"),
    (("training", "optimiser"), "training.optimiser", "optimizer"),
    (("model", "head_int"), "model.head_int", "head_init"),
    (("tasks", 0, "test_per_clas"), "tasks[0].test_per_clas", "test_per_class"),
    (("prob",), "prob", "probes"),
    (("keep_checkpoint",), "keep_checkpoint", "keep_checkpoints"),
    (("methods", 1, "ldifs", "lamda"), "methods[1].ldifs.lamda", "lambda"),
]


@pytest.mark.parametrize("where, key, suggestion", TYPOS, ids=[t[1] for t in TYPOS])
def test_unknown_key_suggests_the_near_one(tmp_path, capsys, where, key, suggestion):
    doc = yaml.safe_load(yaml.safe_dump(GOOD))
    node = doc
    for part in where[:-1]:
        node = node.setdefault(part, {}) if isinstance(part, str) else node[part]
    node[where[-1]] = 1
    path = write(tmp_path, doc)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: {key}: unknown key (did you mean `{suggestion}`?)" in err, err


def test_no_suggestion_for_a_word_far_from_every_key(tmp_path, capsys):
    doc = {**GOOD, "training": {"batch_size": 4, "zzzzzz": 1}}
    assert main(["validate", str(write(tmp_path, doc))]) == 2
    err = capsys.readouterr().err
    assert "training.zzzzzz: unknown key\n" in err and "did you mean" not in err, err


@pytest.mark.parametrize("change, key, suggestion", [
    ({"model": {"family": "efficientnet_lit0"}}, "model.family", "efficientnet_lite0"),
    ({"methods": ["ldfis"]}, "methods[0]", "ldifs"),
    ({"tasks": [{**GOOD["tasks"][0], "dataset": "digit"}]}, "tasks[0].dataset", "digits"),
    ({"training": {"optimizer": "adam_w"}}, "training.optimizer", "adamw"),
])
def test_a_misspelt_value_suggests_the_near_one(tmp_path, change, key, suggestion):
    with pytest.raises(ConfigError) as caught:
        load_sequence(write(tmp_path, {**GOOD, **change}))
    lines = [line for line in str(caught.value).splitlines() if f": {key}: " in line]
    assert lines and f"(did you mean `{suggestion}`?)" in lines[0], str(caught.value)


def test_did_you_mean_only_for_near_misses():
    assert did_you_mean("epoch", ["epochs", "lr"]) == " (did you mean `epochs`?)"
    assert did_you_mean("lr", ["epochs", "batch_size"]) == ""
    assert did_you_mean("epochs", ["epochs"]) == ""  # the word itself is no suggestion


def test_validate_takes_set_as_run_does(tmp_path, capsys):
    path = write(tmp_path, GOOD)
    assert main(["validate", str(path), "--set", "training.lr=3e-4", "--set", "methods.ldifs.lambda=100"]) == 0
    assert f"{path}: ok" in capsys.readouterr().out
    assert main(["validate", str(path), "--set", "training.epochs=0"]) == 2  # what run would refuse
    assert f"{path}: training.epochs: must be greater than 0" in capsys.readouterr().err
    assert main(["validate", str(path), "--set", "training.epoch=2"]) == 2
    assert "training.epoch: unknown key (did you mean `epochs`?)" in capsys.readouterr().err
    assert main(["validate", str(path), "--set", "nokey"]) == 2
    assert "--set: nokey: expected KEY=VALUE" in capsys.readouterr().err


def test_log_every_is_a_training_setting(tmp_path):
    assert load_sequence(write(tmp_path, GOOD)).training.log_every == 10
    assert load_sequence(write(tmp_path, GOOD), ["training.log_every=1"]).training.log_every == 1
    with pytest.raises(ConfigError, match=r"training\.log_every: must be greater than 0"):
        load_sequence(write(tmp_path, GOOD), ["training.log_every=0"])


def test_the_docs_name_the_metrics_as_the_api_spells_them(tmp_path):
    """The docs' load_metrics line (docs/outputs.md) names `concept_delta:probe:<probe>`: the metric load_metrics
    returns for a probe (its accuracy_matrix.csv column `probe:<name>`)."""
    import continual
    from helpers import write_run

    config = {**GOOD, "probes": [{**GOOD["tasks"][0], "name": "held"}]}
    folder = write_run(tmp_path / "tiny", config, {"finetune": [(0.5, 0.6), (0.9, 0.4)]})
    names = set(continual.load_metrics(folder)["metric"])
    page = (ROOT / "docs" / "outputs.md").read_text()
    line = next(line for line in page.splitlines() if line.startswith("metrics = continual.load_metrics"))
    documented = set(re.findall(r"\b(?:average_accuracy|forgetting|bwt|concept_delta:[\w:<>]+)", line))
    assert {n.replace("<probe>", "held") for n in documented if "zero_shot" not in n} == names


def test_bars_of_labelled_variants_show_the_label(tmp_path):
    """Two entries of one method: each bar names its entry (`ldifs-100 1:a`), not the method twice."""
    import contextlib
    import io

    doc = {**GOOD, "tasks": [{**GOOD["tasks"][0], "train_per_class": 4}],
           "methods": [{"ldifs": {"lambda": 10}}, {"ldifs": {"lambda": 100, "label": "ldifs-100"}},
                       {"finetune": {"label": "ft"}}]}
    with contextlib.redirect_stderr(io.StringIO()) as err:
        assert main(["run", str(write(tmp_path, doc)), "--out", str(tmp_path / "out"), "--no-tensorboard"]) == 0
    lines = err.getvalue().replace("\r", "\n").splitlines()
    for label in ("ldifs 1:a", "ldifs-100 1:a", "ldifs-100 1:a: anchor features", "ft 1:a"):
        assert any(line.startswith(label) for line in lines), (label, lines)


def test_every_warning_is_one_line(tmp_path):
    """Ours as `warning: <message>`; another package's with its name and category, without Python's second line
    (the source of a file in site-packages); a message with line breaks on one line."""
    import io

    import continual.report.live as ours
    from continual.cli import _shown_as_ours
    from continual.config import ConfigWarning

    stream = io.StringIO()
    show = _shown_as_ours(lambda *a: pytest.fail("handed to Python's format"))
    show(ConfigWarning("seq.yaml", "probes[0]", "not held out"), ConfigWarning, __file__, 1, stream)
    show(UserWarning("report not written:\n  disk"), UserWarning, ours.__file__, 46, stream)
    site = tmp_path / "lib" / "python3.11" / "site-packages" / "matplotlib" / "figure.py"
    show(UserWarning("constrained_layout not applied"), UserWarning, str(site), 62, stream)
    show(RuntimeWarning("Mean of empty slice"), RuntimeWarning, str(tmp_path / "script.py"), 3, stream)
    assert stream.getvalue().splitlines() == [
        "warning: seq.yaml: probes[0]: not held out",
        "warning: report not written: disk",
        "warning: matplotlib: UserWarning: constrained_layout not applied",
        "warning: script: RuntimeWarning: Mean of empty slice",
    ]

"""Variants of one method in one sequence (issue #13): each entry under its own `label:`, which names its
folder, its rows and its legend entry; a second entry without a label is refused."""
import json

import pytest
import yaml

from continual.cli import main
from continual.config import ConfigError, load_sequence
from continual.report.tables import method_labels, settings
from helpers import tiny_sequence

SEQ = tiny_sequence(name="var", seed=0,
                    methods=[{"l2sp": {"lambda": 0.1}}, {"l2sp": {"lambda": 1000, "label": "l2sp-1000"}}, "finetune"])


def test_labelled_variants_run_side_by_side_and_resume(tmp_path, capsys):
    path = tmp_path / "seq.yaml"
    path.write_text(yaml.safe_dump(SEQ))
    assert [o.key for o in load_sequence(path).methods] == ["l2sp", "l2sp-1000", "finetune"]
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--quiet", "--methods", "l2sp,l2sp-1000"]) == 0
    folder = out / "var"
    terms = {key: json.loads((folder / key / "metrics.json").read_text())["timings"][1]["losses"]["l2sp"]
             for key in ("l2sp", "l2sp-1000")}
    assert terms["l2sp-1000"] > terms["l2sp"] > 0  # each entry trained with its own λ
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert config["methods"][:2] == [{"l2sp": {"lambda": 0.1}}, {"l2sp": {"label": "l2sp-1000", "lambda": 1000.0}}]
    summary = (folder / "summary.md").read_text()
    assert "| l2sp (λ = 0.1) |" in summary and "| l2sp-1000 (λ = 1000) |" in summary

    # A resume adds the entry not run yet and keeps the finished ones; a changed λ under the same label is refused.
    assert main(["run", str(path), "--out", str(out), "--quiet", "--resume"]) == 0
    assert "l2sp-1000: complete (2/2 steps), kept as it is" in capsys.readouterr().err
    assert (folder / "finetune" / "accuracy_matrix.csv").exists()
    changed = {**SEQ, "methods": [{"l2sp": {"lambda": 0.1}}, {"l2sp": {"lambda": 10, "label": "l2sp-1000"}}]}
    path.write_text(yaml.safe_dump(changed))
    assert main(["run", str(path), "--out", str(out), "--quiet", "--resume"]) == 2
    assert "methods.l2sp-1000.lambda: was 1000.0 in this run, is 10.0 now" in capsys.readouterr().err


def test_legends_and_settings_name_what_differs():
    config = {"methods": [{"l2sp": {"lambda": 0.1}}, {"l2sp": {"lambda": 1000.0, "label": "l2sp-1000"}},
                          {"ldifs": {"lambda": 10.0, "cache": "auto"}}]}
    assert method_labels(config) == {"l2sp": "l2sp (λ = 0.1)", "l2sp-1000": "l2sp-1000 (λ = 1000)",
                                     "ldifs": "ldifs (λ = 10)"}
    flat = settings(config)
    assert flat["methods.l2sp-1000.lambda"] == 1000.0 and flat["methods.l2sp-1000.method"] == "l2sp"
    assert "methods.l2sp-1000.label" not in flat and "methods.l2sp.method" not in flat


@pytest.mark.parametrize("methods, key, message", [
    (["l2sp", {"l2sp": {"lambda": 1.0}}], r"methods\[1\]", "method 'l2sp' listed twice: give each entry its own `label:`"),
    ([{"l2sp": {"label": "x"}}, {"finetune": {"label": "x"}}], r"methods\[1\]", r"'x' already names methods\[0\]"),
    (["finetune", {"l2sp": {"label": "finetune"}}], r"methods\[1\]", r"'finetune' already names methods\[0\]"),
    ([{"l2sp": {"label": "ldifs"}}], r"methods\[0\]\.label", "'ldifs' is the name of another method"),
    ([{"l2sp": {"label": "../up"}}], r"methods\[0\]\.l2sp\.label", "should match pattern"),
    ([{"l2sp": {"label": "checkpoints"}}], r"methods\[0\]\.l2sp\.label", "a folder of the run itself"),
])
def test_labels_are_checked(methods, key, message):
    with pytest.raises(ConfigError, match=f"{key}: .*{message}"):
        load_sequence({**SEQ, "methods": methods})


def test_set_reaches_a_method_entrys_options(tmp_path, capsys):
    path = tmp_path / "seq.yaml"
    path.write_text(yaml.safe_dump(SEQ))
    seq = load_sequence(path, ["methods.l2sp-1000.lambda=5", "methods.l2sp.lambda=2", "methods.finetune.label=ft"])
    assert [(o.key, getattr(o, "lambda_", None)) for o in seq.methods] == [("l2sp", 2.0), ("l2sp-1000", 5.0), ("ft", None)]
    with pytest.raises(ConfigError, match=r"--set: methods\.ldifs\.lambda: no method entry 'ldifs' in the sequence "
                                          r"\(entries: l2sp, l2sp-1000, finetune\)"):
        load_sequence(path, ["methods.ldifs.lambda=1"])
    with pytest.raises(ConfigError, match=r"--set: methods\.l2sp: name one of its options"):
        load_sequence(path, ["methods.l2sp=3"])
    assert main(["run", str(path), "--set", "methods.l2sp.lambda=-1", "--out", str(tmp_path / "o")]) == 2
    assert "methods[0].l2sp.lambda: must be greater than or equal to 0, got -1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()

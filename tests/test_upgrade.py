"""Runs written by an earlier version (config.yaml without the keys added since) stay usable: the report
averages them with runs of today, and config.yaml leaves out a task's keys it does not set (#24's `split`,
`training`), so a run of today's reads as one of before."""

from __future__ import annotations

import pytest
import yaml

from continual.config import dump_sequence, load_sequence
from continual.config.schema import MISSING, schema_default
from continual.report import ReportError, write_report
from helpers import write_run

SEQ = {"name": "toy", "tasks": [{"name": "a", "dataset": "digits", "classes": [0, 1]},
                                {"name": "b", "dataset": "digits", "classes": [2, 3]}],
       "methods": ["finetune"], "download": False}


def test_a_key_added_since_reads_as_its_default():
    assert schema_default("training.label_smoothing") == 0.0
    assert schema_default("training.log_every") == 10
    assert schema_default("tasks[3].split") is None
    assert schema_default("name") is MISSING  # required: no default
    assert schema_default("methods.ldifs.lambda") is MISSING  # a method's options are compared as written
    assert schema_default("training.nope") is MISSING


def test_config_yaml_leaves_out_the_task_keys_it_does_not_set():
    tasks = yaml.safe_load(dump_sequence(load_sequence(SEQ)))["tasks"]
    assert all("split" not in t and "training" not in t for t in tasks)
    tasks = yaml.safe_load(dump_sequence(load_sequence({**SEQ, "tasks": [{**SEQ["tasks"][0], "training": {"lr": 1e-4}},
                                                                          SEQ["tasks"][1]]})))["tasks"]
    assert tasks[0]["training"] == {"lr": 1e-4} and "training" not in tasks[1]


def test_the_report_averages_a_run_of_before_with_one_of_today(tmp_path):
    today = yaml.safe_load(dump_sequence(load_sequence(SEQ)))
    before = {**today, "training": {k: v for k, v in today["training"].items()
                                    if k not in ("label_smoothing", "log_every")}}
    rows = {"finetune": [(0.5, 0.6), (0.9, 0.6), (0.7, 0.9)]}
    runs = [write_run(tmp_path / "s0" / "toy", {**before, "seed": 0}, rows),
            write_run(tmp_path / "s1" / "toy", {**today, "seed": 1}, rows)]
    out = write_report(runs, tmp_path / "report")
    assert "complete (2 runs)" in (out / "summary.md").read_text()
    # a value that differs from the default is still a different setting
    changed = {**today, "seed": 2, "training": {**today["training"], "label_smoothing": 0.2}}
    third = write_run(tmp_path / "s2" / "toy", changed, rows)
    with pytest.raises(ReportError, match="training.label_smoothing: 0.0 → 0.2"):
        write_report([runs[0], third], tmp_path / "report2")

"""The report of run folders the tests write by hand: files, numbers (mean ± std worked out here), the CLI."""

import math
import re

import pandas as pd
import pytest
import yaml

from continual.cli import main
from continual.report import ReportError, load_tables, write_report
from helpers import write_run

CONFIG = {"name": "toy", "seed": 0,
          "tasks": [{"name": "t1", "dataset": "digits"}, {"name": "t2", "dataset": "digits"}],
          "probes": [{"name": "p", "dataset": "digits"}],
          "methods": [{"finetune": {}}, {"ldifs": {"lambda": 10.0}}, {"ewc": {"lambda": 100.0}}]}

# Rows (t1, t2, probe:p) after steps 0, 1, 2, per seed and method.
ROWS = {
    0: {"finetune": [(0.50, 0.40, 0.80), (0.90, 0.50, 0.70), (0.60, 0.80, 0.60)],
        "ldifs": [(0.50, 0.40, 0.80), (0.92, 0.45, 0.80), (0.88, 0.85, 0.79)],
        "ewc": [(0.50, 0.40, 0.80), (0.91, 0.44, 0.78)]},  # stopped after task 1
    1: {"finetune": [(0.50, 0.40, 0.80), (0.80, 0.40, 0.75), (0.70, 0.90, 0.70)],
        "ldifs": [(0.50, 0.40, 0.80), (0.90, 0.42, 0.81), (0.86, 0.83, 0.80)]},  # ewc never started
}


def _write_run(root, seed):
    return write_run(root / "toy", dict(CONFIG, seed=seed), ROWS[seed], timings=lambda n: (
        [{"step": 0, "fit_seconds": 0.0, "eval_seconds": 5.0}] +
        [{"step": s, "fit_seconds": 10.0 + seed, "eval_seconds": 2.0, "train_steps": 4, "losses": {"ce": 0.5 + seed}}
         for s in range(1, n)]))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return _write_run(root / "s0", 0), _write_run(root / "s1", 1)


@pytest.fixture(scope="module")
def two_seeds(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    assert write_report(list(runs), out) == out
    return out


def test_summary_is_mean_and_std_over_the_seeds(two_seeds):
    summary = pd.read_csv(two_seeds / "summary.csv")
    assert list(summary.columns) == ["method", "metric", "mean", "std", "n"]
    got = summary.set_index(["method", "metric"])
    # finetune A_T: (0.60 + 0.80) / 2 = 0.70 and (0.70 + 0.90) / 2 = 0.80; std of {0.7, 0.8} = 0.05·√2
    assert got.loc[("finetune", "final_average_accuracy"), "mean"] == pytest.approx(0.75, abs=1e-6)
    assert got.loc[("finetune", "final_average_accuracy"), "std"] == pytest.approx(0.05 * math.sqrt(2), abs=1e-6)
    assert got.loc[("finetune", "final_average_accuracy"), "n"] == 2
    # forgetting of t1: 0.90 - 0.60 = 0.30 and 0.80 - 0.70 = 0.10
    assert got.loc[("finetune", "forgetting"), "mean"] == pytest.approx(0.20, abs=1e-6)
    assert got.loc[("finetune", "forgetting"), "std"] == pytest.approx(0.10 * math.sqrt(2), abs=1e-6)
    # probe Δ: 0.60 - 0.80 and 0.70 - 0.80
    assert got.loc[("finetune", "concept_delta:probe:p"), "mean"] == pytest.approx(-0.15, abs=1e-6)
    # ldifs A_T: (0.88 + 0.85) / 2 = 0.865 and (0.86 + 0.83) / 2 = 0.845
    assert got.loc[("ldifs", "final_average_accuracy"), "mean"] == pytest.approx(0.855, abs=1e-6)
    assert got.loc[("ldifs", "final_average_accuracy"), "std"] == pytest.approx(0.01 * math.sqrt(2), abs=1e-6)
    assert got.loc[("ldifs", "plasticity:t2"), "mean"] == pytest.approx(0.84, abs=1e-6)
    # ewc: incomplete in one run, missing in the other: listed, no value
    assert got.loc[("ewc", "final_average_accuracy"), "n"] == 0
    assert math.isnan(got.loc[("ewc", "final_average_accuracy"), "mean"])


def test_markdown_and_html_show_every_method_and_its_state(two_seeds, runs):
    md = (two_seeds / "summary.md").read_text()
    assert "| finetune | complete (2 runs) | 75.0 ± 7.1 |" in md
    assert "0 of 2 runs complete; run 1: incomplete (1 of 2 steps); run 2: missing" in md
    assert "**85.5 ± 1.4**" in md  # ldifs has the best A_T
    page = (two_seeds / "index.html").read_text()
    images = re.findall(r'<img[^>]*\ssrc="([^"]*)"', page)
    assert len(images) >= 5  # summary, forgetting, concept, a heatmap per method with numbers
    assert all(src.startswith("data:image/png;base64,") for src in images)
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing outside the page
    assert "lambda: 10.0" in page and "seed: 0 → 1" in page  # the config, and how the second run differs
    assert "numpy" in page and "incomplete" in page
    # the loss column is labelled "(first run)": it shows seed 0's losses (0.5), not the last run's (1.5)
    assert "loss terms, last step (first run)" in md and "ce 0.5" in md and "ce 1.5" not in md


def test_one_folder_is_written_into_itself_with_n_1(runs, tmp_path):
    import shutil

    folder = shutil.copytree(runs[0], tmp_path / "toy")
    assert write_report([folder]) == folder
    summary = pd.read_csv(folder / "summary.csv").set_index(["method", "metric"])
    assert summary.loc[("finetune", "final_average_accuracy"), "mean"] == pytest.approx(0.70, abs=1e-6)
    assert summary.loc[("finetune", "final_average_accuracy"), "n"] == 1
    assert math.isnan(summary.loc[("finetune", "final_average_accuracy"), "std"])
    assert {"index.html", "summary.md", "summary.csv"} <= {p.name for p in folder.iterdir()}
    assert not list(folder.glob(".*.tmp"))


def test_load_tables_are_tidy(runs):
    tables = load_tables(runs[0])
    matrix = tables["matrix"]
    assert list(matrix.columns) == ["method", "step", "column", "accuracy"]
    cell = matrix[(matrix.method == "ldifs") & (matrix.step == 2) & (matrix.column == "t2")]
    assert cell["accuracy"].item() == pytest.approx(0.85)
    per_step = tables["metrics"].set_index(["method", "step", "metric"])["value"]
    assert per_step[("finetune", 1, "concept_delta:probe:p")] == pytest.approx(-0.10)
    assert per_step[("ewc", 1, "average_accuracy")] == pytest.approx(0.91)
    summary = tables["summary"].set_index(["method", "metric"])["value"]
    assert summary[("finetune", "bwt")] == pytest.approx(-0.30)
    assert math.isnan(summary[("ewc", "bwt")])
    assert tables["status"].set_index("method")["status"].to_dict() == {
        "finetune": "complete", "ldifs": "complete", "ewc": "incomplete"}


def test_a_method_without_results_and_two_probe_columns(runs, tmp_path):
    """CLIP runs have two columns per probe (linear probe and zero-shot); a method that has not started
    yet must still get a report (it used to raise in final_metrics' reshape)."""
    import shutil

    folder = shutil.copytree(runs[0], tmp_path / "toy")
    for csv in folder.glob("*/accuracy_matrix.csv"):
        matrix = pd.read_csv(csv)
        matrix["probe:p:zero_shot"] = matrix["probe:p"]
        matrix.to_csv(csv, index=False)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    (folder / "config.yaml").write_text(yaml.safe_dump({**config, "methods": config["methods"] + ["lwf"]}))
    assert write_report([folder]) == folder
    summary = pd.read_csv(folder / "summary.csv").set_index(["method", "metric"])
    assert summary.loc[("finetune", "concept_delta:probe:p:zero_shot"), "mean"] == pytest.approx(-0.20, abs=1e-6)
    # lwf, listed in config.yaml but never run here (not begun, or left out by --methods), is not in the report
    assert "lwf" not in set(summary.index.get_level_values("method")) and "lwf" not in (folder / "summary.md").read_text()


def test_cli_report_and_its_errors(runs, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["report", str(runs[0]), str(runs[1]), "--out", str(out)]) == 0
    assert (out / "index.html").is_file()

    for bad in (tmp_path / "nope", tmp_path):  # not there; there but not a run folder
        assert main(["report", str(runs[0]), str(bad), "--out", str(tmp_path / "none")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {bad}: ") and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "none").exists()

    other = tmp_path / "other"
    other.mkdir()
    (other / "config.yaml").write_text(yaml.safe_dump(dict(CONFIG, name="another")))
    with pytest.raises(ReportError, match="is not the sequence of"):
        write_report([runs[0], other], tmp_path / "none")
    assert not (tmp_path / "none").exists()


def _edit_config(folder, **changes):
    """Rewrite a run folder's config.yaml with `changes` ("training__lr" sets training.lr)."""
    config = yaml.safe_load((folder / "config.yaml").read_text())
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = config
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


@pytest.mark.parametrize("changes, words", [
    ({"training__lr": 1e-3}, ["training.lr", "1e-05 → 0.001"]),  # a key one config lacks reads as its default
    ({"model__image_size": 64}, ["model.image_size"]),
    ({"methods": [{"finetune": {}}, {"ldifs": {"lambda": 100.0}}, {"ewc": {"lambda": 100.0}}]},
     ["methods.ldifs.lambda: 10.0 → 100.0"]),
    ({"tasks": [{"name": "t1", "dataset": "digits", "classes": [0, 1]}, {"name": "t2", "dataset": "digits"}]},
     ["tasks[0].classes"]),
])
def test_runs_of_other_settings_are_not_averaged_as_seeds(runs, tmp_path, capsys, changes, words):
    """Issue #11: two folders of one sequence at another lr were averaged as if they were two seeds."""
    import shutil

    other = shutil.copytree(runs[1], tmp_path / "s1" / "toy")
    _edit_config(other, **changes)
    with pytest.raises(ReportError) as caught:
        write_report([runs[0], other], tmp_path / "none")
    message = str(caught.value)
    assert message.startswith(f"{other}: not a repetition of {runs[0]}"), message
    for word in words:
        assert word in message, message
    assert main(["report", str(runs[0]), str(other), "--out", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {other}: ") and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "none").exists()


def test_runs_that_differ_only_where_results_do_not_are_repetitions(runs, tmp_path):
    import shutil

    other = shutil.copytree(runs[1], tmp_path / "s1" / "toy")
    _edit_config(other, keep_checkpoints=3, data_root="/elsewhere", download=False, training__device="cuda:1",
                 training__eval_batch_size=512, methods=[{"ldifs": {"lambda": 10.0}}, {"finetune": {}}])  # no ewc
    summary = pd.read_csv(write_report([runs[0], other], tmp_path / "rep") / "summary.csv")
    assert summary.set_index(["method", "metric"]).loc[("finetune", "final_average_accuracy"), "n"] == 2


def test_a_folder_without_config_cannot_be_checked(runs, tmp_path):
    import shutil

    other = shutil.copytree(runs[1], tmp_path / "s1" / "toy")
    (other / "config.yaml").unlink()
    with pytest.raises(ReportError, match="no config.yaml"):
        write_report([runs[0], other], tmp_path / "none")
    assert not (tmp_path / "none").exists()

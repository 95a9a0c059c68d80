"""What a user types first: `continual --version`, `continual list DATASET`, and the Python API's shape
(`continual.report` after `import continual`, `load_run` in the sequence's order, `load_metrics` tidy)."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import continual
from continual.cli import main
from continual.report import load_tables
from helpers import write_run

ROOT = Path(__file__).parents[1]


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"continual {continual.__version__}"
    tomllib = pytest.importorskip("tomllib")  # Python 3.11

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())  # one version, the package's: pyproject reads it
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "continual.__version__"}


def test_list_a_dataset_names_its_classes(capsys):
    assert main(["list", "fashion_mnist"]) == 0
    out = capsys.readouterr().out
    assert "10 classes" in out
    for i, name in enumerate(["T-shirt/top", "Trouser", "Pullover"]):
        assert f"  {i}  {name}" in out
    assert main(["list", "cifar100"]) == 0  # static list, files or not; CLIP's name shown where it differs
    out = capsys.readouterr().out
    assert "100 classes" in out and "   1  aquarium_fish  (CLIP prompts: 'aquarium fish')" in out


def test_list_reads_classes_from_files_under_set_paths(tmp_path, capsys):
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / "pets" / cls).mkdir(parents=True)
        for i in range(3):  # a fixed 80/20 split needs 3 images a class
            Image.new("RGB", (4, 4)).save(tmp_path / "pets" / cls / f"{i}.png")
    assert main(["list", "imagefolder", "--set", f"path={tmp_path / 'pets'}"]) == 0
    out = capsys.readouterr().out
    assert "2 classes" in out and "  0  cat" in out and "  1  dog" in out
    # RESISC45's classes are its folders under data_root: --set data_root is where they are looked for
    for cls in ("airport", "beach"):
        (tmp_path / "data" / "resisc45" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (4, 4)).save(tmp_path / "data" / "resisc45" / cls / f"{i}.jpg")
    assert main(["list", "resisc45", "--set", f"data_root={tmp_path / 'data'}"]) == 0
    out = capsys.readouterr().out
    assert "files: present" in out and "  0  airport" in out and "  1  beach" in out
    assert main(["list", "--set", f"data_root={tmp_path / 'data'}"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("resisc45"))
    assert "present" in line


@pytest.mark.parametrize("words, says", [
    (["list", "nope"], "continual list: nope: unknown dataset"),
    (["list", "resisc45", "--set", "data_root=/nonexistent"], "continual list: resisc45: "),
    (["list", "imagefolder"], "add --set path=DIR"),
    (["list", "digits", "--set", "path=/tmp"], "--set: path: is for imagefolder only"),
    (["list", "--set", "training.lr=1"], "--set: training.lr=1: continual list takes data_root=DIR and path=DIR"),
    (["list", "--set", "path=/tmp"], "--set: path: is imagefolder's folder"),
    (["list", "digits", "--pretrained"], "--pretrained: lists models' tags: not with a DATASET"),
])
def test_list_errors_name_what_is_wrong(words, says, capsys):
    assert main(words) == 2
    assert says in capsys.readouterr().err


def _hand_written_run(folder: Path) -> Path:
    """Methods listed ldifs, finetune, ewc: not the folders' alphabetical order."""
    config = {"name": "toy", "seed": 0, "tasks": [{"name": "t1", "dataset": "digits"}, {"name": "t2", "dataset": "digits"}],
              "probes": [{"name": "p", "dataset": "digits"}], "methods": [{"ldifs": {"lambda": 10.0}}, "finetune", "ewc"]}
    rows = [(0.5, 0.4, 0.8), (0.9, 0.5, 0.7), (0.6, 0.8, 0.6)]
    return write_run(folder, config, {method: rows for method in ("ewc", "finetune", "ldifs")})


def test_load_run_and_load_metrics_follow_the_sequence(tmp_path):
    folder = _hand_written_run(tmp_path / "toy")
    matrices = continual.load_run(folder)
    assert list(matrices) == ["ldifs", "finetune", "ewc"]
    assert list(matrices["ldifs"].columns) == ["t1", "t2", "probe:p"] and list(matrices["ldifs"].index) == [0, 1, 2]
    metrics = continual.load_metrics(folder)
    assert list(metrics.columns) == ["method", "step", "metric", "value"]
    pd.testing.assert_frame_equal(metrics, load_tables(folder)["metrics"])
    assert list(metrics["method"].unique()) == ["ldifs", "finetune", "ewc"]
    last = metrics[(metrics["method"] == "finetune") & (metrics["step"] == 2)].set_index("metric")["value"]
    assert last["average_accuracy"] == pytest.approx(0.7)  # (0.6 + 0.8) / 2
    assert last["forgetting"] == pytest.approx(0.3) and last["bwt"] == pytest.approx(-0.3)  # t1: 0.9 -> 0.6
    assert last["concept_delta:probe:p"] == pytest.approx(-0.2)  # 0.6 - 0.8
    with pytest.raises(FileNotFoundError, match="is it a run folder"):
        continual.load_metrics(tmp_path)


def test_report_is_reached_from_import_continual():
    """In a fresh interpreter: `import continual` loads neither the report nor torch; `continual.report`
    then is the package, whose write_report writes the report."""
    code = ("import sys, continual; assert 'continual.report' not in sys.modules and 'torch' not in sys.modules; "
            "print(continual.report.write_report.__module__, continual.sweeps.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.split() == ["continual.report.page", "continual.sweeps"]
    with pytest.raises(AttributeError):
        continual.nothing_here

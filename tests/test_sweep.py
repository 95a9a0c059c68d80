"""Sweeps (issue #14), local backend: every cell one `continual run` in its own process; a sweep killed mid-way
and started again skips the cells done, resumes the others, and ends with the numbers of runs never
interrupted. The sweep file's checks, status, the aggregate and its figure. Slurm and Ray: test_clusters.py."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

import continual
from continual import sweeps
from continual.cli import main
from continual.config import ConfigError, load_sequence
from continual.run_folder import RunFolder
from continual.runner import run_sequence
from helpers import L2SP_SWEEP as SWEEP
from helpers import tiny_sequence

SEQ = tiny_sequence(methods=["finetune", "l2sp"])


@pytest.fixture
def files(tmp_path):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(SEQ))
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(SWEEP))
    return tmp_path


def test_a_killed_sweep_restarts_skipping_done_cells_and_ends_as_if_never_killed(files, capsys):
    spec, cells = sweeps.load_sweep(files / "sweep.yaml")
    assert [(dict(c.point), c.seed) for c in cells] == [({"methods.l2sp.lambda": 100}, 0), ({"methods.l2sp.lambda": 100}, 1)]
    proc = subprocess.Popen([sys.executable, "-m", "continual", "sweep", "sweep.yaml", "--jobs", "1"], cwd=files,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 240
        while not any(sweeps.state(c)[0] == "done" for c in cells) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep and the cell it was running
        proc.wait()
    done = [c for c in cells if sweeps.state(c)[0] == "done"]
    assert 1 <= len(done) < len(cells)
    kept = {c: (c.run_folder / "l2sp" / "metrics.json").stat().st_mtime_ns for c in done}

    assert main(["sweep", str(files / "sweep.yaml"), "--jobs", "2"]) == 0
    assert "2 done" in capsys.readouterr().out
    assert all((c.run_folder / "l2sp" / "metrics.json").stat().st_mtime_ns == t for c, t in kept.items())  # skipped
    assert set(sweeps.status(files / "sweep.yaml")["state"]) == {"done"}

    # Each cell's numbers are those of its run never interrupted (the same machine: exactly).
    for cell in cells:
        alone = run_sequence(load_sequence(cell.sequence, cell.overrides), out=files / "alone" / cell.folder.name
                             / cell.folder.parent.name, methods=["l2sp"], progress=False)
        assert np.array_equal(RunFolder(alone).read_matrix("l2sp").to_numpy(),
                              RunFolder(cell.run_folder).read_matrix("l2sp").to_numpy())
    table = continual.sweep(files / "sweep.yaml")  # all done: nothing runs, the tidy aggregate comes back
    row = table[(table["metric"] == "final_average_accuracy") & (table["methods.l2sp.lambda"] == 100)]
    assert list(row["n"]) == [2]
    assert (files / "runs" / "lam" / "sweep.csv").is_file() and "| tiny | 100" in (files / "runs" / "lam" / "sweep.md").read_text()


def test_sweep_files_are_checked_before_anything_runs(files):
    def refused(change, match):
        (files / "bad.yaml").write_text(yaml.safe_dump({**SWEEP, **change}))
        with pytest.raises(ConfigError, match=match):
            sweeps.load_sweep(files / "bad.yaml")
        assert not (files / "runs").exists()

    refused({"seeds": "0"}, r"bad\.yaml: seeds: expected a list")
    refused({"backend": "pbs"}, r"bad\.yaml: backend: .*'local', 'slurm' or 'ray'")
    refused({"ray": {"adress": "auto"}}, r"bad\.yaml: ray\.adress: unknown key")
    refused({"resources": {"gpus": -1}}, r"bad\.yaml: resources\.gpus: must be greater than or equal to 0")
    refused({"grid": {"methods.l2sp.lambda": []}}, r"bad\.yaml: grid\.methods\.l2sp\.lambda: give at least one value")
    refused({"methods": None, "grid": {"methods.ldifs.lambda": [1]}},
            r"bad\.yaml: grid\.methods\.ldifs\.lambda: no method entry 'ldifs' .*\(in .*tiny\.yaml\)")
    refused({"grid": {"training.lr": [-1]}}, r"bad\.yaml: grid\.training\.lr: must be greater than 0, got -1 \(in .*tiny")
    refused({"methods": ["l2sp", "ewc"]}, r"bad\.yaml: methods\[1\]: ewc is not one of tiny\.yaml's methods \(finetune, l2sp\)")
    refused({"sequences": ["nope.yaml"]}, r"bad\.yaml: sequences\[0\]: .*nope\.yaml not found")
    refused({"grid": {"data_root": ["/tmp/a b", "/tmp/a_b"]}}, r"bad\.yaml: grid\.data_root\[1\]: .* would share the folder")


def test_the_lambda_figure_draws_each_method_against_the_swept_value():
    import pandas as pd

    from continual import plots

    rows = [{"sequence": "s", "methods.ldifs.lambda": lam, "training.lr": lr, "method": m, "metric": metric,
             "mean": 0.5 + 0.001 * lam, "std": 0.01, "n": 3}
            for lam in (1, 10, 100) for lr in (1e-4, 1e-3) for m in ("finetune", "ldifs")
            for metric in ("final_average_accuracy", "forgetting")]
    png = plots.sweep_png(pd.DataFrame(rows), key="methods.ldifs.lambda", others=["training.lr"])
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_a_cell_running_in_another_process_is_shown_and_left_to_it(files):
    import json
    import socket

    _, cells = sweeps.load_sweep(files / "sweep.yaml")
    cell = cells[0]
    cell.run_folder.mkdir(parents=True)
    (cell.run_folder / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                       "started": "2026-11-27 12:00:00"}))  # a live holder
    assert sweeps.state(cell) == ("running", f"{socket.gethostname()} pid {os.getpid()}")
    said = []
    counts = sweeps.run(sweeps.SweepFile(name="x", sequences=["tiny.yaml"]), [cell], files, jobs=1, log=said.append)
    assert said == ["1 cells: 0 done, 1 running elsewhere, 0 to run on local"] and counts["running"] == 1
    assert not (cell.folder / "cell.log").exists()  # nothing launched
    (cell.run_folder / ".lock").write_text(json.dumps({"pid": 2**22, "host": socket.gethostname(),
                                                       "started": "2026-11-27 12:00:00"}))  # a killed run's record
    assert sweeps.state(cell)[0] == "pending"


def test_the_documented_sweep_file_is_valid_as_written(tmp_path):
    import shutil
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "sweeps.md").read_text()  # its first yaml block
    (tmp_path / "sweep.yaml").write_text(text.split("```yaml\n", 1)[1].split("```", 1)[0])
    shutil.copytree(Path(__file__).parents[1] / "sequences", tmp_path / "sequences")
    spec, cells = sweeps.load_sweep(tmp_path / "sweep.yaml")  # the whole file's checks, as `continual sweep` makes
    assert (spec.backend, spec.resources.gpus, spec.slurm.max_requeues, spec.max_cells) == ("slurm", 1, 3, 1000)
    assert len(cells) == 12 and not (tmp_path / "runs").exists()

"""Sweeps, local backend (issue #14, first part): every cell one `continual run` in its own process; a sweep
killed mid-way and started again skips the cells done, resumes the others, and ends with the numbers of
runs never interrupted."""
import json
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

SEQ = {"name": "tiny", "model": {"family": "efficientnet_lite0", "image_size": 32},
       "tasks": [{"name": "a", "dataset": "digits", "classes": [0, 1], "train_per_class": 8, "test_per_class": 4},
                 {"name": "b", "dataset": "digits", "classes": [2, 3], "train_per_class": 8, "test_per_class": 4}],
       "training": {"batch_size": 8, "warmup_steps": 1}, "methods": ["finetune", "l2sp"], "download": False}
SWEEP = {"name": "lam", "sequences": ["tiny.yaml"], "methods": ["l2sp"], "seeds": [0, 1],
         "grid": {"methods.l2sp.lambda": [100]}, "out": "runs"}  # 2 cells: one done before the kill, one after


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
    refused({"grid": {"methods.l2sp.lambda": []}}, r"bad\.yaml: grid: .*give at least one value")
    refused({"grid": {"methods.ldifs.lambda": [1]}}, r"--set: methods\.ldifs\.lambda: no method entry 'ldifs'")
    refused({"grid": {"training.lr": [-1]}}, r"tiny\.yaml: training\.lr: must be greater than 0")
    refused({"methods": ["ewc"]}, r"bad\.yaml: methods: ewc not in tiny\.yaml's methods \(finetune, l2sp\)")
    refused({"sequences": ["nope.yaml"]}, r"bad\.yaml: sequences\[0\]: .*nope\.yaml not found")
    refused({"grid": {"data_root": ["/tmp/a b", "/tmp/a_b"]}}, r"bad\.yaml: grid: two cells would share")


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


# ---- the same sweep on a real cluster: Slurm (submitit) and Ray, each started by its test ------------------

@pytest.fixture(scope="module")
def alone(tmp_path_factory):
    """Each cell of SWEEP run alone, never interrupted: {seed: l2sp's accuracy matrix}."""
    out = tmp_path_factory.mktemp("alone")
    seq = {**SEQ, "methods": [{"l2sp": {"lambda": 100}}]}
    return {seed: RunFolder(run_sequence(load_sequence(seq, [f"seed={seed}"]), out=out / str(seed), methods=["l2sp"],
                                         progress=False)).read_matrix("l2sp").to_numpy() for seed in SWEEP["seeds"]}


def disrupt_mid_run(cells, disrupt, *, timeout=180):
    """Wait until a cell has finished a step but not its last, then call `disrupt(cell)`; returns the cell."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for cell in cells:
            doc = RunFolder(cell.run_folder).read_metrics("l2sp") if cell.run_folder.is_dir() else None
            if doc and 1 <= doc["steps_done"] < doc["steps_total"] and sweeps.state(cell)[0] == "running":
                disrupt(cell)
                return cell
        time.sleep(0.1)
    raise AssertionError(f"no cell was caught mid-run: {sweeps.status_table(cells).to_dict('records')}")


def attempts(cell) -> int:
    return sum(line.startswith("--- ") for line in (cell.folder / "cell.log").read_text().splitlines())


@pytest.fixture
def slurm(tmp_path):
    """A real single-node Slurm (munge, slurmctld, slurmd for localhost), started by tests/slurm/start.sh."""
    import shutil

    if os.geteuid() != 0:
        pytest.skip("starting Slurm's daemons needs root (CI runs as root)")
    if not all(shutil.which(b) for b in ("munged", "slurmctld", "slurmd", "sbatch")):
        pytest.skip("Slurm is not installed: apt-get install --no-install-recommends munge slurmctld slurmd slurm-client")
    pytest.importorskip("submitit", reason="the slurm backend's extra: pip install 'continual[slurm]'")
    here = os.path.dirname(__file__)
    subprocess.run([f"{here}/slurm/start.sh", str(tmp_path / "slurm")], check=True, timeout=60)
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(tmp_path / "slurm" / "slurm.conf")
    yield tmp_path / "slurm"
    subprocess.run(["scancel", "--name", "continual-lam"], timeout=30)
    subprocess.run([f"{here}/slurm/stop.sh", str(tmp_path / "slurm")], timeout=60)
    if old is None:
        del os.environ["SLURM_CONF"]
    else:
        os.environ["SLURM_CONF"] = old


def test_a_slurm_sweep_requeued_mid_cell_resumes_and_ends_as_if_never_requeued(files, slurm, alone):
    (files / "sweep.yaml").write_text(yaml.safe_dump({**SWEEP, "backend": "slurm", "slurm": {"array_parallelism": 2},
                                                      "resources": {"gpus": 0, "cpus": 1, "mem_gb": 1, "time_min": 10}}))
    spec, cells = sweeps.load_sweep(files / "sweep.yaml")
    sweeps.run(spec, cells, sweeps.root(files / "sweep.yaml", spec), wait=False, log=lambda _: None)

    def requeue(cell):  # what a pre-emption does; Slurm holds a requeued job ~2 min, released here at once
        job = json.loads((cell.folder / "queued.json").read_text())["slurm_job"]
        shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, timeout=30).stdout
        assert all(f in shown.split() for f in ("NumCPUs=1", "MinMemoryNode=1G", "TimeLimit=00:10:00")), shown
        subprocess.run(["scontrol", "requeue", job], check=True, timeout=30)
        while sweeps.backends.slurm_queue([job]).get(job) != "PENDING BeginTime":  # killed, back in the queue
            time.sleep(0.2)
        row = sweeps.status_table([cell]).iloc[0]
        assert row["state"] == "pending" and row["detail"].endswith(f"slurm job {job} PENDING BeginTime"), row["detail"]
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True, timeout=30)

    requeued = disrupt_mid_run(cells, requeue)
    deadline = time.time() + 240
    while sweeps.backends.slurm_queue([json.loads((c.folder / "queued.json").read_text())["slurm_job"] for c in cells]):
        assert time.time() < deadline, sweeps.status_table(cells).to_dict("records")
        time.sleep(1)
    assert set(sweeps.status(files / "sweep.yaml")["state"]) == {"done"}
    assert attempts(requeued) == 2  # killed by the requeue, run again, resumed
    for cell in cells:
        assert np.array_equal(RunFolder(cell.run_folder).read_matrix("l2sp").to_numpy(), alone[cell.seed])


@pytest.fixture(scope="module")
def ray_cluster():
    """A real single-node Ray cluster (`ray start --head`), stopped afterwards; yields its address."""
    import shutil
    import socket
    import tempfile

    pytest.importorskip("ray", reason="the ray backend's extra: pip install 'continual[ray]'")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray = [os.path.join(os.path.dirname(sys.executable), "ray")]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's sockets live under it (108-byte limit)
    subprocess.run([*ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
                    "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"],
                   check=True, env=env, capture_output=True, timeout=120)
    old = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    yield f"127.0.0.1:{port}"
    subprocess.run([*ray, "stop", "--force"], env=env, capture_output=True, timeout=120)
    shutil.rmtree(temp, ignore_errors=True)
    if old is None:
        del os.environ["RAY_AUTH_MODE"]


def test_a_ray_sweep_whose_worker_dies_mid_cell_retries_it_and_ends_as_if_never_lost(files, ray_cluster, alone):
    import threading

    (files / "sweep.yaml").write_text(yaml.safe_dump({**SWEEP, "backend": "ray", "ray": {"address": ray_cluster},
                                                      "resources": {"gpus": 0, "cpus": 1, "mem_gb": 1}}))
    spec, cells = sweeps.load_sweep(files / "sweep.yaml")
    big = spec.model_copy(update={"resources": spec.resources.model_copy(update={"gpus": 1})})
    with pytest.raises(ConfigError, match=r"resources: resources\.gpus: a cell asks for 1, the largest node has 0"):
        sweeps.run(big, cells, files, log=lambda _: None)  # said before anything runs
    assert not any(c.folder.exists() for c in cells)

    def kill_worker(cell):  # what losing a node does to a cell: its Ray worker (and so the run) gone at once
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                words = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
            except OSError:
                continue
            if b"run" in words and str(cell.folder).encode() in words:
                os.kill(int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1]), signal.SIGKILL)
                return
        raise AssertionError(f"no process runs {cell.folder}")

    killed = []
    watcher = threading.Thread(target=lambda: killed.append(disrupt_mid_run(cells, kill_worker)))
    watcher.start()
    said = []
    counts = sweeps.run(spec, cells, sweeps.root(files / "sweep.yaml", spec), log=said.append)
    watcher.join()
    assert counts["done"] == 2, (said, sweeps.status_table(cells).to_dict("records"))
    assert attempts(killed[0]) == 2  # lost with its worker, retried, resumed
    for cell in cells:
        assert np.array_equal(RunFolder(cell.run_folder).read_matrix("l2sp").to_numpy(), alone[cell.seed])


def test_the_readme_sweep_file_is_valid_as_written():
    from pathlib import Path

    text = (Path(__file__).parents[1] / "README.md").read_text().split("## Sweeps\n", 1)[1]
    spec = sweeps.SweepFile.model_validate(yaml.safe_load(text.split("```yaml\n", 1)[1].split("```", 1)[0]))
    assert (spec.backend, spec.resources.gpus, spec.slurm.max_requeues, spec.ray.address) == ("local", 1, 3, None)

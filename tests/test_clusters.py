"""Sweeps on real clusters (issue #14), each started by its test: a single-node Slurm (munge, slurmctld, slurmd;
tests/slurm/start.sh) driven through submitit, and a single-node Ray. A cell disrupted mid-run as a cluster
disrupts it (a Slurm requeue, a Ray worker lost) runs again, resumes from its last step, and ends with the
numbers of the same cell never disrupted. The local backend's tests are in test_sweep.py."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from continual import sweeps
from continual.config import ConfigError, load_sequence
from continual.run_folder import RunFolder
from continual.runner import run_sequence
from helpers import L2SP_SWEEP as SWEEP
from helpers import digits, tiny_sequence

# test_sweep's sequence, the second task long enough (12 optimiser steps, not 2) that a cell caught after its
# first step is still running when the requeue or the kill lands: with 2 steps a cell sometimes finished first
# (seen in CI).
SEQ = tiny_sequence(methods=["finetune", "l2sp"], tasks=[digits("a", [0, 1]), digits("b", [2, 3], 48)])


@pytest.fixture
def files(tmp_path):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(SEQ))
    return tmp_path


@pytest.fixture(scope="module")
def alone(tmp_path_factory):
    """alone(seed): SWEEP's cell of that seed run alone, never interrupted: l2sp's accuracy matrix."""
    out, done = tmp_path_factory.mktemp("alone"), {}

    def matrix(seed: int):
        if seed not in done:
            seq = load_sequence({**SEQ, "methods": [{"l2sp": {"lambda": 100}}]}, [f"seed={seed}"])
            done[seed] = RunFolder(run_sequence(seq, out=out / str(seed), methods=["l2sp"], progress=False)).read_matrix("l2sp")
        return done[seed].to_numpy()

    return matrix


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
    (files / "sweep.yaml").write_text(yaml.safe_dump({**SWEEP, "seeds": [0], "backend": "slurm",  # an array of one
                                                      "slurm": {"array_parallelism": 2},
                                                      "resources": {"gpus": 0, "cpus": 1, "mem_gb": 1, "time_min": 10}}))
    spec, cells = sweeps.load_sweep(files / "sweep.yaml")
    nowhere = spec.model_copy(update={"resources": spec.resources.model_copy(update={"partition": "nowhere"})})
    with pytest.raises(ConfigError, match=r"slurm: sbatch refused the job array: .*[Pp]artition"):
        sweeps.run(nowhere, cells, sweeps.root(files / "sweep.yaml", spec), wait=False, log=lambda _: None)
    assert not (files / "runs").exists()  # nothing half-written
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
    assert np.array_equal(RunFolder(requeued.run_folder).read_matrix("l2sp").to_numpy(), alone(requeued.seed))


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
    assert np.array_equal(RunFolder(killed[0].run_folder).read_matrix("l2sp").to_numpy(), alone(killed[0].seed))

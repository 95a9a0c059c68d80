"""Where a sweep's cells run. Each cell is one `continual run --resume` in a process of its own, started by
`run_cell` wherever the backend puts it:

    local   processes on this machine, `jobs` at once, one GPU each (CUDA_VISIBLE_DEVICES) where there are GPUs
    slurm   one task of a job array per cell, submitted through submitit with the sweep's `resources`; a
            pre-empted or timed-out cell is requeued, and its rerun resumes from the last step's checkpoint
    ray     one Ray task per cell with its GPUs, CPUs and memory; a cell whose worker or node died is retried
            (`ray.max_retries`) and resumes the same way

A cell's folder (shared by every node: the run folders of a cluster sweep must be on a shared file system)
keeps its `cell.log` (every attempt's output, appended), `cell.json` (the last attempt's exit) and, for slurm,
`queued.json` (the job that runs it). submitit and ray are optional extras, imported only here and only
when their backend is used.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from continual.config import ConfigError


def run_cell(cell, env: dict | None = None) -> int:
    """Run one cell here and now: its `continual run` as a child process, which dies with this one (a killed
    Slurm job or Ray worker leaves no run behind holding the lock). Returns its exit status."""
    cell.folder.mkdir(parents=True, exist_ok=True)
    began = time.time()
    with open(cell.folder / "cell.log", "ab") as out:
        out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} on {socket.gethostname()}: "
                  f"{subprocess.list2cmdline(cell.command())}\n".encode())
        out.flush()
        code = subprocess.run(cell.command(), stdout=out, stderr=subprocess.STDOUT,
                              env={**(os.environ if env is None else env), **cell.environment},
                              preexec_fn=_die_with_parent).returncode
    error = "" if code == 0 else (_last_error(cell.folder / "cell.log") if code > 0
                                  else f"killed by {signal.Signals(-code).name}")
    (cell.folder / "cell.json").write_text(json.dumps({"returncode": code, "error": error, "ended": time.time(),
                                                       "seconds": round(time.time() - began, 1),
                                                       "host": socket.gethostname()}))
    return code


# prctl, looked up here in the parent: between fork and exec the child only calls it (no dlopen there, whose
# lock another thread of the parent may have held when it forked).
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:
    if _PRCTL is not None:  # PR_SET_PDEATHSIG: SIGKILL this child when the thread that started it ends
        _PRCTL(1, signal.SIGKILL)


def _last_error(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or [""])[-1][:300]


# ---- local -------------------------------------------------------------------------------------------------


def run_local(cells: list, *, jobs: int | None = None, log=print) -> None:
    """Run every cell given, `jobs` at once (default: one per visible GPU, else 1)."""
    gpus = visible_gpus()
    jobs = jobs or max(1, len(gpus))
    log(f"{len(cells)} to run, {jobs} at a time")
    free = list(gpus)

    def run(cell) -> int:
        env = dict(os.environ)
        gpu = free.pop(0) if free else None
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu  # one GPU per cell
        try:
            code = run_cell(cell, env)
        finally:
            if gpu is not None:
                free.append(gpu)
        log(f"{'done' if code == 0 else 'failed'}: {cell.label}")
        return code

    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(run, cells))


def visible_gpus() -> list[str]:
    return gpus_here() or []


def gpus_here() -> list[str] | None:
    """The GPUs local cells are given, one each: CUDA_VISIBLE_DEVICES where it is set, else those nvidia-smi
    lists; None where neither tells (no nvidia-smi, or it failed: a GPU torch sees may still be there)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g for g in listed.split(",") if g.strip()]
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else None


def _extra(module: str, backend: str):
    try:
        return __import__(module)
    except ImportError:
        raise ConfigError("backend", [("", f"the {backend} backend needs {module}: pip install 'continual[{backend}]'")]) from None


# ---- slurm -------------------------------------------------------------------------------------------------


class CellJob:
    """What each task of the job array runs. submitit calls `checkpoint` when Slurm signals a time-out or a
    pre-emption and requeues the task with what it returns: the same cell, which resumes. A requeue by
    Slurm itself (`scontrol requeue`, a lost node) reruns the task the same way."""

    def __call__(self, cell) -> str:
        code = run_cell(cell)
        if code != 0:
            raise RuntimeError(f"{cell.label}: `continual run` exited with status {code}; see {cell.folder / 'cell.log'}")
        return str(cell.run_folder)

    def checkpoint(self, cell):
        import submitit

        return submitit.helpers.DelayedSubmission(self, cell)


def run_slurm(spec, cells: list, root: Path, *, wait: bool = True, log=print) -> None:
    """Submit the cells as one job array (resources per task from the sweep file); with `wait`, return when
    none is queued or running any more."""
    submitit = _extra("submitit", "slurm")
    res, opts = spec.resources, spec.slurm
    made = [f for f in (root.parent, root) if not f.exists()][:1]  # the outermost folder this creates
    executor = submitit.SlurmExecutor(folder=root / ".slurm" / "%j", max_num_timeout=opts.max_requeues)
    params = {"job_name": f"continual-{spec.name}", "time": res.time_min, "cpus_per_task": res.cpus,
              "mem": f"{res.mem_gb}G", "array_parallelism": opts.array_parallelism, "setup": list(opts.setup),
              "stderr_to_stdout": True}
    params.update({k: v for k, v in {"gpus_per_node": res.gpus, "partition": res.partition,
                                     "account": opts.account, "qos": opts.qos, "constraint": opts.constraint}.items() if v})
    if opts.additional:
        params["additional_parameters"] = dict(opts.additional)
    executor.update_parameters(**params)
    try:
        jobs = executor.map_array(CellJob(), cells)
    except Exception as err:  # sbatch refused (partition, account, limits): its message says why; nothing is kept
        for folder in made:
            shutil.rmtree(folder, ignore_errors=True)
        said = " ".join(str(err).replace("\\n", "\n").split())[-500:]
        raise ConfigError(str(root), [("slurm", f"sbatch refused the job array: {said}")]) from None
    for cell, job in zip(cells, jobs):
        (cell.folder).mkdir(parents=True, exist_ok=True)
        (cell.folder / "queued.json").write_text(json.dumps({"slurm_job": job.job_id, "time": time.time()}))
    log(f"submitted {len(cells)} cells as Slurm job array {jobs[0].job_id.split('_')[0]} (logs in {root / '.slurm'})")
    while wait and slurm_queue([job.job_id for job in jobs]):
        time.sleep(5)


def slurm_queue(job_ids: list[str]) -> dict[str, str]:
    """{job id: "STATE reason"} of those still queued or running, from squeue (no accounting database needed)."""
    if not job_ids:
        return {}
    arrays = sorted({j.split("_")[0] for j in job_ids})
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T %r", "-j", ",".join(arrays)], capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return {}
    rows = dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)
    return {j: rows[j] for j in job_ids if j in rows}


# ---- ray ---------------------------------------------------------------------------------------------------


def run_ray(spec, cells: list, *, log=print) -> None:
    """Run the cells as Ray tasks on the cluster at `ray.address` (None: one started here for the sweep), each
    with the sweep's resources; returns when all have ended."""
    ray = _extra("ray", "ray")
    res = spec.resources
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=spec.ray.address, include_dashboard=False, log_to_driver=False)
        except ConnectionError as err:  # `auto` with no cluster on this machine, a head that does not answer
            said = str(err).split(". ")[0].rstrip(".")
            raise ConfigError(spec._source or "ray", [("ray.address", f"{spec.ray.address}: {said}; start one "
                                                      "(`ray start --head`), or set address: null to start Ray here "
                                                      "for the sweep")]) from None
    try:
        have = ray.cluster_resources()
        need = {"CPU": res.cpus, "GPU": res.gpus, "memory": res.mem_gb * 2**30}
        short = [f"resources.{key}: a cell asks for {ask}, the largest node has {most}"
                 for key, ask, most in _short_of(need, ray.nodes())]
        if short:
            raise ConfigError("resources", [("", "; ".join(short) + f" (cluster: {_describe(have)})")])
        task = ray.remote(run_cell).options(num_cpus=res.cpus, num_gpus=res.gpus, memory=res.mem_gb * 2**30,
                                            max_retries=spec.ray.max_retries, name="continual-cell")
        pending = {task.remote(cell): cell for cell in cells}
        log(f"{len(cells)} cells sent to the Ray cluster ({_describe(have)})")
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            cell = pending.pop(ready[0])
            try:
                code = ray.get(ready[0])
            except Exception as err:  # retried max_retries times and still lost
                code, why = 1, f"{type(err).__name__}: {str(err).splitlines()[0]}"
                (cell.folder / "cell.json").write_text(json.dumps({"returncode": 1, "error": why, "ended": time.time()}))
            log(f"{'done' if code == 0 else 'failed'}: {cell.label}")
    finally:
        if started_here:
            ray.shutdown()


def _short_of(need: dict, nodes: list[dict]):
    alive = [n["Resources"] for n in nodes if n.get("Alive")]
    for key, ask in need.items():
        most = max((r.get(key, 0) for r in alive), default=0)
        if ask > most:
            label = {"CPU": "cpus", "GPU": "gpus", "memory": "mem_gb"}[key]
            yield label, ask if key != "memory" else f"{ask / 2**30:g} GB", most if key != "memory" else f"{most / 2**30:.1f} GB"


def _describe(have: dict) -> str:
    return ", ".join(f"{have.get(k, 0) / (2**30 if k == 'memory' else 1):g}{' GB' if k == 'memory' else ''} {k}"
                     for k in ("CPU", "GPU", "memory"))

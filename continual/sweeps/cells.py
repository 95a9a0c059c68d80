"""Where each cell of a sweep stands (pending, running, done, failed), read from its folder alone: what
`continual sweep status` shows and what a sweep runs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from continual.config import load_sequence
from continual.files import read_json
from continual.run_folder import RunFolder
from continual.sweeps.spec import Cell


STATES = ("pending", "running", "done", "failed")


def state(cell: Cell, queue: dict[str, str] | None = None) -> tuple[str, str]:
    """(state, detail) of a cell from its folder: done (every method complete), running (its run lock is
    held: where), failed (its last attempt's error), else pending (the steps done so far, and the Slurm job
    it waits in, when `queue` (`backends.slurm_queue`) lists it)."""
    run = RunFolder(cell.run_folder)
    holder = run.lock_holder() if cell.run_folder.is_dir() else None
    if holder is not None:
        return "running", f"{holder.get('host', '?')} pid {holder.get('pid', '?')}"
    docs = {m: _metrics(run, m) for m in cell_methods(cell)} if cell.run_folder.is_dir() else {}
    if docs and all(d and d.get("complete") and not d.get("error") for d in docs.values()):
        return "done", ", ".join(f"{m} {d.get('steps_done', '?')}/{d.get('steps_total', '?')}" for m, d in docs.items())
    steps = ", ".join(f"{m} {d.get('steps_done', '?')}/{d.get('steps_total', '?')}" for m, d in docs.items() if d)
    job = _read(cell.folder / "queued.json").get("slurm_job")
    if queue and job in queue:  # waiting in Slurm's queue (first time, or requeued after a pre-emption)
        return "pending", "; ".join(filter(None, [steps, f"slurm job {job} {queue[job]}"]))
    last = _read(cell.folder / "cell.json")
    if last.get("returncode"):
        return "failed", last.get("error") or f"exit status {last['returncode']}"
    return "pending", steps


def _metrics(run: RunFolder, method: str) -> dict | None:
    """A method's metrics.json in a cell, None where it has none or it is damaged (its run redoes that step)."""
    try:
        return run.read_metrics(method)
    except (OSError, ValueError):  # ValueError: BadFile
        return None


def _read(path: Path) -> dict:
    """A cell's own record (queued.json, cell.json); {} where it is absent or damaged (a folder, deep JSON)."""
    try:
        doc = read_json(path)
    except (OSError, ValueError):  # ValueError: BadFile
        return {}
    return doc if isinstance(doc, dict) else {}


def cell_methods(cell: Cell) -> list[str]:
    if cell.methods or cell.runs:  # known from load_sweep: no sequence read again per cell
        return list(cell.methods or cell.runs)
    return [o.key for o in load_sequence(cell.sequence, cell.overrides).methods]


def status_table(cells: list[Cell]) -> pd.DataFrame:
    """cell, state, detail, folder: one row per cell."""
    from continual.sweeps.backends import slurm_queue

    jobs = [_read(c.folder / "queued.json").get("slurm_job") for c in cells]
    queue = slurm_queue([j for j in jobs if j]) if any(jobs) else {}
    rows = []
    for cell in cells:
        what, detail = state(cell, queue)
        rows.append({"cell": cell.label, "state": what, "detail": detail, "folder": str(cell.run_folder)})
    return pd.DataFrame(rows, columns=["cell", "state", "detail", "folder"])

"""Sweeps: sequences × a grid of settings × seeds, each cell exactly one `continual run` in its own folder.

    sweep file ──► cells (validated up front, each a sequence with its --set overrides) ──► a backend runs the
    cells not yet complete (each `continual run --resume`, so a stopped sweep continues) ──► one table of
    mean ± std over seeds per (sequence, grid point, method), and a figure of each metric against a swept value

Backends (continual/sweeps/backends.py): `local` (processes on this machine, `--jobs` at once, one per GPU
where there are GPUs), `slurm` (a job array through submitit; a pre-empted cell is requeued and resumes)
and `ray` (a Ray task per cell; a lost node's cell is retried and resumes). Only light parts live here (no
torch, no submitit or ray until a backend needs them): the cells run in their own processes.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from continual.config import ConfigError
from continual.sweeps.cells import STATES, state, status_table
from continual.sweeps.spec import Cell, SweepFile, _here_problems, load_sweep, root
from continual.sweeps.summary import _formats, aggregate, write_summary


def run(spec: SweepFile, cells: list[Cell], root: Path, *, jobs: int | None = None, wait: bool = True,
        log=print) -> dict[str, int]:
    """Run the cells not done nor running elsewhere on the sweep's backend; the count of cells by state after.
    `jobs`: cells at once on the local backend; `wait=False`: slurm returns once the array is submitted. A local
    cell's device that is not on this machine is refused first (ConfigError naming the sweep file's key)."""
    from continual.sweeps import backends

    if problems := _here_problems(spec, cells):
        raise ConfigError(spec._source or "sweep", problems)
    before = status_table(cells)["state"].tolist()
    todo = [c for c, st in zip(cells, before) if st not in ("done", "running")]  # running: another process's
    log(f"{len(cells)} cells: {before.count('done')} done, {before.count('running')} running elsewhere, "
        f"{len(todo)} to run on {spec.backend}")
    if todo and spec.backend == "local":
        backends.run_local(todo, jobs=jobs, log=log)
    elif todo and spec.backend == "slurm":
        backends.run_slurm(spec, todo, root, wait=wait, log=log)
    elif todo and spec.backend == "ray":
        backends.run_ray(spec, todo, log=log)
    counts = status_table(cells)["state"].value_counts().to_dict()
    return {s: counts.get(s, 0) for s in STATES}


def sweep(path: str | Path, *, out: str | Path | None = None, jobs: int | None = None, log=print,
          latex: bool | None = None, formats: Iterable[str] | None = None) -> pd.DataFrame:
    """Run a sweep file's cells not yet done on its backend, wait for them, write the aggregate (sweep.csv,
    sweep.md, figures; `latex`, `formats`: as write_summary) and return it: one row per (sequence, grid point,
    method, metric), mean, std, n."""
    formats = None if formats is None else _formats(formats)  # an unknown one refused before anything runs
    spec, cells = load_sweep(path, out=out)
    run(spec, cells, root(path, spec, out), jobs=jobs, log=log)
    table = aggregate(cells)
    write_summary(spec, cells, table, root(path, spec, out), latex=latex, formats=formats)
    return table


def report(path: str | Path, *, out: str | Path | None = None, latex: bool | None = None,
           formats: Iterable[str] | None = None) -> pd.DataFrame:
    """The aggregate of the cells done so far, written to the sweep's folder and returned; `latex` also writes
    sweep.tex, `formats` (png, pdf, svg) the figures for a paper (write_summary: once asked, every later write
    rewrites them; False and () stop them, None: as last asked)."""
    formats = None if formats is None else _formats(formats)
    spec, cells = load_sweep(path, out=out)
    table = aggregate(cells)
    write_summary(spec, cells, table, root(path, spec, out), latex=latex, formats=formats)
    return table


def status(path: str | Path, *, out: str | Path | None = None) -> pd.DataFrame:
    """cell, state (pending / running / done / failed), detail (steps, where, error), folder."""
    return status_table(load_sweep(path, out=out)[1])


__all__ = ["Cell", "SweepFile", "aggregate", "load_sweep", "report", "run", "status", "sweep"]


__all__ = ["Cell", "STATES", "SweepFile", "aggregate", "load_sweep", "report", "root", "run", "state", "status",
           "status_table", "sweep", "write_summary"]

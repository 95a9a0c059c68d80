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

import itertools
import json
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import yaml
from pydantic import Field, ValidationError, field_validator

from continual.config import ConfigError, load_sequence
from continual.config.loading import _problems, _read_yaml
from continual.config.schema import SEQUENCE_NAME, Strict, _check_name
from continual.run_folder import CONFIG, FIGURES, RunFolder, atomic_write

STATES = ("pending", "running", "done", "failed")


class Resources(Strict):
    # What one cell asks of a cluster (slurm, ray); a local sweep runs one cell per GPU, or --jobs on CPU.
    gpus: int = Field(default=1, ge=0)
    cpus: int = Field(default=4, gt=0)
    mem_gb: int = Field(default=32, gt=0)
    time_min: int = Field(default=240, gt=0)
    partition: str | None = None


class Slurm(Strict):
    # The job array's other sbatch settings (submitit's SlurmExecutor parameters).
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    array_parallelism: int = Field(default=64, gt=0)  # cells running at once
    max_requeues: int = Field(default=3, ge=0)  # times a timed-out cell is requeued to resume (pre-emption: always)
    setup: list[str] = []  # shell lines run before each cell (module load, source venv/bin/activate)
    additional: dict[str, str | int] = {}  # any other sbatch option, e.g. {exclude: node12}


class Ray(Strict):
    # None: a Ray instance started on this machine for the sweep; "auto": the cluster this command runs in
    # (`ray start` was run here); "HOST:6379" or "ray://HOST:10001": that cluster's head.
    address: str | None = None
    max_retries: int = Field(default=3, ge=0)  # times a cell whose node or worker died is retried (it resumes)


class SweepFile(Strict):
    name: str  # names the output folder <out>/<name>/
    sequences: list[str] = Field(min_length=1)  # paths relative to the sweep file
    methods: list[str] | None = None  # None: each sequence's own methods (entries by label or name)
    seeds: list[int] = Field(default=[0], min_length=1)
    # `--set` keys (methods.ldifs.lambda, training.lr) -> the values to sweep; every combination is a cell.
    grid: dict[str, list[Any]] = {}
    backend: Literal["local", "slurm", "ray"] = "local"
    resources: Resources = Resources()  # per cell, for slurm and ray
    slurm: Slurm = Slurm()
    ray: Ray = Ray()
    out: str = "runs"

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        return _check_name(name, SEQUENCE_NAME, "the sweep name")

    @field_validator("grid")
    @classmethod
    def _values(cls, grid: dict[str, list]) -> dict[str, list]:
        for key, values in grid.items():
            if not values:
                raise ValueError(f"{key}: give at least one value")
            if len(set(map(repr, values))) < len(values):
                raise ValueError(f"{key}: a value is listed twice")
        return grid


@dataclass(frozen=True)
class Cell:
    sequence: Path  # the sequence file
    name: str  # the sequence's name
    point: tuple[tuple[str, Any], ...]  # (grid key, value) of this cell
    seed: int
    folder: Path  # --out of its `continual run`; the run folder is folder / name
    methods: tuple[str, ...] | None

    @property
    def overrides(self) -> list[str]:
        return _overrides(self.point, self.seed)

    @property
    def run_folder(self) -> Path:
        return self.folder / self.name

    @property
    def label(self) -> str:
        return " ".join([self.name, *(f"{k}={v}" for k, v in self.point), f"seed={self.seed}"])

    def command(self) -> list[str]:
        words = [sys.executable, "-m", "continual", "run", str(self.sequence), "--out", str(self.folder), "--quiet",
                 "--resume"]
        for item in self.overrides:
            words += ["--set", item]
        if self.methods:
            words += ["--methods", ",".join(self.methods)]
        return words


def _overrides(point: tuple[tuple[str, Any], ...], seed: int) -> list[str]:
    """The `--set` items of a cell: its grid values (as YAML reads JSON) and its seed."""
    return [f"{key}={json.dumps(value)}" for key, value in point] + [f"seed={seed}"]


def _slug(point: tuple[tuple[str, Any], ...]) -> str:
    """A folder name for a grid point: `ldifs.lambda=10,lr=0.0005` made safe (`default` for no grid)."""
    if not point:
        return "default"
    text = ",".join(f"{'.'.join(key.split('.')[-2:]) if key.startswith('methods.') else key.split('.')[-1]}={value}"
                    for key, value in point)
    return re.sub(r"[^A-Za-z0-9_.,=+-]", "_", text)[:200]


def load_sweep(path: str | Path, *, out: str | Path | None = None) -> tuple[SweepFile, list[Cell]]:
    """The sweep file and its cells, every cell's sequence validated with its overrides (ConfigError naming
    the sweep file or the sequence and the key) before anything runs."""
    path = Path(path)
    raw = _read_yaml(path)
    try:
        spec = SweepFile.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(str(path), _problems(err)) from None
    folder = root(path, spec, out)  # absolute: a cluster's nodes run the cells from elsewhere
    keys = list(spec.grid)
    cells = []
    for i, text in enumerate(spec.sequences):
        sequence = (path.parent / text).expanduser()
        if not sequence.is_file():
            raise ConfigError(str(path), [(f"sequences[{i}]", f"{sequence} not found")])
        for values in itertools.product(*(spec.grid[k] for k in keys)):
            point = tuple(zip(keys, values))
            for seed in spec.seeds:
                seq = load_sequence(sequence, _overrides(point, seed))  # every cell checked before any runs
                listed = [o.key for o in seq.methods]
                unknown = [m for m in spec.methods or [] if m not in listed]
                if unknown:
                    raise ConfigError(str(path), [("methods", f"{', '.join(unknown)} not in {sequence.name}'s "
                                                              f"methods ({', '.join(listed)})")])
                cells.append(Cell(sequence=sequence.absolute(), name=seq.name, point=point, seed=seed,
                                  folder=folder / seq.name / _slug(point) / f"seed-{seed}",
                                  methods=tuple(spec.methods) if spec.methods else None))
    folders = [c.folder for c in cells]
    if len(set(folders)) < len(folders):  # two grid points whose values read alike once made folder-safe
        twice = next(f for f in folders if folders.count(f) > 1)
        raise ConfigError(str(path), [("grid", f"two cells would share the folder {twice}; use values that differ "
                                               "in letters, digits or `.,=+-`")])
    return spec, cells


def state(cell: Cell, queue: dict[str, str] | None = None) -> tuple[str, str]:
    """(state, detail) of a cell from its folder: done (every method complete), running (its run lock is
    held: where), failed (its last attempt's error), else pending (the steps done so far, and the Slurm job
    it waits in, when `queue` (`backends.slurm_queue`) lists it)."""
    run = RunFolder(cell.run_folder)
    holder = run.lock_holder() if cell.run_folder.is_dir() else None
    if holder is not None:
        return "running", f"{holder.get('host', '?')} pid {holder.get('pid', '?')}"
    docs = {m: run.read_metrics(m) for m in _methods(cell)} if cell.run_folder.is_dir() else {}
    if docs and all(d and d.get("complete") and not d.get("error") for d in docs.values()):
        return "done", ", ".join(f"{m} {d['steps_done']}/{d['steps_total']}" for m, d in docs.items())
    steps = ", ".join(f"{m} {d['steps_done']}/{d['steps_total']}" for m, d in docs.items() if d)
    job = _read(cell.folder / "queued.json").get("slurm_job")
    if queue and job in queue:  # waiting in Slurm's queue (first time, or requeued after a pre-emption)
        return "pending", "; ".join(filter(None, [steps, f"slurm job {job} {queue[job]}"]))
    last = _read(cell.folder / "cell.json")
    if last.get("returncode"):
        return "failed", last.get("error") or f"exit status {last['returncode']}"
    return "pending", steps


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _methods(cell: Cell) -> list[str]:
    if cell.methods:
        return list(cell.methods)
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


def run(spec: SweepFile, cells: list[Cell], root: Path, *, jobs: int | None = None, wait: bool = True,
        log=print) -> dict[str, int]:
    """Run the cells not done nor running elsewhere on the sweep's backend; the count of cells by state after.
    `jobs`: cells at once on the local backend; `wait=False`: slurm returns once the array is submitted."""
    from continual.sweeps import backends

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


def aggregate(cells: list[Cell]) -> pd.DataFrame:
    """One row per (sequence, grid point, method, metric): mean, std and n over the seeds of the cells done
    (the report's final metrics of each cell, reduced as the report reduces seeds)."""
    from continual.report import aggregate as over_seeds, load_tables  # pandas only; the cells' numbers

    frames = []
    for cell in cells:
        if state(cell)[0] == "done":
            summary = load_tables(cell.run_folder)["summary"]  # every method of its config; the cell ran these:
            frames.append(summary[summary["method"].isin(_methods(cell))].assign(sequence=cell.name, **dict(cell.point)))
    if not frames:
        return pd.DataFrame()
    return over_seeds(frames, by=["sequence", *[k for k, _ in cells[0].point], "method", "metric"])


def write_summary(spec: SweepFile, cells: list[Cell], table: pd.DataFrame, root: Path, *, latex: bool = False,
                  formats: Iterable[str] = ()) -> Path | None:
    """<root>/sweep.csv (`table`, the aggregate), sweep.md (its main metrics) and a figure per swept number
    (sweep-<key>.png); None when no cell is done yet. For a paper: `latex` also writes sweep.tex (one booktabs
    table of sweep.md's metrics, report/latex.py), and `formats` (any of png, pdf, svg) each figure as
    figures/sweep-<key>.<format>, two columns wide (plots.py). Everything is made before the first file is
    written, and each file is written whole (atomic_write); a figure that fails is left out with a warning."""
    from continual.report.latex import SWEEP, sweep_tex

    formats = _formats(formats)  # ReportError naming an unknown one, before anything is written
    if table.empty:
        return None
    main = table[table["metric"].isin(SWEEP)]
    wide = main.assign(value=[f"{100 * m:.1f} ± {100 * s:.1f} (n={n})" if n > 1 else f"{100 * m:.1f} (n=1)"
                              for m, s, n in zip(main["mean"], main["std"], main["n"])])
    index = [c for c in wide.columns if c not in ("metric", "mean", "std", "n", "value")]
    pivot = wide.pivot_table(index=index, columns="metric", values="value", aggfunc="first", sort=False).reset_index()
    lines = ["| " + " | ".join(map(str, pivot.columns)) + " |", "|" + "---|" * len(pivot.columns)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in pivot.itertuples(index=False)]
    files: dict[str, str | bytes] = {
        "sweep.csv": table.to_csv(index=False),
        "sweep.md": f"# {spec.name}\n\nMean ± std over seeds, in %.\n\n" + "\n".join(lines) + "\n"}
    keys = [k for k, _ in cells[0].point]
    if latex:
        files["sweep.tex"] = sweep_tex(table, name=spec.name, keys=keys, labels=_labels(cells))
    for key in keys:  # a figure per swept number: metric against its value
        numbers = table[key].dropna().unique()
        if len(numbers) > 1 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers):
            from continual import plots  # matplotlib: only when there is something to draw

            stem, others = f"sweep-{re.sub(r'[^A-Za-z0-9_.-]', '_', key)}", [k for k in keys if k != key]
            try:
                drawn = {f"{stem}.png": plots.sweep_png(table, key=key, others=others)}
                if formats:  # for a paper: two columns wide, 8 pt, fonts embedded
                    fig = plots.sweep_figure(table, key=key, others=others, paper=True)
                    drawn |= {f"{FIGURES}/{stem}.{fmt}": plots.figure_bytes(fig, fmt) for fmt in formats}
            except Exception as err:  # a figure never stops a sweep
                print(f"warning: {root}: figure for {key} not drawn: {type(err).__name__}: {err}", file=sys.stderr)
                continue
            files |= drawn
    root.mkdir(parents=True, exist_ok=True)
    if any(n.startswith(f"{FIGURES}/") for n in files):
        (root / FIGURES).mkdir(exist_ok=True)
    for name, content in files.items():
        atomic_write(root / name, content)
    return root / "sweep.csv"


def _labels(cells: list[Cell]) -> dict[tuple, str]:
    """(sequence, *grid values, method) -> the method's legend entry (`ldifs (λ = 10)`, report/tables.py
    method_labels) from the config.yaml of a cell of that grid point."""
    from continual.report.tables import method_labels

    labels: dict[tuple, str] = {}
    read = set()  # (sequence, *grid values) whose labels are known: one cell of a point is enough
    for cell in cells:
        point = (cell.name, *(v for _, v in cell.point))
        if point in read or not (cell.run_folder / CONFIG).is_file():
            continue
        try:
            config = yaml.safe_load((cell.run_folder / CONFIG).read_text())
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(config, dict):
            read.add(point)
            labels |= {(*point, method): text for method, text in method_labels(config).items()}
    return labels


def root(path: str | Path, spec: SweepFile, out: str | Path | None = None) -> Path:
    """<out>/<name>/: the sweep's folder (out: the file's `out`, relative to it, unless given)."""
    return (Path(out if out is not None else Path(path).parent / spec.out) / spec.name).absolute()


def sweep(path: str | Path, *, out: str | Path | None = None, jobs: int | None = None, log=print,
          latex: bool = False, formats: Iterable[str] = ()) -> pd.DataFrame:
    """Run a sweep file's cells not yet done on its backend, wait for them, write the aggregate (sweep.csv,
    sweep.md, figures; `latex`, `formats`: as write_summary) and return it: one row per (sequence, grid point,
    method, metric), mean, std, n."""
    formats = _formats(formats)  # an unknown one refused before anything runs
    spec, cells = load_sweep(path, out=out)
    run(spec, cells, root(path, spec, out), jobs=jobs, log=log)
    table = aggregate(cells)
    write_summary(spec, cells, table, root(path, spec, out), latex=latex, formats=formats)
    return table


def report(path: str | Path, *, out: str | Path | None = None, latex: bool = False,
           formats: Iterable[str] = ()) -> pd.DataFrame:
    """The aggregate of the cells done so far, written to the sweep's folder and returned; `latex` also writes
    sweep.tex, `formats` (png, pdf, svg) the figures for a paper (write_summary)."""
    formats = _formats(formats)
    spec, cells = load_sweep(path, out=out)
    table = aggregate(cells)
    write_summary(spec, cells, table, root(path, spec, out), latex=latex, formats=formats)
    return table


def _formats(formats: Iterable[str]) -> tuple[str, ...]:
    """The figure formats checked (ReportError naming an unknown one); matplotlib is imported only when asked."""
    if not formats:
        return ()
    from continual.report.page import figure_formats

    return figure_formats(formats)


def status(path: str | Path, *, out: str | Path | None = None) -> pd.DataFrame:
    """cell, state (pending / running / done / failed), detail (steps, where, error), folder."""
    return status_table(load_sweep(path, out=out)[1])


__all__ = ["Cell", "SweepFile", "aggregate", "load_sweep", "report", "run", "status", "sweep"]

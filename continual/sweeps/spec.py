"""A sweep file and its cells: the schema (`SweepFile`), and `load_sweep`, which checks the file as a whole
before any cell runs: the cells counted from the lists' lengths before any is built (`max_cells`), each
sequence read once and validated once per grid point, and every problem named by the sweep file's key
(`grid.methods.ldifs.lamda`, `seeds[1]`) or, for a problem of the sequence file itself, by that file."""

from __future__ import annotations

import datetime
import itertools
import json
import math
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, PrivateAttr, ValidationError, field_validator

from continual.config import ConfigError, ConfigWarning, Sequence, load_sequence
from continual.config.loading import _key_path, _Loader, _problems, _read_yaml, read_sequence
from continual.config.schema import MAX_SEED, SEQUENCE_NAME, Strict, _check_name, local_path, shown
from continual.trackers import CELL, SWEEP  # what a cell's `continual run` is told of its sweep


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


# A sweep of more cells is refused unless its file raises max_cells: a cell is a whole `continual run` (minutes to
# hours), a large paper's sweep is a few hundred (3 sequences x 5 λ x 4 lr x 5 seeds = 300) and a thousand are checked
# in seconds; a million (two lists of 1000 values) is a typo that would queue years of runs (issue #23).
MAX_CELLS = 1000


class SweepFile(Strict):
    name: str  # names the output folder <out>/<name>/
    sequences: list[str]  # paths relative to the sweep file; at least one
    # None: each sequence's own methods (entries by label or name); `[]` is refused (as `--methods ""` is by run)
    methods: list[str] | None = None
    # Each a cell's `seed`, bounded as the sequence's schema bounds it (Sequence.seed)
    seeds: list[Annotated[int, Field(ge=0, lt=MAX_SEED)]] = [0]  # at least one
    # `--set` keys (methods.ldifs.lambda, training.lr) -> the values to sweep; every combination is a cell.
    grid: dict[str, list[Any]] = {}
    backend: Literal["local", "slurm", "ray"] = "local"
    resources: Resources = Resources()  # per cell, for slurm and ray (refused with local, which does not read it)
    slurm: Slurm = Slurm()  # backend slurm only
    ray: Ray = Ray()  # backend ray only
    out: str = "runs"
    max_cells: int = Field(default=MAX_CELLS, gt=0)
    _source: str | None = PrivateAttr(default=None)  # the file it was read from (load_sweep): later errors name it

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        return _check_name(name, SEQUENCE_NAME, "the sweep name")

    @field_validator("sequences", "seeds")
    @classmethod
    def _not_empty(cls, items: list) -> list:
        if not items:
            raise ValueError("give at least one")
        return items


@dataclass(frozen=True)


class Cell:
    sequence: Path  # the sequence file
    name: str  # the sequence's name
    point: tuple[tuple[str, Any], ...]  # (grid key, value) of this cell
    seed: int
    folder: Path  # --out of its `continual run`; the run folder is folder / name
    methods: tuple[str, ...] | None  # the sweep's `methods` (passed as --methods), None: the sequence's own
    runs: tuple[str, ...] = ()  # the methods it runs (the sweep's, else its sequence's), known from load_sweep
    device: str = "auto"  # its training.device, as validated
    sweep: str = ""  # the sweep's name: its experiment trackers' group (continual/trackers.py)

    @property
    def overrides(self) -> list[str]:
        return _overrides(self.point, self.seed)

    @property
    def run_folder(self) -> Path:
        return self.folder / self.name

    @property
    def label(self) -> str:
        return " ".join([self.name, *(f"{k}={v}" for k, v in self.point), f"seed={self.seed}"])

    @property
    def environment(self) -> dict[str, str]:
        """What its `continual run` is told of the sweep, for the experiment trackers' groups and tags."""
        return {SWEEP: self.sweep, CELL: f"{_slug(self.point)}/seed-{self.seed}"}

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
    """The sweep file and its cells, the whole file checked before any cell runs (issue #23). ConfigError names
    the sweep file and its key (`seeds[1]`, `grid.training.lr[2]`) for each problem of the file or of a grid
    value (with the sequence it was found in), or the sequence file and its key for a problem the file has
    without the grid. The cells are counted against max_cells before any is built; each sequence is then read
    once and validated once per grid point (the seeds change only `seed`, bounded by the sweep's schema as by
    the sequence's). Nothing is created."""
    path = Path(path)
    source = str(path)
    try:
        local_path(source)  # a name longer than the file system allows: said, not an OSError
    except ValueError as err:
        raise ConfigError(source, [("", str(err))]) from None
    raw = _read_yaml(path)
    try:
        spec = SweepFile.model_validate(raw)
    except ValidationError as err:
        grid = raw.get("grid") if isinstance(raw.get("grid"), dict) else {}
        named = {_key_path(("grid", k)): _grid_key(k) for k in grid if isinstance(k, str)}  # grid.'training.lr'
        raise ConfigError(source, [(next((new + key[len(old):] for old, new in named.items()
                                          if key == old or key.startswith(f"{old}[")), key), message)
                                   for key, message in _problems(err)]) from None
    spec._source = source
    try:
        local_path(str(out if out is not None else spec.out))
        folder = root(path, spec, out)  # absolute: a cluster's nodes run the cells from elsewhere
        in_the_way = _not_a_folder(folder)
    except ValueError as err:
        folder, in_the_way = None, str(err)
    if out is not None and in_the_way:
        raise ConfigError("--out", [("", in_the_way)])
    problems = _file_problems(spec) + ([("out", in_the_way)] if in_the_way else [])
    files = []  # (index in sequences, the file)
    seen: dict[Path, int] = {}
    for i, text in enumerate(spec.sequences):
        try:
            sequence = path.parent / local_path(text)
            kind = "file" if sequence.is_file() else "folder" if sequence.is_dir() else None
            real = sequence.resolve()
        except ValueError as err:
            problems.append((f"sequences[{i}]", str(err)))
            continue
        except OSError as err:
            problems.append((f"sequences[{i}]", f"cannot read {text}: {err.strerror or err}"))
            continue
        if kind is None:
            problems.append((f"sequences[{i}]", f"{sequence} not found"))
        elif kind == "folder":
            problems.append((f"sequences[{i}]", f"{sequence} is a folder; expected a sequence YAML file"))
        elif real in seen:
            problems.append((f"sequences[{i}]", f"{text} is also sequences[{seen[real]}]: its cells would run twice"))
        else:
            seen[real] = i
            files.append((i, sequence))
    if problems:
        raise ConfigError(source, problems)

    keys = list(spec.grid)
    found: dict[tuple[str | None, str], list[int | None]] = {}  # (grid key, message) -> the value indices with it
    own: dict[str, list[tuple[str, str]]] = {}  # a sequence file -> its own problems
    cells: list[Cell] = []
    placed: dict[Path, tuple[int, tuple[int, ...]]] = {}  # a cell's folder -> (sequence, grid index) of its first
    for i, sequence in files:
        check = _Check(sequence, spec)
        alike: dict[str, tuple[int, ...]] = {}  # a point's validated sequence (JSON) -> the first grid index with it
        for index in itertools.product(*(range(len(spec.grid[k])) for k in keys)):
            point = tuple((k, spec.grid[k][j]) for k, j in zip(keys, index))
            seq = check.point(point, index, found, own)
            if seq is None:
                continue
            listed = [o.key for o in seq.methods]
            for n, method in enumerate(spec.methods or []):
                if method not in listed:
                    found.setdefault((None, f"methods[{n}]\0{method} is not one of {sequence.name}'s methods "
                                            f"({', '.join(listed)})"), [])
            if problem := _device_problem(seq.training.device, spec):
                k = next((k for k in ("training.device", "training") if k in spec.grid), None)  # where it came from
                if k is None:  # the sequence's own device, which this sweep's backend cannot give
                    found.setdefault((None, f"sequences[{i}]\0{sequence.name}'s training.device: {problem}"), [])
                else:
                    found.setdefault((k, problem), []).append(index[keys.index(k)])
            first = alike.setdefault(seq.model_dump_json(), index)
            if first != index:  # two grid values the sequence reads alike (1 and 1.0 for a float): one cell twice
                k, j, j0 = next((k, j, j0) for k, j, j0 in zip(keys, index, first) if j != j0)
                found.setdefault((None, f"{_grid_key(k)}[{j}]\0gives the same runs as {_grid_key(k)}[{j0}] in "
                                        f"{sequence} ({shown(spec.grid[k][j])} and {shown(spec.grid[k][j0])} are "
                                        "read alike)"), [])
                continue
            for seed in spec.seeds:
                cell = Cell(sequence=sequence.absolute(), name=seq.name, point=point, seed=seed,
                            folder=folder / seq.name / _slug(point) / f"seed-{seed}",
                            methods=tuple(spec.methods) if spec.methods else None,
                            runs=tuple(spec.methods or listed), device=seq.training.device, sweep=spec.name)
                if cell.folder in placed:  # two sequences of one name, or values alike once made folder-safe
                    found.setdefault((None, _shared(spec, placed[cell.folder], (i, index), cell.folder)), [])
                    break
                placed[cell.folder] = (i, index)
                cells.append(cell)
        for (key, message) in check.doubts:
            warnings.warn(ConfigWarning(str(sequence), key, message), stacklevel=2)
    if found:
        raise ConfigError(source, _said(spec, found))
    if own:
        sequence, problems = next(iter(own.items()))
        raise ConfigError(sequence, list(dict.fromkeys(problems)))
    lost = [f for f in {p for c in cells for p in (c.run_folder, c.folder, c.folder.parent, c.folder.parent.parent)}
            if f.exists() and not f.is_dir()] if folder.is_dir() else []
    lost.sort()
    if lost:
        raise ConfigError("--out" if out is not None else source,
                          [("" if out is not None else "out", f"{lost[0]} is a file where a cell's folder goes")])
    return spec, cells


class _Check:
    """One sequence file, read once, validated under each grid point's overrides. A problem found there is the
    file's own when it has it without the grid too; else a grid value's: the value that has it when set alone
    (tried only once a point fails), else the point's values together."""

    def __init__(self, sequence: Path, spec: SweepFile):
        self.label, self.spec = str(sequence), spec
        self.raw = read_sequence(sequence)  # ConfigError naming the file: not YAML, not a mapping
        self.doubts: dict[tuple[str, str], None] = {}  # its ConfigWarnings (key, message), each said once
        self._alone: dict[tuple[str, int] | None, list[tuple[str, str]]] = {}

    def _load(self, point: tuple) -> tuple[Sequence | None, str, list[tuple[str, str]], list]:
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            try:
                seq = load_sequence(self.raw, _overrides(point, self.spec.seeds[0]))
            except ConfigError as err:  # `<dict>`: the file read once
                return None, err.source, [(k, m.replace("<dict>", self.label)) for k, m in err.problems], said
        return seq, "", [], said

    def alone(self, item: tuple[str, int] | None) -> list[tuple[str, str]]:
        """The problems with one grid value (key, index) set, or none (None)."""
        if item not in self._alone:
            self._alone[item] = self._load(() if item is None else ((item[0], self.spec.grid[item[0]][item[1]]),))[2]
        return self._alone[item]

    def point(self, point: tuple, index: tuple[int, ...], found: dict, own: dict) -> Sequence | None:
        """The sequence under a grid point, or None with its problems added to `found` (a grid value's: (grid key,
        message) -> value indices; None: every value) or `own` (the file's)."""
        seq, source, problems, said = self._load(point)
        if seq is not None:
            for w in said:
                if isinstance(w.message, ConfigWarning):
                    self.doubts[(w.message.key, w.message.message)] = None
                else:
                    warnings.warn(w.message, stacklevel=3)
            return seq
        if source == "--set":  # a key this sequence cannot take, whatever its value (no such method entry)
            for key, message in problems:
                found.setdefault((key, f"{message} (in {self.label})"), []).append(None)
            return None
        base = self.alone(None)
        for problem in problems:
            if problem in base:
                own.setdefault(self.label, []).append(problem)
                continue
            where, message = problem
            hits = [(k, j) for (k, _), j in zip(point, index) if problem in self.alone((k, j))]
            if hits:
                (k, j), at = hits[0], "" if where in ("", hits[0][0]) else where + " "
                found.setdefault((k, f"{message} ({at}in {self.label})"), []).append(j)
            else:  # only these values together (epochs and steps_per_task both swept)
                values = ", ".join(f"{k}={shown(v)}" for k, v in point)
                found.setdefault((None, f"grid\0{message} ({where} in {self.label}, with {values})"), [])
        return None


def _said(spec: SweepFile, found: dict) -> list[tuple[str, str]]:
    """`found` as ConfigError problems: (grid key, message) -> `grid.<key>` when every value of the key has it,
    else `grid.<key>[j]` for each value j that has it; (None, "key\\0message") as it is."""
    problems = []
    for (key, message), indices in found.items():
        if key is None:
            problems.append(tuple(message.split("\0", 1)))
        elif key not in spec.grid:  # not a grid key: said as it is
            problems.append((_grid_key(key), message))
        elif None in indices or len(set(indices)) == len(spec.grid[key]):
            problems.append((_grid_key(key), message))
        else:
            problems += [(f"{_grid_key(key)}[{j}]", message) for j in sorted(set(indices))]
    return problems


def _grid_key(key: str) -> str:
    """`grid.training.lr`; a key that is not a plain dotted name quoted, so that a line stays one line."""
    return f"grid.{key}" if re.fullmatch(r"[A-Za-z0-9_.+-]{1,100}", key) else f"grid.{shown(key)}"


def _shared(spec: SweepFile, first: tuple[int, tuple], then: tuple[int, tuple], folder: Path) -> str:
    """The problem of two cells that would share a folder, as "key\\0message"."""
    (i0, index0), (i, index) = first, then
    if i != i0:
        return (f"sequences[{i}]\0its name is also sequences[{i0}]'s, so their cells would share the folder {folder}; "
                "give one of them another name (or --set it through grid.name)")
    k, j, j0 = next((k, j, j0) for k, j, j0 in zip(spec.grid, index, index0) if j != j0)
    return (f"{_grid_key(k)}[{j}]\0{shown(spec.grid[k][j])} and {_grid_key(k)}[{j0}] ({shown(spec.grid[k][j0])}) "
            f"would share the folder {folder}; use values that differ in letters, digits or `.,=+-`")


def _file_problems(spec: SweepFile) -> list[tuple[str, str]]:
    """What is wrong with the sweep file itself, seen before any sequence is read or any cell is counted out:
    (key, message) each."""
    problems = []
    if spec.methods is not None and not spec.methods:  # as `continual run --methods ""`: never "all"
        problems.append(("methods", "names no method; leave `methods` out to run each sequence's own"))
    problems += _twice("methods", spec.methods or [])
    problems += _twice("seeds", spec.seeds)
    for key, values in spec.grid.items():
        at, parts = _grid_key(key), key.split(".")
        outer = next((k for k in spec.grid if key.startswith(k + ".")), None)
        if key == "seed":
            problems.append((at, "each cell's seed is one of `seeds:`, which would override this; sweep seeds there"))
        elif "=" in key or "" in parts or key != key.strip():
            problems.append((at, "not a key of a sequence (`--set` keys are dotted names, e.g. training.lr)"))
        elif parts[0] == "methods" and len(parts) > 1 and spec.methods and parts[1] not in spec.methods:
            problems.append((at, f"{parts[1]} is not one of the sweep's methods ({', '.join(spec.methods)}), "
                                 "so every value would give the same cells; add it to `methods` or drop this key"))
        elif outer is not None:
            problems.append((at, f"is inside {_grid_key(outer)}, which sets it too; sweep one of them"))
        if not values:
            problems.append((at, "give at least one value"))
        problems += _twice(at, values)
        problems += [(f"{at}[{j}]", why) for j, value in enumerate(values) if (why := _unsendable(value))]
    for block, users in (("slurm", ["slurm"]), ("ray", ["ray"]), ("resources", ["slurm", "ray"])):
        if block in spec.model_fields_set and spec.backend not in users:
            default = " (the default)" if "backend" not in spec.model_fields_set else ""
            problems.append((block, f"is read by backend {' and '.join(users)} only, and this sweep's backend is "
                                    f"{spec.backend}{default}; remove it or set backend: {users[0]}"))
    if spec.backend == "ray":  # Ray schedules by CPUs, GPUs and memory only
        problems += [(f"resources.{key}", f"is {what}: Ray has none; remove it")
                     for key, what in (("partition", "a Slurm partition"), ("time_min", "a Slurm time limit"))
                     if key in spec.resources.model_fields_set]
    sizes = [len(v) for v in spec.grid.values()]
    count = len(spec.sequences) * math.prod(sizes) * len(spec.seeds)  # from the lengths: no cell built
    if count > spec.max_cells:
        plural = lambda n, word: f"{n:,} {word}{'' if n == 1 else 's'}"  # noqa: E731
        parts = [plural(len(spec.sequences), "sequence")] + ([" x ".join(f"{n:,}" for n in sizes) + " grid values"]
                                                             if sizes else []) + [plural(len(spec.seeds), "seed")]
        problems.append(("max_cells", f"{count:,} cells ({' x '.join(parts)}) is more than max_cells {spec.max_cells:,}; "
                                      "raise max_cells: in the sweep file if you mean it"))
    return problems


def _twice(at: str, values: list) -> list[tuple[str, str]]:
    """`at[j]` for each value listed before (told apart by repr: 1, 1.0 and true differ)."""
    first: dict[str, int] = {}
    return [(f"{at}[{j}]", f"{shown(v)} is also {at}[{first[r]}]") for j, v in enumerate(values)
            if first.setdefault(r := repr(v), j) != j]


def _unsendable(value: Any) -> str | None:
    """Why a grid value cannot reach its cell unchanged as `--set key=<JSON>` (which YAML reads back), or None."""
    if isinstance(value, (datetime.date, datetime.datetime)):
        return (f"YAML reads {value.isoformat()} as a date, which a cell's --set cannot take; quote it "
                f"('{value.isoformat()}') if you mean the text")
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value} is not a finite number"
    if isinstance(value, list):
        return next((f"[{i}]: {why}" for i, v in enumerate(value) if (why := _unsendable(v))), None)
    if isinstance(value, dict):
        if any(not isinstance(k, str) for k in value):
            return f"a mapping key {shown(next(k for k in value if not isinstance(k, str)))} is not a string"
        return next((f"{k}: {why}" for k, v in value.items() if (why := _unsendable(v))), None)
    if value is None or type(value) in (bool, int, float, str):
        try:
            back = yaml.load(json.dumps(value), Loader=_Loader)
        except (ValueError, yaml.YAMLError):
            back = ...
        if type(back) is type(value) and back == value:
            return None
    what = {bytes: "binary data (!!binary)", set: "a set (!!set)", tuple: "pairs (!!omap, !!pairs)"}.get(type(value))
    return (f"{what or shown(value, kind=True)} cannot be passed to a cell's --set; use numbers, strings, true/false, "
            "null, and lists or mappings of them")


def _not_a_folder(folder: Path) -> str | None:
    """Why the sweep's folder cannot be made there (a file where a folder must be), or None."""
    for p in (folder, *folder.parents):
        try:
            if p.exists():
                return None if p.is_dir() else f"{p} is a file, so the sweep's folder {folder} cannot be made"
        except OSError as err:
            return f"cannot use {folder}: {err.strerror or err}"
    return None


def _device_problem(device: str, spec: SweepFile) -> str | None:
    """Why a cell cannot have `device` (spelt as the schema allows), as far as the sweep file tells: a Slurm job or
    Ray task sees the GPUs resources.gpus asks for, as cuda:0 to cuda:<gpus - 1>. The local backend's: run."""
    kind, _, number = device.partition(":")
    gpus = spec.resources.gpus
    if spec.backend != "local" and kind == "cuda" and int(number or 0) >= gpus:
        have = {0: "no GPU", 1: "1 GPU, cuda:0"}.get(gpus, f"{gpus} GPUs, cuda:0 to cuda:{gpus - 1}")
        return f"{device}: a cell of backend {spec.backend} is given resources.gpus: {gpus} ({have})"
    if spec.backend == "slurm" and kind == "mps":
        return "mps is Apple's GPU, which Slurm's nodes (Linux) do not have"
    return None


def _here_problems(spec: SweepFile, cells: list[Cell]) -> list[tuple[str, str]]:
    """What only the machine that runs local cells can tell, checked by run before any starts: that a cell's
    device is here. Each local cell is given one GPU (CUDA_VISIBLE_DEVICES), which it sees as cuda:0; where
    nvidia-smi is not there to say which GPUs this machine has, CUDA devices are left to the cell (run checks)."""
    if spec.backend != "local":
        return []
    from continual.sweeps.backends import gpus_here

    problems: dict[tuple[str, str], None] = {}
    gpus: Any = ...
    for cell in cells:
        kind, _, number = cell.device.partition(":")
        why = None
        if kind == "mps" and sys.platform != "darwin":
            why = f"mps is Apple's GPU; this machine runs {sys.platform}"
        elif kind == "cuda":
            gpus = gpus_here() if gpus is ... else gpus
            if gpus is not None and not gpus:
                why = f"{cell.device}: this machine has no GPU (CUDA_VISIBLE_DEVICES, nvidia-smi); use auto or cpu"
            elif gpus and int(number or 0) >= 1:
                why = f"{cell.device}: a local cell is given one GPU, which it sees as cuda:0; use cuda or auto"
        if why:
            point = dict(cell.point)
            k = "training.device" if "training.device" in point else "training" if "training" in point else None
            at = (f"{_grid_key(k)}[{next(j for j, v in enumerate(spec.grid[k]) if repr(v) == repr(point[k]))}]"
                  if k else f"training.device of {cell.sequence}")
            problems[(at, why)] = None
    return list(problems)


def root(path: str | Path, spec: SweepFile, out: str | Path | None = None) -> Path:
    """<out>/<name>/: the sweep's folder (out: the file's `out`, relative to it, unless given)."""
    folder = Path(out).expanduser() if out is not None else Path(path).parent / Path(spec.out).expanduser()
    return (folder / spec.name).absolute()

"""The run folder, `<out>/<sequence name>/`: the one module that knows its layout.

    config.yaml                     the resolved sequence; its presence means "a run of ours is here"
    .lock                           PID, host and start time of the process writing here
    <method>/accuracy_matrix.csv    step, one column per task (sequence order), one per probe (`probe:<name>`)
    <method>/accuracy_matrix.json   the same rows as a JSON list of records
    <method>/metrics.json           per step: average accuracy over seen tasks, forgetting, BWT; timings
    <method>/curves.png             accuracy of each task and probe against the step (drawn by the report)
    checkpoints/start.pt            step 0, shared by every method (continual/checkpoints.py says what is in it)
    checkpoints/<method>/step-K.pt  after step K
    cache/<method>/                 large recomputable files (LDIFS's anchor taps on disk), removed at the end
    index.html, summary.md, summary.csv, environment.json   the report (continual/report/)

The runner writes through it, the report reads through it, and a run that finds a folder taken says
how far the run in it got.
Every file is written atomically (a temporary name, then rename): readers never see half a file.
No torch here: the report and `continual report` use it too.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from continual import metrics
from continual.config import ConfigError

CONFIG = "config.yaml"
MATRIX_CSV, MATRIX_JSON, METRICS, CURVES = "accuracy_matrix.csv", "accuracy_matrix.json", "metrics.json", "curves.png"
INDEX, SUMMARY_MD, SUMMARY_CSV, ENVIRONMENT = "index.html", "summary.md", "summary.csv", "environment.json"
REPORT_FILES = (INDEX, SUMMARY_MD, SUMMARY_CSV, ENVIRONMENT)


def atomic_write(path: Path, content: str | bytes) -> None:
    """Write to a temporary name in the same folder, then rename: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(content.encode() if isinstance(content, str) else content)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class RunExists(Exception):
    """The output folder already holds a run and neither --resume nor --overwrite was given."""


class RunLocked(Exception):
    """Another live process is writing into this run folder."""


class RunFolder:
    """One run's folder. Paths, what is complete, and how to claim it for a new or resumed run."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # ---- where things are

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    def method(self, name: str) -> Path:
        return self.path / name

    def checkpoints(self, name: str | None = None) -> Path:
        """checkpoints/ (start.pt lives there), or one method's checkpoint folder."""
        return self.path / "checkpoints" if name is None else self.path / "checkpoints" / name

    @property
    def start_checkpoint(self) -> Path:
        return self.checkpoints() / "start.pt"

    def step_checkpoint(self, name: str, step: int) -> Path:
        return self.checkpoints(name) / f"step-{step}.pt"

    def checkpoint_steps(self, name: str) -> list[int]:
        """Steps of method `name` with a checkpoint, ascending (temporary files of an interrupted write ignored)."""
        folder = self.checkpoints(name)
        found = [re.fullmatch(r"step-(\d+)\.pt", p.name) for p in folder.glob("step-*.pt")] if folder.is_dir() else []
        return sorted(int(m.group(1)) for m in found if m)

    def prune_checkpoints(self, name: str, *, keep: int) -> None:
        """Keep the newest `keep` step checkpoints of one method (0: none) and no leftover temporary files."""
        steps = self.checkpoint_steps(name)
        for step in steps[: max(0, len(steps) - keep)]:
            self.step_checkpoint(name, step).unlink(missing_ok=True)
        for tmp in self.checkpoints(name).glob(".*.tmp"):
            tmp.unlink(missing_ok=True)

    def cache(self, name: str) -> Path:
        return self.path / "cache" / name

    def methods_with_results(self) -> list[str]:
        """Methods that have written at least their matrix, by folder name."""
        return sorted(p.parent.name for p in self.path.glob(f"*/{MATRIX_CSV}"))

    # ---- writing

    def write_config(self, text: str) -> None:
        atomic_write(self.config, text)

    def write_step(self, method: str, *, rows: list[dict[str, float]], tasks: list[str], n_steps: int,
                   timings: list[dict]) -> None:
        """(Re)write the numbers of one method after a step; `rows` are the matrix rows so far."""
        folder = self.method(method)
        folder.mkdir(parents=True, exist_ok=True)
        matrix = pd.DataFrame(rows)
        matrix.insert(0, "step", range(len(rows)))
        atomic_write(folder / MATRIX_CSV, matrix.to_csv(index=False, float_format="%.6f"))
        atomic_write(folder / MATRIX_JSON, matrix.to_json(orient="records", indent=1))
        per_step = metrics.step_metrics(matrix[tasks].to_numpy())
        doc = {"method": method, "steps_done": len(rows) - 1, "steps_total": n_steps,
               "complete": len(rows) - 1 == n_steps, "steps": per_step, "final": per_step[-1], "timings": timings}
        atomic_write(folder / METRICS, json.dumps(doc, indent=1, allow_nan=False))

    def record_failure(self, method: str, error: str) -> None:
        """Mark a method's results as failed (its rows so far stay as they are), for the report and the user."""
        path = self.method(method) / METRICS
        doc = json.loads(path.read_text()) if path.exists() else {"method": method, "steps": []}
        doc.update(complete=False, error=error)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(doc, indent=1, allow_nan=False))

    # ---- reading

    def read_matrix(self, method: str) -> pd.DataFrame:
        return pd.read_csv(self.method(method) / MATRIX_CSV, index_col="step")

    def read_metrics(self, method: str) -> dict | None:
        path = self.method(method) / METRICS
        return json.loads(path.read_text()) if path.is_file() else None

    def progress(self) -> str:
        """How far each method got, e.g. "finetune 3/3 steps, ldifs 1/3 steps"."""
        done = []
        for path in sorted(self.path.glob(f"*/{METRICS}")):
            try:
                doc = json.loads(path.read_text())
                done.append(f"{path.parent.name} {doc['steps_done']}/{doc['steps_total']} steps")
            except (OSError, ValueError, KeyError):
                done.append(f"{path.parent.name} unreadable")
        return ", ".join(done) or "no step finished yet"

    # ---- claiming it for a run

    def claim(self, config_text: str, *, resume: bool, overwrite: bool, may_differ: tuple[str, ...] = ()) -> None:
        """Make the folder ours for a run of `config_text` (called holding its lock): nothing computed is
        discarded unless asked, and a resume must be of the same sequence (except keys in `may_differ`)."""
        if not self.config.exists():
            return  # a new run (or one killed before its first file): nothing to keep
        if overwrite:
            self._discard()
            return
        name = yaml.safe_load(config_text).get("name")
        if not resume:
            raise RunExists(f"{self.path} already holds a run of '{name}' ({self.progress()}); "
                            "add --resume to continue it, --overwrite to discard it, or choose another --out")
        try:
            on_disk = yaml.safe_load(self.config.read_text())
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(str(self.config), [("", f"cannot be read to check the resume ({err})")]) from None
        differ = [(key, f"was {a!r} in this run, is {b!r} now")
                  for key, a, b in differences(on_disk, yaml.safe_load(config_text)) if key not in may_differ]
        if differ:
            raise ConfigError(str(self.config), differ + [("", "resume needs the sequence the run was started "
                                                               "with; use --overwrite to start again with this one")])

    def _discard(self) -> None:
        """What --overwrite removes: the files and folders a run writes, nothing else that may be here."""
        ours = {CONFIG, *REPORT_FILES, "checkpoints", "cache"}
        for entry in self.path.iterdir():
            is_method = entry.is_dir() and any((entry / f).exists() for f in (MATRIX_CSV, METRICS))
            if entry.name in ours or is_method:
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()

    def lock(self) -> RunLock:
        return RunLock(self.path)


def differences(a, b, prefix: str = "") -> list[tuple[str, object, object]]:
    """Key paths (`training.lr`, `tasks[1].classes`) where two YAML trees differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in list(a) + [k for k in b if k not in a]:
            out += differences(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and all(isinstance(x, dict) for x in a + b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{prefix}[{i}]")]
    return [] if a == b else [(prefix, a, b)]


class RunLock:
    """One run per folder: `<folder>/.lock` holds the writer's PID, host and start time. A lock whose
    process is gone (same host, PID not alive) is stale and taken over."""

    def __init__(self, folder: Path):
        self.path = folder / ".lock"
        self.held = False

    def __enter__(self) -> RunLock:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                holder = self._holder()
                if holder is not None and _alive(holder):
                    raise RunLocked(f"{self.path.parent}: another run is writing here (PID {holder['pid']} on "
                                    f"{holder['host']}, started {holder['started']}); wait for it, stop it, or "
                                    "use another --out") from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise RunLocked(f"{self.path}: could not take the run lock")

    def __exit__(self, *exc) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def _holder(self) -> dict | None:
        try:
            holder = json.loads(self.path.read_text())
            return holder if {"pid", "host", "started"} <= holder.keys() else None
        except (OSError, ValueError):
            return None  # unreadable: written by a process killed mid-write, so stale


def _alive(holder: dict) -> bool:
    if holder["host"] != socket.gethostname():
        return True  # another machine's process: cannot check, so respect it
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def load_run(folder: str | Path) -> dict[str, pd.DataFrame]:
    """A run folder (<out>/<sequence name>) -> {method: accuracy matrix indexed by step}."""
    run = RunFolder(folder)
    out = {name: run.read_matrix(name) for name in run.methods_with_results()}
    if not out:
        raise FileNotFoundError(f"{folder}: no <method>/{MATRIX_CSV} here; is it a run folder?")
    return out


def load_metrics(folder: str | Path) -> pd.DataFrame:
    """Per-step metrics of every method in a run folder, one row per (method, step)."""
    run = RunFolder(folder)
    docs = [run.read_metrics(name) for name in run.methods_with_results()]
    frames = [pd.DataFrame(doc["steps"]).assign(method=doc["method"]) for doc in docs if doc is not None]
    if not frames:
        raise FileNotFoundError(f"{folder}: no <method>/{METRICS} here; is it a run folder?")
    return pd.concat(frames, ignore_index=True).replace({None: np.nan})

"""A run's files on disk: written atomically after every step, and read back as pandas tables.

Layout: <out>/<sequence name>/config.yaml and, per method, <out>/<sequence name>/<method>/
    accuracy_matrix.csv   step, one column per task (sequence order), one per probe (`probe:<name>`)
    accuracy_matrix.json  the same rows as a JSON list of records
    metrics.json          per step: average accuracy over seen tasks, forgetting, BWT; plus timings
    curves.png            accuracy of each task and probe against the step
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import numpy as np
import pandas as pd

from continual import metrics
from continual.plots import curves_png


def atomic_write(path: Path, content: str | bytes) -> None:
    """Write to a temporary name in the same folder, then rename: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(content.encode() if isinstance(content, str) else content)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_step(folder: Path, *, method: str, rows: list[dict[str, float]], tasks: list[str], n_steps: int,
               timings: list[dict]) -> None:
    """(Re)write every file of one method after a step; `rows` are the matrix rows so far."""
    folder.mkdir(parents=True, exist_ok=True)
    matrix = pd.DataFrame(rows)
    matrix.insert(0, "step", range(len(rows)))
    atomic_write(folder / "accuracy_matrix.csv", matrix.to_csv(index=False, float_format="%.6f"))
    atomic_write(folder / "accuracy_matrix.json", matrix.to_json(orient="records", indent=1))
    per_step = metrics.step_metrics(matrix[tasks].to_numpy())
    doc = {
        "method": method,
        "steps_done": len(rows) - 1,
        "steps_total": n_steps,
        "complete": len(rows) - 1 == n_steps,
        "steps": per_step,
        "final": per_step[-1],
        "timings": timings,
    }
    atomic_write(folder / "metrics.json", json.dumps(doc, indent=1, allow_nan=False))
    atomic_write(folder / "curves.png", curves_png(matrix, title=method, n_steps=n_steps))


def record_failure(folder: Path, error: str) -> None:
    """Mark a method's results as failed (its rows so far stay as they are), for the report and the user."""
    path = folder / "metrics.json"
    doc = json.loads(path.read_text()) if path.exists() else {"method": folder.name, "steps": []}
    doc.update(complete=False, error=error)
    atomic_write(path, json.dumps(doc, indent=1, allow_nan=False))


class RunLocked(Exception):
    """Another live process is writing into this run folder."""


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
    folder = Path(folder)
    out = {}
    for csv in sorted(folder.glob("*/accuracy_matrix.csv")):
        out[csv.parent.name] = pd.read_csv(csv, index_col="step")
    if not out:
        raise FileNotFoundError(f"{folder}: no <method>/accuracy_matrix.csv here; is it a run folder?")
    return out


def load_metrics(folder: str | Path) -> pd.DataFrame:
    """Per-step metrics of every method in a run folder, one row per (method, step)."""
    frames = []
    for path in sorted(Path(folder).glob("*/metrics.json")):
        doc = json.loads(path.read_text())
        frames.append(pd.DataFrame(doc["steps"]).assign(method=doc["method"]))
    if not frames:
        raise FileNotFoundError(f"{folder}: no <method>/metrics.json here; is it a run folder?")
    return pd.concat(frames, ignore_index=True).replace({None: np.nan})

"""A run folder read back for the Python API (`continual.load_run`, `continual.load_metrics`): the accuracy
matrices as pandas frames, the per-step metrics tidy. The files are continual/run_folder.py's."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from continual.methods.options import method_items
from continual.report.tables import load_tables
from continual.run_folder import MATRIX_CSV, RunFolder


def load_run(folder: str | Path) -> dict[str, pd.DataFrame]:
    """A run folder (<out>/<sequence name>) -> {method: accuracy matrix indexed by step}, in config.yaml's
    method order (the sequence's), then any other method with results."""
    run = RunFolder(folder)
    out = {name: run.read_matrix(name) for name in _method_order(run)}
    if not out:
        raise FileNotFoundError(f"{folder}: no <method>/{MATRIX_CSV} here; is it a run folder?")
    return out


def load_metrics(folder: str | Path) -> pd.DataFrame:
    """Per-step metrics of every method in a run folder, tidy: method, step, metric, value (the same frame
    as continual.report.load_tables(folder)["metrics"]), methods in config.yaml's order. FileNotFoundError
    when the folder holds no results; continual.report.ReportError when its config.yaml is unreadable."""
    if not RunFolder(folder).methods_with_results():
        raise FileNotFoundError(f"{folder}: no <method>/{MATRIX_CSV} here; is it a run folder?")
    return load_tables(folder)["metrics"]


def _method_order(run: RunFolder) -> list[str]:
    found = run.methods_with_results()
    try:
        config = yaml.safe_load(run.config.read_text()) if run.config.is_file() else {}
    except (OSError, ValueError, yaml.YAMLError, RecursionError):  # damaged: the folders' order
        config = {}
    listed = [m.key for m in method_items(config.get("methods") if isinstance(config, dict) else None) if m.key in found]
    return listed + [m for m in found if m not in listed]

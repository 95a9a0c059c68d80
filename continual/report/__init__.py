"""The report of one or more run folders: what a researcher pastes into a paper or an issue.

    tables  run folders read back as tidy pandas tables, aggregated over runs (numbers only)
    load    one run folder's metrics and matrices as plain Python (continual.load_run, continual.load_metrics)
    cells   how a number, a missing value and a table are written, in markdown, HTML and LaTeX alike
    page    index.html, summary.md, summary.csv (tables and figures)
    latex   tables.tex and sweep.tex: the report's tables as booktabs floats
    live    the report of a run while it goes (the runner's on_step callback)
    outputs report.json: which of tables.tex and the figures a report was asked for, so every later write
            rewrites them (and removes the ones it no longer draws)

Reads files only: no torch, no models.
"""

import importlib

# Each name from the module that holds it, imported when first asked for: `continual.load_run` (report/load.py)
# then reads a run without importing pandas' tables or matplotlib's figures.
_WHERE = {"LiveReport": "live", "environment": "page", "write_report": "page", "ReportError": "tables",
          "aggregate": "tables", "load_tables": "tables", "read_run": "tables"}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"continual.report.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'continual.report' has no attribute {name!r}")

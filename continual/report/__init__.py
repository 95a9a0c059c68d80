"""The report of one or more run folders: what a researcher pastes into a paper or an issue.

    tables  run folders read back as tidy pandas tables, aggregated over runs (numbers only)
    page    index.html, summary.md, summary.csv (tables and figures)
    live    the report of a run while it goes (the runner's on_step callback)
    outputs report.json: which of tables.tex and the figures a report was asked for, so every later write
            rewrites them (and removes the ones it no longer draws)

Reads files only: no torch, no models.
"""

from continual.report.live import LiveReport
from continual.report.page import environment, write_report
from continual.report.tables import ReportError, aggregate, load_tables, read_run

__all__ = ["LiveReport", "ReportError", "aggregate", "environment", "load_tables", "read_run", "write_report"]

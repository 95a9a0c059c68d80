"""The report of a run while it goes: the callback the CLI and `continual.run` hand to the runner.

    with LiveReport(folder) as live:
        run_sequence(seq, ..., on_step=live.step)

After each step the runner has written the method's numbers; this draws its curves.png, and the
comparison report (index.html, summary.md, summary.csv, and tables.tex and figures/ where the folder's
report.json says `continual report --latex --format` asked for them) when `every` seconds have passed since
the last drawing, and at the end: also when some methods failed, and on Ctrl-C or SIGTERM (a pre-empted job), so
that the report shows every step on disk (it showed a method that had finished as "0 of 3 steps"); not
when the run never wrote a step, nor on a full disk. A drawing takes ~1.4 s; after every step it cost 20 of the default sequence's 430 s. A figure or
report that fails to draw warns instead of stopping the run: hours of training outweigh a picture, the
numbers are on disk, curves.png is drawn again after the method's next step and `continual report`
redraws the comparison.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

from continual.plots import curves_png
from continual.report.page import write_report
from continual.files import DiskFull, atomic_write
from continual.run_folder import CURVES, RunFolder
from continual.run_lock import RunLocked


class LiveReport:
    def __init__(self, folder: str | Path, *, every: float = 120.0):
        self.folder = RunFolder(folder)
        self.every = every
        self.steps = 0  # steps reported by the runner so far
        self._last = float("-inf")

    def __enter__(self) -> LiveReport:
        return self

    def __exit__(self, kind, err, traceback) -> None:
        # Only where the runner reported a step: under torchrun, rank 0 (the other ranks write nothing).
        if self.steps and (kind is None or not issubclass(kind, DiskFull)):
            # The runner has released the folder's lock: hold it again while drawing, so that a run that
            # took the folder in between never finds this run's report in it (it draws its own).
            try:
                with self.folder.lock():
                    self.draw()
            except (RunLocked, DiskFull) as problem:
                warnings.warn(f"{self.folder.path}: report not written: {problem}", stacklevel=2)

    def step(self, method: str, step: int, n_steps: int) -> None:
        """The runner's `on_step`, after step `step` of `method`: its curves, and the report if it is time."""
        self.steps += 1
        try:
            matrix = self.folder.read_matrix(method).reset_index()
            atomic_write(self.folder.method(method) / CURVES, curves_png(matrix, title=method, n_steps=n_steps))
        except Exception as err:  # noqa: BLE001 - see the module docstring
            warnings.warn(f"{self.folder.method(method) / CURVES}: not drawn: {type(err).__name__}: {err}",
                          stacklevel=2)
        if time.perf_counter() - self._last >= self.every:
            self.draw()

    def draw(self) -> None:
        """The comparison report of the whole run folder, now."""
        try:
            write_report([self.folder.path], record_environment=True)
        except Exception as err:  # noqa: BLE001 - see the module docstring
            warnings.warn(f"{self.folder.path}: report not written: {type(err).__name__}: {err}", stacklevel=2)
        self._last = time.perf_counter()

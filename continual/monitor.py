"""Watching a method train: the progress bar's numbers and TensorBoard's scalars (issue #15).

Each method writes TensorBoard event files into its own folder, `<out>/<sequence>/<method>/`, next to its
accuracy matrix, so `tensorboard --logdir runs/` shows every sequence, method and seed (a seed's own --out)
as a run named `<sequence>/<method>`. The scalars:

    loss/<term>          each loss term's mean over the optimiser steps since the last point    x: the method's
    lr                   the learning rate of the step just taken (first parameter group)         optimiser steps,
    images_per_second    images trained since the last point / wall seconds since then           counted over the
                                                                                                   whole sequence
    accuracy/<column>    each cell of the accuracy matrix's row: tasks and `probe:...` columns    x: the step
    metrics/<name>       average accuracy over the tasks learned so far, forgetting, BWT          (0: pre-trained)
    time/<what>          the step's fit and evaluation seconds

Per-iteration points are written where a training loop reads its device-side sums for the progress bar
(every Trainer.log_every optimiser steps and at each epoch's end): TensorBoard adds no device sync, and with
the bars off the loop still reads at that cadence, for TensorBoard alone. The writer is torch's SummaryWriter,
which needs the `tensorboard` package (not TensorFlow), imported when the first event is written (about
0.1 s once torch is loaded), and which writes from a thread of its own. A writer that fails (a full disk, the
package missing) warns once and the method trains on without it: the numbers that matter are the run's files.

The same points go to the experiment trackers asked for (W&B, MLflow: continual/trackers.py), handed each with
its x axis; with --no-tensorboard they alone get them.
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

import numpy as np

from continual import metrics
from continual.run_folder import EVENTS


class MonitorWarning(UserWarning):
    """TensorBoard's events stopped being written; training goes on."""


class Events:
    """One method's TensorBoard event files, in its folder; under torchrun, rank 0's alone.

    `step` is the method's optimiser steps so far over the sequence (task 2's continue after task 1's), the x
    of the per-iteration scalars, advanced by the training loops (Reporter.stepped) and set by the runner from
    the timings before each task. `rows` writes the accuracy-matrix rows not written yet, each at its step.

    Resuming (`for_method`): the method continues from its checkpoint after step `done`, G optimiser steps in,
    and what a killed process wrote after that checkpoint must not show twice. TensorBoard's two readers drop
    such points differently: its Python reader (EventAccumulator, `--load_fast=false`), on the SessionLog.START
    at step P that SummaryWriter(purge_step=P) writes first, drops the points at steps >= P of every tag; its
    Rust reader (the default) ignores that event and drops, tag by tag, the points at steps >= s when a later
    point arrives at step s. So P = G + 1 (the points at G, the checkpointed task's last, stay): the iteration
    points after it are dropped by the one, and written again at the same steps (the same cadence) for the
    other. Accuracy rows share the files but count steps 0..T: those at steps >= P, only when P <= done (a
    method of few optimiser steps, or none, as `frozen`), are dropped by the Python reader too, so they are
    written again, which replaces them for the Rust one. Which rows the files already hold: the runner writes
    a step's row here, flushed, before its accuracy_matrix.csv, so the rows in that file before the resume
    rewrites it (`rows_on_disk`) are here (a kill between a checkpoint and its files leaves both without the
    step's row, which is then written); with no event file at all (the run began with --no-tensorboard),
    none is. With no checkpoint (done = 0) nothing of before is kept: P = 0; a fresh start purges from 0 too,
    so that events an interrupted --overwrite left behind never mix with the new ones."""

    def __init__(self, folder: str | Path, *, step: int = 0, purge_step: int | None = None, first_row: int = 0,
                 tensorboard: bool = True, trackers: list = ()):
        self.folder = Path(folder)
        self.tensorboard = tensorboard  # False: the trackers alone get the points
        self.trackers = list(trackers)  # continual/trackers.py's, each skipping the steps its run already holds
        self.step = step
        self.purge_step = purge_step
        self.next_row = first_row  # the first accuracy-matrix row `rows` still has to write
        self._writer = None  # opened by the first event: a method that writes none leaves no file
        self._failed = False

    @classmethod
    def for_method(cls, folder: str | Path, *, timings: list[dict], resume: bool, rows_on_disk: int = 0,
                   tensorboard: bool = True, trackers: list = ()) -> Events:
        """The events of a method starting after the steps in `timings` (step 0's alone when it starts afresh),
        in a run that is `resume`d or not; `rows_on_disk`: the rows its accuracy_matrix.csv held before."""
        done = len(timings) - 1
        step = sum(t.get("train_steps", 0) for t in timings)
        how = dict(tensorboard=tensorboard, trackers=trackers)
        if not resume or not done:
            return cls(folder, step=step, purge_step=0, **how)
        purge = step + 1
        written = rows_on_disk if any(Path(folder).glob(EVENTS)) else 0
        return cls(folder, step=step, purge_step=purge, first_row=min(purge, written, done + 1), **how)

    def scalars(self, values: dict[str, float | None], *, step: int, axis: str = "optimizer_step",
                tensorboard: bool = True) -> None:
        """Each value at `step` of `axis` (`optimizer_step`, or `step` for a row); None and non-finite ones (a
        row's NaN cells) are left out. `tensorboard`: False for the trackers alone (a row it already holds)."""
        finite = {tag: float(value) for tag, value in values.items() if value is not None and math.isfinite(value)}
        for tracker in self.trackers:
            tracker.log(finite, step=step, axis=axis)
        if not (tensorboard and self.tensorboard):
            return
        writer = self._open()
        if writer is None:
            return
        try:
            for tag, value in finite.items():
                writer.add_scalar(tag, value, step)
        except Exception as err:  # noqa: BLE001 - whatever the writer's thread met (a full disk): warn once
            self._fail(err)

    def rows(self, rows: list[dict[str, float]], timings: list[dict], *, tasks: list[str]) -> None:
        """The accuracy-matrix rows not written yet (each column, the step's metrics and seconds), each at its
        step, then everything so far to disk: a kill after this loses nothing of the steps done. The trackers are
        handed every row: each skips those its run holds (a tracker asked for first on a resume gets them all)."""
        first = 0 if self.trackers else self.next_row
        if first < len(rows):
            per_step = metrics.step_metrics(np.array([[row[t] for t in tasks] for row in rows], dtype=float))
            for k in range(first, len(rows)):
                values = {f"accuracy/{column}": value for column, value in rows[k].items()}
                values.update({f"metrics/{name}": value for name, value in per_step[k].items() if name != "step"})
                values.update({f"time/{what}": timings[k][what] for what in ("fit_seconds", "eval_seconds")
                               if what in timings[k]})
                self.scalars(values, step=k, axis="step", tensorboard=k >= self.next_row)
            self.next_row = max(self.next_row, len(rows))
        self.flush()

    def files(self, paths: dict[str, list[Path]]) -> None:
        """Files for the trackers to keep, under a folder name each (a method's own, the run's report)."""
        for tracker in self.trackers:
            tracker.files(paths)

    def flush(self) -> None:
        if self._writer is not None:
            try:
                self._writer.flush()
            except Exception as err:  # noqa: BLE001
                self._fail(err)

    def close(self, *, status: str = "FINISHED") -> None:
        """Everything written to disk and the writer's thread ended (also after an error or Ctrl-C); the
        trackers' runs ended as `status` (FINISHED, FAILED, KILLED)."""
        for tracker in self.trackers:
            tracker.close(status=status)
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.close()
            except Exception as err:  # noqa: BLE001
                self._fail(err)

    def _open(self):
        if self._writer is None and not self._failed:
            try:
                from torch.utils.tensorboard import SummaryWriter  # here: nothing else needs it

                self._writer = SummaryWriter(str(self.folder), purge_step=self.purge_step)
            except Exception as err:  # noqa: BLE001 - ImportError without the package, OSError from the disk
                self._fail(err)
        return self._writer

    def _fail(self, err: Exception) -> None:
        if not self._failed:
            said = " ".join(str(err).split())[:300]
            warnings.warn(MonitorWarning(f"{self.folder}: TensorBoard events not written from here on "
                                         f"({type(err).__name__}: {said}); training goes on"), stacklevel=3)
        self._failed = True
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.close()
            except Exception:  # noqa: BLE001 - the same error again: said once above
                pass


class Reporter:
    """What one task's training loop shows as it goes, for both loops (Trainer.fit and Avalanche's): every
    `log_every` optimiser steps and at each epoch's end the loop hands over its running sums of the loss terms
    (device tensors, summed over the epoch so far), read here once (the loop's only sync with the device) for
    the progress bar (each term's mean over the epoch so far) and TensorBoard (each term's mean over the steps
    since the last reading: the difference of the sums over the number of steps, so every step counts once).
    `scale` multiplies the sums: under torchrun rank 0's share of each batch, as if it were the whole batch."""

    def __init__(self, bar, *, show: bool, events: Events | None, scale: float = 1.0):
        self.bar, self.show, self.events, self.scale = bar, show, events, scale
        self.reads = show or events is not None  # whether the loop needs to hand its sums over at all
        self.lr = math.nan
        self.images = 0  # trained since the last reading
        self.count = 0  # the epoch's steps at the last reading
        self.sums: dict[str, float] = {}  # the running sums then
        self.time = time.perf_counter()

    def stepped(self, *, images: int, lr: float) -> None:
        """After each optimiser step: it trained on `images` (the whole batch's, under torchrun) at `lr`."""
        self.images += images
        self.lr = lr
        if self.events is not None:
            self.events.step += 1

    def read(self, sums: dict, *, count: int, **postfix: str) -> None:
        """`sums`: each term summed over the epoch's first `count` steps; `postfix`: more for the bar."""
        now = {k: float(v) * self.scale for k, v in sums.items()}  # waits for the device: the time is honest
        when = time.perf_counter()
        if self.show:
            self.bar.set_postfix(**postfix, **{k: f"{v / count:.3f}" for k, v in now.items()})
        if self.events is not None:
            if count <= self.count:  # a new epoch, whose sums started from zero
                self.count, self.sums = 0, {}
            steps, seconds = count - self.count, when - self.time
            values = {f"loss/{k}": (v - self.sums.get(k, 0.0)) / steps for k, v in now.items()}
            values["lr"] = self.lr
            values["images_per_second"] = self.images / seconds if seconds > 0 else None
            self.events.scalars(values, step=self.events.step)
        self.count, self.sums, self.images, self.time = count, now, 0, when
